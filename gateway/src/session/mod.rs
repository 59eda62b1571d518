//! The gateway's data plane for SciStream sessions: [`KernelDataPlane`]
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
//! With an XDP guard ([`KernelDataPlane::with_xdp`]), a PROD session's
//! WAN listener ports are opened in the guard's allow-list when the session
//! starts (for the configured peer gateways, or for every source when none is
//! configured) and closed again once the session has fully stopped. With
//! [`KernelDataPlane::with_metrics`], connections are counted and the live
//! counters are exported at scrape time. Every task of a session runs in a
//! `session` tracing span carrying its uid and role.
//!
//! Layout:
//! - this file: the session table, accept loops, connections, counters;
//! - [`wan`]: [`ChannelMode`] and [`wan::wan_leg`] (plain TCP for now);
//! - [`serve`]: `s2cs serve`, the control server on top of this data plane;
//! - [`channel_args`]: its data-channel options (certificates, peer
//!   verification, TLS 1.2, proof deadline) and their checks.
#![forbid(unsafe_code)]

pub mod channel_args;
pub mod serve;
pub mod wan;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use control::{
    BoxFuture, DataPlane, DataPlaneError, Role, SessionCounters, SessionId, SessionPlan,
    SessionSecret,
};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use wan::{ChannelError, ChannelMode, Leg, SecureWan, WanSide};

use crate::admission::{Admission, AdmissionLimits, Refusal, Ticket};
use crate::channel::FailureReason;
use crate::ebpf::{EbpfError, KernelRelay};
use crate::metrics::{Metrics, SessionSample};
use crate::relay::{ConnCounters, DataPath, RelayEngine, RelayError};
use crate::sys;
use crate::xdp::{PeerNet, XdpError, XdpGuard};

/// Tunables of the data plane.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// How long open connections may go on after their session is stopped
    /// before they are reset. Keep it short: `release` waits for it.
    pub stop_grace: Duration,
    /// How long dialling a target may take.
    pub dial_timeout: Duration,
    /// Open connections per session; further ones wait in the listen queue.
    pub max_connections: usize,
    /// Dead-peer detection on every WAN connection.
    pub wan_liveness: WanLiveness,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            stop_grace: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(10),
            max_connections: 1024,
            wan_liveness: WanLiveness::default(),
        }
    }
}

/// How a WAN connection notices that the peer gateway is gone (a crash
/// without a reset, a partition): TCP keepalive while it is idle, and
/// TCP_USER_TIMEOUT while sent data waits for an acknowledgement. Either
/// ends the connection with an error, and the relay then resets its LAN leg
/// too, so both applications see the end instead of a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WanLiveness {
    /// Idle time before the first keepalive probe (probes then go a third
    /// of it apart, three of them); `None`: no keepalive.
    pub keepalive_idle: Option<Duration>,
    /// How long sent data (or a probe) may stay unacknowledged before the
    /// connection is declared dead; `None`: the kernel's retransmission
    /// limit (about 15 minutes).
    pub user_timeout: Option<Duration>,
}

