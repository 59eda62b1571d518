//! Hooks through which an embedding program watches the control server
//! (the gateway maps them to Prometheus metrics), so this crate needs no
//! metrics library. Every method has an empty default; [`NoObserver`] is
//! the one used when nobody watches.

use std::time::Duration;

/// The gRPC status code of a finished call (re-exported so observers need
/// no tonic dependency of their own).
pub use tonic::Code as CallCode;

/// Why a call failed authentication or authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No token, or a token the gateway does not accept.
    Unauthenticated,
    /// The token introspection endpoint could not be asked.
    BackendUnavailable,
    /// Authenticated, but not allowed to do this (including update targets
    /// outside the allow-list).
    PermissionDenied,
}

impl AuthFailure {
    /// A short snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Unauthenticated => "unauthenticated",
            AuthFailure::BackendUnavailable => "backend_unavailable",
            AuthFailure::PermissionDenied => "permission_denied",
        }
    }
}

/// Watches the control server. Implementations must be cheap and must not
/// block: they run on the calls' tasks.
pub trait Observer: Send + Sync + 'static {
    /// A gRPC call (`method`: "req", "hello", "update", "release", "status",
    /// "list", "watch", "version") ended with `code` after `elapsed`.
    fn call_finished(&self, method: &'static str, code: CallCode, elapsed: Duration) {
        let _ = (method, code, elapsed);
    }

    /// A call was refused for `reason`. Never carries the credential.
    fn auth_failed(&self, method: &'static str, reason: AuthFailure) {
        let _ = (method, reason);
    }
}

/// Observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
