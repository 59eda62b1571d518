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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::authz::Authz;
use crate::config::ServerConfig;
use crate::dataplane::{DataPlane, SessionCounters, SessionPlan};
use crate::errors::ControlError;
use crate::live::{Live, LiveSettings, Reloaded};
use crate::observe::{AuthFailure, NoObserver, Observer};
use crate::persist::Store;
use crate::ports::PortAllocator;
use crate::proto;
use crate::registry::{NewSession, Registry, SessionView};
use crate::secret::SessionSecret;
use crate::session::SessionState;
use crate::state_lock::StateLock;
use crate::tls::TlsMaterial;
use crate::tls_accept::{ControlIdentity, LoadedCertificate};
use crate::types::{Identity, Role, SessionId, parse_addr_list};

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

/// How long shutdown waits for in-flight calls before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a call waits for a slot when `max_concurrent_calls` are being
/// served, before it is refused.
const CALL_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How often RESTORING sessions are looked at (each has its own backoff).
const RESTORE_TICK: Duration = Duration::from_millis(250);

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

/// One open `watch` stream, counted until dropped.
struct WatchSlot {
    core: Arc<Core>,
    who: Identity,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.core.watches();
        watches.0 = watches.0.saturating_sub(1);
        if let Some(n) = watches.1.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                watches.1.remove(&self.who);
            }
        }
    }
}

/// Removes a REQUESTED session if the req future is dropped (the client
/// went away) before hello arrived.
struct AbandonGuard {
    registry: Arc<Registry>,
    uid: Option<SessionId>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(uid) = self.uid.take()
            && let Some(s) = self.registry.abandon_requested(&uid)
        {
            tracing::info!(%uid, "req abandoned before hello; session released");
            drop(s);
        }
    }
}

fn view_to_status(v: SessionView, c: Option<SessionCounters>) -> proto::SessionStatus {
    proto::SessionStatus {
        uid: v.uid.to_string(),
        role: v.role.as_str().to_owned(),
        state: v.state.as_str().to_owned(),
        owner: v.owner.0,
        num_conn: i32::try_from(v.num_conn).unwrap_or(i32::MAX),
        rate: v.rate,
        rate_source: v.rate_source.to_string(),
        listeners: v.listeners.iter().map(ToString::to_string).collect(),
        prod_listeners: v.prod_listeners,
        targets: v.targets.iter().map(ToString::to_string).collect(),
        created_unix: v.created_unix,
        counters: c.map(counters_to_proto),
        legacy_secret: v.legacy_secret,
        restore_error: v.restore_error.unwrap_or_default(),
        pinned_peer: c
            .and_then(|c| c.pinned_peer)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    }
}

fn counters_to_proto(c: SessionCounters) -> proto::Counters {
    proto::Counters {
        bytes_to_target: c.bytes_to_target,
        bytes_from_target: c.bytes_from_target,
        connections_total: c.connections_total,
        connections_active: c.connections_active,
        udp_datagrams_to_target: c.udp.datagrams_to_target,
        udp_bytes_to_target: c.udp.bytes_to_target,
        udp_datagrams_from_target: c.udp.datagrams_from_target,
        udp_bytes_from_target: c.udp.bytes_from_target,
        udp_flows_total: c.udp.flows_total,
        udp_flows_active: c.udp.flows_active,
        udp_flows_refused: c.udp.flows_refused,
        udp_dropped_oversize: c.udp.dropped_oversize,
        udp_dropped_rate: c.udp.dropped_rate,
        udp_dropped_backlog: c.udp.dropped_backlog,
        udp_max_payload: c.udp.max_payload,
    }
}

