//! The PROD gateway's side of a session's UDP port in the encrypted mode
//! ([`run_endpoint`]): a QUIC endpoint on the WAN port. Every incoming
//! connection first proves its source address (a QUIC Retry, so a spoofed
//! source never gets a handshake going), then runs the handshake and the
//! mutual proof of the session secret ([`QuicChannel::accept`]) within a
//! bounded number of handshakes at once; only a connection that proved the
//! secret gets a socket connected to ProdApp, and only its datagrams are
//! ever read. Each connection is one flow.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::UdpShared;
use super::flow::{Port, relay_flow};
use super::front::{connect_udp, millis_since};
use crate::channel::quic::QuicChannel;

/// Handshakes (connections not yet proved) in progress at once per port.
const MAX_HANDSHAKES: usize = 64;
/// How long a stopping endpoint waits for its flows to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Serves one WAN port of a PROD session until `stop`.
pub(super) async fn run_endpoint(
    shared: Arc<UdpShared>,
    endpoint: quinn::Endpoint,
    channel: Arc<QuicChannel>,
    target: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let epoch = Instant::now();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
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
        let (shared, channel, stop) = (Arc::clone(&shared), Arc::clone(&channel), stop.clone());
        tasks.spawn(async move {
            let peer = incoming.remote_address();
            let accepted = channel.accept(incoming, shared.secret.expose()).await;
            drop(permit);
            let Ok(accepted) = accepted else {
                shared.stats.flow_refused();
                return;
            };
            let far = match connect_udp(target).await {
                Ok(socket) => socket,
                Err(err) => {
                    tracing::warn!(%target, error = %err, "UDP: opening a socket to the target failed");
                    accepted.conn.close(quinn::VarInt::from_u32(2), b"target unreachable");
                    shared.stats.flow_refused();
                    return;
                }
            };
            shared.stats.flow_opened();
            tracing::debug!(%peer, %target, "UDP: flow opened");
            let last_active = Arc::new(AtomicU64::new(millis_since(epoch, Instant::now())));
            relay_flow(
                Arc::clone(&shared),
                Port::Quic(accepted.conn),
                Port::Connected(far),
                last_active,
                epoch,
                stop,
            )
            .await;
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
