//! The secure gateway-to-gateway data channel.
//!
//! The CONS gateway dials the PROD gateway's WAN listener and calls
//! [`connect`]; the PROD gateway calls [`accept`] on the connection. Both run
//! a TLS handshake (TLS 1.3 only unless TLS 1.2 is allowed; AEAD suites only)
//! and then the per-session mutual proof ([`proof`]): each side proves it
//! holds the session's 32-byte secret, bound to this TLS connection by a TLS
//! exporter, and checks the peer's proof in constant time. Only then does
//! [`accept`] / [`connect`] return a [`Channel`]; the caller opens the LAN
//! side (dials ProdApp) only after that, so nothing of a failed connection
//! ever reaches an application. Failures are counted by reason
//! ([`ChannelFailures`]).
//!
//! [`relay_channel`] then relays one LAN connection over the channel, on the
//! best path this kernel and this connection allow ([`ChannelPath`]):
//! 1. kernel TLS fed and drained by splice ([`ktls`]);
//! 2. our userspace record layer with large batches ([`userspace`]);
//! 3. in the opt-in plaintext mode, the plaintext relay engine end to end
//!    on the gateway's data path ([`ChannelPaths::path`], e.g. sockmap), after
//!    both sides left TLS with close_notify.
//!
//! Sockmap redirect into a kTLS socket is not used: it failed (EINVAL when
//! setting the keys on a socket in a SockHash) on every kernel tried; see
//! docs and the reference notes.
//!
//! Submodules: [`args`] (the `s2cs serve` flags of the channel and their
//! checks), `mode` ([`ChannelMode`]), [`config`] (certificates, verification,
//! settings), [`identity`] (this gateway's certificate in use, rotated by a
//! reload), [`pem`]
//! (reading certificate, key and CA files),
//! `handshake` (the handshake driver and proof exchange), [`proof`] (the
//! proof message), `record` (the TLS record layer after the handshake,
//! KeyUpdate included), [`record_speed`] (how fast
//! this CPU seals and opens records, for `s2cs check` and the bench), `reader` (the receive side of the userspace path
//! without sockets: records in, plaintext and control out), `traffic` (the
//! TLS 1.3 traffic secrets: captured per connection, and the key schedule
//! for key updates), `userspace` and
//! `ktls` (the two TLS data paths), [`quic`] (the datagram channel of UDP
//! sessions: QUIC with the same TLS settings and proof), [`error`] (errors
//! and counters). With the `fuzzing` feature `record`, `reader` and
//! `traffic` are public, for the fuzz targets in `fuzz/`.
pub mod args;
pub mod config;
pub mod error;
mod handshake;
pub mod identity;
mod key_updates;
mod ktls;
mod ktls_probe;
mod mode;
pub mod pem;
pub mod proof;
pub mod quic;
#[cfg(feature = "fuzzing")]
pub mod reader;
#[cfg(not(feature = "fuzzing"))]
pub(crate) mod reader;
#[cfg(feature = "fuzzing")]
pub mod record;
#[cfg(not(feature = "fuzzing"))]
pub(crate) mod record;
pub mod record_speed;
#[cfg(feature = "fuzzing")]
pub mod traffic;
#[cfg(not(feature = "fuzzing"))]
pub(crate) mod traffic;
mod userspace;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};
use tokio::net::TcpStream;

pub use config::{
    BadFingerprint, CertSource, ChannelConfig, ChannelSettings, Fingerprint, PeerVerification,
};
pub use error::{ChannelError, ChannelFailures, ChannelRelayError, FailureReason};
pub use key_updates::KeyUpdates;
pub use ktls_probe::{KtlsSupport, available_ulps, probe_ktls, verify_ktls_wire};
pub use mode::ChannelMode;
pub use pem::PemFileError;

use crate::relay::{ConnCounters, DataPath, RelayEngine};
use control::Role;
use record::{Opener, Sealer, Secrets, Version};
use traffic::SecretCapture;