impl Core {
    /// Takes a call slot (waiting up to [`CALL_QUEUE_WAIT`] for one, so a
    /// burst is served in turn) and checks the request's size; the slot is
    /// free again when the permit drops.
    async fn admit<M: prost::Message>(
        &self,
        message: &M,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ControlError> {
        let size = message.encoded_len();
        if size > self.cfg.max_message_bytes {
            return Err(ControlError::LimitReached {
                what: format!("the request message of {size} bytes is too large"),
                limit: self.cfg.max_message_bytes,
                setting: "max_message_bytes, --max-message-bytes",
            });
        }
        match tokio::time::timeout(CALL_QUEUE_WAIT, Arc::clone(&self.calls).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ControlError::LimitReached {
                what: "too many control calls at once".into(),
                limit: self.cfg.max_concurrent_calls,
                setting: "max_concurrent_calls, --max-concurrent-calls",
            }),
        }
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<Identity, usize>)> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new `watch` stream of `who`, within the limits.
    fn open_watch(self: &Arc<Self>, who: &Identity) -> Result<WatchSlot, ControlError> {
        let mut watches = self.watches();
        if watches.0 >= self.cfg.max_watch_total {
            return Err(ControlError::LimitReached {
                what: "too many watch streams open".into(),
                limit: self.cfg.max_watch_total,
                setting: "max_watch_total, --max-watch",
            });
        }
        let mine = watches.1.get(who).copied().unwrap_or(0);
        if mine >= self.cfg.max_watch_per_identity {
            return Err(ControlError::LimitReached {
                what: format!("too many watch streams open for {who}"),
                limit: self.cfg.max_watch_per_identity,
                setting: "max_watch_per_identity, --max-watch-per-identity",
            });
        }
        watches.0 += 1;
        *watches.1.entry(who.clone()).or_insert(0) += 1;
        Ok(WatchSlot {
            core: Arc::clone(self),
            who: who.clone(),
        })
    }

    /// The caller, within the request timeout (the identity provider may
    /// be slow or down).
    async fn who(&self, md: &MetadataMap) -> Result<Identity, ControlError> {
        let timeout = self.cfg.request_timeout();
        let live = self.live.current();
        tokio::time::timeout(timeout, live.auth.authenticate(md))
            .await
            .map_err(|_| ControlError::CallTimedOut {
                method: "authentication",
                timeout_secs: timeout.as_secs_f64(),
            })?
    }

