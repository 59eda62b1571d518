//! The link between the two gateways of a session: how a WAN connection is
//! turned into a [`Leg`] the relay can move bytes on.
//!
//! Every WAN connection goes through [`wan_leg`]: the ones a PROD gateway
//! accepts from the peer gateway ([`WanSide::Accepted`], the TLS server side)
//! and the ones a CONS gateway dials to the PROD gateway
//! ([`WanSide::Dialled`], the TLS client side). Only [`ChannelMode::Plain`]
//! exists for now: the connection is used as it is. The secure channel
//! (TLS 1.3 keyed by the session secret, with proof of the secret on both
//! sides) plugs in here as a new mode and, if it cannot hand the socket to the
//! kernel, a new [`Leg`] variant; the relay's `match` on legs then says where
//! it must be handled.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::str::FromStr;

use control::{SessionId, SessionSecret};
use tokio::net::TcpStream;

/// How connections between gateways are carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelMode {
    /// Plain TCP: no encryption, no authentication of the peer gateway.
    /// Only until the secure channel exists; every session logs a warning.
    #[default]
    Plain,
}

impl ChannelMode {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelMode::Plain => "plain",
        }
    }
}

impl fmt::Display for ChannelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(ChannelMode::Plain),
            other => Err(format!("unknown channel mode {other:?}: expected plain")),
        }
    }
}

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
}

/// Why a WAN connection could not become a [`Leg`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// System: the socket could not be prepared.
    #[error("{side} WAN connection: {action} failed")]
    Socket {
        side: WanSide,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Turns a WAN connection of session `uid` into a [`Leg`]: the single place
/// where the secure channel between gateways is set up (handshake keyed by
/// `secret`, proof that the peer holds it). In [`ChannelMode::Plain`] the
/// connection is used as it is and `secret` is not used.
pub async fn wan_leg(
    mode: ChannelMode,
    side: WanSide,
    stream: TcpStream,
    secret: &SessionSecret,
    uid: &SessionId,
) -> Result<Leg, ChannelError> {
    match mode {
        ChannelMode::Plain => {
            let _ = (secret, uid);
            // Fail now on a connection that is already gone, rather than in the relay.
            if let Some(source) = stream.take_error().map_err(|source| ChannelError::Socket {
                side,
                action: "reading SO_ERROR",
                source,
            })? {
                return Err(ChannelError::Socket {
                    side,
                    action: "checking the connection",
                    source,
                });
            }
            Ok(Leg::Plain(stream))
        }
    }
}
