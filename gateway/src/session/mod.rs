//! The gateway's data plane for SciStream sessions: [`SessionDataPlane`]
//! implements [`control::DataPlane`] with the relay engine.
//!
//! For each link of a session (one listener, one target) a task accepts
//! connections, dials the target for each one, caps the pacing rate of both
//! sockets (the session's `rate`, shared among its open connections, enforced
//! by SO_MAX_PACING_RATE so it holds in every data path) and relays the pair
//! over the engine's data path until both sides close. Live byte and
//! connection counters per session answer [`DataPlane::counters`].
//!
//! Which side of a connection crosses the WAN depends on the role: a PROD
//! gateway *accepts* the peer gateway's connections on its WAN listeners and
//! dials ProdApp on its LAN; a CONS gateway accepts ConsApp on its LAN and
//! *dials* the PROD gateway over the WAN. Both WAN sides go through
//! [`wan::wan_leg`], the one place where the secure channel plugs in.
//!
//! Stopping a session ([`DataPlane::stop_session`]) closes its listeners at
//! once, lets open connections finish for a short grace period, then resets
//! the ones still open (RST to both peers) and waits until every task of the
//! session is gone.
//!
//! With an XDP guard ([`SessionDataPlane::with_xdp`]), a PROD session's
//! WAN listener ports are opened in the guard's allow-list when the session
//! starts (for the configured peer gateways, or for every source when none is
//! configured) and closed again once the session has fully stopped. With
//! [`SessionDataPlane::with_metrics`], connections are counted and the live
//! counters are exported at scrape time. Every task of a session runs in a
//! `session` tracing span carrying its uid and role.
//!
//! Layout, in dependency order:
//! - `options`: [`SessionOptions`] and [`WanLiveness`] (dead-peer detection);
//! - `errors`: [`SessionError`] (a session's) and [`ConnError`] (a connection's);
//! - `path_choice`: `--data-path` ([`PathChoice`]) and [`engine_for`];
//! - [`wan`]: [`ChannelMode`] and [`wan::wan_leg`], where the secure channel
//!   plugs in;
//! - `shared`: what a running session's tasks share (settings, budgets,
//!   phase, connection table, counters, pacing, the legacy pin);
//! - `accept`: the accept loop and one connection's life;
//! - this file: [`SessionDataPlane`], the session table, start and stop, XDP
//!   port bookkeeping, metric labels;
//! - [`serve`]: `s2cs serve`, the control server on top of this data plane;
//! - [`config_file`]: the `[gateway]` table of the configuration file;
//! - [`reload`]: SIGHUP: the file read again, live settings swapped.
//!
//! The data-channel flags of `s2cs serve` live next to the channel
//! ([`crate::channel::args`]).
#![forbid(unsafe_code)]

mod accept;
mod errors;
mod options;
mod path_choice;
mod shared;
pub mod wan;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use control::{
    BoxFuture, DataPlane, DataPlaneError, Role, SessionCounters, SessionId, SessionPlan,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use errors::{ConnError, SessionError};
pub use options::{SessionOptions, WanLiveness};
pub use path_choice::{PathChoice, engine_for};
pub use wan::{ChannelMode, Leg, SecureWan, WanLegError, WanSide};

use crate::drain::{Drain, DrainOutcome};
use crate::error_chain::error_chain;
use crate::metrics::{DataPlaneView, Metrics, SessionSample};
use crate::relay::{DataPath, RelayEngine};
use crate::relay_limit::{DEFAULT_MAX_RELAYED, RelayLimit};
use crate::udp::{UdpPlan, UdpRelay, UdpWan};
use crate::wan_admission::{Admission, AdmissionLimits};
use crate::xdp::{PeerNet, XdpGuard};
use accept::accept_loop;
use options::RESET_WAIT;
use shared::{ConnTable, Phase, Shared};

/// The data plane of `s2cs serve`: sessions relayed by the [`RelayEngine`].
pub struct SessionDataPlane {
    engine: RelayEngine,
    path: DataPath,
    channel: ChannelMode,
    secure: Option<Arc<SecureWan>>,
    options: SessionOptions,
    sessions: Mutex<HashMap<SessionId, RunningSession>>,
    xdp: Option<XdpPlan>,
    metrics: Option<Arc<Metrics>>,
    admission: Arc<Admission>,
    relay_limit: Arc<RelayLimit>,
}

/// The XDP guard and whom it lets reach a live PROD session's ports.
struct XdpPlan {
    guard: Arc<XdpGuard>,
    /// Peer gateways allowed on live ports; empty: every source.
    peers: Vec<PeerNet>,
}

/// A running session as the table holds it.
struct RunningSession {
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The session's connection tasks (and accept loops), for stopping them.
    drain: Drain,
    /// Allow entries this session holds in the XDP guard.
    xdp_entries: Vec<(u16, Option<PeerNet>)>,
    /// The UDP relay on the session's ports (none for legacy-secret
    /// sessions).
    udp: Option<UdpRelay>,
}

impl SessionDataPlane {
    /// A data plane relaying over `path` with `engine`.
    /// Sets the secure channel used by the TLS channel modes.
    pub fn with_secure_channel(mut self, secure: Arc<SecureWan>) -> Self {
        self.secure = Some(secure);
        self
    }

