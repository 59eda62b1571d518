//! The options of a session's data plane: grace and dial timeouts, the
//! per-session connection cap, and dead-peer detection on WAN sockets.
#![forbid(unsafe_code)]

use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

use super::ConnError;

/// Tunables of the data plane.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// How long open connections may go on after their session is stopped
    /// before they are reset. Keep it short: `release` waits for it.
    pub stop_grace: Duration,
    /// How long dialling a target may take.
    pub dial_timeout: Duration,
    /// Open connections per session; further ones wait in the listen queue.
    pub max_connections: usize,
    /// Dead-peer detection on every WAN connection.
    pub wan_liveness: WanLiveness,
    /// A UDP flow with no datagram either way for this long is closed.
    pub udp_flow_idle: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            stop_grace: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(10),
            max_connections: 1024,
            wan_liveness: WanLiveness::default(),
            udp_flow_idle: crate::udp::DEFAULT_FLOW_IDLE,
        }
    }
}

/// How a WAN connection notices that the peer gateway is gone (a crash
/// without a reset, a partition): TCP keepalive while it is idle, and
/// TCP_USER_TIMEOUT while sent data waits for an acknowledgement. Either
/// ends the connection with an error, and the relay then resets its LAN leg
/// too, so both applications see the end instead of a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WanLiveness {
    /// Idle time before the first keepalive probe (probes then go a third
    /// of it apart, three of them); `None`: no keepalive.
    pub keepalive_idle: Option<Duration>,
    /// How long sent data (or a probe) may stay unacknowledged before the
    /// connection is declared dead; `None`: the kernel's retransmission
    /// limit (about 15 minutes).
    pub user_timeout: Option<Duration>,
}

impl Default for WanLiveness {
    /// Long-haul defaults: a minute of silence from a peer that should be
    /// talking ends the connection; round trips of a few hundred
    /// milliseconds and short congestion stalls are far below that.
    fn default() -> Self {
        WanLiveness {
            keepalive_idle: Some(Duration::from_secs(30)),
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl WanLiveness {
    /// Sets keepalive and the user timeout on a WAN socket.
    pub(super) fn apply(&self, socket: &TcpStream) -> Result<(), ConnError> {
        let sock = SockRef::from(socket);
        if let Some(idle) = self.keepalive_idle {
            let idle = idle.max(Duration::from_secs(1));
            let interval = (idle / 3).max(Duration::from_secs(1));
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(KEEPALIVE_PROBES);
            sock.set_tcp_keepalive(&keepalive)
                .map_err(|source| ConnError::Socket {
                    option: "TCP keepalive",
                    source,
                })?;
        }
        if let Some(timeout) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(timeout))
                .map_err(|source| ConnError::Socket {
                    option: "TCP_USER_TIMEOUT",
                    source,
                })?;
        }
        Ok(())
    }
}

/// Unanswered keepalive probes before a WAN connection is declared dead.
pub(super) const KEEPALIVE_PROBES: u32 = 3;

/// The pause after a failed accept (out of descriptors, say).
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a stopping session waits for reset connections to be gone.
pub(super) const RESET_WAIT: Duration = Duration::from_secs(5);
