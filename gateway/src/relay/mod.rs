//! The relay engine: moves the bytes of one proxied TCP connection between the
//! socket the gateway accepted (the *client* side) and the one it dialled (the
//! *server* side), in both directions, until both are closed.
//!
//! Three data paths sit behind [`RelayEngine::relay`]:
//! - [`DataPath::Sockmap`]: both sockets in a SockHash, an sk_skb verdict
//!   program redirects each one's bytes to the other's egress (`sockmap.rs`);
//! - [`DataPath::Splice`]: splice(2) through a pipe per direction (`splice.rs`);
//! - [`DataPath::Copy`]: userspace copy with large buffers (`copy.rs`).
//!
//! Every path guarantees the same semantics: full duplex, half-close carried
//! only after every earlier byte was delivered, a reset on one side resets the
//! other, and live byte counters per direction.
mod copy;
mod sockmap;
mod splice;
mod watch;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::ebpf::{EbpfError, KernelRelay};

/// How the bytes of a plaintext connection are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// In the kernel, by an eBPF sk_skb verdict on a SockHash.
    Sockmap,
    /// splice(2) through a pipe: no copy through userspace.
    Splice,
    /// Userspace copy: portable, and the one used where TLS runs in userspace.
    Copy,
}

impl DataPath {
    pub const ALL: [DataPath; 3] = [DataPath::Sockmap, DataPath::Splice, DataPath::Copy];

    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Sockmap => "sockmap",
            DataPath::Splice => "splice",
            DataPath::Copy => "copy",
        }
    }
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sockmap" => Ok(DataPath::Sockmap),
            "splice" => Ok(DataPath::Splice),
            "copy" => Ok(DataPath::Copy),
            other => Err(format!(
                "unknown data path {other:?}: expected sockmap, splice or copy"
            )),
        }
    }
}

/// Bytes waiting in the kernel between a pair's sockets above which the
/// sockmap path's flow gate makes the sender wait.
pub use sockmap::BACKLOG_HIGH as SOCKMAP_GATE_THRESHOLD;

/// The path `--data-path auto` picks for plaintext legs: splice, without
/// loading the kernel relay.
pub const AUTO_PATH: DataPath = DataPath::Splice;

/// Why `auto` is splice, as `s2cs serve` logs it and `s2cs check` shows it.
pub const AUTO_REASON: &str = "splice moved bytes faster than the in-kernel sockmap relay on every \
     kernel measured (the sockmap redirect runs in a kernel worker), and the sockmap redirect \
     queue has no backpressure of its own for a reader that stops, and on some kernels (6.18 \
     seen) its verdict path can pass retransmitted bytes twice, which the sockmap relay detects \
     and answers with a reset; sockmap is opt-in (--data-path sockmap, see docs/ARCHITECTURE.md)";

/// Live byte counters of one connection (and, summed, of a session).
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Bytes from the client side delivered to the server side.
    pub to_server: AtomicU64,
    /// Bytes from the server side delivered to the client side.
    pub to_client: AtomicU64,
}

impl ConnCounters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.to_server.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// What a finished relay reports (`path` is the one really used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelaySummary {
    pub path: DataPath,
    pub to_server: u64,
    pub to_client: u64,
}

/// Why relaying a connection stopped abnormally (the sockets were reset).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("the {side} side failed: {source}")]
    Io {
        side: Side,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel relay could not take the connection")]
    Kernel(#[from] EbpfError),
    /// The kernel's sk_skb verdict path handed on more bytes from one side
    /// than that side's TCP received: it re-read data (see `sockmap.rs`).
    #[error(
        "the kernel relay passed on {excess} bytes more from the {side} side than TCP received \
         from it (kernel sockmap defect: bytes were duplicated); the connection was reset so the \
         damage is not delivered as a clean stream; use --data-path splice"
    )]
    KernelDuplicated { side: Side, excess: u64 },
    #[error("data path {0} is not available in this gateway (see `s2cs check`)")]
    Unavailable(DataPath),
}

/// The two ends of a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The socket the gateway accepted.
    Client,
    /// The socket the gateway dialled.
    Server,
}

impl Side {
    /// The other end of the connection.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// Relays connections over the data paths this gateway has.
#[derive(Clone)]
pub struct RelayEngine {
    kernel: Option<Arc<KernelRelay>>,
}

impl RelayEngine {
    /// An engine with only the userspace paths (splice and copy).
    pub fn userspace() -> Self {
        RelayEngine { kernel: None }
    }

    /// An engine that can also relay in the kernel.
    pub fn with_kernel(kernel: Arc<KernelRelay>) -> Self {
        RelayEngine {
            kernel: Some(kernel),
        }
    }

    /// The loaded kernel relay, if any (for occupancy checks and metrics).
    pub fn kernel(&self) -> Option<&Arc<KernelRelay>> {
        self.kernel.as_ref()
    }

    /// Relays until both directions are closed. On error both sockets are
    /// reset (SO_LINGER 0), so each peer learns of the failure at once.
    pub async fn relay(
        &self,
        path: DataPath,
        client: TcpStream,
        server: TcpStream,
        counters: &ConnCounters,
    ) -> Result<RelaySummary, RelayError> {
        let outcome = match path {
            DataPath::Copy => copy::relay(&client, &server, counters).await.map(|()| path),
            DataPath::Splice => splice::relay(&client, &server, counters)
                .await
                .map(|()| path),
            DataPath::Sockmap => {
                let kernel = self.kernel.as_ref().ok_or(RelayError::Unavailable(path))?;
                sockmap::relay(kernel, &client, &server, counters).await
            }
        };
        if outcome.is_err() {
            crate::sockets::reset_on_close(&client);
            crate::sockets::reset_on_close(&server);
        }
        // The path really taken: sockmap falls back for connections the
        // kernel cannot take (see `sockmap.rs`).
        let path = outcome?;
        let (to_server, to_client) = counters.snapshot();
        Ok(RelaySummary {
            path,
            to_server,
            to_client,
        })
    }
}
