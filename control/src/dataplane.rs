//! The boundary between the control plane and the data plane.
//!
//! The control plane allocates and binds the listeners, checks the targets,
//! and hands a [`SessionPlan`] to a [`DataPlane`]. The gateway crate supplies
//! the kernel (eBPF) data plane with TLS between gateways; this module also
//! provides [`PlainCopyDataPlane`], a simple userspace relay (tokio, no
//! encryption, crude per-connection rate limit) used by the control crate's
//! own tests and by mock setups. Do not use it between facilities: it
//! ignores the session secret and sends plaintext.

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

pub use crate::errors::DataPlaneError;
use crate::secret::SessionSecret;
use crate::types::{Role, SessionId};

/// A boxed, sendable future (keeps [`DataPlane`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One listener and the address its connections are relayed to.
#[derive(Debug)]
pub struct Link {
    /// Already bound, non-blocking; the data plane owns it from now on.
    pub listener: TcpListener,
    /// Where each accepted connection is relayed to.
    pub target: SocketAddr,
}

/// Everything the data plane needs to run one session.
#[derive(Debug)]
pub struct SessionPlan {
    /// The session id.
    pub uid: SessionId,
    /// PROD: listeners face the WAN (the peer gateway connects there) and
    /// targets are ProdApp's listeners. CONS: listeners face the LAN for
    /// ConsApp and targets are the PROD gateway's WAN listeners.
    pub role: Role,
    /// `num_conn` links: listener i relays to target i (targets cycled).
    pub links: Vec<Link>,
    /// Rate limit in bytes per second for the session; 0 = unlimited.
    pub rate_bytes_per_sec: u64,
    /// The data-channel secret shared by the two gateways.
    pub secret: SessionSecret,
    /// True if `secret` is the weak legacy uid-derived one.
    pub legacy_secret: bool,
}

/// Byte and connection counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Bytes relayed from the listener side to the target.
    pub bytes_to_target: u64,
    /// Bytes relayed from the target back to the listener side.
    pub bytes_from_target: u64,
    /// Connections accepted so far.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// A legacy-secret PROD session: the peer gateway address it is pinned
    /// to (the first that proved the secret).
    pub pinned_peer: Option<std::net::IpAddr>,
    /// The session's UDP datagrams (all zero when it carried none).
    pub udp: UdpCounters,
}

/// Datagram counters of one session's UDP relay. "to target" is the
/// direction from the listener side to the target, as for bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams relayed from the listener side to the target.
    pub datagrams_to_target: u64,
    /// Their payload bytes.
    pub bytes_to_target: u64,
    /// Datagrams relayed from the target back to the listener side.
    pub datagrams_from_target: u64,
    /// Their payload bytes.
    pub bytes_from_target: u64,
    /// Flows (one per sender address) set up so far.
    pub flows_total: u64,
    /// Flows open now.
    pub flows_active: u64,
    /// Flows refused: the WAN peer failed the channel set-up or the
    /// session's flow limit was reached.
    pub flows_refused: u64,
    /// Datagrams dropped because they are larger than the path carries.
    pub dropped_oversize: u64,
    /// Datagrams dropped over the session's rate cap.
    pub dropped_rate: u64,
    /// Datagrams dropped because their flow could not keep up or was not
    /// set up (yet, or at all).
    pub dropped_backlog: u64,
    /// The largest datagram payload the WAN path carries now (the smallest
    /// among open flows); 0 when unknown or no flow is open.
    pub max_payload: u64,
}

impl UdpCounters {
    /// Every dropped datagram, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_oversize + self.dropped_rate + self.dropped_backlog
    }
}

/// The data plane as seen by the control plane. Object-safe.
pub trait DataPlane: Send + Sync + 'static {
    /// Starts relaying for a session. On error the plan (and its listeners)
    /// is dropped and the control plane releases the session.
    fn start_session(&self, plan: SessionPlan) -> BoxFuture<'_, Result<(), DataPlaneError>>;
    /// Stops a session: closes its listeners and connections. Must be
    /// idempotent (unknown uids are ignored). When the future completes the
    /// listener ports must be closed.
    fn stop_session<'a>(&'a self, uid: &'a SessionId) -> BoxFuture<'a, ()>;
    /// Current counters of a running session.
    fn counters(&self, uid: &SessionId) -> Option<SessionCounters>;
}

