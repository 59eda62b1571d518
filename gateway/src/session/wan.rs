//! The link between the two gateways of a session: how a WAN connection is
//! turned into a [`Leg`] the relay can move bytes on.
//!
//! Every WAN connection goes through [`wan_leg`]: the ones a PROD gateway
//! accepts from the peer gateway ([`WanSide::Accepted`], the TLS server side)
//! and the ones a CONS gateway dials to the PROD gateway
//! ([`WanSide::Dialled`], the TLS client side). In [`ChannelMode::Tls`] (the
//! default) and [`ChannelMode::PlaintextAfterAuth`] the connection becomes a
//! [`crate::channel::Channel`]: TLS 1.3 and the mutual proof of the session
//! secret, before any byte is relayed. [`ChannelMode::Plain`] (no encryption,
//! no authentication) exists only for tests and old peers, and warns. The
//! CONS gateway verifies the PROD gateway's certificate (when CA
//! verification is on) against the IP address it dialled ([`server_name`]).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

use control::{SessionId, SessionSecret};
use tokio::net::TcpStream;

pub use crate::channel::ChannelMode;

/// Which end of a WAN connection this gateway is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WanSide {
    /// A PROD gateway accepted it on a session's WAN listener (server side).
    Accepted,
    /// A CONS gateway dialled the PROD gateway's WAN listener (client side).
    Dialled,
}

impl fmt::Display for WanSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WanSide::Accepted => "accepted",
            WanSide::Dialled => "dialled",
        })
    }
}

/// One side of a relayed connection, ready for the relay engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Leg {
    /// A TCP socket whose bytes are the application's bytes (a LAN leg, or a
    /// WAN leg in [`ChannelMode::Plain`]); every data path can relay it.
    Plain(TcpStream),
    /// An authenticated secure channel to the peer gateway.
    Secure(Box<crate::channel::Channel>),
}

/// The secure channel's configuration and what the kernel offers it, shared
/// by every session of a gateway.
pub struct SecureWan {
    pub config: crate::channel::ChannelConfig,
    pub caps: crate::channel::ChannelPaths,
    /// The datagram channel of UDP flows, on `config`'s TLS settings.
    pub quic: std::sync::Arc<crate::channel::quic::QuicChannel>,
    /// The kernel fast path of UDP flows (plaintext after authentication,
    /// when the program could be loaded).
    pub udp_fast: Option<std::sync::Arc<crate::udp_fastpath::UdpFastPath>>,
}

pub use crate::channel::server_name;

/// Why a WAN connection could not become a [`Leg`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WanLegError {
    /// System: the socket could not be prepared.
    #[error("{side} WAN connection: {action} failed")]
    Socket {
        side: WanSide,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The secure channel refused the connection (handshake, proof, timeout).
    #[error("{side} WAN connection refused by the secure channel")]
    Secure {
        side: WanSide,
        #[source]
        source: crate::channel::ChannelError,
    },
    /// A secure mode without a channel configuration (a bug in the caller).
    #[error("channel mode {0} needs a secure channel configuration")]
    NotConfigured(ChannelMode),
}

/// Turns a WAN connection of session `uid` into a [`Leg`]: the single place
/// where the secure channel between gateways is set up (handshake keyed by
/// `secret`, proof that the peer holds it). In [`ChannelMode::Plain`] the
/// connection is used as it is and `secret` is not used.
pub async fn wan_leg(
    mode: ChannelMode,
    secure: Option<&SecureWan>,
    side: WanSide,
    stream: TcpStream,
    secret: &SessionSecret,
    uid: &SessionId,
) -> Result<Leg, WanLegError> {
    match mode {
        ChannelMode::Tls | ChannelMode::PlaintextAfterAuth => {
            let secure = secure.ok_or(WanLegError::NotConfigured(mode))?;
            let established = match side {
                WanSide::Accepted => {
                    crate::channel::accept(stream, &secure.config, secret.expose()).await
                }
                WanSide::Dialled => {
                    let peer = stream.peer_addr().map_err(|source| WanLegError::Socket {
                        side,
                        action: "reading the peer address",
                        source,
                    })?;
                    let name = server_name(peer);
                    crate::channel::connect(stream, &secure.config, &name, secret.expose()).await
                }
            };
            let channel = established.map_err(|source| WanLegError::Secure { side, source })?;
            tracing::debug!(%uid, %side, "secure channel established");
            Ok(Leg::Secure(Box::new(channel)))
        }
        ChannelMode::Plain => {
            let _ = (secret, uid);
            // Fail now on a connection that is already gone, rather than in the relay.
            if let Some(source) = stream.take_error().map_err(|source| WanLegError::Socket {
                side,
                action: "reading SO_ERROR",
                source,
            })? {
                return Err(WanLegError::Socket {
                    side,
                    action: "checking the connection",
                    source,
                });
            }
            Ok(Leg::Plain(stream))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;
    use std::net::SocketAddr;

    #[test]
    fn the_server_name_is_the_dialled_ip() {
        for (dialled, expected) in [
            ("10.2.0.1:5100", "10.2.0.1"),
            ("[fd00:e2e:2::1]:5100", "fd00:e2e:2::1"),
            ("[::ffff:10.2.0.1]:5100", "10.2.0.1"),
        ] {
            let dialled: SocketAddr = dialled.parse().expect("address");
            let name = server_name(dialled);
            assert_eq!(name, expected);
            // rustls takes it as an IP address (matched against IP SANs), not
            // as a DNS name.
            let parsed = ServerName::try_from(name).expect("server name");
            assert!(
                matches!(parsed, ServerName::IpAddress(_)),
                "{dialled}: {parsed:?}"
            );
        }
    }
}