impl Default for WanLiveness {
    /// Long-haul defaults: a minute of silence from a peer that should be
    /// talking ends the connection; round trips of a few hundred
    /// milliseconds and short congestion stalls are far below that.
    fn default() -> Self {
        WanLiveness {
            keepalive_idle: Some(Duration::from_secs(30)),
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl WanLiveness {
    /// Sets keepalive and the user timeout on a WAN socket.
    fn apply(&self, socket: &TcpStream) -> Result<(), ConnError> {
        let sock = SockRef::from(socket);
        if let Some(idle) = self.keepalive_idle {
            let idle = idle.max(Duration::from_secs(1));
            let interval = (idle / 3).max(Duration::from_secs(1));
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(KEEPALIVE_PROBES);
            sock.set_tcp_keepalive(&keepalive)
                .map_err(|source| ConnError::Socket {
                    option: "TCP keepalive",
                    source,
                })?;
        }
        if let Some(timeout) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(timeout))
                .map_err(|source| ConnError::Socket {
                    option: "TCP_USER_TIMEOUT",
                    source,
                })?;
        }
        Ok(())
    }
}

/// Unanswered keepalive probes before a WAN connection is declared dead.
const KEEPALIVE_PROBES: u32 = 3;

/// The pause after a failed accept (out of descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a stopping session waits for reset connections to be gone.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// Data-plane failures of a whole session (a connection's failures are only
/// logged: they end that connection, not the session).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Operator: `--data-path sockmap` was asked for but the kernel relay
    /// cannot be loaded here (see `s2cs check`).
    #[error("data path {path} needs the kernel relay, which could not be loaded")]
    KernelUnavailable {
        path: DataPath,
        #[source]
        source: EbpfError,
    },
    /// System: a listener handed over by the control plane is unusable.
    #[error("registering listener {addr} with the runtime failed")]
    Listener {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Control-plane bug: the session already runs.
    #[error("session {uid} is already running in the data plane")]
    AlreadyRunning { uid: String },
    /// System: the XDP guard refused an allow entry (e.g. its map is full).
    #[error("opening port {port} in the XDP guard failed")]
    Xdp {
        port: u16,
        #[source]
        source: Box<XdpError>,
    },
}

impl From<SessionError> for DataPlaneError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::AlreadyRunning { uid } => DataPlaneError::AlreadyRunning { uid },
            SessionError::Listener { addr, source } => DataPlaneError::Io {
                context: format!("registering listener {addr} with the runtime"),
                source,
            },
            other => DataPlaneError::Other(error_chain(&other)),
        }
    }
}

/// Why one relayed connection ended abnormally (logged, never returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The target refused or is unreachable.
    #[error("dialling {target} failed")]
    Dial {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The target did not answer in time.
    #[error("dialling {target} timed out after {timeout:?}")]
    DialTimeout {
        target: SocketAddr,
        timeout: Duration,
    },
    /// A socket option could not be set (e.g. the pacing rate).
    #[error("setting {option} failed")]
    Socket {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    /// The WAN leg could not be set up.
    #[error("setting up the WAN leg failed")]
    Channel(#[from] ChannelError),
    /// Relaying stopped with an error (the sockets were reset).
    #[error("relaying failed")]
    Relay(#[from] RelayError),
    /// Relaying over the secure channel stopped with an error.
    #[error("relaying over the secure channel failed")]
    SecureRelay(#[from] crate::channel::ChannelRelayError),
}

/// `--data-path`: the best one this gateway has, or a fixed one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathChoice {
    /// sockmap when the kernel relay loads, else splice.
    #[default]
    Auto,
    /// Exactly this path (sockmap fails to start without the kernel relay).
    Only(DataPath),
}

impl FromStr for PathChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(PathChoice::Auto),
            other => other.parse().map(PathChoice::Only).map_err(|_| {
                format!("unknown data path {other:?}: expected auto, sockmap, splice or copy")
            }),
        }
    }
}

impl fmt::Display for PathChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathChoice::Auto => f.write_str("auto"),
            PathChoice::Only(path) => path.fmt(f),
        }
    }
}

/// Builds the relay engine for `choice` and returns it with the path to use.
/// With `Auto`, a kernel relay that cannot be loaded is a warning (splice is
/// used); with `Only(Sockmap)` it is an error.
pub fn engine_for(choice: PathChoice) -> Result<(RelayEngine, DataPath), SessionError> {
    match choice {
        PathChoice::Only(path @ (DataPath::Splice | DataPath::Copy)) => {
            Ok((RelayEngine::userspace(), path))
        }
        PathChoice::Only(path @ DataPath::Sockmap) => match KernelRelay::load() {
            Ok(kernel) => Ok((RelayEngine::with_kernel(Arc::new(kernel)), path)),
            Err(source) => Err(SessionError::KernelUnavailable { path, source }),
        },
        PathChoice::Auto => {
            let engine = match KernelRelay::load() {
                Ok(kernel) => RelayEngine::with_kernel(Arc::new(kernel)),
                Err(err) => {
                    tracing::warn!(error = %error_chain(&err), "kernel relay unavailable; relaying with splice");
                    RelayEngine::userspace()
                }
            };
            let path = engine.best_path();
            Ok((engine, path))
        }
    }
}

