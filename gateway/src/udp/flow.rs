//! One UDP flow's relay between its two ends ([`Port`]): datagrams from
//! either end go to the other one at a time, boundaries kept, each counted,
//! capped by the session's rate and dropped (and counted) when the other
//! end cannot take them. A flow ends when either end is gone (its QUIC
//! connection closed or timed out, the front's flow table let it go) or the
//! session stops.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::UdpShared;
use super::counters::{Direction, DropReason};

/// The largest datagram a UDP socket can receive.
const MAX_DATAGRAM: usize = 65_535;
/// How often a flow reports its path's payload size.
const PAYLOAD_REPORT: Duration = Duration::from_secs(1);

/// One end of a flow.
pub(super) enum Port {
    /// The listener side of a flow: datagrams from the sender arrive
    /// through the front's flow table; replies go out of the listener
    /// socket to the sender's address (so they come from the port it sent
    /// to).
    Front {
        rx: mpsc::Receiver<Bytes>,
        socket: Arc<UdpSocket>,
        sender: SocketAddr,
    },
    /// A socket connected to the target (an application, or the PROD
    /// gateway in the plain mode).
    Connected(UdpSocket),
    /// An authenticated QUIC connection to the peer gateway.
    Quic(quinn::Connection),
}

/// Why sending one datagram failed.
enum SendFailure {
    /// This datagram only: too large for the path.
    Oversize,
    /// This datagram only: a transient socket error (the target's port was
    /// closed, a full buffer).
    Transient,
    /// The end is gone.
    Ended,
}

impl Port {
    /// The next datagram from this end; `None` when the end is gone.
    async fn recv(&mut self, buf: &mut [u8]) -> Option<Bytes> {
        match self {
            Port::Front { rx, .. } => rx.recv().await,
            Port::Connected(socket) => loop {
                match socket.recv(buf).await {
                    Ok(n) => return Some(Bytes::copy_from_slice(&buf[..n])),
                    // ICMP errors of earlier sends (port unreachable, ...):
                    // the flow goes on, as UDP does.
                    Err(err) if transient(&err) => continue,
                    Err(_) => return None,
                }
            },
            Port::Quic(conn) => conn.read_datagram().await.ok(),
        }
    }

    async fn send(&self, datagram: Bytes) -> Result<(), SendFailure> {
        let socket_failure = |err: io::Error| {
            if err.raw_os_error() == Some(libc::EMSGSIZE) {
                SendFailure::Oversize
            } else if transient(&err) {
                SendFailure::Transient
            } else {
                SendFailure::Ended
            }
        };
        match self {
            Port::Front { socket, sender, .. } => socket
                .send_to(&datagram, *sender)
                .await
                .map(drop)
                .map_err(socket_failure),
            Port::Connected(socket) => socket
                .send(&datagram)
                .await
                .map(drop)
                .map_err(socket_failure),
            Port::Quic(conn) => conn.send_datagram(datagram).map_err(|err| match err {
                quinn::SendDatagramError::TooLarge => SendFailure::Oversize,
                _ => SendFailure::Ended,
            }),
        }
    }

    fn max_payload(&self) -> Option<usize> {
        match self {
            Port::Quic(conn) => conn.max_datagram_size(),
            _ => None,
        }
    }
}

fn transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENOBUFS
                | libc::EAGAIN
        )
    )
}

/// Relays between `near` (the listener side) and `far` (towards the
/// target) until either end is gone or the session stops. `last_active`
/// (milliseconds since `epoch`) is kept current for the front's idle expiry.
pub(super) async fn relay_flow(
    shared: Arc<UdpShared>,
    mut near: Port,
    mut far: Port,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let (mut near_buf, mut far_buf) = (vec![0u8; MAX_DATAGRAM], vec![0u8; MAX_DATAGRAM]);
    let mut report = tokio::time::interval(PAYLOAD_REPORT);
    let stats = &shared.stats;
    loop {
        let (datagram, direction) = tokio::select! {
            _ = stop.changed() => break,
            _ = report.tick() => {
                report_payload(stats, &near, &far);
                continue;
            }
            d = near.recv(&mut near_buf) => match d {
                Some(d) => (d, Direction::ToTarget),
                None => {
                    tracing::debug!("UDP flow ends: its listener-side end is gone");
                    break;
                }
            },
            d = far.recv(&mut far_buf) => match d {
                Some(d) => (d, Direction::FromTarget),
                None => {
                    tracing::debug!("UDP flow ends: its target-side end is gone");
                    break;
                }
            },
        };
        let to = match direction {
            Direction::ToTarget => &far,
            Direction::FromTarget => &near,
        };
        let now = Instant::now();
        last_active.store(millis_since(epoch, now), Ordering::Relaxed);
        if !shared.admit(direction, datagram.len(), now) {
            stats.dropped(DropReason::Rate);
            continue;
        }
        let len = datagram.len();
        match to.send(datagram).await {
            Ok(()) => stats.relayed(direction, len),
            Err(SendFailure::Oversize) => {
                report_payload(stats, &near, &far);
                stats.dropped(DropReason::Oversize)
            }
            Err(SendFailure::Transient) => stats.dropped(DropReason::Backlog),
            Err(SendFailure::Ended) => {
                tracing::debug!(?direction, "UDP flow ends: sending failed");
                break;
            }
        }
    }
    for port in [&near, &far] {
        if let Port::Quic(conn) = port {
            conn.close(quinn::VarInt::from_u32(0), b"flow ended");
        }
    }
}

/// The payload size of the flow's QUIC end, if it has one.
fn report_payload(stats: &super::counters::UdpStats, near: &Port, far: &Port) {
    if let Some(bytes) = near.max_payload().or_else(|| far.max_payload()) {
        stats.path_payload(bytes);
    }
}

/// Milliseconds from `epoch` to `now` (a flow's last-activity stamp).
pub(super) fn millis_since(epoch: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(epoch).as_millis() as u64
}
