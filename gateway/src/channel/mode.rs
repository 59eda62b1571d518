//! [`ChannelMode`]: how connections between the two gateways of a session
//! are carried (`--channel`).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// How connections between gateways are carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelMode {
    /// TLS 1.3 with the per-session mutual proof; kernel TLS where the kernel
    /// has it, userspace TLS otherwise.
    #[default]
    Tls,
    /// The same TLS handshake and mutual proof, then plain TCP on the same
    /// connection so the kernel relay runs end to end (trusted circuits only).
    PlaintextAfterAuth,
    /// Plain TCP: no encryption, no authentication of the peer gateway.
    /// Every session logs a warning.
    Plain,
}

impl ChannelMode {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelMode::Tls => "tls",
            ChannelMode::PlaintextAfterAuth => "plaintext-after-auth",
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
            "tls" => Ok(ChannelMode::Tls),
            "plaintext-after-auth" => Ok(ChannelMode::PlaintextAfterAuth),
            "plain" => Ok(ChannelMode::Plain),
            other => Err(format!(
                "unknown channel mode {other:?}: expected tls, plaintext-after-auth or plain"
            )),
        }
    }
}
