//! What can go wrong on the channel: [`ChannelError`] for establishing it
//! (TLS handshake and mutual proof), [`ChannelRelayError`] for relaying over
//! it, and [`ChannelFailures`], the per-reason counters of refused
//! connections that the caller reads (metrics are built on them).
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::relay::RelayError;
use crate::sockets::{self, Reported};

/// Why a channel could not be established, in categories worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// No handshake and proof within the deadline (silent or stalled peer).
    Timeout,
    /// The peer does not speak TLS (plain TCP client, garbage).
    NotTls,
    /// The TLS handshake failed (incompatible or misbehaving TLS peer).
    Handshake,
    /// The peer's certificate was rejected (pin or CA verification).
    Certificate,
    /// The peer's proof of the session secret was wrong or malformed.
    BadProof,
    /// The two gateways are configured for different channel modes.
    ModeMismatch,
    /// The peer closed the connection before the proof was complete.
    PeerClosed,
    /// A socket error.
    Io,
    /// Not admitted: the gateway's budget of unauthenticated connections
    /// was used up.
    GatewayBusy,
    /// Not admitted: its source had too many unauthenticated connections.
    SourceBusy,
    /// Not admitted: it waited too long in its source's queue.
    QueueTimeout,
    /// It proved a legacy (uid-derived) secret, but its session is pinned
    /// to another peer gateway.
    NotPinnedPeer,
}

impl FailureReason {
    /// Every reason, in the order of [`ChannelFailures`]' counters.
    pub const ALL: [FailureReason; 12] = [
        FailureReason::Timeout,
        FailureReason::NotTls,
        FailureReason::Handshake,
        FailureReason::Certificate,
        FailureReason::BadProof,
        FailureReason::ModeMismatch,
        FailureReason::PeerClosed,
        FailureReason::Io,
        FailureReason::GatewayBusy,
        FailureReason::SourceBusy,
        FailureReason::QueueTimeout,
        FailureReason::NotPinnedPeer,
    ];

