//! The secure channel of a session's UDP datagrams: one QUIC connection
//! (quinn) per flow, carrying the flow's datagrams in unreliable DATAGRAM
//! frames (RFC 9221). Nothing is retransmitted and nothing waits for a lost
//! datagram (no head-of-line blocking); every datagram is sealed by QUIC's
//! AEAD under its own packet number, so on the WAN datagrams may be lost or
//! reordered, as UDP may, but never forged, replayed or moved to another
//! connection.
//!
//! A connection uses this gateway's TLS settings ([`ChannelConfig`]: the
//! certificate in use, peer verification, the AEAD suites; TLS 1.3, as QUIC
//! requires) under its own ALPN, then runs the same per-session mutual proof
//! as the stream channel ([`super::proof`]), bound to this QUIC connection by
//! its TLS exporter: the CONS gateway opens the one bidirectional stream and
//! sends its proof; the PROD gateway checks it and only then answers with its
//! own. The PROD gateway reads no datagram of a connection before its proof
//! verified, and the whole exchange runs under the channel's proof deadline.
//!
//! In the plaintext-after-authentication mode the CONS gateway sets the
//! proof's plaintext flag (covered by the MAC) and follows its proof with
//! the UDP port its plain datagrams will come from; a PROD gateway with the
//! kernel fast path answers with the same flag after it installed the flow
//! (`crate::udp_fastpath`), one without it refuses (mode mismatch). The QUIC
//! connection then stays open as the flow's liveness, carrying nothing.
//! Failures are counted in the channel's [`ChannelFailures`], like the
//! stream channel's.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use control::Role;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::config::ChannelConfig;
use super::error::{ChannelError, ChannelFailures, FailureReason};
use super::proof::{
    self, EXPORTER_LABEL, EXPORTER_LEN, FLAG_PLAINTEXT_AFTER_AUTH, PROOF_LEN, ProofError,
};

/// The ALPN of a datagram channel (never accepted on the stream channel's
/// TCP listeners, nor the other way round).
pub const DATAGRAM_ALPN: &[u8] = b"s2cs-datagram/1";
/// Exporter context: a datagram channel's proof differs from a stream
/// channel's even under the same secret.
const EXPORTER_CONTEXT: &[u8] = b"s2cs datagram channel";
/// The largest UDP payload a datagram channel sends or takes: a 9000-byte
/// jumbo frame less the IPv4 and UDP headers.
pub const MAX_UDP_PAYLOAD: u16 = 8972;
/// The UDP payload a connection starts with and never goes under when the
/// kernel cannot tell its route's MTU (IPv6): what a 1500-byte Ethernet
/// path carries under IPv6.
const FALLBACK_UDP_PAYLOAD: u16 = 1452;
/// QUIC's own floor (RFC 9000 section 14).
const QUIC_MIN_UDP_PAYLOAD: u16 = 1200;
/// IPv4 and UDP headers: a route MTU less these is the UDP payload.
const IPV4_UDP_HEADERS: u16 = 28;
/// The largest packet quinn may batch into one UDP GSO send: it batches up
/// to 10 packets, and the kernel takes at most 64 KiB per send (IP and UDP
/// headers included) and fails a larger one with EMSGSIZE, which quinn
/// drops silently: every packet of the batch is lost.
const GSO_MAX_UDP_PAYLOAD: u16 = 6_500;
/// A flow's QUIC connection closes after this long without a packet; the
/// keep-alives below hold a live flow's connection open.
const IDLE_TIMEOUT_MS: u32 = 30_000;
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Datagram bytes buffered per connection each way: a burst beyond it drops
/// the oldest datagrams (as a full socket buffer would).
const DATAGRAM_BUFFER: usize = 8 << 20;
/// QUIC error code of a connection we close because its proof failed.
const CLOSE_BAD_PROOF: u32 = 1;

/// A flow's authenticated QUIC connection, ready for datagrams.
#[derive(Clone, Debug)]
pub struct DatagramChannel {
    pub conn: quinn::Connection,
}

impl DatagramChannel {
    /// The largest datagram payload this connection carries now (it grows
    /// as MTU discovery finds a larger path MTU); 0 if the peer takes none.
    pub fn max_payload(&self) -> usize {
        self.conn.max_datagram_size().unwrap_or(0)
    }
}