    pub fn new(
        engine: RelayEngine,
        path: DataPath,
        channel: ChannelMode,
        options: SessionOptions,
    ) -> Self {
        SessionDataPlane {
            engine,
            path,
            channel,
            secure: None,
            options,
            sessions: Mutex::new(HashMap::new()),
            xdp: None,
            metrics: None,
            admission: Admission::new(AdmissionLimits::default()),
            relay_limit: RelayLimit::new(DEFAULT_MAX_RELAYED),
        }
    }

    /// Bounds the connections relayed at once by all sessions together
    /// (default: [`DEFAULT_MAX_RELAYED`]).
    pub fn with_relay_limit(mut self, max: usize) -> Self {
        self.relay_limit = RelayLimit::new(max);
        self
    }

    /// The gateway-wide budget of relayed connections.
    pub fn relay_limit(&self) -> &Arc<RelayLimit> {
        &self.relay_limit
    }

    /// Bounds the unauthenticated WAN connections of all PROD sessions
    /// (default: [`AdmissionLimits::default`]).
    pub fn with_admission(mut self, limits: AdmissionLimits) -> Self {
        self.admission = Admission::new(limits);
        self
    }

    /// The admission control of unauthenticated WAN connections.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Keeps `guard`'s allow-list in step with the sessions: each PROD
    /// session's listener ports are allowed for `peers` (every source if
    /// empty) from start to the end of stop.
    pub fn with_xdp(mut self, guard: Arc<XdpGuard>, peers: Vec<PeerNet>) -> Self {
        self.xdp = Some(XdpPlan { guard, peers });
        self
    }

    /// Counts connections in `metrics` (live values are read by the
    /// registry through [`Metrics::watch_data_plane`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Every running session's live counters, for the metrics scrape.
    pub fn metrics_samples(&self) -> Vec<SessionSample> {
        self.table()
            .values()
            .map(|running| SessionSample {
                label: running.shared.label.clone(),
                role: running.shared.role.as_str(),
                counters: running.shared.snapshot(),
            })
            .collect()
    }

    /// Opens `ports` in the XDP guard for the configured peers; on error
    /// closes what it opened.
    fn allow_ports(
        &self,
        uid: &SessionId,
        ports: &[u16],
    ) -> Result<Vec<(u16, Option<PeerNet>)>, SessionError> {
        let Some(xdp) = &self.xdp else {
            return Ok(Vec::new());
        };
        let peers: Vec<Option<PeerNet>> = if xdp.peers.is_empty() {
            vec![None]
        } else {
            xdp.peers.iter().copied().map(Some).collect()
        };
        let mut opened = Vec::new();
        for &port in ports {
            for &peer in &peers {
                if let Err(source) = xdp.guard.allow_net(port, peer) {
                    self.revoke_ports(uid, &opened);
                    return Err(SessionError::Xdp {
                        port,
                        source: Box::new(source),
                    });
                }
                opened.push((port, peer));
            }
        }
        if !opened.is_empty() {
            tracing::info!(%uid, ?ports, peers = %peers_text(&peers), "XDP guard: data ports open");
        }
        Ok(opened)
    }

    fn revoke_ports(&self, uid: &SessionId, entries: &[(u16, Option<PeerNet>)]) {
        let Some(xdp) = &self.xdp else { return };
        for &(port, peer) in entries {
            if let Err(err) = xdp.guard.revoke_net(port, peer) {
                tracing::warn!(%uid, port, error = %error_chain(&err), "XDP guard: closing a data port failed");
            }
        }
        if !entries.is_empty() {
            tracing::info!(%uid, "XDP guard: data ports closed");
        }
    }

