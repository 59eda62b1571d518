//! The hook the control server reports to ([`control::Observer`]): each
//! finished call into the latency histogram by method and gRPC code, each
//! authentication or authorization failure into its counter by reason.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use control::{AuthFailure, CallCode, Observer};

use super::Metrics;

/// Maps control-server events to the registry.
pub(super) struct ControlObserver(pub(super) Arc<Metrics>);

impl Observer for ControlObserver {
    fn call_finished(&self, method: &'static str, code: CallCode, elapsed: Duration) {
        self.0
            .calls
            .with_label_values(&[method, code_name(code)])
            .observe(elapsed.as_secs_f64());
    }

    fn auth_failed(&self, _method: &'static str, reason: AuthFailure) {
        self.0
            .auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

/// A stable snake_case name of a gRPC code (`ok`, `not_found`, ...).
fn code_name(code: CallCode) -> &'static str {
    use CallCode as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}
