//! The gRPC server: the `scistream.Control` and `scistream.ControlExt`
//! services, and [`serve`], which runs them on an already-bound listener
//! until a shutdown future completes.
//!
//! [`ControlServer::new`] validates the configuration, builds the
//! authenticator, loads or generates the TLS certificate and restores
//! persisted sessions (re-binding their listeners) before anything is
//! served. On shutdown, pending `req` calls and `watch` streams end with
//! UNAVAILABLE, every running session is stopped in the data plane (all at
//! once, so shutdown takes one session's stop time however many there are),
//! and the persisted files are kept so the next start restores the sessions.
//!
//! Durability: a session is persisted before `req` answers (at `hello`) and
//! before `update` answers; when the state directory cannot be written the
//! call fails with an error naming it and nothing is left half set up. A
//! persisted session that cannot be restored at start (its port is held by
//! another program, say) is never deleted: it stays RESTORING, `status` says
//! why, and a background task retries it with backoff until it binds or is
//! released. With a state directory the server holds its lock
//! ([`StateLock`]) for as long as it runs.
//!
//! Layout:
//! - `admission`: what every call goes through: a call slot and the
//!   message size limit, the caller's identity, the request timeout, `watch`
//!   stream limits, and reporting the call to the [`Observer`];
//! - `calls`: what each call does to the session table and the data plane
//!   (`req`, `hello`, `update`, `release`, `status`, `list`);
//! - `convert`: a session's view and counters as their proto messages;
//! - `restore`: persisted sessions brought back at start and retried while
//!   RESTORING, and every session stopped at shutdown;
//! - `service`: [`Service`], the tonic services mapping each gRPC method to
//!   its call (and the `watch` stream);
//! - `lifecycle`: [`ControlServer`] (set-up, serving, background tasks,
//!   shutdown), [`ServerHandle`] and [`serve`];
//! - this file: [`CAPABILITIES`] and the state the services share.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::dataplane::DataPlane;
use crate::live::Live;
use crate::observe::Observer;
use crate::registry::Registry;
use crate::state_lock::StateLock;
use crate::tls_accept::ControlIdentity;
use crate::types::Identity;

mod admission;
mod calls;
mod convert;
mod lifecycle;
mod restore;
mod service;

pub use lifecycle::{ControlServer, ServerHandle, serve};
pub use service::Service;

/// Capabilities announced by `ControlExt.version`.
pub const CAPABILITIES: &[&str] = &[
    "channel_secret",
    "status",
    "list",
    "watch",
    "ipv6",
    "target_allowlist",
    "persistence",
];

/// Shared state behind both services.
struct Core {
    cfg: ServerConfig,
    registry: Arc<Registry>,
    /// Authentication, allow-list and rate limits: replaced by a reload.
    live: Live,
    /// The control certificate new TLS handshakes present (None without
    /// TLS): rotated by a reload.
    identity: Option<Arc<ControlIdentity>>,
    data_plane: Arc<dyn DataPlane>,
    shutdown: watch::Sender<bool>,
    observer: Arc<dyn Observer>,
    /// Held for the server's life: no other gateway uses this state dir.
    _state_lock: Option<StateLock>,
    /// One permit per call being served (`max_concurrent_calls`).
    calls: Arc<tokio::sync::Semaphore>,
    /// Open `watch` streams: in all, and per identity.
    watches: std::sync::Mutex<(usize, HashMap<Identity, usize>)>,
}