/// The QUIC side of a [`ChannelConfig`], shared by every UDP session.
pub struct QuicChannel {
    server: quinn::ServerConfig,
    client_tls: Arc<QuicClientConfig>,
    proof_timeout: Duration,
    failures: Arc<ChannelFailures>,
}

impl std::fmt::Debug for QuicChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicChannel")
            .field("proof_timeout", &self.proof_timeout)
            .finish_non_exhaustive()
    }
}

impl QuicChannel {
    /// The QUIC configurations on `cfg`'s TLS settings.
    pub fn new(cfg: &ChannelConfig) -> Result<Self, ChannelError> {
        let mut server_tls = (*cfg.server).clone();
        server_tls.alpn_protocols = vec![DATAGRAM_ALPN.to_vec()];
        let server_tls = QuicServerConfig::try_from(Arc::new(server_tls))
            .map_err(|e| ChannelError::config(format!("QUIC server TLS: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(Arc::new(transport(None)));
        // The peer stays at the address that proved the secret.
        server.migration(false);

        let mut client_tls = (*cfg.client).clone();
        client_tls.alpn_protocols = vec![DATAGRAM_ALPN.to_vec()];
        let client_tls = QuicClientConfig::try_from(Arc::new(client_tls))
            .map_err(|e| ChannelError::config(format!("QUIC client TLS: {e}")))?;
        Ok(QuicChannel {
            server,
            client_tls: Arc::new(client_tls),
            proof_timeout: cfg.proof_timeout,
            failures: Arc::clone(&cfg.failures),
        })
    }

    /// A PROD session's endpoint on its WAN port (`socket`, already bound).
    pub fn server_endpoint(&self, socket: std::net::UdpSocket) -> io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(
            endpoint_config(),
            Some(self.server.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// A CONS session's endpoint for dialling (an ephemeral port on `bind`).
    pub fn client_endpoint(&self, bind: SocketAddr) -> io::Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind(bind)?;
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
        quinn::Endpoint::new(
            endpoint_config(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// PROD side: the handshake of one incoming connection and the check of
    /// the CONS gateway's proof. In the plaintext mode (asked for by the
    /// peer, and allowed by `plain`) the peer also names the UDP port its
    /// plain datagrams will come from. The caller sets the flow up, then answers
    /// with [`Accepted::confirm`]. On error the connection is closed and
    /// the failure counted.
    pub async fn accept(
        &self,
        incoming: quinn::Incoming,
        secret: &[u8; 32],
        plain: PlainDatagrams,
    ) -> Result<Accepted, ChannelError> {
        let peer = incoming.remote_address();
        let mut server = self.server.clone();
        server.transport_config(Arc::new(transport(route_udp_payload(peer))));
        let outcome = self
            .deadline(async {
                let conn = incoming
                    .accept_with(Arc::new(server))
                    .map_err(|source| ChannelError::Quic { source })?
                    .await
                    .map_err(|source| ChannelError::Quic { source })?;
                let checked = check_cons_proof(&conn, secret, plain).await;
                Ok((conn.clone(), refuse_on_error(&conn, checked)?))
            })
            .await;
        let (conn, (plain_port, send, ours)) = self.count(peer, Role::Prod, outcome)?;
        Ok(Accepted {
            channel: DatagramChannel { conn },
            plain_port,
            send,
            ours,
        })
    }

    /// CONS side: dials `peer` from `endpoint`, verifies its certificate as
    /// configured against `server_name`, and runs the proof. With
    /// `plain_port` it asks for the plaintext mode, its plain datagrams
    /// coming from that UDP port; returns whether the peer agreed.
    pub async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        peer: SocketAddr,
        server_name: &str,
        secret: &[u8; 32],
        plain_port: Option<u16>,
    ) -> Result<(DatagramChannel, bool), ChannelError> {
        let mut client = quinn::ClientConfig::new(Arc::clone(&self.client_tls) as _);
        client.transport_config(Arc::new(transport(route_udp_payload(peer))));
        let connecting = endpoint
            .connect_with(client, peer, server_name)
            .map_err(|e| ChannelError::config(format!("QUIC connect to {peer}: {e}")))?;
        let outcome = self
            .deadline(async {
                let conn = connecting
                    .await
                    .map_err(|source| ChannelError::Quic { source })?;
                let plain = cons_prove(&conn, secret, plain_port).await;
                Ok((conn.clone(), refuse_on_error(&conn, plain)?))
            })
            .await;
        let (conn, plain) = self.count(peer, Role::Cons, outcome)?;
        Ok((DatagramChannel { conn }, plain))
    }

    async fn deadline<T>(
        &self,
        work: impl Future<Output = Result<T, ChannelError>>,
    ) -> Result<T, ChannelError> {
        tokio::time::timeout(self.proof_timeout, work)
            .await
            .unwrap_or(Err(ChannelError::Timeout {
                timeout: self.proof_timeout,
            }))
    }

    fn count<T>(
        &self,
        peer: SocketAddr,
        role: Role,
        outcome: Result<T, ChannelError>,
    ) -> Result<T, ChannelError> {
        match outcome {
            Ok(done) => {
                self.failures.record_established();
                tracing::debug!(%peer, ?role, "datagram channel: peer proved the session secret");
                Ok(done)
            }
            Err(err) => {
                if let Some(reason) = err.reason() {
                    self.failures
                        .record_detail(reason, format!("{peer} (QUIC) {reason}: {err}"));
                }
                match role {
                    Role::Cons => {
                        tracing::warn!(%peer, reason = err.reason().map(FailureReason::as_str), error = %err, "datagram channel: connection refused")
                    }
                    Role::Prod => {
                        tracing::debug!(%peer, reason = err.reason().map(FailureReason::as_str), error = %err, "datagram channel: connection refused")
                    }
                }
                Err(err)
            }
        }
    }
}

/// What a PROD gateway answers a CONS gateway asking for plaintext
/// datagrams after the proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainDatagrams {
    /// Agreed: the flow goes to the kernel fast path.
    Allow,
    /// Answered without the flag: the flow's datagrams stay in QUIC (a
    /// rate-capped session, whose cap only userspace applies).
    Decline,
    /// Refused as a mode mismatch (no kernel path here, or another mode).
    Refuse,
}

/// A connection whose CONS gateway proved the secret; the PROD gateway's
/// own proof is still to be sent ([`Accepted::confirm`]).
pub struct Accepted {
    pub channel: DatagramChannel,
    /// Plaintext mode agreed: the UDP port the peer's plain datagrams come
    /// from (its address is the connection's remote address).
    pub plain_port: Option<u16>,
    send: quinn::SendStream,
    ours: [u8; PROOF_LEN],
}

impl Accepted {
    /// Sends this gateway's proof: from now on the peer sends datagrams.
    pub async fn confirm(mut self) -> Result<DatagramChannel, ChannelError> {
        write_proof(&mut self.send, &self.ours).await?;
        Ok(self.channel)
    }
}

/// Every endpoint accepts QUIC packets up to [`MAX_UDP_PAYLOAD`] (quinn's
/// default, 1,472, would cap MTU discovery, and so datagrams, at a
/// 1,500-byte path even between jumbo-frame hosts).
fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // In range (1200..=65527) by construction.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD);
    config
}

/// The UDP payload the kernel's route to `peer` carries: its MTU (the
/// interface's, a route's `mtu`, or a path MTU learned from ICMP) less the
/// IPv4 and UDP headers, within what QUIC and our endpoints take. None for
/// IPv6, or a route the kernel cannot tell.
pub fn route_udp_payload(peer: SocketAddr) -> Option<u16> {
    let SocketAddr::V4(_) = peer else {
        return None;
    };
    let route_mtu =
        std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).and_then(|socket| {
            // Connecting a UDP socket sends nothing: it picks the route.
            socket.connect(peer)?;
            nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::IpMtu)
                .map_err(io::Error::from)
        });
    match route_mtu {
        Ok(mtu) => Some(
            u16::try_from(mtu)
                .unwrap_or(u16::MAX)
                .saturating_sub(IPV4_UDP_HEADERS)
                .clamp(QUIC_MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        ),
        Err(err) => {
            tracing::debug!(%peer, error = %err, "datagram channel: route MTU unknown");
            None
        }
    }
}

/// The transport settings of a datagram channel whose route carries UDP
/// payloads of `route_payload` bytes (None: unknown, so discovered).
fn transport(route_payload: Option<u16>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // One stream: the proof's. None of the peer's own.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        IDLE_TIMEOUT_MS,
    ))));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // BBR paces to the measured bottleneck instead of halving on every
    // loss: datagram flows lose packets as UDP does, and a loss-based
    // controller would starve them.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    // Packets start at the route's MTU and never go under it. Congestion
    // loss of large packets makes quinn suspect an MTU black hole and fall
    // back to `min_mtu`; at quinn's default (1,200) every datagram larger
    // than that would then be dropped as oversize until the next search,
    // which on a jumbo-frame path stalled 8,900-byte datagrams for seconds
    // at a time. The operator sets a path narrower than its ends' interfaces
    // as the route's MTU (`ip route ... mtu N`), which is read here.
    // Where the route's MTU is unknown (IPv6), packets start at
    // [`FALLBACK_UDP_PAYLOAD`] and discovery searches above it, up to what
    // GSO batches carry.
    let floor = route_payload.unwrap_or(FALLBACK_UDP_PAYLOAD);
    t.min_mtu(floor);
    t.initial_mtu(floor);
    t.mtu_discovery_config(route_payload.is_none().then(|| {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(GSO_MAX_UDP_PAYLOAD);
        mtu.black_hole_cooldown(Duration::from_secs(5));
        mtu
    }));
    // Jumbo packets go one per send: ten of them overflow a GSO send.
    t.enable_segmentation_offload(floor <= GSO_MAX_UDP_PAYLOAD);
    t
}

