//! The PROD gateway's side of a session's UDP port in the encrypted mode
//! ([`run_endpoint`]): a QUIC endpoint on the WAN port. Every incoming
//! connection first proves its source address (a QUIC Retry, so a spoofed
//! source never gets a handshake going), then runs the handshake and the
//! mutual proof of the session secret ([`QuicChannel::accept`]) within a
//! bounded number of handshakes at once; only a connection that proved the
//! secret gets a socket connected to ProdApp, and only its datagrams are
//! ever read. Each connection is one flow.
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::UdpShared;
use super::flow::millis_since;
use super::flow::{Port, relay_flow};
use super::front::connect_udp;
use super::kernel_flow::{KernelFlow, run_kernel_flow};
use crate::channel::quic::{PlainDatagrams, QuicChannel};
use crate::udp_fastpath::{Rewrite, UdpFastPath};

/// Handshakes (connections not yet proved) in progress at once per port.
const MAX_HANDSHAKES: usize = 64;
/// How long a stopping endpoint waits for its flows to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Serves one WAN port of a PROD session until `stop`.
pub(super) async fn run_endpoint(
    shared: Arc<UdpShared>,
    endpoint: quinn::Endpoint,
    channel: Arc<QuicChannel>,
    fast: Option<Arc<UdpFastPath>>,
    target: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let epoch = Instant::now();
    let endpoint_addr = endpoint.local_addr().ok();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let plain = plain_policy(fast.is_some(), shared.capped());
    let mut tasks = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if !incoming.remote_address_validated() {
            // Stateless: the source must echo the token from its address.
            let _ = incoming.retry();
            continue;
        }
        if shared.stats.flows_active() >= shared.max_flows as u64 {
            shared.stats.flow_refused();
            incoming.refuse();
            continue;
        }
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            shared.stats.flow_refused();
            incoming.refuse();
            continue;
        };
        let (shared, channel, fast, stop) = (
            Arc::clone(&shared),
            Arc::clone(&channel),
            fast.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let peer = incoming.remote_address();
            let accepted = channel
                .accept(incoming, shared.secret.expose(), plain)
                .await;
            drop(permit);
            let Ok(accepted) = accepted else {
                shared.stats.flow_refused();
                return;
            };
            let conn = accepted.channel.conn.clone();
            let refuse = |why: &'static [u8]| {
                conn.close(quinn::VarInt::from_u32(2), why);
                shared.stats.flow_refused();
            };
            let far = match connect_udp(target).await {
                Ok(socket) => socket,
                Err(err) => {
                    tracing::warn!(%target, error = %err, "UDP: opening a socket to the target failed");
                    refuse(b"target unreachable");
                    return;
                }
            };
            let kernel = match (accepted.plain_port, &fast) {
                (Some(port), Some(fast)) => match kernel_rewrite(&endpoint_addr, &conn, port, &far, target)
                    .and_then(|to_target| fast.install(to_target).map_err(|e| crate::error_chain::error_chain(&e)))
                {
                    Ok(flow) => Some(flow),
                    Err(err) => {
                        tracing::warn!(%peer, %target, error = %err, "UDP: installing a kernel flow failed");
                        refuse(b"no kernel flow");
                        return;
                    }
                },
                _ => None,
            };
            let Ok(channel) = accepted.confirm().await else {
                shared.stats.flow_refused();
                return;
            };
            shared.stats.flow_opened();
            let last_active = Arc::new(AtomicU64::new(millis_since(epoch, Instant::now())));
            match kernel {
                Some(flow) => {
                    tracing::debug!(%peer, %target, "UDP: flow opened, forwarded by the kernel");
                    let k = KernelFlow {
                        flow,
                        conn: channel.conn,
                        socket: far,
                        backlog: None,
                    };
                    run_kernel_flow(Arc::clone(&shared), k, last_active, epoch, stop).await;
                }
                None => {
                    tracing::debug!(%peer, %target, "UDP: flow opened");
                    relay_flow(
                        Arc::clone(&shared),
                        Port::Quic(channel.conn),
                        Port::Connected(far),
                        last_active,
                        epoch,
                        stop,
                    )
                    .await;
                }
            }
            shared.stats.flow_closed();
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"session ended");
    let _ = tokio::time::timeout(STOP_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    drop(tasks);
    let _ = tokio::time::timeout(STOP_WAIT, endpoint.wait_idle()).await;
}

/// How this PROD gateway answers a CONS gateway asking for the kernel
/// path: only with the program loaded, and only for an uncapped session
/// (a capped one keeps its datagrams in QUIC, where the cap applies).
fn plain_policy(kernel_path: bool, capped: bool) -> PlainDatagrams {
    match (kernel_path, capped) {
        (true, false) => PlainDatagrams::Allow,
        (true, true) => PlainDatagrams::Decline,
        (false, _) => PlainDatagrams::Refuse,
    }
}

/// The rewrite of a kernel flow on the PROD gateway: datagrams from the
/// peer gateway's plain port to our WAN port go to ProdApp from the flow's
/// LAN socket (ProdApp's replies take its mirror back to the peer).
fn kernel_rewrite(
    endpoint: &Option<SocketAddr>,
    conn: &quinn::Connection,
    peer_port: u16,
    far: &tokio::net::UdpSocket,
    target: SocketAddr,
) -> Result<Rewrite, String> {
    let v4 = |addr: SocketAddr| match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(ip) => Ok(SocketAddrV4::new(ip, a.port())),
            None => Err(format!("{a} is IPv6: the kernel UDP path is IPv4 only")),
        },
    };
    let endpoint = endpoint.ok_or("the endpoint has no address")?;
    let local_ip = match (endpoint.ip().is_unspecified(), conn.local_ip()) {
        (false, _) => endpoint.ip(),
        (true, Some(ip)) => ip,
        (true, None) => return Err("the connection's local address is unknown".to_owned()),
    };
    let wan = v4(SocketAddr::new(local_ip, endpoint.port()))?;
    let peer = v4(SocketAddr::new(conn.remote_address().ip(), peer_port))?;
    let lan = v4(far.local_addr().map_err(|e| e.to_string())?)?;
    let target = v4(target)?;
    Ok(Rewrite {
        from: peer,
        to: wan,
        new_from: lan,
        new_to: target,
    })
}
