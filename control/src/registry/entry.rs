//! One session's entry in the table ([`Session`]: its listeners, port
//! leases, hello signal, secret, and the restore attempt while RESTORING),
//! its persisted record and its read-only view, and the values the table's
//! calls take and give ([`NewSession`], [`SessionView`], [`ReqAnswer`],
//! [`HelloOutcome`]).

use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::errors::ControlError;
use crate::persist::SessionRecord;
use crate::ports::PortLease;
use crate::rate::RateSource;
use crate::secret::SessionSecret;
use crate::session::SessionState;
use crate::types::{Identity, Role, SessionId};

/// What `hello` tells the waiting `req`: the session is READY, or it could
/// not be made durable and is gone.
pub type HelloOutcome = Result<(), ControlError>;

/// A persisted session waiting to be restored.
pub(super) struct PendingRestore {
    pub(super) record: SessionRecord,
    /// Why the last attempt failed.
    pub(super) reason: String,
    pub(super) attempts: u32,
    pub(super) next_attempt: Instant,
}

/// One live session.
pub struct Session {
    pub(super) uid: SessionId,
    pub(super) role: Role,
    pub(super) owner: Identity,
    pub(super) num_conn: u32,
    /// The cap in force (Mbit/s, 0 none) and where it came from.
    pub(super) rate: i32,
    pub(super) rate_source: RateSource,
    pub(super) state: SessionState,
    pub(super) leases: Vec<PortLease>,
    /// Bound listeners, held until `update` hands them to the data plane.
    pub(super) listeners: Vec<TcpListener>,
    pub(super) advertised: Vec<SocketAddr>,
    pub(super) prod_listeners: Vec<String>,
    pub(super) targets: Vec<SocketAddr>,
    pub(super) secret: Option<SessionSecret>,
    pub(super) legacy_secret: bool,
    pub(super) want_secret: bool,
    pub(super) created_unix: u64,
    pub(super) state_since: Instant,
    pub(super) hello_tx: Option<oneshot::Sender<HelloOutcome>>,
    /// Set while RESTORING.
    pub(super) pending: Option<PendingRestore>,
}

impl Session {
    /// The session id.
    pub fn uid(&self) -> &SessionId {
        &self.uid
    }
    /// The session state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    pub(super) fn record(&self) -> SessionRecord {
        SessionRecord {
            uid: self.uid.clone(),
            role: self.role,
            owner: self.owner.clone(),
            num_conn: self.num_conn,
            rate: self.rate,
            rate_source: self.rate_source.clone(),
            state: self.state,
            ports: self.leases.iter().map(|l| l.port()).collect(),
            advertised: self.advertised.clone(),
            prod_listeners: self.prod_listeners.clone(),
            targets: self.targets.clone(),
            secret_hex: self.secret.as_ref().map(|s| s.to_hex()),
            legacy_secret: self.legacy_secret,
            want_secret: self.want_secret,
            created_unix: self.created_unix,
        }
    }

    pub(super) fn view(&self) -> SessionView {
        SessionView {
            uid: self.uid.clone(),
            role: self.role,
            state: self.state,
            owner: self.owner.clone(),
            num_conn: self.num_conn,
            rate: self.rate,
            rate_source: self.rate_source.clone(),
            listeners: self.advertised.clone(),
            prod_listeners: self.prod_listeners.clone(),
            targets: self.targets.clone(),
            created_unix: self.created_unix,
            legacy_secret: self.legacy_secret,
            restore_error: self.pending.as_ref().map(|p| {
                format!(
                    "not restored after {} attempt(s), retrying: {}",
                    p.attempts, p.reason
                )
            }),
        }
    }
}

/// A read-only snapshot of a session (for status and list).
#[derive(Clone, Debug)]
pub struct SessionView {
    /// uid
    pub uid: SessionId,
    /// role
    pub role: Role,
    /// state
    pub state: SessionState,
    /// owner
    pub owner: Identity,
    /// num_conn
    pub num_conn: u32,
    /// The rate cap in force (Mbit/s, 0 none).
    pub rate: i32,
    /// Where that cap came from.
    pub rate_source: RateSource,
    /// advertised listeners
    pub listeners: Vec<SocketAddr>,
    /// what hello announced
    pub prod_listeners: Vec<String>,
    /// update targets
    pub targets: Vec<SocketAddr>,
    /// creation time
    pub created_unix: u64,
    /// legacy secret in use
    pub legacy_secret: bool,
    /// Why a RESTORING session is not back yet.
    pub restore_error: Option<String>,
}

/// What `req` answers once hello arrived.
pub struct ReqAnswer {
    /// Advertised listeners.
    pub listeners: Vec<SocketAddr>,
    /// What hello announced.
    pub prod_listeners: Vec<String>,
    /// The secret, when the client asked for it.
    pub secret: Option<SessionSecret>,
}

/// Parameters of a new session.
pub struct NewSession {
    /// uid
    pub uid: SessionId,
    /// role
    pub role: Role,
    /// creator
    pub owner: Identity,
    /// listeners to allocate
    pub num_conn: u32,
    /// The rate cap in force (Mbit/s, 0 none; see [`crate::rate`]).
    pub rate: i32,
    /// Where that cap came from.
    pub rate_source: RateSource,
    /// secret known at req time (PROD)
    pub secret: Option<SessionSecret>,
    /// whether that secret is the legacy one
    pub legacy_secret: bool,
    /// whether the client reads `channel_secret`
    pub want_secret: bool,
}