/// Closes `conn` when its proof exchange failed (the peer learns at once).
fn refuse_on_error<T>(
    conn: &quinn::Connection,
    outcome: Result<T, ChannelError>,
) -> Result<T, ChannelError> {
    if outcome.is_err() {
        conn.close(quinn::VarInt::from_u32(CLOSE_BAD_PROOF), b"refused");
    }
    outcome
}

fn exporter(conn: &quinn::Connection) -> Result<[u8; EXPORTER_LEN], ChannelError> {
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .map_err(|_| ChannelError::config("QUIC: exporting keying material failed"))?;
    Ok(exporter)
}

fn flags_of(plain: bool) -> u8 {
    if plain { FLAG_PLAINTEXT_AFTER_AUTH } else { 0 }
}

/// CONS side of the proof (see the module's doc): ours (and, asking for
/// the plaintext mode, the port of our plain datagrams), then the PROD
/// gateway's, whose flags say whether it agreed.
async fn cons_prove(
    conn: &quinn::Connection,
    secret: &[u8; 32],
    plain_port: Option<u16>,
) -> Result<bool, ChannelError> {
    let exporter = exporter(conn)?;
    let flags = flags_of(plain_port.is_some());
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|source| ChannelError::Quic { source })?;
    let ours = proof::compute(secret, Role::Cons, flags, &exporter);
    let mut message = ours.to_vec();
    if let Some(port) = plain_port {
        message.extend_from_slice(&port.to_be_bytes());
    }
    write_proof(&mut send, &message).await?;
    let theirs = read_exact::<PROOF_LEN>(&mut recv).await?;
    let their_flags = check(secret, Role::Prod, &exporter, &theirs)?;
    expect_end(&mut recv).await?;
    if their_flags != flags && their_flags != 0 {
        return Err(ChannelError::BadProof {
            detail: "the peer answered a mode it was not asked for",
        });
    }
    Ok(their_flags == FLAG_PLAINTEXT_AFTER_AUTH)
}