    /// The data path plaintext legs are relayed on.
    pub fn path(&self) -> DataPath {
        self.path
    }

    /// How the link between gateways is carried.
    pub fn channel(&self) -> ChannelMode {
        self.channel
    }

    /// Number of running sessions.
    pub fn running(&self) -> usize {
        self.table().len()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<SessionId, RunningSession>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self, plan: SessionPlan) -> Result<(), SessionError> {
        let mut table = self.table();
        if table.contains_key(&plan.uid) {
            return Err(SessionError::AlreadyRunning {
                uid: plan.uid.to_string(),
            });
        }
        let mut links = Vec::with_capacity(plan.links.len());
        for link in plan.links {
            let addr = link
                .listener
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let listener = link
                .listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(link.listener))
                .map_err(|source| SessionError::Listener { addr, source })?;
            links.push((listener, link.target));
        }
        // The same ports for UDP, bound now so that a taken port fails the
        // start before anything else is set up.
        let udp_wan = self.udp_wan(&plan.uid, plan.legacy_secret);
        let mut udp_links = Vec::new();
        if udp_wan.is_some() {
            for (listener, target) in &links {
                let addr = listener
                    .local_addr()
                    .map_err(|source| SessionError::Listener {
                        addr: "?".to_owned(),
                        source,
                    })?;
                udp_links.push((crate::udp::bind(addr)?, *target));
            }
        }
        if plan.legacy_secret {
            tracing::warn!(uid = %plan.uid, "this session's data-channel secret is derived from its uid (old client)");
        }
        // WAN-facing listeners (PROD) are opened in the XDP guard.
        let xdp_entries = if plan.role == Role::Prod {
            let ports: Vec<u16> = links
                .iter()
                .filter_map(|(l, _)| l.local_addr().ok().map(|a| a.port()))
                .collect();
            self.allow_ports(&plan.uid, &ports)?
        } else {
            Vec::new()
        };
        if self.channel == ChannelMode::Plain {
            tracing::warn!(uid = %plan.uid, "the link between gateways is PLAIN TCP for this session (--channel plain: no encryption, no authentication)");
        }
        let (phase, _) = watch::channel(Phase::Running);
        let span = tracing::info_span!("session", uid = %plan.uid, role = %plan.role);
        let udp = match udp_wan {
            Some(wan) => {
                let udp_plan = UdpPlan {
                    uid: plan.uid.clone(),
                    role: plan.role,
                    links: udp_links,
                    secret: plan.secret.clone(),
                    rate_bytes_per_sec: plan.rate_bytes_per_sec,
                    wan,
                    max_flows: self.options.max_connections,
                    idle: self.options.udp_flow_idle,
                };
                match UdpRelay::start(udp_plan, span.clone()) {
                    Ok(relay) => Some(relay),
                    Err(err) => {
                        self.revoke_ports(&plan.uid, &xdp_entries);
                        return Err(err.into());
                    }
                }
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            label: metrics_label(&plan.uid, plan.legacy_secret),
            metrics: self.metrics.clone(),
            span: span.clone(),
            uid: plan.uid.clone(),
            role: plan.role,
            rate: plan.rate_bytes_per_sec,
            secret: plan.secret,
            engine: self.engine.clone(),
            path: self.path,
            channel: self.channel,
            secure: self.secure.clone(),
            dial_timeout: self.options.dial_timeout,
            wan_liveness: self.options.wan_liveness,
            admission: Arc::clone(&self.admission),
            relay_limit: Arc::clone(&self.relay_limit),
            legacy_secret: plan.legacy_secret,
            pinned_peer: Mutex::new(None),
            udp: udp.as_ref().map(|relay| Arc::clone(relay.stats())),
            phase,
            limit: Arc::new(Semaphore::new(self.options.max_connections.max(1))),
            next_conn: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            conns: Mutex::new(ConnTable::default()),
        });
        tracing::info!(
            uid = %shared.uid,
            role = %shared.role,
            path = %shared.path,
            links = ?links.iter().map(|(l, t)| (l.local_addr().ok(), *t)).collect::<Vec<_>>(),
            rate_bytes_per_sec = shared.rate,
            "data plane: session started"
        );
        let drain = Drain::new();
        let accept_tasks = links
            .into_iter()
            .map(|(listener, target)| {
                tokio::spawn(
                    accept_loop(Arc::clone(&shared), listener, target, drain.in_flight())
                        .instrument(span.clone()),
                )
            })
            .collect();
        table.insert(
            plan.uid,
            RunningSession {
                shared,
                accept_tasks,
                drain,
                xdp_entries,
                udp,
            },
        );
        Ok(())
    }

