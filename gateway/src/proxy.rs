//! A relaying listener: accepts connections, dials the target for each one and
//! relays the pair over the chosen data path until both sides close. This is
//! the unit a session's listener is built from, and `s2cs relay` runs it alone.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::drain::{Drain, DrainOutcome};
use crate::relay::{ConnCounters, DataPath, RelayEngine};
use crate::sys;

/// Counters of everything one proxy relayed.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub to_server: AtomicU64,
    pub to_client: AtomicU64,
    /// Completed connections per data path really used, indexed like
    /// [`DataPath::ALL`] (sockmap, splice, copy).
    pub by_path: [AtomicU64; 3],
}

impl ProxyStats {
    /// Completed connections that used `path`.
    pub fn completed_on(&self, path: DataPath) -> u64 {
        let index = DataPath::ALL.iter().position(|p| *p == path).unwrap_or(0);
        self.by_path[index].load(Ordering::Relaxed)
    }
}

/// What to relay to and how.
#[derive(Clone, Debug)]
pub struct ProxyPlan {
    pub target: SocketAddr,
    pub path: DataPath,
    /// Pacing cap in bytes per second on both sockets (None: unlimited).
    pub rate: Option<u64>,
}

/// Accepts on `listener` until `shutdown` resolves, then lets the
/// connections in flight finish for [`DRAIN_GRACE`] and closes the rest
/// (the same [`Drain`] a session's listeners use).
pub async fn run(
    listener: TcpListener,
    plan: ProxyPlan,
    engine: RelayEngine,
    stats: Arc<ProxyStats>,
    shutdown: impl Future<Output = ()>,
) {
    let drain = Drain::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let (plan, engine, stats) = (plan.clone(), engine.clone(), Arc::clone(&stats));
                    let mut in_flight = drain.in_flight();
                    tokio::spawn(async move {
                        tokio::select! {
                            // Polled first, so `serve` counts itself active
                            // before a reset can count it gone.
                            biased;
                            () = serve(client, peer, plan, engine, Arc::clone(&stats)) => {}
                            // Dropping the relay closes both sockets.
                            () = in_flight.reset_requested() => {
                                stats.active.fetch_sub(1, Ordering::Relaxed);
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                Err(err) => {
                    // Out of fds or similar: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    match drain.finish(DRAIN_GRACE, RESET_WAIT).await {
        DrainOutcome::Finished => {}
        DrainOutcome::Reset => {
            tracing::warn!("grace period over; closed the connections still open");
        }
        DrainOutcome::Stuck => {
            tracing::warn!("connections still running after the reset");
        }
    }
}

/// How long a stopping proxy waits for its connections to finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long it then waits for the reset connections to end.
const RESET_WAIT: Duration = Duration::from_secs(5);

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    plan: ProxyPlan,
    engine: RelayEngine,
    stats: Arc<ProxyStats>,
) {
    stats.active.fetch_add(1, Ordering::Relaxed);
    let counters = ConnCounters::default();
    let result = async {
        let server = match TcpStream::connect(plan.target).await {
            Ok(server) => server,
            Err(err) => {
                // Tell the client at once (RST) rather than with a clean FIN.
                crate::sockets::reset_on_close(&client);
                return Err(format!("dialling {}: {err}", plan.target));
            }
        };
        for socket in [&client, &server] {
            socket
                .set_nodelay(true)
                .map_err(|err| format!("TCP_NODELAY: {err}"))?;
            if let Some(rate) = plan.rate {
                sys::set_max_pacing_rate(sys::fd_of(socket), rate)
                    .map_err(|err| format!("pacing rate: {err}"))?;
            }
        }
        engine
            .relay(plan.path, client, server, &counters)
            .await
            .map_err(|err| err.to_string())
    }
    .await;
    let (up, down) = counters.snapshot();
    stats.to_server.fetch_add(up, Ordering::Relaxed);
    stats.to_client.fetch_add(down, Ordering::Relaxed);
    stats.active.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(summary) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            if let Some(index) = DataPath::ALL.iter().position(|p| *p == summary.path) {
                stats.by_path[index].fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%peer, path = %summary.path, up, down, "connection closed");
        }
        Err(err) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, path = %plan.path, up, down, error = %err, "connection reset");
        }
    }
}
