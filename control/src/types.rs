//! Small validated newtypes shared by every module: [`SessionId`], [`Role`],
//! [`Identity`], and the checked parser for "ip:port" addresses.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::errors::ControlError;

/// Longest uid accepted (SciStream uses 36-character UUIDs).
pub const MAX_UID_LEN: usize = 128;

/// A session id as sent by the client (SciStream uses a UUID string).
///
/// Only ASCII letters, digits, `-`, `_` and `.` are accepted, at most
/// [`MAX_UID_LEN`] characters, not starting with `.`: the id is also a file
/// name in the persistence directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// Parses and validates a uid.
    pub fn parse(s: &str) -> Result<Self, ControlError> {
        let bad = |reason: &str| ControlError::InvalidArgument {
            field: "uid",
            reason: format!("{s:?}: {reason}"),
        };
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if s.len() > MAX_UID_LEN {
            return Err(bad(&format!("longer than {MAX_UID_LEN} characters")));
        }
        if s.starts_with('.') {
            return Err(bad("must not start with '.'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad(
                "only ASCII letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        Ok(SessionId(s.to_owned()))
    }

    /// The uid as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionId {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SessionId::parse(&s)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The side of the stream a gateway serves in one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Beside ProdApp: listeners face the WAN, targets are ProdApp's listeners.
    #[serde(rename = "PROD")]
    Prod,
    /// Beside ConsApp: listeners face the LAN, targets are the PROD gateway's
    /// WAN listeners.
    #[serde(rename = "CONS")]
    Cons,
}

impl Role {
    /// Parses "PROD" or "CONS" (case-insensitive).
    pub fn parse(s: &str) -> Result<Self, ControlError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PROD" => Ok(Role::Prod),
            "CONS" => Ok(Role::Cons),
            _ => Err(ControlError::InvalidArgument {
                field: "role",
                reason: format!("{s:?}: expected \"PROD\" or \"CONS\""),
            }),
        }
    }

    /// The gateway at the other end of the session's data channel.
    pub fn peer(self) -> Role {
        match self {
            Role::Prod => Role::Cons,
            Role::Cons => Role::Prod,
        }
    }

    /// "PROD" or "CONS".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prod => "PROD",
            Role::Cons => "CONS",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated user identity (a token file name, an introspection
/// `username`/`sub`, or `anonymous` without auth).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity(pub String);

impl Identity {
    /// The identity used when authentication is disabled.
    pub fn anonymous() -> Self {
        Identity("anonymous".to_owned())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one "ip:port" or "[ipv6]:port" address. Port 0 is rejected.
pub fn parse_addr(s: &str) -> Result<SocketAddr, ControlError> {
    let t = s.trim();
    let addr: SocketAddr = t.parse().map_err(|_| ControlError::InvalidAddress {
        addr: s.to_owned(),
        reason: "expected ip:port or [ipv6]:port (host names are not accepted)".to_owned(),
    })?;
    if addr.port() == 0 {
        return Err(ControlError::InvalidAddress {
            addr: s.to_owned(),
            reason: "port 0 is not a usable port".to_owned(),
        });
    }
    Ok(addr)
}

/// Parses a list of addresses; each element may itself be comma-separated
/// (the old client sometimes sends "a:1,b:2" as one element). Empty
/// elements are skipped.
pub fn parse_addr_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<SocketAddr>, ControlError> {
    let mut out = Vec::new();
    for item in items {
        for part in item.as_ref().split(',') {
            if part.trim().is_empty() {
                continue;
            }
            out.push(parse_addr(part)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(SessionId::parse("6f1c2a1e-1d2b-11ef-9262-0242ac120002").is_ok());
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse("../etc/passwd").is_err());
        assert!(SessionId::parse(".hidden").is_err());
        assert!(SessionId::parse("a/b").is_err());
        assert!(SessionId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("127.0.0.1:5000").unwrap().port(), 5000);
        assert!(parse_addr("[::1]:5000").unwrap().is_ipv6());
        assert!(parse_addr("::1:5000").is_err());
        assert!(parse_addr("localhost:5000").is_err());
        assert!(parse_addr("1.2.3.4:0").is_err());
        assert!(parse_addr("1.2.3.4:70000").is_err());
        let l = parse_addr_list(&["1.1.1.1:1,2.2.2.2:2", "", "[::1]:3"]).unwrap();
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn roles() {
        assert_eq!(Role::parse("prod").unwrap(), Role::Prod);
        assert_eq!(Role::parse("CONS").unwrap(), Role::Cons);
        assert!(Role::parse("other").is_err());
    }
}