    /// Runs a state-changing call (`hello`, `update`, `release`) as a task
    /// of its own, so it completes even when the caller stops waiting (or
    /// goes away): nothing is left half done. The caller waits at most the
    /// request timeout.
    async fn bounded<T, F>(&self, method: &'static str, work: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ControlError>> + Send + 'static,
    {
        let timeout = self.cfg.request_timeout();
        match tokio::time::timeout(timeout, tokio::spawn(work)).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ControlError::Internal {
                reason: format!("the {method} call failed: {join}"),
            }),
            Err(_) => {
                tracing::warn!(
                    method,
                    ?timeout,
                    "a call outlived the request timeout; it completes in the background"
                );
                Err(ControlError::CallTimedOut {
                    method,
                    timeout_secs: timeout.as_secs_f64(),
                })
            }
        }
    }

    /// Bounds a read-only call by the request timeout (dropping it then
    /// changes nothing).
    async fn bounded_read<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T, ControlError>>,
    ) -> Result<T, ControlError> {
        let timeout = self.cfg.request_timeout();
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ControlError::CallTimedOut {
                method,
                timeout_secs: timeout.as_secs_f64(),
            })?
    }

    /// Reports a finished call (and an auth failure) to the observer.
    fn observe<T>(&self, method: &'static str, started: Instant, r: &Result<T, ControlError>) {
        let code = match r {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        let failure = match r {
            Err(ControlError::Unauthenticated { .. }) => Some(AuthFailure::Unauthenticated),
            Err(ControlError::AuthBackend { .. }) => Some(AuthFailure::BackendUnavailable),
            Err(ControlError::PermissionDenied { .. } | ControlError::TargetNotAllowed { .. }) => {
                Some(AuthFailure::PermissionDenied)
            }
            _ => None,
        };
        if let Some(failure) = failure {
            self.observer.auth_failed(method, failure);
        }
        self.observer.call_finished(method, code, started.elapsed());
    }

    /// `call` is this call's slot: it is given back while the req waits
    /// for its hello (which needs a slot of its own).
    async fn req(
        &self,
        md: &MetadataMap,
        r: proto::Request,
        call: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let role = Role::parse(&r.role)?;
        let max = self.cfg.max_num_conn;
        let num_conn = u32::try_from(r.num_conn)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ControlError::InvalidArgument {
                field: "num_conn",
                reason: format!("{} is not in 1..={max}", r.num_conn),
            })?;
        let (secret, legacy) = match role {
            Role::Prod if r.want_channel_secret => (Some(SessionSecret::generate()?), false),
            Role::Prod if self.cfg.allow_legacy_secret => {
                tracing::warn!(%uid, "client did not ask for a data-channel secret (old client): using the legacy uid-derived secret, which anyone who knows the uid can derive");
                (Some(SessionSecret::legacy_from_uid(&uid)), true)
            }
            Role::Prod => {
                return Err(ControlError::LegacySecretForbidden {
                    uid: uid.to_string(),
                });
            }
            Role::Cons => (None, false),
        };
        // A session that could not survive a restart is refused now, with
        // the directory named, rather than after hello.
        self.registry.check_store_writable().await?;
        let rate = self
            .live
            .current()
            .rates
            .decide(r.rate, r.want_channel_secret, &who);
        let rx = self.registry.create(NewSession {
            uid: uid.clone(),
            role,
            owner: who.clone(),
            num_conn,
            rate: rate.mbps,
            rate_source: rate.source.clone(),
            secret,
            legacy_secret: legacy,
            want_secret: r.want_channel_secret,
        })?;
        tracing::info!(%uid, %role, num_conn, owner = %who, rate_mbps = rate.mbps, rate_source = %rate.source, "req: session created, waiting for hello");
        let mut guard = AbandonGuard {
            registry: self.registry.clone(),
            uid: Some(uid.clone()),
        };
        let timeout = self.cfg.hello_timeout();
        let mut shutdown = self.shutdown.subscribe();
        drop(call);
        tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => {
                    // hello could not persist the session; it is gone.
                    guard.uid = None;
                    return Err(err);
                }
                Ok(Err(_)) => {
                    guard.uid = None;
                    return Err(ControlError::ReleasedWhileWaiting { uid: uid.to_string() });
                }
                Err(_) => {
                    guard.uid = None;
                    if let Some(s) = self.registry.abandon_requested(&uid) {
                        drop(s);
                        tracing::warn!(%uid, ?timeout, "no hello in time; session released");
                        return Err(ControlError::HelloTimeout { uid: uid.to_string(), timeout });
                    }
                    // hello won the race against the timer: answer normally.
                }
            },
            _ = shutdown.wait_for(|v| *v) => {
                return Err(ControlError::ShuttingDown);
            }
        }
        guard.uid = None;
        let ans = self.registry.req_answer(&uid)?;
        Ok(proto::Response {
            listeners: ans.listeners.iter().map(ToString::to_string).collect(),
            prod_listeners: ans.prod_listeners,
            channel_secret: ans
                .secret
                .as_ref()
                .map(|s| s.expose().to_vec())
                .unwrap_or_default(),
            state: SessionState::Ready.as_str().to_owned(),
        })
    }

    async fn hello(
        &self,
        md: &MetadataMap,
        h: proto::Hello,
    ) -> Result<proto::AppResponse, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&h.uid)?;
        let announced: Vec<String> = parse_addr_list(&h.prod_listeners)?
            .iter()
            .map(ToString::to_string)
            .collect();
        let listeners = self.registry.hello(&uid, &who, announced)?;
        if let Err(err) = self.registry.sync_persist(&uid).await {
            // Not durable: the session goes, and the waiting req says why.
            drop(self.registry.hello_done(&uid, Err(copy_unwritable(&err))));
            let _ = self.registry.sync_persist(&uid).await;
            tracing::warn!(%uid, "hello: the session could not be persisted; released");
            return Err(err);
        }
        drop(self.registry.hello_done(&uid, Ok(())));
        tracing::info!(%uid, role = %h.role, "hello received");
        Ok(proto::AppResponse {
            message: format!("hello received for session {uid}"),
            listeners: listeners.iter().map(ToString::to_string).collect(),
        })
    }

    async fn update(
        &self,
        md: &MetadataMap,
        u: proto::UpdateTargets,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&u.uid)?;
        let targets = parse_addr_list(&u.remote_listeners)?;
        self.live.current().allow.check_all(&targets)?;
        let client_secret = if u.channel_secret.is_empty() {
            None
        } else {
            Some(SessionSecret::from_bytes(&u.channel_secret)?)
        };
        let (plan, view, answer_secret) = self.registry.begin_update(
            &uid,
            &who,
            &targets,
            client_secret,
            self.cfg.allow_legacy_secret,
        )?;
        if !u.role.is_empty() && Role::parse(&u.role).ok() != Some(view.role) {
            tracing::warn!(%uid, role = %u.role, session_role = %view.role, "update role differs from the session's role; using the session's");
        }
        if let Err(e) = self.data_plane.start_session(plan).await {
            if let Some(s) = self.registry.remove(&uid) {
                drop(s);
            }
            let _ = self.registry.sync_persist(&uid).await;
            return Err(ControlError::DataPlane {
                uid: uid.to_string(),
                source: e,
            });
        }
        if !self.registry.is_active(&uid) {
            // Released while the data plane was starting.
            self.data_plane.stop_session(&uid).await;
            return Err(ControlError::UnknownSession {
                uid: uid.to_string(),
            });
        }
        if let Err(err) = self.registry.sync_persist(&uid).await {
            // Not durable: undo the whole session rather than run one that
            // a restart would bring back in another state.
            self.data_plane.stop_session(&uid).await;
            drop(self.registry.remove(&uid));
            let _ = self.registry.sync_persist(&uid).await;
            tracing::warn!(%uid, "update: the session could not be persisted; released");
            return Err(err);
        }
        tracing::info!(%uid, role = %view.role, targets = ?view.targets, "update: session active");
        Ok(proto::Response {
            listeners: view.listeners.iter().map(ToString::to_string).collect(),
            prod_listeners: view.targets.iter().map(ToString::to_string).collect(),
            channel_secret: answer_secret
                .as_ref()
                .map(|s| s.expose().to_vec())
                .unwrap_or_default(),
            state: SessionState::Active.as_str().to_owned(),
        })
    }

    async fn release(
        &self,
        md: &MetadataMap,
        r: proto::Release,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let session = self.registry.release(&uid, &who)?;
        // Stop relaying (closing the listeners) before the ports go back.
        self.data_plane.stop_session(&uid).await;
        drop(session);
        // A failure is logged there; the session is released all the same.
        let _ = self.registry.sync_persist(&uid).await;
        tracing::info!(%uid, "session released");
        Ok(proto::Response {
            state: SessionState::Released.as_str().to_owned(),
            ..Default::default()
        })
    }

    async fn status(
        &self,
        md: &MetadataMap,
        r: proto::StatusRequest,
    ) -> Result<proto::SessionStatus, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let v = self.registry.status(&uid, &who)?;
        let c = self.data_plane.counters(&uid);
        Ok(view_to_status(v, c))
    }

    async fn list(&self, md: &MetadataMap) -> Result<proto::SessionList, ControlError> {
        let who = self.who(md).await?;
        let sessions = self
            .registry
            .list(&who)
            .into_iter()
            .map(|v| {
                let c = self.data_plane.counters(&v.uid);
                view_to_status(v, c)
            })
            .collect();
        Ok(proto::SessionList { sessions })
    }

    /// Stops every session in the data plane, all at once (persisted files
    /// stay).
    async fn stop_all(&self) {
        let mut stopping = tokio::task::JoinSet::new();
        for uid in self.registry.uids() {
            if let Some(session) = self.registry.remove(&uid) {
                let data_plane = Arc::clone(&self.data_plane);
                stopping.spawn(async move {
                    data_plane.stop_session(&uid).await;
                    // The ports go back only once the listeners are closed.
                    drop(session);
                });
            }
        }
        let count = stopping.len();
        while stopping.join_next().await.is_some() {}
        if count > 0 {
            tracing::info!(
                sessions = count,
                "every session stopped (their files are kept)"
            );
        }
    }

    /// Restores persisted sessions. One that cannot come back now stays
    /// RESTORING (file kept) and is retried by [`Core::retry_restores`].
    async fn restore(&self) -> Result<(), ControlError> {
        let Some(store) = self.registry.store() else {
            return Ok(());
        };
        let records = store.load_all()?;
        for rec in records {
            let uid = rec.uid.clone();
            match self.registry.restore(rec) {
                Ok(None) => tracing::info!(%uid, "restored READY session"),
                Ok(Some(plan)) => self.start_restored(&uid, plan, 1).await,
                Err(ControlError::DuplicateSession { .. }) => {
                    tracing::error!(%uid, "two session files hold the same uid; restored once")
                }
                Err(e) => tracing::error!(
                    %uid,
                    error = %e,
                    "persisted session could not be restored; its file is kept and it is retried until it binds or is released"
                ),
            }
        }
        Ok(())
    }

    /// Starts a restored ACTIVE session; if the data plane refuses, the
    /// session goes back to RESTORING.
    async fn start_restored(&self, uid: &SessionId, plan: SessionPlan, attempts: u32) {
        match self.data_plane.start_session(plan).await {
            Ok(()) if attempts > 1 => {
                tracing::info!(%uid, attempts, "restored ACTIVE session (after waiting)")
            }
            Ok(()) => tracing::info!(%uid, "restored ACTIVE session"),
            Err(e) => {
                if attempts == 1 {
                    tracing::error!(%uid, error = %e, "restored session could not start; its file is kept and it is retried");
                }
                self.registry.demote_to_restoring(
                    uid,
                    format!("the data plane could not start: {e}"),
                    attempts,
                );
            }
        }
    }

    /// One pass over the RESTORING sessions whose next attempt is due.
    async fn retry_restores(&self) {
        for uid in self.registry.restores_due() {
            let attempts = self.registry.restore_attempts(&uid) + 1;
            match self.registry.retry_restore(&uid) {
                Ok(Some(plan)) => self.start_restored(&uid, plan, attempts).await,
                Ok(None) => {
                    if self.registry.is_ready(&uid) {
                        tracing::info!(%uid, attempts, "restored READY session (after waiting)");
                    }
                }
                Err(e) => tracing::debug!(%uid, attempts, error = %e, "session still not restored"),
            }
        }
    }
}

