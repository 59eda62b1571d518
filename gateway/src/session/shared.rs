//! What the tasks of one running session share ([`Shared`]): its identity,
//! settings and budgets, its life-cycle [`Phase`], the table of its open
//! connections and their counters, pacing (the session's rate shared among
//! its open connections) and the legacy-secret peer pin; and [`ConnGuard`],
//! one connection's entry in that table.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use control::{Role, SessionCounters, SessionId, SessionSecret};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::ConnError;
use super::options::WanLiveness;
use super::wan::{self, ChannelMode, Leg, SecureWan, WanSide};
use crate::channel::FailureReason;
use crate::metrics::Metrics;
use crate::relay::{ConnCounters, DataPath, RelayEngine};
use crate::relay_limit::RelayLimit;
use crate::sys;
use crate::wan_admission::{Admission, Refusal};

/// Where a session is in its life; tasks watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Accepting and relaying.
    Running,
    /// Listeners closed; open connections may finish (until the session's
    /// `Drain` resets them).
    Stopping,
}

/// What every task of one session shares.
pub(super) struct Shared {
    pub(super) uid: SessionId,
    pub(super) role: Role,
    pub(super) rate: u64,
    pub(super) secret: SessionSecret,
    pub(super) engine: RelayEngine,
    pub(super) path: DataPath,
    pub(super) channel: ChannelMode,
    pub(super) secure: Option<Arc<SecureWan>>,
    pub(super) dial_timeout: Duration,
    pub(super) wan_liveness: WanLiveness,
    /// The gateway's budget of unauthenticated WAN connections.
    pub(super) admission: Arc<Admission>,
    /// The gateway's budget of relayed connections.
    pub(super) relay_limit: Arc<RelayLimit>,
    /// The secret is the weak one derived from the uid (old client).
    pub(super) legacy_secret: bool,
    /// With a legacy secret: the peer gateway the session is pinned to.
    pub(super) pinned_peer: Mutex<Option<IpAddr>>,
    /// The counters of the session's UDP relay, if it has one.
    pub(super) udp: Option<Arc<crate::udp::UdpStats>>,
    pub(super) metrics: Option<Arc<Metrics>>,
    /// The `session` label of its metrics (see [`metrics_label`]).
    pub(super) label: String,
    /// The `session` span every task of the session runs in.
    pub(super) span: tracing::Span,
    pub(super) phase: watch::Sender<Phase>,
    pub(super) limit: Arc<Semaphore>,
    pub(super) next_conn: AtomicU64,
    pub(super) connections_total: AtomicU64,
    /// Open connections and, under the same lock, the bytes of closed ones,
    /// so a counters snapshot never counts a connection twice or not at all.
    pub(super) conns: Mutex<ConnTable>,
}

#[derive(Default)]
pub(super) struct ConnTable {
    pub(super) open: HashMap<u64, OpenConn>,
    pub(super) closed_to_target: u64,
    pub(super) closed_from_target: u64,
}

/// One open connection: its live counters and duplicates of its sockets'
/// descriptors (socket options are per socket, so the pacing rate and the
/// reset-on-close can be set through them while the relay owns the sockets).
pub(super) struct OpenConn {
    pub(super) counters: Arc<ConnCounters>,
    pub(super) sockets: Vec<OwnedFd>,
}

impl Shared {
    /// Turns a WAN connection of this session into a [`Leg`]: dead-peer
    /// detection on the socket, then the channel set-up ([`wan::wan_leg`]).
    pub(super) async fn wan_leg(&self, side: WanSide, stream: TcpStream) -> Result<Leg, ConnError> {
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
    pub(super) fn refuse(&self, socket: TcpStream, refusal: Refusal) {
        reset(socket);
        if let Some(secure) = &self.secure {
            secure
                .config
                .failures()
                .record(FailureReason::from(refusal));
        }
    }

    pub(super) fn table(&self) -> MutexGuard<'_, ConnTable> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn snapshot(&self) -> SessionCounters {
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
            udp: self
                .udp
                .as_ref()
                .map(|stats| stats.snapshot())
                .unwrap_or_default(),
        }
    }

    pub(super) fn pinned_peer(&self) -> MutexGuard<'_, Option<IpAddr>> {
        self.pinned_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A legacy-secret session's secret can be derived by anyone who knows
    /// its uid, so the session is pinned to the first peer gateway that
    /// proves it: `Ok` for that address, `Err(pinned)` for every other.
    /// Other sessions accept every peer that proves their secret.
    pub(super) fn check_pin(&self, peer: IpAddr) -> Result<(), IpAddr> {
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
    pub(super) fn share(&self, open: usize) -> u64 {
        (self.rate / open.max(1) as u64).max(1)
    }

    /// Sets every open socket of the session to its current share.
    pub(super) fn repace(&self, table: &ConnTable) {
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
pub(super) struct ConnGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) counters: Arc<ConnCounters>,
}

impl ConnGuard {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
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
    pub(super) fn add_socket(&self, socket: &impl AsFd) -> Result<(), ConnError> {
        SockRef::from(socket)
            .set_tcp_nodelay(true)
            .map_err(|source| ConnError::Socket {
                option: "TCP_NODELAY",
                source,
            })?;
        let dup = dup_socket(socket)?;
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
    pub(super) fn reset_on_close(&self) {
        let table = self.shared.table();
        if let Some(conn) = table.open.get(&self.id) {
            for fd in &conn.sockets {
                crate::sockets::reset_on_close(fd);
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

/// A second descriptor of `socket` (socket options are per socket, so they
/// can be set through it while the relay owns the original).
pub(super) fn dup_socket(socket: &impl AsFd) -> Result<OwnedFd, ConnError> {
    socket
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| ConnError::Socket {
            option: "F_DUPFD (socket handle)",
            source,
        })
}

/// Closes `socket` with a reset rather than a FIN: nothing of ours stays
/// in TIME_WAIT, and the peer learns at once.
pub(super) fn reset(socket: TcpStream) {
    crate::sockets::reset_on_close(&socket);
    drop(socket);
}