/// PROD side: checks the CONS gateway's proof and prepares ours with the
/// agreed flags. A CONS gateway asking for the plaintext mode is refused
/// (mode mismatch) or declined (answered without the flag) as `plain` says.
async fn check_cons_proof(
    conn: &quinn::Connection,
    secret: &[u8; 32],
    plain: PlainDatagrams,
) -> Result<(Option<u16>, quinn::SendStream, [u8; PROOF_LEN]), ChannelError> {
    let exporter = exporter(conn)?;
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|source| ChannelError::Quic { source })?;
    let theirs = read_exact::<PROOF_LEN>(&mut recv).await?;
    let flags = check(secret, Role::Cons, &exporter, &theirs)?;
    let (plain_port, answer) = if flags == FLAG_PLAINTEXT_AFTER_AUTH {
        if plain == PlainDatagrams::Refuse {
            return Err(ChannelError::ModeMismatch {
                ours: "has no kernel UDP path for plaintext after authentication",
                theirs: "wants plaintext after authentication",
            });
        }
        let port = u16::from_be_bytes(read_exact::<2>(&mut recv).await?);
        match plain {
            PlainDatagrams::Allow => (Some(port), flags),
            _ => (None, 0),
        }
    } else {
        (None, flags)
    };
    expect_end(&mut recv).await?;
    let ours = proof::compute(secret, Role::Prod, answer, &exporter);
    Ok((plain_port, send, ours))
}