/// The TLS server name the CONS gateway verifies the PROD gateway's
/// certificate against: the IP address it dialled (the PROD gateway's
/// advertised listener address; IPv4-mapped IPv6 as IPv4). It matters only
/// with CA verification, where the certificate must carry that address as
/// an IP subject alternative name; pinning ignores names, and the mutual
/// proof of the session secret authenticates the peer in every case.
pub fn server_name(peer: SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

/// An authenticated gateway-to-gateway connection, ready to relay.
pub struct Channel {
    tcp: TcpStream,
    role: Role,
    peer: Option<SocketAddr>,
    /// None: plaintext after authentication.
    secrets: Option<Secrets>,
    info: ChannelInfo,
    /// Records sealed under one AES-GCM key before we update it.
    aes_gcm_record_limit: u64,
    key_updates: Arc<KeyUpdates>,
}

/// What was negotiated on a channel.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub protocol: &'static str,
    /// The negotiated cipher suite.
    pub cipher_suite: &'static str,
    /// TLS was left after the proof.
    pub plaintext_after_auth: bool,
    /// SHA-256 of the peer's certificate, if it presented one.
    pub peer_fingerprint: Option<Fingerprint>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("role", &self.role)
            .field("peer", &self.peer)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Negotiated parameters.
    pub fn info(&self) -> &ChannelInfo {
        &self.info
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Fault injection for tests: sends `data` as TLS application data, then
    /// a fatal alert with `description`, then closes. Not for production use.
    #[doc(hidden)]
    pub async fn send_then_alert(self, data: &[u8], description: u8) -> std::io::Result<()> {
        let secrets = self
            .secrets
            .ok_or_else(|| std::io::Error::other("plaintext channel"))?;
        let mut sealer = Sealer::new(secrets.version, secrets.tx).map_err(std::io::Error::other)?;
        for chunk in data.chunks(record::MAX_PLAINTEXT) {
            let rec = sealer
                .seal_to_vec(record::CONTENT_APPLICATION_DATA, chunk)
                .map_err(|e| std::io::Error::other(e.as_str()))?;
            crate::sockets::write_all(&self.tcp, &rec).await?;
        }
        let alert = sealer
            .seal_to_vec(record::CONTENT_ALERT, &[2, description])
            .map_err(|e| std::io::Error::other(e.as_str()))?;
        crate::sockets::write_all(&self.tcp, &alert).await?;
        crate::sockets::shutdown_write(&self.tcp)
    }
}

/// PROD side: runs the TLS server handshake and the mutual proof on an
/// accepted WAN connection. On error the connection is closed and counted.
pub async fn accept(
    tcp: TcpStream,
    cfg: &ChannelConfig,
    secret: &[u8; 32],
) -> Result<Channel, ChannelError> {
    // This connection's own configuration, to capture its traffic secrets.
    let capture = Arc::new(SecretCapture::default());
    let mut server = (*cfg.server).clone();
    server.key_log = capture.clone();
    let conn = ServerConnection::new(Arc::new(server))
        .map_err(|e| ChannelError::config(format!("TLS server: {e}")))?;
    let conn = Connection::Server(conn);
    establish(tcp, cfg, conn, &capture, Role::Prod, secret).await
}

/// CONS side: runs the TLS client handshake (verifying the server's
/// certificate as configured against `server_name`) and the mutual proof.
pub async fn connect(
    tcp: TcpStream,
    cfg: &ChannelConfig,
    server_name: &str,
    secret: &[u8; 32],
) -> Result<Channel, ChannelError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ChannelError::config(format!("server name {server_name:?}: {e}")))?;
    // This connection's own configuration, to capture its traffic secrets.
    let capture = Arc::new(SecretCapture::default());
    let mut client = (*cfg.client).clone();
    client.key_log = capture.clone();
    let conn = ClientConnection::new(Arc::new(client), name)
        .map_err(|e| ChannelError::config(format!("TLS client: {e}")))?;
    let conn = Connection::Client(conn);
    establish(tcp, cfg, conn, &capture, Role::Cons, secret).await
}