/// A second copy of a persistence error (one for the waiting req, one for
/// the hello that failed).
fn copy_unwritable(err: &ControlError) -> ControlError {
    match err {
        ControlError::StateDirUnwritable { dir, reason } => ControlError::StateDirUnwritable {
            dir: dir.clone(),
            reason: reason.clone(),
        },
        other => ControlError::Config {
            reason: other.to_string(),
        },
    }
}

/// The tonic service (both `Control` and `ControlExt`).
#[derive(Clone)]
pub struct Service {
    core: Arc<Core>,
}

type TonicResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl proto::control_server::Control for Service {
    async fn req(&self, request: Request<proto::Request>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(call) => self.core.req(&md, r, call).await,
            Err(e) => Err(e),
        };
        self.core.observe("req", started, &r);
        Ok(Response::new(r?))
    }

    async fn hello(&self, request: Request<proto::Hello>) -> TonicResult<proto::AppResponse> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("hello", async move {
                let _call = core.admit(&r).await?;
                core.hello(&md, r).await
            })
            .await;
        self.core.observe("hello", started, &r);
        Ok(Response::new(r?))
    }

    async fn update(&self, request: Request<proto::UpdateTargets>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("update", async move {
                let _call = core.admit(&r).await?;
                core.update(&md, r).await
            })
            .await;
        self.core.observe("update", started, &r);
        Ok(Response::new(r?))
    }

    async fn release(&self, request: Request<proto::Release>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("release", async move {
                let _call = core.admit(&r).await?;
                core.release(&md, r).await
            })
            .await;
        self.core.observe("release", started, &r);
        Ok(Response::new(r?))
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::control_ext_server::ControlExt for Service {
    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> TonicResult<proto::SessionStatus> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(_call) => {
                self.core
                    .bounded_read("status", self.core.status(&md, r))
                    .await
            }
            Err(e) => Err(e),
        };
        self.core.observe("status", started, &r);
        Ok(Response::new(r?))
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> TonicResult<proto::SessionList> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(_call) => self.core.bounded_read("list", self.core.list(&md)).await,
            Err(e) => Err(e),
        };
        self.core.observe("list", started, &r);
        Ok(Response::new(r?))
    }

    type watchStream = WatchStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> TonicResult<WatchStream> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let checked = async {
            let _call = self.core.admit(&r).await?;
            let who = self.core.who(&md).await?;
            let uid = SessionId::parse(&r.uid)?;
            // Fails now (NOT_FOUND / PERMISSION_DENIED) rather than in the stream.
            self.core.registry.status(&uid, &who)?;
            let slot = self.core.open_watch(&who)?;
            Ok((who, uid, slot))
        }
        .await;
        self.core.observe("watch", started, &checked);
        let (who, uid, slot) = checked?;
        let interval = Duration::from_millis(match r.interval_ms {
            0 => 1000,
            n => u64::from(n.max(50)),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let core = self.core.clone();
        let mut shutdown = core.shutdown.subscribe();
        tokio::spawn(async move {
            // Counted as open until the stream ends.
            let _slot = slot;
            let mut tick = tokio::time::interval(interval);
            // After a stall, carry on one interval later instead of sending
            // a burst of events with (almost) the same counters.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|v| *v) => break,
                }
                let state = core
                    .registry
                    .status(&uid, &who)
                    .map(|v| v.state)
                    .unwrap_or(SessionState::Released);
                let ev = proto::WatchEvent {
                    uid: uid.to_string(),
                    state: state.as_str().to_owned(),
                    counters: core.data_plane.counters(&uid).map(counters_to_proto),
                    unix_millis: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                        .unwrap_or(0),
                };
                if tx.send(Ok(ev)).await.is_err() || state == SessionState::Released {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> TonicResult<proto::VersionInfo> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let who = match self.core.admit(&r).await {
            Ok(_call) => self.core.who(&md).await,
            Err(e) => Err(e),
        };
        self.core.observe("version", started, &who);
        let who = who?;
        Ok(Response::new(proto::VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: CAPABILITIES.iter().map(|s| (*s).to_owned()).collect(),
            identity: who.0,
        }))
    }
}

/// A read-only view of a running server, for tests and metrics.
#[derive(Clone)]
pub struct ServerHandle {
    core: Arc<Core>,
}

impl ServerHandle {
    /// Listener ports currently leased.
    pub fn ports_in_use(&self) -> usize {
        self.core.registry.ports().in_use()
    }
    /// Sessions in the table.
    pub fn sessions(&self) -> usize {
        self.core.registry.len()
    }
    /// Sessions in each live state (REQUESTED, READY, ACTIVE, RESTORING).
    /// Applies `cfg`'s authentication (the token file read again),
    /// allow-list and rate limits to what starts from now on, without
    /// touching running sessions; refused as a whole, changing nothing, if
    /// `cfg` is invalid or changes anything else (see [`crate::live`]).
    ///
    /// The control certificate is read again too (replaced in place, it is
    /// presented by every handshake from then on; open connections keep
    /// theirs); it is read and checked before anything changes.
    pub fn reload(&self, cfg: &ServerConfig) -> Result<Reloaded, ControlError> {
        let certificate = match &self.core.identity {
            Some(_) => {
                let material = crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
                Some(LoadedCertificate::from_material(&material)?)
            }
            None => None,
        };
        let mut done = crate::live::reload(&self.core.live, cfg)?;
        if let (Some(identity), Some(certificate)) = (&self.core.identity, certificate) {
            done.control_certificate = Some(identity.install(certificate));
        }
        Ok(done)
    }

    pub fn sessions_by_state(&self) -> [(SessionState, usize); 4] {
        self.core.registry.count_by_state()
    }
}

/// A configured server, ready to serve.
pub struct ControlServer {
    core: Arc<Core>,
    tls: Option<TlsMaterial>,
}

impl ControlServer {
    /// Validates the configuration, prepares auth and TLS, and restores
    /// persisted sessions.
    pub async fn new(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
    ) -> Result<Self, ControlError> {
        Self::with_observer(cfg, data_plane, Arc::new(NoObserver)).await
    }

    /// Like [`ControlServer::new`], reporting calls and auth failures to
    /// `observer`.
    pub async fn with_observer(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, ControlError> {
        let lock = match &cfg.state_dir {
            Some(dir) => Some(StateLock::acquire(dir)?),
            None => None,
        };
        Self::with_state_lock(cfg, data_plane, observer, lock).await
    }

    /// Checks everything the server will load, without binding, restoring
    /// or starting anything: the configuration as a whole, the
    /// authentication files, and the control-channel certificate (the
    /// operator's files, or the self-signed pair, generated if missing). A
    /// gateway calls it before it binds, loads or attaches anything, so a bad
    /// option leaves nothing behind.
    pub fn preflight(cfg: &ServerConfig) -> Result<(), ControlError> {
        cfg.validate()?;
        Authenticator::from_config(cfg.auth.as_ref().ok_or_else(|| ControlError::Config {
            reason: "no authentication mode chosen".into(),
        })?)?;
        if !cfg.tls.dangerous_disable {
            crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
        }
        Ok(())
    }

    /// Like [`ControlServer::with_observer`], with the state directory's
    /// lock already taken by the caller (the gateway takes it before it
    /// binds or loads anything).
    pub async fn with_state_lock(
        cfg: ServerConfig,
        data_plane: Arc<dyn DataPlane>,
        observer: Arc<dyn Observer>,
        state_lock: Option<StateLock>,
    ) -> Result<Self, ControlError> {
        cfg.validate()?;
        if let (Some(dir), Some(lock)) = (&cfg.state_dir, &state_lock)
            && lock.dir() != dir.as_path()
        {
            return Err(ControlError::Config {
                reason: format!(
                    "the state dir lock is for {}, not {}",
                    lock.dir().display(),
                    dir.display()
                ),
            });
        }
        let live = Live::new(LiveSettings::from_config(&cfg)?, cfg.clone());
        let tls = if cfg.tls.dangerous_disable {
            tracing::warn!("control-channel TLS is DISABLED: tokens travel in the clear");
            None
        } else {
            let m = crate::tls::load_or_generate(&cfg.tls, cfg.state_dir.as_deref())?;
            tracing::info!(cert = %m.cert_path.display(), fingerprint = %m.fingerprint(), "control-channel TLS certificate (SHA-256)");
            Some(m)
        };
        let identity = match &tls {
            Some(m) => Some(Arc::new(ControlIdentity::new(
                LoadedCertificate::from_material(m)?,
            ))),
            None => None,
        };
        let store = match &cfg.state_dir {
            Some(d) => Some(Store::open(&d.join("sessions"))?),
            None => None,
        };
        let registry = Arc::new(Registry::new(
            PortAllocator::new(cfg.port_range, cfg.listener_ip),
            cfg.effective_advertise_ip(),
            cfg.max_sessions,
            Authz::new(cfg.admins.iter().cloned()),
            store,
        ));
        let (shutdown, _) = watch::channel(false);
        let max_calls = cfg.max_concurrent_calls;
        let core = Arc::new(Core {
            cfg,
            registry,
            live,
            identity,
            data_plane,
            shutdown,
            observer,
            _state_lock: state_lock,
            calls: Arc::new(tokio::sync::Semaphore::new(max_calls)),
            watches: std::sync::Mutex::new((0, HashMap::new())),
        });
        core.restore().await?;
        Ok(ControlServer { core, tls })
    }

    /// SHA-256 fingerprint of the control-channel certificate.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.fingerprint())
    }

    /// The control-channel certificate (PEM), for clients to pin.
    pub fn cert_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.cert_pem.as_slice())
    }

    /// The gRPC service itself, for driving the server in-process without a
    /// transport (the control fuzz target). Calls are served as over the
    /// network, minus TLS and HTTP/2.
    pub fn service(&self) -> Service {
        Service {
            core: self.core.clone(),
        }
    }

    /// A handle for inspecting the running server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            core: self.core.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains (with a
    /// grace period) and stops every session's data plane.
    pub async fn serve<F>(
        self,
        listener: tokio::net::TcpListener,
        shutdown: F,
    ) -> Result<(), ControlError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let core = self.core;
        let svc = Service { core: core.clone() };
        let acceptor = match (&self.tls, &core.identity) {
            (Some(t), Some(identity)) => Some(crate::tls_accept::acceptor(
                Arc::clone(identity),
                t.client_ca_pem.as_deref(),
            )?),
            _ => None,
        };
        let mut builder = tonic::transport::Server::builder();
        let reaper = {
            let core = core.clone();
            tokio::spawn(async move {
                let max_age = core.cfg.ready_timeout();
                let mut tick = tokio::time::interval(Duration::from_secs(1).min(max_age));
                loop {
                    tick.tick().await;
                    for s in core.registry.expire_ready(max_age) {
                        let uid = s.uid().clone();
                        drop(s);
                        tracing::warn!(%uid, ?max_age, "session READY without update for too long; released");
                        let _ = core.registry.sync_persist(&uid).await;
                    }
                }
            })
        };
        let restorer = {
            let core = core.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RESTORE_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    core.retry_restores().await;
                }
            })
        };
        let mut stop_rx = core.shutdown.subscribe();
        // tonic's own cap stays well above ours, so an oversize message
        // gets our error naming the setting.
        let decode_cap = (4 * core.cfg.max_message_bytes).max(4 << 20);
        let router = builder
            .add_service(
                proto::control_server::ControlServer::new(svc.clone())
                    .max_decoding_message_size(decode_cap),
            )
            .add_service(
                proto::control_ext_server::ControlExtServer::new(svc)
                    .max_decoding_message_size(decode_cap),
            );
        let stop = async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        };
        let serve_fut: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match acceptor {
            Some(acceptor) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls_accept::incoming(listener, acceptor),
                stop,
            )),
            None => Box::pin(
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop),
            ),
        };
        let trigger = {
            let core = core.clone();
            async move {
                shutdown.await;
                tracing::info!("control server shutting down");
                core.shutdown.send_replace(true);
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            }
        };
        let result = tokio::select! {
            r = serve_fut => r.map_err(ControlError::from),
            _ = trigger => {
                tracing::warn!(?SHUTDOWN_GRACE, "in-flight calls did not finish within the grace period");
                Ok(())
            }
        };
        reaper.abort();
        restorer.abort();
        // A restore attempt in flight may still start a session: wait for
        // the task to be gone before stopping them all.
        let _ = restorer.await;
        core.stop_all().await;
        result
    }
}

/// Convenience: [`ControlServer::new`] then [`ControlServer::serve`].
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    data_plane: Arc<dyn DataPlane>,
    shutdown: F,
) -> Result<(), ControlError>
where
    F: Future<Output = ()> + Send + 'static,
{
    ControlServer::new(config, data_plane)
        .await?
        .serve(listener, shutdown)
        .await
}