    /// How a session's UDP datagrams cross the WAN; None: no UDP (legacy
    /// secret, or a secure mode without its configuration).
    fn udp_wan(&self, uid: &SessionId, legacy_secret: bool) -> Option<UdpWan> {
        if legacy_secret {
            tracing::warn!(%uid, "no UDP for this session: its data-channel secret is derived from its uid (old client), so anyone who knows the uid could prove it");
            return None;
        }
        match (self.channel, &self.secure) {
            (ChannelMode::Plain, _) => Some(UdpWan::Plain),
            (mode, Some(secure)) => Some(UdpWan::Quic {
                channel: Arc::clone(&secure.quic),
                fast: (mode == ChannelMode::PlaintextAfterAuth)
                    .then(|| secure.udp_fast.clone())
                    .flatten(),
            }),
            (_, None) => None,
        }
    }

    async fn stop(&self, uid: &SessionId) {
        let Some(running) = self.table().remove(uid) else {
            return;
        };
        let RunningSession {
            shared,
            accept_tasks,
            drain,
            xdp_entries,
            udp,
        } = running;
        shared.phase.send_replace(Phase::Stopping);
        if let Some(udp) = udp {
            // Datagrams have nothing to finish: the flows end now.
            udp.stop().await;
        }
        for task in accept_tasks {
            // Each loop drops its listener when it ends: the port is closed.
            let _ = task.await;
        }
        let open_at_stop = shared.table().open.len();
        match drain.finish(self.options.stop_grace, RESET_WAIT).await {
            DrainOutcome::Finished => {}
            DrainOutcome::Reset => {
                tracing::info!(%uid, open_at_stop, grace = ?self.options.stop_grace, "session stopped; reset the connections still open after the grace period");
            }
            DrainOutcome::Stuck => {
                tracing::warn!(%uid, open_at_stop, "connections of a stopped session still running after the reset");
            }
        }
        // Only now: connections finishing in the grace period still needed
        // their packets to pass.
        self.revoke_ports(uid, &xdp_entries);
        let c = shared.snapshot();
        if let Some(metrics) = &self.metrics {
            metrics.session_finished(&c);
        }
        tracing::info!(
            %uid,
            bytes_to_target = c.bytes_to_target,
            bytes_from_target = c.bytes_from_target,
            connections = c.connections_total,
            "data plane: session stopped"
        );
    }
}

impl Drop for SessionDataPlane {
    fn drop(&mut self) {
        // Sessions still running end at once: listeners close, connections reset.
        for running in self.table().values() {
            running.shared.phase.send_replace(Phase::Stopping);
            running.drain.reset_now();
            if let Some(udp) = &running.udp {
                udp.stop_now();
            }
        }
    }
}

impl DataPlaneView for SessionDataPlane {
    fn metrics_samples(&self) -> Vec<SessionSample> {
        SessionDataPlane::metrics_samples(self)
    }

    fn relay_limit_counts(&self) -> (u64, u64) {
        (self.relay_limit.refused(), self.relay_limit.max() as u64)
    }
}

impl DataPlane for SessionDataPlane {
    fn start_session(&self, plan: SessionPlan) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        let started = self.start(plan).map_err(DataPlaneError::from);
        Box::pin(async move { started })
    }

    fn stop_session<'a>(&'a self, uid: &'a SessionId) -> BoxFuture<'a, ()> {
        Box::pin(self.stop(uid))
    }

    fn counters(&self, uid: &SessionId) -> Option<SessionCounters> {
        self.table()
            .get(uid)
            .map(|running| running.shared.snapshot())
    }
}

/// The `session` label of a session's metrics: its uid, except for sessions
/// whose data secret is the legacy one derived from the uid (there the uid
/// is as good as the secret): `legacy-` and 16 hex digits of its SHA-256.
fn metrics_label(uid: &SessionId, legacy_secret: bool) -> String {
    if !legacy_secret {
        return uid.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, uid.to_string().as_bytes());
    let mut label = String::from("legacy-");
    for byte in digest.as_ref().iter().take(8) {
        label.push_str(&format!("{byte:02x}"));
    }
    label
}

/// Peers of an allow entry set, for logs.
fn peers_text(peers: &[Option<PeerNet>]) -> String {
    peers
        .iter()
        .map(|p| p.map_or_else(|| "any".to_owned(), |p| p.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}