    /// A short label (for logs and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::NotTls => "not_tls",
            FailureReason::Handshake => "handshake",
            FailureReason::Certificate => "certificate",
            FailureReason::BadProof => "bad_proof",
            FailureReason::ModeMismatch => "mode_mismatch",
            FailureReason::PeerClosed => "peer_closed",
            FailureReason::Io => "io",
            FailureReason::GatewayBusy => "gateway_busy",
            FailureReason::SourceBusy => "source_busy",
            FailureReason::QueueTimeout => "queue_timeout",
            FailureReason::NotPinnedPeer => "not_pinned_peer",
        }
    }

    fn index(self) -> usize {
        FailureReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

impl From<crate::wan_admission::Refusal> for FailureReason {
    fn from(refusal: crate::wan_admission::Refusal) -> Self {
        match refusal {
            crate::wan_admission::Refusal::GatewayBusy => FailureReason::GatewayBusy,
            crate::wan_admission::Refusal::SourceBusy => FailureReason::SourceBusy,
            crate::wan_admission::Refusal::QueueTimeout => FailureReason::QueueTimeout,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of connections refused by [`super::accept`] / [`super::connect`],
/// by reason, plus the channels established.
#[derive(Debug, Default)]
pub struct ChannelFailures {
    counts: [AtomicU64; 12],
    established: AtomicU64,
    /// The last refusal with its peer, for the log's summary.
    last: std::sync::Mutex<Option<String>>,
}

impl ChannelFailures {
    /// Connections refused for `reason`.
    pub fn get(&self, reason: FailureReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Connections refused for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Channels that completed the handshake and the mutual proof.
    pub fn established(&self) -> u64 {
        self.established.load(Ordering::Relaxed)
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(FailureReason, u64)> {
        FailureReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .collect()
    }

    /// Counts one refusal and remembers what it was (peer and error).
    pub fn record_detail(&self, reason: FailureReason, detail: String) {
        self.record(reason);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(detail);
    }

    /// The last refusal recorded with [`ChannelFailures::record_detail`].
    pub fn last_refusal(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts one connection refused for `reason`.
    pub fn record(&self, reason: FailureReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_established(&self) {
        self.established.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a channel could not be established. The connection is closed in
/// every case, and nothing was forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer did not complete the TLS handshake and the proof in time:
    /// a client that connects and sends nothing, or a stalled one.
    #[error("no TLS handshake and proof within {timeout:?}")]
    Timeout { timeout: Duration },
    /// The peer does not speak TLS (its first bytes are not a TLS record):
    /// a plain TCP client or a scanner; probably not a gateway at all.
    #[error("the peer does not speak TLS: {source}")]
    NotTls {
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake failed: the peer is incompatible (no common version
    /// or suite: is TLS 1.2 allowed on one side only?) or misbehaved.
    #[error("TLS handshake failed: {source}")]
    Handshake {
        #[source]
        source: rustls::Error,
    },
    /// The peer's certificate did not pass the configured verification
    /// (wrong pinned certificate, unknown CA, wrong name): probably the
    /// operator's configuration or a man in the middle.
    #[error("the peer's certificate was rejected (certificate verification failed): {source}")]
    Certificate {
        #[source]
        source: rustls::Error,
    },
    /// The peer's proof of the session secret did not verify: it holds
    /// another secret (another session, a stale one) or replayed a proof
    /// from another connection, or is a man in the middle.
    #[error("the peer's proof of the session secret is wrong: {detail}")]
    BadProof { detail: &'static str },
    /// One gateway wants plaintext after authentication and the other does
    /// not: an operator configuration mismatch.
    #[error("channel mode mismatch: this gateway {ours}, the peer {theirs}")]
    ModeMismatch {
        ours: &'static str,
        theirs: &'static str,
    },
    /// The peer closed the connection before the proof was complete.
    #[error("the peer closed the connection during the handshake")]
    PeerClosed,
    /// A socket error during the handshake.
    #[error("socket error during the handshake: {source}")]
    Io {
        #[source]
        source: io::Error,
    },
    /// The QUIC connection of a datagram channel failed before the proof
    /// was complete (handshake, certificate, idle, closed by the peer).
    #[error("QUIC connection failed: {source}")]
    Quic {
        #[source]
        source: quinn::ConnectionError,
    },
    /// The channel configuration is unusable (files, certificates, names);
    /// the operator must fix it. Never counted as a peer failure.
    #[error("channel configuration: {reason}")]
    Config { reason: String },
}

impl ChannelError {
    /// The counter this failure goes to (None for configuration errors,
    /// which are ours, not the peer's).
    pub fn reason(&self) -> Option<FailureReason> {
        Some(match self {
            ChannelError::Timeout { .. } => FailureReason::Timeout,
            ChannelError::NotTls { .. } => FailureReason::NotTls,
            ChannelError::Handshake { .. } => FailureReason::Handshake,
            ChannelError::Certificate { .. } => FailureReason::Certificate,
            ChannelError::BadProof { .. } => FailureReason::BadProof,
            ChannelError::ModeMismatch { .. } => FailureReason::ModeMismatch,
            ChannelError::PeerClosed => FailureReason::PeerClosed,
            ChannelError::Io { .. } => FailureReason::Io,
            ChannelError::Quic { source } => quic_reason(source),
            ChannelError::Config { .. } => return None,
        })
    }

    pub(super) fn config(reason: impl Into<String>) -> Self {
        ChannelError::Config {
            reason: reason.into(),
        }
    }
}

/// The counter of a QUIC connection that failed before its proof.
fn quic_reason(err: &quinn::ConnectionError) -> FailureReason {
    use quinn::ConnectionError as E;
    // A TLS alert travels as a QUIC CRYPTO_ERROR: 0x100 + the alert.
    let crypto = |code: u64| match code.checked_sub(0x100) {
        // bad_certificate (42) .. certificate_unknown (46), unknown_ca (48)
        Some(42..=46 | 48) => Some(FailureReason::Certificate),
        Some(0..=0xff) => Some(FailureReason::Handshake),
        _ => None,
    };
    match err {
        E::TimedOut => FailureReason::Timeout,
        E::TransportError(t) => crypto(u64::from(t.code)).unwrap_or(FailureReason::Handshake),
        E::ConnectionClosed(close) => {
            crypto(u64::from(close.error_code)).unwrap_or(FailureReason::PeerClosed)
        }
        E::ApplicationClosed(_) | E::Reset => FailureReason::PeerClosed,
        E::VersionMismatch => FailureReason::NotTls,
        E::LocallyClosed | E::CidsExhausted => FailureReason::Io,
    }
}

/// Why relaying over an established channel stopped abnormally. Both sockets
/// are reset, so each end learns of the failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelRelayError {
    /// The LAN-side socket failed (reset by the application, or unreachable).
    #[error("the LAN socket failed: {source}")]
    Lan {
        #[source]
        source: io::Error,
    },
    /// The channel's TCP connection failed (reset by the peer gateway).
    #[error("the channel socket failed: {source}")]
    Channel {
        #[source]
        source: io::Error,
    },
    /// The peer gateway sent a fatal TLS alert (it failed or aborted).
    #[error("the peer gateway sent TLS alert {description}")]
    Alert { description: u8 },
    /// A TLS record could not be decrypted or made no sense: the channel
    /// was tampered with or the peer is broken.
    #[error("bad TLS record from the peer gateway: {reason}")]
    Record { reason: &'static str },
    /// The peer updated its TLS keys (KeyUpdate) on a connection whose keys
    /// are in the kernel, and this kernel refused the next key (EBUSY: kernel
    /// TLS takes new keys from Linux 6.14 on), so the peer's next records
    /// could not be decrypted.
    #[error(
        "the peer gateway sent a TLS KeyUpdate and this kernel's TLS refused the next key (kernel \
         TLS rekeying needs Linux 6.14 or later); connection closed"
    )]
    KernelCannotRekey,
    /// The peer's TCP stream ended without close_notify: a truncation
    /// attack or a crashed peer; what arrived is not known to be complete.
    #[error("the channel ended without close_notify (truncated)")]
    Truncated,
    /// The plaintext relay (opt-in plaintext channel) failed.
    #[error(transparent)]
    Plain(#[from] RelayError),
}

/// Resolves with the first error (RST, timeout) reported on either socket
/// of a channel connection, as the relay's error.
pub(super) async fn first_error(lan: &TcpStream, wan: &TcpStream) -> ChannelRelayError {
    match sockets::first_error(lan, wan).await {
        Reported::First(source) => ChannelRelayError::Lan { source },
        Reported::Second(source) => ChannelRelayError::Channel { source },
    }
}
