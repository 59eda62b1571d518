//! The listener side of a session's UDP port ([`run_front`]): one socket
//! receives every sender's datagrams; the first datagram from a new sender
//! address opens a flow towards the target (a socket connected to it, or an
//! authenticated QUIC connection to the PROD gateway) and datagrams wait in
//! the flow's bounded backlog while it is being set up. Replies leave from
//! the same socket to the sender's address, so a sender sees them come from
//! the port it sent to. A flow idle for the session's idle time is let go;
//! a flow whose set-up failed refuses its sender for a second before it is
//! tried again (no storm of handshakes from one chatty sender).
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::UdpShared;
use super::counters::DropReason;
use super::flow::{Port, millis_since, relay_flow};
use super::kernel_flow::{KernelFlow, run_kernel_flow};
use crate::channel::quic::QuicChannel;
use crate::udp_fastpath::{FastFlow, Rewrite, UdpFastPath};

/// Datagrams a flow holds while it is set up or while its far end is busy.
const BACKLOG: usize = 4096;
/// How often flows are checked for idleness.
const SWEEP: Duration = Duration::from_millis(500);
/// How long a sender whose flow failed is refused before a new attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a stopping front waits for its flows to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// How a flow reaches its target.
pub(super) enum Toward {
    /// A UDP socket connected to the target.
    Plain,
    /// A QUIC connection (the datagram channel) to the PROD gateway; with
    /// `fast`, the plaintext mode is asked for and, where the PROD gateway
    /// agrees, the flow is forwarded by the kernel.
    Quic {
        channel: Arc<QuicChannel>,
        endpoint: quinn::Endpoint,
        fast: Option<Arc<UdpFastPath>>,
    },
}

/// A flow's far end, once set up.
enum Opened {
    /// Relayed by this process.
    Port(Port),
    /// Forwarded by the kernel.
    Kernel(FastFlow, quinn::Connection, UdpSocket),
}

impl Toward {
    /// Sets up the flow of `sender`, who sent to `local`, towards `target`.
    async fn open(
        &self,
        target: SocketAddr,
        shared: &UdpShared,
        sender: SocketAddr,
        local: SocketAddr,
    ) -> Option<Opened> {
        match self {
            Toward::Plain => match connect_udp(target).await {
                Ok(socket) => Some(Opened::Port(Port::Connected(socket))),
                Err(err) => {
                    tracing::warn!(%target, error = %err, "UDP: opening a socket to the target failed");
                    None
                }
            },
            Toward::Quic {
                channel,
                endpoint,
                fast,
            } => {
                let name = crate::channel::server_name(target);
                let secret = shared.secret.expose();
                let plain = match (fast, target, sender, local) {
                    (
                        Some(fast),
                        SocketAddr::V4(target),
                        SocketAddr::V4(sender),
                        SocketAddr::V4(local),
                    ) if !local.ip().is_unspecified() => Some((fast, target, sender, local)),
                    _ => None,
                };
                let Some((fast, target4, sender, local)) = plain else {
                    let (ch, _) = channel
                        .connect(endpoint, target, &name, secret, None)
                        .await
                        .ok()?;
                    return Some(Opened::Port(Port::Quic(ch.conn)));
                };
                let socket = match connect_udp(target).await {
                    Ok(socket) => socket,
                    Err(err) => {
                        tracing::warn!(%target, error = %err, "UDP: opening the flow's WAN socket failed");
                        return None;
                    }
                };
                let SocketAddr::V4(wan) = socket.local_addr().ok()? else {
                    return None;
                };
                let (ch, agreed) = channel
                    .connect(endpoint, target, &name, secret, Some(wan.port()))
                    .await
                    .ok()?;
                if !agreed {
                    return Some(Opened::Port(Port::Quic(ch.conn)));
                }
                let to_target = Rewrite {
                    from: sender,
                    to: local,
                    new_from: wan,
                    new_to: target4,
                };
                match fast.install(to_target) {
                    Ok(flow) => Some(Opened::Kernel(flow, ch.conn, socket)),
                    Err(err) => {
                        tracing::warn!(%sender, %target, error = %crate::error_chain::error_chain(&err), "UDP: installing a kernel flow failed");
                        ch.conn.close(quinn::VarInt::from_u32(3), b"no kernel flow");
                        None
                    }
                }
            }
        }
    }

    /// Closes the QUIC endpoint, if any.
    fn close(&self) {
        if let Toward::Quic { endpoint, .. } = self {
            endpoint.close(quinn::VarInt::from_u32(0), b"session ended");
        }
    }
}

/// A UDP socket on an ephemeral port, connected to `target`.
pub(super) async fn connect_udp(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    super::size_buffers(&socket);
    socket.connect(target).await?;
    Ok(socket)
}

/// One sender's flow as the front sees it.
struct FlowEntry {
    tx: mpsc::Sender<Bytes>,
    /// Milliseconds since the front's epoch of the flow's last datagram.
    last_active: Arc<AtomicU64>,
    /// When the front noticed the flow had ended.
    ended_at: Option<Instant>,
}

