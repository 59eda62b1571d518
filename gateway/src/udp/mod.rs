//! UDP on a session's ports, as SciStream's Nginx data server offers it:
//! every TCP listener port of a session also takes UDP datagrams, relayed in
//! both directions with their boundaries kept.
//!
//! ConsApp sends to its CONS gateway's listener port; the CONS gateway
//! keeps a flow per sender address ([`front`]) and carries the flow to the
//! PROD gateway's WAN port, where it becomes datagrams to ProdApp's target
//! port; ProdApp's replies come back the same way to the sender's address.
//! How a flow crosses the WAN ([`UdpWan`]):
//! - [`UdpWan::Quic`] (channel mode `tls`): one QUIC connection per flow
//!   with unreliable DATAGRAM frames, authenticated by the session's mutual
//!   proof ([`crate::channel::quic`]); the PROD gateway runs a QUIC endpoint
//!   on its WAN port ([`wan_endpoint`]);
//! - the same with a kernel fast path (`plaintext-after-auth`): after the
//!   proof, both gateways install the flow in `udp_fastpath` (tc) and its
//!   datagrams cross in plain UDP, forwarded by the kernel, never by this
//!   process (`kernel_flow`); the QUIC connection stays as the flow's
//!   liveness. IPv4 only; listeners on a specific address;
//! - [`UdpWan::Plain`] (channel mode `plain`, tests and old peers only):
//!   datagrams as they are, a flow per sender on both gateways.
//!
//! Flows end when idle for [`UdpPlan::idle`], when the WAN connection ends,
//! and with the session. Datagrams over the session's rate are dropped
//! ([`rate`]); every datagram relayed or dropped is counted ([`counters`]).
//! Sessions with the legacy uid-derived secret get no UDP (see
//! `session`): their secret can be derived by anyone who knows the uid.
//!
//! Layout: `counters`, `rate`, `flow` (one flow's relay between its two
//! ends), `front` (the listener side and its flow table), `wan_endpoint`
//! (the PROD gateway's QUIC endpoint), this file ([`UdpRelay`]: start and
//! stop of a session's UDP ports).
#![forbid(unsafe_code)]

pub mod counters;
mod flow;
mod front;
mod kernel_flow;
mod rate;
mod wan_endpoint;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{Role, SessionId, SessionSecret};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

pub use counters::{Direction, DropReason, UdpStats};
use front::{Toward, run_front};
use rate::RateCap;
use wan_endpoint::run_endpoint;

use crate::channel::quic::QuicChannel;
use crate::udp_fastpath::UdpFastPath;

/// A flow with no datagram either way for this long is closed.
pub const DEFAULT_FLOW_IDLE: Duration = Duration::from_secs(60);

/// How a session's datagrams cross the WAN.
#[derive(Clone, Debug)]
pub enum UdpWan {
    /// Unencrypted, unauthenticated (`--channel plain`).
    Plain,
    /// QUIC datagrams, authenticated by the session's mutual proof; with
    /// `fast` (plaintext after authentication), flows are forwarded by the
    /// kernel once the proof is done, where both gateways can.
    Quic {
        channel: Arc<QuicChannel>,
        fast: Option<Arc<UdpFastPath>>,
    },
}

/// What one session's UDP relay needs.
pub struct UdpPlan {
    pub uid: SessionId,
    pub role: Role,
    /// Bound UDP sockets (on the session's listener addresses) and where
    /// each one's flows go.
    pub links: Vec<(std::net::UdpSocket, SocketAddr)>,
    pub secret: SessionSecret,
    /// Bytes per second in each direction; 0: no cap.
    pub rate_bytes_per_sec: u64,
    pub wan: UdpWan,
    /// Open flows per session at most (further senders are refused).
    pub max_flows: usize,
    /// Idle time after which a flow is closed.
    pub idle: Duration,
}

