//! A flow forwarded by the kernel (plaintext after authentication, see
//! `crate::udp_fastpath`): its datagrams never reach this process. The
//! flow's task holds the installed entries and the flow's QUIC connection
//! (its liveness: the peer gateway closes it when the flow ends, QUIC's
//! keep-alives and idle timeout notice a dead peer), reads the entries'
//! counters into the session's counters and keeps the flow's last-activity
//! time for the idle expiry. On the CONS gateway, datagrams that reached the
//! listener socket before the entries were installed (the flow's backlog)
//! are sent on in plain through the flow's WAN socket, where the PROD
//! gateway's kernel forwards them.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_common::UdpFlowCounters;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::UdpShared;
use super::counters::Direction;
use super::flow::millis_since;
use crate::udp_fastpath::FastFlow;

/// How often the kernel's counters are read.
const POLL: Duration = Duration::from_millis(500);

/// What a kernel flow holds.
pub(super) struct KernelFlow {
    pub flow: FastFlow,
    pub conn: quinn::Connection,
    /// CONS: the flow's WAN socket (its port is the one the PROD gateway
    /// forwards from) and the flow's backlog from the front. PROD: the
    /// socket towards ProdApp (holds the port), and no backlog.
    pub socket: UdpSocket,
    pub backlog: Option<mpsc::Receiver<Bytes>>,
}

/// Runs a kernel flow until its QUIC connection closes, the front lets it
/// go (idle), or the session stops; its entries are removed at the end.
pub(super) async fn run_kernel_flow(
    shared: Arc<UdpShared>,
    mut k: KernelFlow,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = [UdpFlowCounters::default(); 2];
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = k.conn.closed() => break,
            _ = poll.tick() => {
                if account(&shared, &k.flow, &mut seen) {
                    last_active.store(millis_since(epoch, Instant::now()), Ordering::Relaxed);
                }
            }
            datagram = next(&mut k.backlog) => match datagram {
                Some(datagram) => {
                    if k.socket.send(&datagram).await.is_ok() {
                        shared.stats.relayed(Direction::ToTarget, datagram.len());
                    }
                }
                // The front let the flow go (idle).
                None => break,
            },
        }
    }
    account(&shared, &k.flow, &mut seen);
    k.conn.close(quinn::VarInt::from_u32(0), b"flow ended");
}

async fn next(backlog: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match backlog {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Adds what the kernel forwarded since the last call; true if anything.
fn account(shared: &UdpShared, flow: &FastFlow, seen: &mut [UdpFlowCounters; 2]) -> bool {
    let now = flow.counters();
    let mut moved = false;
    for (i, direction) in [Direction::ToTarget, Direction::FromTarget]
        .into_iter()
        .enumerate()
    {
        let packets = now[i].packets.saturating_sub(seen[i].packets);
        let bytes = now[i].bytes.saturating_sub(seen[i].bytes);
        if packets > 0 {
            shared.stats.relayed_many(direction, packets, bytes);
            moved = true;
        }
    }
    *seen = now;
    moved
}
