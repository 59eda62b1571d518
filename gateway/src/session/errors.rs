//! The data plane's errors: a whole session's ([`SessionError`], returned
//! to the control plane) and one connection's ([`ConnError`], logged).
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use control::DataPlaneError;

use super::wan::WanLegError;
use crate::ebpf::EbpfError;
use crate::error_chain::error_chain;
use crate::relay::{DataPath, RelayError};
use crate::xdp::XdpError;

/// Data-plane failures of a whole session (a connection's failures are only
/// logged: they end that connection, not the session).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Operator: `--data-path sockmap` was asked for but the kernel relay
    /// cannot be loaded here (see `s2cs check`).
    #[error("data path {path} needs the kernel relay, which could not be loaded")]
    KernelUnavailable {
        path: DataPath,
        #[source]
        source: EbpfError,
    },
    /// System: a listener handed over by the control plane is unusable.
    #[error("registering listener {addr} with the runtime failed")]
    Listener {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Control-plane bug: the session already runs.
    #[error("session {uid} is already running in the data plane")]
    AlreadyRunning { uid: String },
    /// System: the XDP guard refused an allow entry (e.g. its map is full).
    #[error("opening port {port} in the XDP guard failed")]
    Xdp {
        port: u16,
        #[source]
        source: Box<XdpError>,
    },
    /// The UDP side of the session's ports could not be set up.
    #[error(transparent)]
    Udp(#[from] crate::udp::UdpError),
}

impl From<SessionError> for DataPlaneError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::AlreadyRunning { uid } => DataPlaneError::AlreadyRunning { uid },
            SessionError::Listener { addr, source } => DataPlaneError::Io {
                context: format!("registering listener {addr} with the runtime"),
                source,
            },
            other => DataPlaneError::Other(error_chain(&other)),
        }
    }
}

/// Why one relayed connection ended abnormally (logged, never returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The target refused or is unreachable.
    #[error("dialling {target} failed")]
    Dial {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The target did not answer in time.
    #[error("dialling {target} timed out after {timeout:?}")]
    DialTimeout {
        target: SocketAddr,
        timeout: Duration,
    },
    /// A socket option could not be set (e.g. the pacing rate).
    #[error("setting {option} failed")]
    Socket {
        option: &'static str,
        #[source]
        source: io::Error,
    },
    /// The WAN leg could not be set up.
    #[error("setting up the WAN leg failed")]
    Channel(#[from] WanLegError),
    /// Relaying stopped with an error (the sockets were reset).
    #[error("relaying failed")]
    Relay(#[from] RelayError),
    /// Relaying over the secure channel stopped with an error.
    #[error("relaying over the secure channel failed")]
    SecureRelay(#[from] crate::channel::ChannelRelayError),
}