#[derive(Default)]
struct Counters {
    to_target: AtomicU64,
    from_target: AtomicU64,
    total: AtomicU64,
    active: AtomicU64,
}

struct CopySession {
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

/// A userspace relay: each accepted connection is connected to its target
/// and bytes are copied both ways. Plaintext; see the module docs.
#[derive(Default)]
pub struct PlainCopyDataPlane {
    sessions: Mutex<HashMap<SessionId, CopySession>>,
}

impl PlainCopyDataPlane {
    /// An empty relay.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, CopySession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of running sessions.
    pub fn running(&self) -> usize {
        self.table().len()
    }
}

impl DataPlane for PlainCopyDataPlane {
    fn start_session(&self, plan: SessionPlan) -> BoxFuture<'_, Result<(), DataPlaneError>> {
        Box::pin(async move {
            if self.table().contains_key(&plan.uid) {
                return Err(DataPlaneError::AlreadyRunning {
                    uid: plan.uid.to_string(),
                });
            }
            let counters = Arc::new(Counters::default());
            let mut listeners = Vec::with_capacity(plan.links.len());
            for link in plan.links {
                let l = tokio::net::TcpListener::from_std(link.listener).map_err(|e| {
                    DataPlaneError::Io {
                        context: "registering a listener with tokio".into(),
                        source: e,
                    }
                })?;
                listeners.push((l, link.target));
            }
            let rate = plan.rate_bytes_per_sec;
            let tasks = listeners
                .into_iter()
                .map(|(l, target)| tokio::spawn(accept_loop(l, target, counters.clone(), rate)))
                .collect();
            let mut table = self.table();
            if table.contains_key(&plan.uid) {
                return Err(DataPlaneError::AlreadyRunning {
                    uid: plan.uid.to_string(),
                });
            }
            table.insert(plan.uid, CopySession { tasks, counters });
            Ok(())
        })
    }

    fn stop_session<'a>(&'a self, uid: &'a SessionId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let running = self.table().remove(uid);
            if let Some(r) = running {
                for t in &r.tasks {
                    t.abort();
                }
                for t in r.tasks {
                    // Waiting makes sure the listener is closed on return.
                    let _ = t.await;
                }
            }
        })
    }

    fn counters(&self, uid: &SessionId) -> Option<SessionCounters> {
        self.table().get(uid).map(|r| SessionCounters {
            bytes_to_target: r.counters.to_target.load(Ordering::Relaxed),
            bytes_from_target: r.counters.from_target.load(Ordering::Relaxed),
            connections_total: r.counters.total.load(Ordering::Relaxed),
            connections_active: r.counters.active.load(Ordering::Relaxed),
            pinned_peer: None,
            udp: UdpCounters::default(),
        })
    }
}

async fn accept_loop(
    l: tokio::net::TcpListener,
    target: SocketAddr,
    counters: Arc<Counters>,
    rate: u64,
) {
    // Connections live in this set: aborting the loop aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => {
                    conns.spawn(relay(s, target, counters.clone(), rate));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

struct ActiveGuard(Arc<Counters>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn relay(inbound: tokio::net::TcpStream, target: SocketAddr, c: Arc<Counters>, rate: u64) {
    c.total.fetch_add(1, Ordering::Relaxed);
    c.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(c.clone());
    let outbound = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%target, error = %e, "relay: connecting to the target failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, "relay: connecting to the target timed out");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    tokio::join!(
        copy_counted(ir, ow, &c.to_target, rate),
        copy_counted(or, iw, &c.from_target, rate)
    );
}

async fn copy_counted<R, W>(mut r: R, mut w: W, ctr: &AtomicU64, rate: u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        ctr.fetch_add(n as u64, Ordering::Relaxed);
        sent += n as u64;
        if rate > 0 {
            // Crude pacing: never get ahead of rate * elapsed.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
    }
    let _ = w.shutdown().await;
}