/// Serves one listener socket of a session until `stop`.
pub(super) async fn run_front(
    shared: Arc<UdpShared>,
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    toward: Toward,
    mut stop: watch::Receiver<bool>,
) {
    let toward = Arc::new(toward);
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(err) => {
            tracing::warn!(error = %err, "UDP: a session socket has no address");
            return;
        }
    };
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, FlowEntry> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65_535];
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = sweep.tick() => sweep_flows(&mut flows, &shared, epoch),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, sender)) => {
                    let datagram = Bytes::copy_from_slice(&buf[..n]);
                    let Some(rx) = deliver(&mut flows, &shared, sender, datagram, epoch) else {
                        continue;
                    };
                    let entry = &flows[&sender];
                    tasks.spawn(flow_task(
                        Arc::clone(&shared),
                        Arc::clone(&toward),
                        Arc::clone(&socket),
                        sender,
                        local,
                        target,
                        rx,
                        Arc::clone(&entry.last_active),
                        epoch,
                        stop.clone(),
                    ));
                }
                // ICMP errors of earlier replies: the socket goes on. Any
                // other error: not in a tight loop.
                Err(err) => {
                    if err.raw_os_error() != Some(libc::ECONNREFUSED) {
                        tracing::debug!(error = %err, "UDP: receiving on a session port failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
        }
    }
    drop(flows);
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    toward.close();
}

/// Hands `datagram` to `sender`'s flow; when a new flow must be opened for
/// it, inserts its entry and returns the receiving end for its task.
fn deliver(
    flows: &mut HashMap<SocketAddr, FlowEntry>,
    shared: &UdpShared,
    sender: SocketAddr,
    datagram: Bytes,
    epoch: Instant,
) -> Option<mpsc::Receiver<Bytes>> {
    let now = Instant::now();
    if let Some(entry) = flows.get_mut(&sender) {
        if entry.ended_at.is_none() && entry.tx.is_closed() {
            entry.ended_at = Some(now);
        }
        match entry.ended_at {
            None => {
                if entry.tx.try_send(datagram).is_err() {
                    shared.stats.dropped(DropReason::Backlog);
                }
                return None;
            }
            Some(ended) if now.saturating_duration_since(ended) < RETRY_AFTER => {
                shared.stats.dropped(DropReason::Backlog);
                return None;
            }
            Some(_) => {
                flows.remove(&sender);
            }
        }
    }
    let open = flows.values().filter(|f| f.ended_at.is_none()).count();
    if open >= shared.max_flows {
        shared.stats.flow_refused();
        shared.stats.dropped(DropReason::Backlog);
        tracing::debug!(%sender, open, "UDP: flow refused, the session's flow limit is reached");
        return None;
    }
    let (tx, rx) = mpsc::channel(BACKLOG);
    // A fresh channel has room for the first datagram.
    let _ = tx.try_send(datagram);
    let last_active = Arc::new(AtomicU64::new(millis_since(epoch, now)));
    flows.insert(
        sender,
        FlowEntry {
            tx,
            last_active,
            ended_at: None,
        },
    );
    Some(rx)
}

/// Lets idle flows go (their tasks end when the backlog's sender drops)
/// and forgets ended ones once their retry pause is over.
fn sweep_flows(flows: &mut HashMap<SocketAddr, FlowEntry>, shared: &UdpShared, epoch: Instant) {
    let now = Instant::now();
    let now_ms = millis_since(epoch, now);
    let idle_ms = shared.idle.as_millis() as u64;
    flows.retain(|sender, entry| {
        if entry.ended_at.is_none() && entry.tx.is_closed() {
            entry.ended_at = Some(now);
        }
        match entry.ended_at {
            Some(ended) => now.saturating_duration_since(ended) < RETRY_AFTER,
            None => {
                let idle =
                    now_ms.saturating_sub(entry.last_active.load(Ordering::Relaxed)) > idle_ms;
                if idle {
                    tracing::debug!(%sender, "UDP: idle flow closed");
                }
                !idle
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn flow_task(
    shared: Arc<UdpShared>,
    toward: Arc<Toward>,
    socket: Arc<UdpSocket>,
    sender: SocketAddr,
    local: SocketAddr,
    target: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let opened = tokio::select! {
        _ = stop.changed() => return,
        opened = toward.open(target, &shared, sender, local) => opened,
    };
    let Some(opened) = opened else {
        shared.stats.flow_refused();
        return;
    };
    shared.stats.flow_opened();
    match opened {
        Opened::Port(far) => {
            tracing::debug!(%sender, %target, "UDP: flow opened");
            let near = Port::Front { rx, socket, sender };
            relay_flow(Arc::clone(&shared), near, far, last_active, epoch, stop).await;
        }
        Opened::Kernel(flow, conn, wan) => {
            tracing::debug!(%sender, %target, "UDP: flow opened, forwarded by the kernel");
            let k = KernelFlow {
                flow,
                conn,
                socket: wan,
                backlog: Some(rx),
            };
            run_kernel_flow(Arc::clone(&shared), k, last_active, epoch, stop).await;
        }
    }
    shared.stats.flow_closed();
}
