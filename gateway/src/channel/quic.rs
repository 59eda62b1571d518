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
use super::proof::{self, EXPORTER_LABEL, EXPORTER_LEN, PROOF_LEN, ProofError};

/// The ALPN of a datagram channel (never accepted on the stream channel's
/// TCP listeners, nor the other way round).
pub const DATAGRAM_ALPN: &[u8] = b"s2cs-datagram/1";
/// Exporter context: a datagram channel's proof differs from a stream
/// channel's even under the same secret.
const EXPORTER_CONTEXT: &[u8] = b"s2cs datagram channel";
/// The largest UDP payload MTU discovery tries: a 9000-byte jumbo frame less
/// the IPv4 and UDP headers.
pub const MAX_UDP_PAYLOAD: u16 = 8972;
/// The UDP payload sent before MTU discovery has run: what a 1500-byte
/// Ethernet path carries under IPv6 (black-hole detection lowers it if not).
const INITIAL_UDP_PAYLOAD: u16 = 1452;
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
    client: quinn::ClientConfig,
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
        let transport = Arc::new(transport());
        let mut server_tls = (*cfg.server).clone();
        server_tls.alpn_protocols = vec![DATAGRAM_ALPN.to_vec()];
        let server_tls = QuicServerConfig::try_from(Arc::new(server_tls))
            .map_err(|e| ChannelError::config(format!("QUIC server TLS: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(Arc::clone(&transport));
        // The peer stays at the address that proved the secret.
        server.migration(false);

        let mut client_tls = (*cfg.client).clone();
        client_tls.alpn_protocols = vec![DATAGRAM_ALPN.to_vec()];
        let client_tls = QuicClientConfig::try_from(Arc::new(client_tls))
            .map_err(|e| ChannelError::config(format!("QUIC client TLS: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);
        Ok(QuicChannel {
            server,
            client,
            proof_timeout: cfg.proof_timeout,
            failures: Arc::clone(&cfg.failures),
        })
    }

    /// A PROD session's endpoint on its WAN port (`socket`, already bound).
    pub fn server_endpoint(&self, socket: std::net::UdpSocket) -> io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(self.server.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// A CONS session's endpoint for dialling (an ephemeral port on `bind`).
    pub fn client_endpoint(&self, bind: SocketAddr) -> io::Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind(bind)?;
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(self.client.clone());
        Ok(endpoint)
    }

    /// PROD side: the handshake and the proof of one incoming connection.
    /// On error the connection is closed and the failure counted.
    pub async fn accept(
        &self,
        incoming: quinn::Incoming,
        secret: &[u8; 32],
    ) -> Result<DatagramChannel, ChannelError> {
        let peer = incoming.remote_address();
        let outcome = self
            .deadline(async {
                let conn = incoming
                    .await
                    .map_err(|source| ChannelError::Quic { source })?;
                prove(&conn, Role::Prod, secret).await?;
                Ok(conn)
            })
            .await;
        self.count(peer, Role::Prod, outcome)
    }

    /// CONS side: dials `peer` from `endpoint`, verifies its certificate as
    /// configured against `server_name`, and runs the proof.
    pub async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        peer: SocketAddr,
        server_name: &str,
        secret: &[u8; 32],
    ) -> Result<DatagramChannel, ChannelError> {
        let connecting = endpoint
            .connect(peer, server_name)
            .map_err(|e| ChannelError::config(format!("QUIC connect to {peer}: {e}")))?;
        let outcome = self
            .deadline(async {
                let conn = connecting
                    .await
                    .map_err(|source| ChannelError::Quic { source })?;
                prove(&conn, Role::Cons, secret).await?;
                Ok(conn)
            })
            .await;
        self.count(peer, Role::Cons, outcome)
    }

    async fn deadline(
        &self,
        work: impl Future<Output = Result<quinn::Connection, ChannelError>>,
    ) -> Result<quinn::Connection, ChannelError> {
        tokio::time::timeout(self.proof_timeout, work)
            .await
            .unwrap_or(Err(ChannelError::Timeout {
                timeout: self.proof_timeout,
            }))
    }

    fn count(
        &self,
        peer: SocketAddr,
        role: Role,
        outcome: Result<quinn::Connection, ChannelError>,
    ) -> Result<DatagramChannel, ChannelError> {
        match outcome {
            Ok(conn) => {
                self.failures.record_established();
                tracing::debug!(%peer, ?role, max_payload = ?conn.max_datagram_size(), "datagram channel: peer proved the session secret");
                Ok(DatagramChannel { conn })
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

/// The transport settings of every datagram channel.
fn transport() -> quinn::TransportConfig {
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
    t.initial_mtu(INITIAL_UDP_PAYLOAD);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// The mutual proof on a fresh connection (see the module's doc).
async fn prove(
    conn: &quinn::Connection,
    role: Role,
    secret: &[u8; 32],
) -> Result<(), ChannelError> {
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .map_err(|_| ChannelError::config("QUIC: exporting keying material failed"))?;
    let ours = proof::compute(secret, role, 0, &exporter);
    let lost = |source| ChannelError::Quic { source };
    let checked = match role {
        Role::Cons => {
            let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
            write_proof(&mut send, &ours).await?;
            let theirs = read_proof(&mut recv).await?;
            check(secret, Role::Prod, &exporter, &theirs)
        }
        Role::Prod => {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(lost)?;
            let theirs = read_proof(&mut recv).await?;
            let checked = check(secret, Role::Cons, &exporter, &theirs);
            if checked.is_ok() {
                write_proof(&mut send, &ours).await?;
            }
            checked
        }
    };
    if checked.is_err() {
        conn.close(quinn::VarInt::from_u32(CLOSE_BAD_PROOF), b"bad proof");
    }
    checked
}

fn check(
    secret: &[u8; 32],
    from: Role,
    exporter: &[u8; EXPORTER_LEN],
    theirs: &[u8; PROOF_LEN],
) -> Result<(), ChannelError> {
    match proof::verify(secret, from, exporter, theirs) {
        Ok(0) => Ok(()),
        Ok(_) => Err(ChannelError::BadProof {
            detail: "flags on a datagram channel's proof",
        }),
        Err(ProofError::Malformed) => Err(ChannelError::BadProof {
            detail: "malformed proof message",
        }),
        Err(ProofError::Mismatch) => Err(ChannelError::BadProof {
            detail: "MAC mismatch (wrong session secret, or a proof replayed from another connection)",
        }),
    }
}

async fn write_proof(
    send: &mut quinn::SendStream,
    ours: &[u8; PROOF_LEN],
) -> Result<(), ChannelError> {
    let failed = |err: quinn::WriteError| match err {
        quinn::WriteError::ConnectionLost(source) => ChannelError::Quic { source },
        other => ChannelError::Io {
            source: io::Error::other(other),
        },
    };
    send.write_all(ours).await.map_err(failed)?;
    send.finish().map_err(|e| ChannelError::Io {
        source: io::Error::other(e),
    })
}

/// Exactly one proof, then the end of the stream.
async fn read_proof(recv: &mut quinn::RecvStream) -> Result<[u8; PROOF_LEN], ChannelError> {
    let failed = |err: quinn::ReadError| match err {
        quinn::ReadError::ConnectionLost(source) => ChannelError::Quic { source },
        other => ChannelError::Io {
            source: io::Error::other(other),
        },
    };
    let mut theirs = [0u8; PROOF_LEN];
    recv.read_exact(&mut theirs)
        .await
        .map_err(|err| match err {
            quinn::ReadExactError::FinishedEarly(_) => ChannelError::BadProof {
                detail: "malformed proof message",
            },
            quinn::ReadExactError::ReadError(e) => failed(e),
        })?;
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await.map_err(failed)? {
        None => Ok(theirs),
        Some(_) => Err(ChannelError::BadProof {
            detail: "bytes after the proof",
        }),
    }
}