/// The data plane of `s2cs serve`: sessions relayed by the [`RelayEngine`].
pub struct KernelDataPlane {
    engine: RelayEngine,
    path: DataPath,
    channel: ChannelMode,
    secure: Option<Arc<SecureWan>>,
    options: SessionOptions,
    sessions: Mutex<HashMap<SessionId, Running>>,
    xdp: Option<XdpPlan>,
    metrics: Option<Arc<Metrics>>,
    admission: Arc<Admission>,
}

/// The XDP guard and whom it lets reach a live PROD session's ports.
struct XdpPlan {
    guard: Arc<XdpGuard>,
    /// Peer gateways allowed on live ports; empty: every source.
    peers: Vec<PeerNet>,
}

/// A running session as the table holds it.
struct Running {
    shared: Arc<Shared>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// Yields `None` once every connection task (and accept loop) is gone.
    drained: mpsc::Receiver<()>,
    /// Allow entries this session holds in the XDP guard.
    xdp_entries: Vec<(u16, Option<PeerNet>)>,
}

/// Where a session is in its life; tasks watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Accepting and relaying.
    Running,
    /// Listeners closed; open connections may finish.
    Stopping,
    /// Open connections are reset now.
    Reset,
}

/// What every task of one session shares.
struct Shared {
    uid: SessionId,
    role: Role,
    rate: u64,
    secret: SessionSecret,
    engine: RelayEngine,
    path: DataPath,
    channel: ChannelMode,
    secure: Option<Arc<SecureWan>>,
    dial_timeout: Duration,
    wan_liveness: WanLiveness,
    /// The gateway's budget of unauthenticated WAN connections.
    admission: Arc<Admission>,
    /// The secret is the weak one derived from the uid (old client).
    legacy_secret: bool,
    /// With a legacy secret: the peer gateway the session is pinned to.
    pinned_peer: Mutex<Option<IpAddr>>,
    metrics: Option<Arc<Metrics>>,
    /// The `session` label of its metrics (see [`metrics_label`]).
    label: String,
    /// The `session` span every task of the session runs in.
    span: tracing::Span,
    phase: watch::Sender<Phase>,
    limit: Arc<Semaphore>,
    next_conn: AtomicU64,
    connections_total: AtomicU64,
    /// Open connections and, under the same lock, the bytes of closed ones,
    /// so a counters snapshot never counts a connection twice or not at all.
    conns: Mutex<ConnTable>,
}

#[derive(Default)]
struct ConnTable {
    open: HashMap<u64, OpenConn>,
    closed_to_target: u64,
    closed_from_target: u64,
}

/// One open connection: its live counters and duplicates of its sockets'
/// descriptors (socket options are per socket, so the pacing rate and the
/// reset-on-close can be set through them while the relay owns the sockets).
struct OpenConn {
    counters: Arc<ConnCounters>,
    sockets: Vec<OwnedFd>,
}

impl Shared {
    /// Turns a WAN connection of this session into a [`Leg`]: dead-peer
    /// detection on the socket, then the channel set-up ([`wan::wan_leg`]).
    async fn wan_leg(&self, side: WanSide, stream: TcpStream) -> Result<Leg, ConnError> {
        self.wan_liveness.apply(&stream)?;
        Ok(wan::wan_leg(
            self.channel,
            self.secure.as_deref(),
            side,
            stream,
            &self.secret,
            &self.uid,
        )
        .await?)
    }