async fn establish(
    tcp: TcpStream,
    cfg: &ChannelConfig,
    conn: Connection,
    capture: &SecretCapture,
    role: Role,
    secret: &[u8; 32],
) -> Result<Channel, ChannelError> {
    let peer = tcp.peer_addr().ok();
    let _ = tcp.set_nodelay(true);
    let outcome = tokio::time::timeout(
        cfg.proof_timeout,
        handshake::establish(&tcp, conn, capture, role, secret, cfg.plaintext_after_auth),
    )
    .await
    .unwrap_or(Err(ChannelError::Timeout {
        timeout: cfg.proof_timeout,
    }));
    match outcome {
        Ok(done) => {
            cfg.failures.record_established();
            let info = ChannelInfo {
                protocol: done.protocol,
                cipher_suite: done.cipher,
                plaintext_after_auth: done.secrets.is_none(),
                peer_fingerprint: done.peer_fingerprint,
            };
            tracing::debug!(
                ?peer,
                ?role,
                protocol = info.protocol,
                suite = info.cipher_suite,
                "channel: peer proved the session secret"
            );
            Ok(Channel {
                tcp,
                role,
                peer,
                secrets: done.secrets,
                info,
                aes_gcm_record_limit: cfg.aes_gcm_record_limit,
                key_updates: Arc::clone(&cfg.key_updates),
            })
        }
        Err(err) => {
            let peer_text = peer.map_or_else(|| "?".to_owned(), |p| p.to_string());
            if let Some(reason) = err.reason() {
                cfg.failures
                    .record_detail(reason, format!("{peer_text} {reason}: {err}"));
            }
            match role {
                // Our own dial: one line each, there are few.
                Role::Cons => {
                    tracing::warn!(?peer, ?role, reason = err.reason().map(FailureReason::as_str), error = %err, "channel: connection refused")
                }
                // Incoming: anyone on the WAN can make these; the refusal
                // log sums them up once a second.
                Role::Prod => {
                    tracing::debug!(?peer, ?role, reason = err.reason().map(FailureReason::as_str), error = %err, "channel: connection refused")
                }
            }
            drop(tcp);
            Err(err)
        }
    }
}

/// What the kernel offers the channel relay, and the plaintext data path the
/// gateway chose.
#[derive(Clone)]
pub struct ChannelPaths {
    /// Kernel TLS, as probed.
    pub ktls: KtlsSupport,
    /// The plaintext relay engine for the plaintext-after-authentication mode.
    pub engine: RelayEngine,
    /// The data path of that mode: the one the gateway relays plaintext legs
    /// on (`s2cs serve --data-path`); `engine` must be able to run it. A
    /// connection the path cannot take falls back as [`RelayEngine::relay`]
    /// does (sockmap to splice).
    pub path: DataPath,
}

impl ChannelPaths {
    /// Probes kernel TLS now (blocking, a few milliseconds).
    pub fn detect(engine: RelayEngine, path: DataPath) -> Self {
        ChannelPaths {
            ktls: probe_ktls(),
            engine,
            path,
        }
    }

    /// Never uses kernel TLS.
    pub fn without_ktls(engine: RelayEngine, path: DataPath) -> Self {
        ChannelPaths {
            ktls: KtlsSupport::unavailable("kernel TLS disabled by configuration"),
            engine,
            path,
        }
    }
}

/// The data path a channel connection took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelPath {
    /// Kernel TLS, fed and drained by splice.
    KernelTls,
    /// Our userspace record layer.
    UserspaceTls,
    /// Plaintext after authentication, over the plaintext relay engine.
    Plaintext(DataPath),
}

impl ChannelPath {
    /// The path's name in logs and the `path` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelPath::KernelTls => "ktls-splice",
            ChannelPath::UserspaceTls => "userspace-tls",
            ChannelPath::Plaintext(DataPath::Sockmap) => "plaintext-sockmap",
            ChannelPath::Plaintext(DataPath::Splice) => "plaintext-splice",
            ChannelPath::Plaintext(DataPath::Copy) => "plaintext-copy",
        }
    }
}