/// Why a session's UDP relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    /// The UDP port beside a TCP listener is taken or cannot be bound.
    #[error("binding UDP {addr} (the session's TCP port, also for UDP) failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The QUIC endpoint could not be set up on a port.
    #[error("setting up the QUIC endpoint on UDP {addr} failed")]
    Endpoint {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What a session's flows share.
pub(crate) struct UdpShared {
    secret: SessionSecret,
    stats: Arc<UdpStats>,
    to_target: Option<RateCap>,
    from_target: Option<RateCap>,
    max_flows: usize,
    idle: Duration,
}

impl UdpShared {
    /// Whether a datagram of `len` bytes fits under the rate cap.
    fn admit(&self, direction: Direction, len: usize, now: Instant) -> bool {
        let cap = match direction {
            Direction::ToTarget => &self.to_target,
            Direction::FromTarget => &self.from_target,
        };
        cap.as_ref().is_none_or(|cap| cap.admit(len, now))
    }

    /// Whether the session has a rate cap: its flows then stay off the
    /// kernel fast path, which forwards without one.
    fn capped(&self) -> bool {
        self.to_target.is_some() || self.from_target.is_some()
    }
}

/// A running session's UDP relay.
pub struct UdpRelay {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<UdpStats>,
}

/// Socket buffers of every UDP socket of a session, each way: a burst of
/// datagrams waits here while the relay is busy instead of being dropped
/// (the kernel caps it at net.core.rmem_max / wmem_max; see `s2cs check`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds the UDP socket beside the TCP listener at `addr` (non-blocking).
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, UdpError> {
    let socket = std::net::UdpSocket::bind(addr)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(|source| UdpError::Bind { addr, source })?;
    size_buffers(&socket);
    Ok(socket)
}

/// Asks for [`SOCKET_BUFFER`] each way; the kernel's cap applies, and a
/// smaller buffer is no error (only more drops in bursts).
fn size_buffers(socket: &impl std::os::fd::AsFd) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

impl UdpRelay {
    /// Starts relaying on every link of `plan` (inside a tokio runtime).
    /// On error nothing keeps running and every socket is closed.
    pub fn start(plan: UdpPlan, span: tracing::Span) -> Result<UdpRelay, UdpError> {
        let stats = Arc::new(UdpStats::default());
        let shared = Arc::new(UdpShared {
            secret: plan.secret,
            stats: Arc::clone(&stats),
            to_target: RateCap::new(plan.rate_bytes_per_sec),
            from_target: RateCap::new(plan.rate_bytes_per_sec),
            max_flows: plan.max_flows.max(1),
            idle: plan.idle,
        });
        if shared.capped() && matches!(plan.wan, UdpWan::Quic { fast: Some(_), .. }) {
            tracing::info!(parent: &span, uid = %plan.uid, "UDP: the session's rate cap keeps its datagrams in QUIC (the kernel path forwards without a cap)");
        }
        let (stop, stopped) = watch::channel(false);
        // Set everything up first, so that an error leaves nothing running.
        let mut ready = Vec::with_capacity(plan.links.len());
        for (socket, target) in plan.links {
            let addr = socket.local_addr().map_err(|source| UdpError::Bind {
                addr: target,
                source,
            })?;
            let task = match (&plan.wan, plan.role) {
                (UdpWan::Quic { channel, fast }, Role::Prod) => {
                    let endpoint = channel
                        .server_endpoint(socket)
                        .map_err(|source| UdpError::Endpoint { addr, source })?;
                    Ready::Endpoint(endpoint, Arc::clone(channel), fast.clone(), target)
                }
                (UdpWan::Quic { channel, fast }, Role::Cons) => {
                    let any: SocketAddr = if target.is_ipv4() {
                        (Ipv4Addr::UNSPECIFIED, 0).into()
                    } else {
                        (Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    let endpoint = channel
                        .client_endpoint(any)
                        .map_err(|source| UdpError::Endpoint { addr: any, source })?;
                    // A capped session stays in QUIC, where the cap applies:
                    // its CONS gateway does not ask for the kernel path.
                    let toward = Toward::Quic {
                        channel: Arc::clone(channel),
                        endpoint,
                        fast: fast.clone().filter(|_| !shared.capped()),
                    };
                    Ready::Front(front_socket(socket, addr)?, target, toward)
                }
                (UdpWan::Plain, _) => {
                    Ready::Front(front_socket(socket, addr)?, target, Toward::Plain)
                }
            };
            ready.push(task);
        }
        let tasks = ready
            .into_iter()
            .map(|task| {
                let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
                let run = async move {
                    match task {
                        Ready::Endpoint(endpoint, channel, fast, target) => {
                            run_endpoint(shared, endpoint, channel, fast, target, stopped).await
                        }
                        Ready::Front(socket, target, toward) => {
                            run_front(shared, socket, target, toward, stopped).await
                        }
                    }
                };
                tokio::spawn(run.instrument(span.clone()))
            })
            .collect();
        tracing::info!(parent: &span, uid = %plan.uid, wan = plan.wan.as_str(), "data plane: UDP on the session's ports");
        Ok(UdpRelay { stop, tasks, stats })
    }

    /// The relay's live counters.
    pub fn stats(&self) -> &Arc<UdpStats> {
        &self.stats
    }

    /// Stops every flow and closes the ports; returns when they are closed.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops at once without waiting (for a data plane being dropped).
    pub fn stop_now(&self) {
        self.stop.send_replace(true);
    }
}

impl UdpWan {
    fn as_str(&self) -> &'static str {
        match self {
            UdpWan::Plain => "plain",
            UdpWan::Quic { fast: None, .. } => "quic",
            UdpWan::Quic { fast: Some(_), .. } => {
                "quic, then the kernel (plaintext after authentication)"
            }
        }
    }
}

/// A link set up and ready to run.
enum Ready {
    Endpoint(
        quinn::Endpoint,
        Arc<QuicChannel>,
        Option<Arc<UdpFastPath>>,
        SocketAddr,
    ),
    Front(Arc<tokio::net::UdpSocket>, SocketAddr, Toward),
}

fn front_socket(
    socket: std::net::UdpSocket,
    addr: SocketAddr,
) -> Result<Arc<tokio::net::UdpSocket>, UdpError> {
    tokio::net::UdpSocket::from_std(socket)
        .map(Arc::new)
        .map_err(|source| UdpError::Bind { addr, source })
}
