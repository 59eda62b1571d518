//! The control plane's error type, [`ControlError`], and its conversion to a
//! gRPC [`tonic::Status`] (the only place where that mapping is decided), and
//! [`DataPlaneError`], what a data plane reports back. This module imports
//! nothing from the crate, so every other module may use it.
//!
//! Every variant's message says what was wrong and, where useful, what to do.
//! Each variant's doc says who is probably at fault.

use std::time::Duration;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Client: the call is not valid in the session's current state.
    #[error("session {uid}: `{call}` is not allowed in state {state}; {hint}")]
    OutOfOrder {
        uid: String,
        call: &'static str,
        state: &'static str,
        hint: &'static str,
    },
    /// Client: no session with this uid.
    #[error("no session with uid {uid:?} (it was never requested, or it was released or expired)")]
    UnknownSession { uid: String },
    /// Client: a session with this uid already exists.
    #[error("a session with uid {uid:?} already exists; pick a new uid")]
    DuplicateSession { uid: String },
    /// Client: an address could not be parsed.
    #[error("bad address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    /// Client: some other field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Operator/load: the port range has no free port.
    #[error("no free port: wanted {wanted} listener port(s) in range {range}, {free} free")]
    NoFreePort {
        wanted: usize,
        range: String,
        free: usize,
    },
    /// Load: a limit of the control server was reached (names the limit
    /// and the setting that raises it).
    #[error("{what}: the limit is {limit} (operator setting {setting})")]
    LimitReached {
        what: String,
        limit: usize,
        setting: &'static str,
    },
    /// Load: a call was not served within the request timeout (its work,
    /// once started, still completes).
    #[error(
        "the {method} call was not served within {timeout_secs} s: the limit is the request \
         timeout (operator setting request_timeout_secs, --request-timeout)"
    )]
    CallTimedOut {
        method: &'static str,
        timeout_secs: f64,
    },
    /// A bug: a call's task failed (panicked) instead of answering.
    #[error("internal error: {reason}")]
    Internal { reason: String },
    /// Operator: too many sessions.
    #[error("too many sessions: the limit is {limit}")]
    TooManySessions { limit: usize },
    /// Client: missing or invalid credentials.
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    /// Client: authenticated, but not allowed to do this.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: String },
    /// Client/operator: an update target is outside the operator's allow-list.
    #[error(
        "target {target} is not in this gateway's target allow-list (deny by default; the operator must allow its network and port)"
    )]
    TargetNotAllowed { target: String },
    /// Client: no hello arrived for a pending req in time.
    #[error(
        "no hello for session {uid} within {timeout:?}; the session was released (start the application controller / appctrl hello within the timeout)"
    )]
    HelloTimeout { uid: String, timeout: Duration },
    /// Client: the session was released while its req was waiting for hello.
    #[error("session {uid} was released while its req was waiting for hello")]
    ReleasedWhileWaiting { uid: String },
    /// Operator policy: legacy uid-derived secrets are disabled.
    #[error(
        "session {uid}: the client sent no data-channel secret and this gateway forbids the legacy uid-derived secret; use a current s2uc (it sends the secret), or ask the operator to allow legacy secrets"
    )]
    LegacySecretForbidden { uid: String },
    /// Gateway: the data plane failed to start a session.
    #[error("session {uid}: the data plane could not start: {source}")]
    DataPlane {
        uid: String,
        #[source]
        source: DataPlaneError,
    },
    /// Nobody: the server is shutting down.
    #[error("the control server is shutting down; retry against the restarted server")]
    ShuttingDown,
    /// Remote: the token introspection endpoint failed.
    #[error("token introspection failed: {reason}")]
    AuthBackend { reason: String },
    /// Operator: bad configuration.
    #[error("configuration error: {reason}")]
    Config { reason: String },
    /// Operator: another gateway process serves from this state directory.
    #[error(
        "the state directory {} is in use by {holder}; stop it first, or give this gateway its own --state-dir",
        dir.display()
    )]
    StateDirLocked {
        dir: std::path::PathBuf,
        holder: String,
    },
    /// Operator/system: the state directory cannot be written (full,
    /// read-only, permissions), so a new session could not survive a restart.
    #[error(
        "the session state directory {} cannot be written ({reason}); new sessions are refused until it can (free space or fix its permissions); running sessions are not affected",
        dir.display()
    )]
    StateDirUnwritable {
        dir: std::path::PathBuf,
        reason: String,
    },
    /// Operator/system: I/O failure.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Operator: TLS material could not be loaded or generated.
    #[error("TLS setup failed: {reason}")]
    Tls { reason: String },
    /// System: the gRPC transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ControlError {
    /// Shorthand for an [`ControlError::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ControlError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC status code this error maps to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ControlError::OutOfOrder { .. }
            | ControlError::ReleasedWhileWaiting { .. }
            | ControlError::LegacySecretForbidden { .. } => Code::FailedPrecondition,
            ControlError::UnknownSession { .. } => Code::NotFound,
            ControlError::DuplicateSession { .. } => Code::AlreadyExists,
            ControlError::InvalidAddress { .. } | ControlError::InvalidArgument { .. } => {
                Code::InvalidArgument
            }
            ControlError::NoFreePort { .. }
            | ControlError::TooManySessions { .. }
            | ControlError::LimitReached { .. }
            | ControlError::CallTimedOut { .. } => Code::ResourceExhausted,
            ControlError::Unauthenticated { .. } => Code::Unauthenticated,
            ControlError::PermissionDenied { .. } | ControlError::TargetNotAllowed { .. } => {
                Code::PermissionDenied
            }
            ControlError::HelloTimeout { .. } => Code::DeadlineExceeded,
            ControlError::AuthBackend { .. }
            | ControlError::ShuttingDown
            | ControlError::StateDirUnwritable { .. } => Code::Unavailable,
            ControlError::DataPlane { .. }
            | ControlError::Config { .. }
            | ControlError::StateDirLocked { .. }
            | ControlError::Io { .. }
            | ControlError::Tls { .. }
            | ControlError::Internal { .. }
            | ControlError::Transport(_) => Code::Internal,
        }
    }
}

/// The one place where control errors become gRPC statuses.
impl From<ControlError> for tonic::Status {
    fn from(err: ControlError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

/// Result alias for the control plane.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Data-plane failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataPlaneError {
    /// System: a socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Control plane bug: the session already runs.
    #[error("session {uid} is already running in the data plane")]
    AlreadyRunning { uid: String },
    /// Other data-plane specific failure.
    #[error("{0}")]
    Other(String),
}