impl fmt::Display for ChannelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Relays `lan` over `channel` until both directions are closed, on the best
/// path available. Counters: on the CONS side the LAN socket is the client,
/// so LAN -> channel counts as `to_server`; on the PROD side it is the server.
/// On error both sockets are reset.
pub async fn relay_channel(
    channel: Channel,
    lan: TcpStream,
    counters: &ConnCounters,
    caps: &ChannelPaths,
) -> Result<ChannelPath, ChannelRelayError> {
    let Channel {
        tcp,
        role,
        peer,
        secrets,
        info,
        aes_gcm_record_limit,
        key_updates,
    } = channel;
    let _ = lan.set_nodelay(true);
    let (to_wan, to_lan) = match role {
        Role::Cons => (&counters.to_server, &counters.to_client),
        Role::Prod => (&counters.to_client, &counters.to_server),
    };
    let Some(secrets) = secrets else {
        let path = caps.path;
        tracing::info!(?peer, ?role, path = %ChannelPath::Plaintext(path), "channel: plaintext after authentication (no encryption on the WAN)");
        let (client, server) = match role {
            Role::Cons => (lan, tcp),
            Role::Prod => (tcp, lan),
        };
        let summary = caps.engine.relay(path, client, server, counters).await?;
        if summary.path != path {
            tracing::info!(?peer, planned = %path, used = %summary.path, "channel: this connection fell back to another plaintext path");
        }
        return Ok(ChannelPath::Plaintext(summary.path));
    };
    // Only TLS 1.3 has key updates; AES-GCM needs them on long streams.
    let needs_key_updates =
        secrets.version == Version::Tls13 && secrets.tx.cipher.has_record_limit();
    let (path, why) = if !caps.ktls.available() {
        (
            ChannelPath::UserspaceTls,
            format!("no kernel TLS: {}", caps.ktls.detail),
        )
    } else if needs_key_updates && !caps.ktls.rekey {
        (
            ChannelPath::UserspaceTls,
            format!(
                "{} needs key updates on long streams and this kernel's TLS cannot take new keys \
                 (Linux 6.14 and later can): userspace TLS for this connection",
                info.cipher_suite
            ),
        )
    } else {
        match ktls::enable(&tcp, &secrets) {
            Ok(()) => (
                ChannelPath::KernelTls,
                "kernel TLS took the keys".to_string(),
            ),
            Err(ktls::EnableError::Fallback(err)) => (
                ChannelPath::UserspaceTls,
                format!("the kernel refused the keys ({err}); userspace TLS"),
            ),
            Err(ktls::EnableError::Broken(err)) => {
                crate::sockets::reset_on_close(&lan);
                crate::sockets::reset_on_close(&tcp);
                tracing::warn!(?peer, error = %err, "channel: kernel TLS took the TX key but refused the RX key");
                return Err(ChannelRelayError::Channel { source: err });
            }
        }
    };
    tracing::info!(?peer, ?role, %path, why, protocol = info.protocol, suite = info.cipher_suite, "channel: relaying");
    let Secrets { version, tx, rx } = secrets;
    let tx_record_limit = if tx.cipher.has_record_limit() {
        aes_gcm_record_limit
    } else {
        u64::MAX
    };
    let outcome = match path {
        ChannelPath::KernelTls => {
            let rekeying = ktls::Rekeying {
                tx: ktls::KeyChain::new(version, tx),
                rx: ktls::KeyChain::new(version, rx),
                tx_record_limit,
                counters: &key_updates,
            };
            ktls::relay(&lan, &tcp, rekeying, to_wan, to_lan).await
        }
        _ => {
            let sealer = Sealer::new(version, tx);
            let opener = Opener::new(version, rx);
            match (sealer, opener) {
                (Ok(mut sealer), Ok(opener)) => {
                    sealer.set_key_update_limit(tx_record_limit);
                    userspace::relay(&lan, &tcp, sealer, opener, &key_updates, to_wan, to_lan).await
                }
                (Err(reason), _) | (_, Err(reason)) => Err(ChannelRelayError::Record { reason }),
            }
        }
    };
    match outcome {
        Ok(()) => {
            tracing::debug!(?peer, %path, "channel: connection closed");
            Ok(path)
        }
        Err(err) => {
            crate::sockets::reset_on_close(&lan);
            crate::sockets::reset_on_close(&tcp);
            tracing::info!(?peer, %path, error = %err, "channel: connection reset");
            Err(err)
        }
    }
}