/// Verifies a proof; returns its flags.
fn check(
    secret: &[u8; 32],
    from: Role,
    exporter: &[u8; EXPORTER_LEN],
    theirs: &[u8; PROOF_LEN],
) -> Result<u8, ChannelError> {
    match proof::verify(secret, from, exporter, theirs) {
        Ok(flags) => Ok(flags),
        Err(ProofError::Malformed) => Err(ChannelError::BadProof {
            detail: "malformed proof message",
        }),
        Err(ProofError::Mismatch) => Err(ChannelError::BadProof {
            detail: "MAC mismatch (wrong session secret, or a proof replayed from another connection)",
        }),
    }
}

async fn write_proof(send: &mut quinn::SendStream, message: &[u8]) -> Result<(), ChannelError> {
    let failed = |err: quinn::WriteError| match err {
        quinn::WriteError::ConnectionLost(source) => ChannelError::Quic { source },
        other => ChannelError::Io {
            source: io::Error::other(other),
        },
    };
    send.write_all(message).await.map_err(failed)?;
    send.finish().map_err(|e| ChannelError::Io {
        source: io::Error::other(e),
    })
}

fn read_failed(err: quinn::ReadError) -> ChannelError {
    match err {
        quinn::ReadError::ConnectionLost(source) => ChannelError::Quic { source },
        other => ChannelError::Io {
            source: io::Error::other(other),
        },
    }
}

/// Exactly `N` bytes of the proof stream.
async fn read_exact<const N: usize>(recv: &mut quinn::RecvStream) -> Result<[u8; N], ChannelError> {
    let mut bytes = [0u8; N];
    recv.read_exact(&mut bytes).await.map_err(|err| match err {
        quinn::ReadExactError::FinishedEarly(_) => ChannelError::BadProof {
            detail: "malformed proof message",
        },
        quinn::ReadExactError::ReadError(e) => read_failed(e),
    })?;
    Ok(bytes)
}

/// The end of the proof stream: nothing may follow the message.
async fn expect_end(recv: &mut quinn::RecvStream) -> Result<(), ChannelError> {
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await.map_err(read_failed)? {
        None => Ok(()),
        Some(_) => Err(ChannelError::BadProof {
            detail: "bytes after the proof",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_payload_is_the_routes_mtu_less_headers_within_quic_bounds() {
        // Loopback's MTU (65,536) is beyond what our endpoints take.
        let lo = route_udp_payload("127.0.0.1:9".parse().unwrap());
        assert_eq!(lo, Some(MAX_UDP_PAYLOAD));
        // IPv6 routes are not read: the fallback floor and discovery apply.
        assert_eq!(route_udp_payload("[::1]:9".parse().unwrap()), None);
    }

    #[test]
    fn a_known_route_fixes_the_packet_size_and_an_unknown_one_is_discovered() {
        let known = transport(Some(8_972));
        let unknown = transport(None);
        // TransportConfig exposes no getters: its Debug output names them.
        let known = format!("{known:?}");
        let unknown = format!("{unknown:?}");
        assert!(known.contains("min_mtu: 8972"), "{known}");
        assert!(known.contains("mtu_discovery_config: None"), "{known}");
        assert!(unknown.contains("min_mtu: 1452"), "{unknown}");
        assert!(unknown.contains("upper_bound: 6500"), "{unknown}");
        // Ten jumbo packets would overflow one GSO send: one per send.
        assert!(
            known.contains("enable_segmentation_offload: false"),
            "{known}"
        );
        assert!(
            format!("{:?}", transport(Some(1_472))).contains("enable_segmentation_offload: true")
        );
        assert!(
            unknown.contains("enable_segmentation_offload: true"),
            "{unknown}"
        );
    }
}