    /// Resets a WAN connection that was not admitted and counts why.
    fn refuse(&self, socket: TcpStream, refusal: Refusal) {
        // RST rather than FIN: nothing of ours stays in TIME_WAIT.
        let _ = SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        drop(socket);
        if let Some(secure) = &self.secure {
            secure
                .config
                .failures()
                .record(FailureReason::from(refusal));
        }
    }

    fn table(&self) -> MutexGuard<'_, ConnTable> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot(&self) -> SessionCounters {
        let table = self.table();
        let (mut to_target, mut from_target) = (table.closed_to_target, table.closed_from_target);
        for conn in table.open.values() {
            let (up, down) = conn.counters.snapshot();
            to_target += up;
            from_target += down;
        }
        SessionCounters {
            bytes_to_target: to_target,
            bytes_from_target: from_target,
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_active: table.open.len() as u64,
            pinned_peer: *self.pinned_peer(),
        }
    }

    fn pinned_peer(&self) -> MutexGuard<'_, Option<IpAddr>> {
        self.pinned_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A legacy-secret session's secret can be derived by anyone who knows
    /// its uid, so the session is pinned to the first peer gateway that
    /// proves it: `Ok` for that address, `Err(pinned)` for every other.
    /// Other sessions accept every peer that proves their secret.
    fn check_pin(&self, peer: IpAddr) -> Result<(), IpAddr> {
        if !self.legacy_secret {
            return Ok(());
        }
        let peer = peer.to_canonical();
        let mut pinned = self.pinned_peer();
        match *pinned {
            None => {
                *pinned = Some(peer);
                tracing::info!(uid = %self.label, %peer, "legacy-secret session pinned to the first peer gateway that proved its secret; other sources are refused");
                Ok(())
            }
            Some(ip) if ip == peer => Ok(()),
            Some(ip) => Err(ip),
        }
    }

    /// The pacing rate of each socket: the session's rate shared evenly
    /// among its open connections (at least 1 byte/s).
    fn share(&self, open: usize) -> u64 {
        (self.rate / open.max(1) as u64).max(1)
    }

    /// Sets every open socket of the session to its current share.
    fn repace(&self, table: &ConnTable) {
        if self.rate == 0 {
            return;
        }
        let share = self.share(table.open.len());
        for conn in table.open.values() {
            for fd in &conn.sockets {
                if let Err(err) = sys::set_max_pacing_rate(fd.as_fd(), share) {
                    tracing::debug!(uid = %self.uid, error = %err, "re-pacing a socket failed");
                }
            }
        }
    }
}

/// Registers a connection in its session's table; removes it (keeping its
/// final byte counts) and re-paces the others when dropped.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    counters: Arc<ConnCounters>,
}

impl ConnGuard {
    fn new(shared: Arc<Shared>) -> Self {
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(ConnCounters::default());
        shared.connections_total.fetch_add(1, Ordering::Relaxed);
        let mut table = shared.table();
        table.open.insert(
            id,
            OpenConn {
                counters: Arc::clone(&counters),
                sockets: Vec::new(),
            },
        );
        // One more connection: everyone's share shrinks.
        shared.repace(&table);
        drop(table);
        ConnGuard {
            shared,
            id,
            counters,
        }
    }

    /// Adds a socket of this connection: TCP_NODELAY and the pacing cap.
    fn add_socket(&self, socket: &impl AsFd) -> Result<(), ConnError> {
        SockRef::from(socket)
            .set_tcp_nodelay(true)
            .map_err(|source| ConnError::Socket {
                option: "TCP_NODELAY",
                source,
            })?;
        let dup = socket
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| ConnError::Socket {
                option: "F_DUPFD (socket handle)",
                source,
            })?;
        let mut table = self.shared.table();
        if self.shared.rate > 0 {
            let share = self.shared.share(table.open.len());
            sys::set_max_pacing_rate(dup.as_fd(), share).map_err(|source| ConnError::Socket {
                option: "SO_MAX_PACING_RATE",
                source,
            })?;
        }
        if let Some(conn) = table.open.get_mut(&self.id) {
            conn.sockets.push(dup);
        }
        Ok(())
    }

    /// Makes the coming close of every socket of this connection send RST.
    fn reset_on_close(&self) {
        let table = self.shared.table();
        if let Some(conn) = table.open.get(&self.id) {
            for fd in &conn.sockets {
                let _ = SockRef::from(fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut table = self.shared.table();
        // Dropping the entry closes the duplicated descriptors.
        table.open.remove(&self.id);
        let (up, down) = self.counters.snapshot();
        table.closed_to_target += up;
        table.closed_from_target += down;
        self.shared.repace(&table);
    }
}

impl KernelDataPlane {
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
        KernelDataPlane {
            engine,
            path,
            channel,
            secure: None,
            options,
            sessions: Mutex::new(HashMap::new()),
            xdp: None,
            metrics: None,
            admission: Admission::new(AdmissionLimits::default()),
        }
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

    fn table(&self) -> MutexGuard<'_, HashMap<SessionId, Running>> {
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
            legacy_secret: plan.legacy_secret,
            pinned_peer: Mutex::new(None),
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
        let (drain_tx, drained) = mpsc::channel(1);
        let accept_tasks = links
            .into_iter()
            .map(|(listener, target)| {
                tokio::spawn(
                    accept_loop(Arc::clone(&shared), listener, target, drain_tx.clone())
                        .instrument(span.clone()),
                )
            })
            .collect();
        table.insert(
            plan.uid,
            Running {
                shared,
                accept_tasks,
                drained,
                xdp_entries,
            },
        );
        Ok(())
    }

    async fn stop(&self, uid: &SessionId) {
        let Some(running) = self.table().remove(uid) else {
            return;
        };
        let Running {
            shared,
            accept_tasks,
            mut drained,
            xdp_entries,
        } = running;
        shared.phase.send_replace(Phase::Stopping);
        for task in accept_tasks {
            // Each loop drops its listener when it ends: the port is closed.
            let _ = task.await;
        }
        if tokio::time::timeout(self.options.stop_grace, drained.recv())
            .await
            .is_err()
        {
            let open = shared.table().open.len();
            tracing::info!(%uid, open, grace = ?self.options.stop_grace, "session stopped; resetting the connections still open");
            shared.phase.send_replace(Phase::Reset);
            if tokio::time::timeout(RESET_WAIT, drained.recv())
                .await
                .is_err()
            {
                tracing::warn!(%uid, "connections of a stopped session still running after the reset");
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

impl Drop for KernelDataPlane {
    fn drop(&mut self) {
        // Sessions still running end at once: listeners close, connections reset.
        for running in self.table().values() {
            running.shared.phase.send_replace(Phase::Reset);
        }
    }
}

impl DataPlane for KernelDataPlane {
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

/// Completes once the session's phase is `at` or later (or the data plane
/// is gone).
async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p >= at).await;
}

/// Accepts on one listener of a session until the session stops.
///
/// CONS listeners face the LAN: a connection waits for one of the session's
/// permits before it is accepted. PROD listeners face the WAN: a connection
/// is admitted under the gateway's budget of unauthenticated connections
/// ([`Admission`]) or reset at once, and takes one of the session's permits
/// only after it proved the session secret.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    target: SocketAddr,
    drain: mpsc::Sender<()>,
) {
    let mut phase = shared.phase.subscribe();
    let mut last_warning: Option<std::time::Instant> = None;
    let mut failures_since_warning = 0u64;
    loop {
        let permit = if shared.role == Role::Cons {
            tokio::select! {
                permit = Arc::clone(&shared.limit).acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    Err(_) => break,
                },
                () = reached(&mut phase, Phase::Stopping) => break,
            }
        } else {
            None
        };
        tokio::select! {
            () = reached(&mut phase, Phase::Stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let ticket = if shared.role == Role::Prod {
                        match shared.admission.admit(peer.ip()) {
                            Ok(ticket) => Some(ticket),
                            Err(refusal) => {
                                shared.refuse(socket, refusal);
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let (shared, drain) = (Arc::clone(&shared), drain.clone());
                    let span = tracing::debug_span!(parent: &shared.span, "conn", %peer);
                    tokio::spawn(async move {
                        connection(shared, socket, peer, target, permit, ticket).await;
                        drop(drain);
                    }.instrument(span));
                }
                Err(err) => {
                    // Out of descriptors or similar: back off instead of
                    // spinning, and say so at most once a second.
                    failures_since_warning += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(uid = %shared.uid, error = %err, failures = failures_since_warning, "accept failed; backing off");
                        last_warning = Some(std::time::Instant::now());
                        failures_since_warning = 0;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// A PROD gateway's WAN connection that proved the session secret, with
/// the descriptor of its socket (for the pacing cap and reset-on-close).
struct Authenticated {
    leg: Leg,
    socket: OwnedFd,
}

/// Sets up the secure channel on a WAN connection accepted by a PROD
/// gateway: the peer gateway must prove the session secret before the
/// connection counts as one of the session's.
async fn authenticate(shared: &Shared, accepted: TcpStream) -> Result<Authenticated, ConnError> {
    let socket = accepted
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| ConnError::Socket {
            option: "F_DUPFD (socket handle)",
            source,
        })?;
    let leg = shared.wan_leg(WanSide::Accepted, accepted).await?;
    Ok(Authenticated { leg, socket })
}

/// Relays one accepted connection until it ends or the session resets it.
/// A PROD connection waits for its turn in the admission queue (`ticket`),
/// authenticates, and only then waits for a session permit.
async fn connection(
    shared: Arc<Shared>,
    accepted: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ticket: Option<Ticket>,
) {
    let mut phase = shared.phase.subscribe();
    let (accepted, authenticated, _permit) = if shared.role == Role::Prod {
        let Some(ticket) = ticket else { return };
        let wait = shared.admission.limits().max_wait;
        let turn = tokio::select! {
            turn = tokio::time::timeout(wait, ticket.start()) => turn,
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        let Ok(pending) = turn else {
            shared.admission.count(Refusal::QueueTimeout);
            shared.refuse(accepted, Refusal::QueueTimeout);
            return;
        };
        let outcome = tokio::select! {
            outcome = authenticate(&shared, accepted) => outcome,
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        drop(pending);
        let authenticated = match outcome {
            Ok(authenticated) => authenticated,
            Err(err) => {
                // Counted by reason and summed up in the log once a second
                // (a flood must not become a log flood).
                tracing::debug!(uid = %shared.uid, %peer, error = %error_chain(&err), "WAN connection refused");
                return;
            }
        };
        if let Err(pinned) = shared.check_pin(peer.ip()) {
            let _ = SockRef::from(&authenticated.socket).set_linger(Some(Duration::ZERO));
            if let Some(secure) = &shared.secure {
                secure.config.failures().record_detail(
                    FailureReason::NotPinnedPeer,
                    format!("{peer} proved the legacy secret of a session pinned to {pinned}"),
                );
            }
            tracing::debug!(uid = %shared.label, %peer, %pinned, "WAN connection refused: legacy-secret session pinned to another peer");
            return;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&shared.limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = reached(&mut phase, Phase::Stopping) => return,
        };
        (None, Some(authenticated), Some(permit))
    } else {
        (Some(accepted), None, permit)
    };
    let guard = ConnGuard::new(Arc::clone(&shared));
    if let Some(metrics) = &shared.metrics {
        metrics.connection_started(shared.role.as_str(), shared.path.as_str());
    }
    let work = relay_connection(&shared, &guard, accepted, authenticated, target);
    let finished: (&str, bool) = tokio::select! {
        outcome = work => match outcome {
            Ok(path) => {
                let (up, down) = guard.counters.snapshot();
                tracing::debug!(uid = %shared.uid, %peer, %target, %path, up, down, "connection closed");
                (path, true)
            }
            Err(err) => {
                // Whatever was open is reset when the sockets close.
                guard.reset_on_close();
                let (up, down) = guard.counters.snapshot();
                tracing::info!(uid = %shared.uid, %peer, %target, up, down, error = %error_chain(&err), "connection ended with an error");
                ("none", false)
            }
        },
        () = reached(&mut phase, Phase::Reset) => {
            guard.reset_on_close();
            tracing::debug!(uid = %shared.uid, %peer, %target, "connection reset: session stopped");
            ("none", false)
        }
    };
    if let Some(metrics) = &shared.metrics {
        metrics.connection_finished(finished.0, finished.1);
    }
    // `work` is gone (its sockets closed); dropping the guard closes the
    // duplicated descriptors, which really closes (or resets) the sockets.
}

async fn relay_connection(
    shared: &Shared,
    guard: &ConnGuard,
    accepted: Option<TcpStream>,
    authenticated: Option<Authenticated>,
    target: SocketAddr,
) -> Result<&'static str, ConnError> {
    // PROD: the peer gateway connected to our WAN listener; it must complete
    // the channel (and prove the session secret) before ProdApp is dialled,
    // so a refused connection never reaches it. CONS: we dial the PROD
    // gateway's WAN listener and set up the channel on that connection. The
    // other side is a LAN application.
    let (client, server) = match (accepted, authenticated) {
        (_, Some(Authenticated { leg, socket })) => {
            guard.add_socket(&socket)?;
            let dialled = dial(shared, target).await?;
            guard.add_socket(&dialled)?;
            (leg, Leg::Plain(dialled))
        }
        (Some(accepted), None) => {
            guard.add_socket(&accepted)?;
            let dialled = dial(shared, target).await?;
            guard.add_socket(&dialled)?;
            let wan = shared.wan_leg(WanSide::Dialled, dialled).await?;
            (Leg::Plain(accepted), wan)
        }
        (None, None) => {
            return Err(ConnError::Channel(ChannelError::NotConfigured(
                shared.channel,
            )));
        }
    };
    match (client, server) {
        (Leg::Plain(client), Leg::Plain(server)) => {
            let summary = shared
                .engine
                .relay(shared.path, client, server, &guard.counters)
                .await?;
            Ok(summary.path.as_str())
        }
        (Leg::Secure(channel), Leg::Plain(lan)) | (Leg::Plain(lan), Leg::Secure(channel)) => {
            let secure = shared
                .secure
                .as_deref()
                .ok_or(ChannelError::NotConfigured(shared.channel))?;
            let path =
                crate::channel::relay_channel(*channel, lan, &guard.counters, &secure.caps).await?;
            Ok(match path {
                crate::channel::ChannelPath::KernelTls => "ktls-splice",
                crate::channel::ChannelPath::UserspaceTls => "userspace-tls",
                crate::channel::ChannelPath::Plaintext(p) => match p {
                    DataPath::Sockmap => "plaintext-sockmap",
                    DataPath::Splice => "plaintext-splice",
                    DataPath::Copy => "plaintext-copy",
                },
            })
        }
        (Leg::Secure(_), Leg::Secure(_)) => Err(ConnError::Channel(ChannelError::NotConfigured(
            shared.channel,
        ))),
    }
}

/// Dials a session's target within its dial timeout.
async fn dial(shared: &Shared, target: SocketAddr) -> Result<TcpStream, ConnError> {
    match tokio::time::timeout(shared.dial_timeout, TcpStream::connect(target)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(source)) => Err(ConnError::Dial { target, source }),
        Err(_) => Err(ConnError::DialTimeout {
            target,
            timeout: shared.dial_timeout,
        }),
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

/// An error and its sources on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
