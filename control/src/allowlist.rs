//! The operator's allow-list of update targets: networks (CIDR, IPv4 or IPv6)
//! each with a port range. Deny by default: an empty list allows nothing.
//!
//! Rules are written "NETWORK/PREFIX[:PORTS]", e.g. "10.1.0.0/16:5000-5100",
//! "192.0.2.7/32", "::1/128:5000" or "[fd00::]/8:1-65535". Without ports a
//! rule allows every port of the network.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::errors::ControlError;
use crate::ports::PortRange;

/// One allow rule: a network and a port range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowRule {
    net: IpAddr,
    prefix: u8,
    ports: PortRange,
}

impl AllowRule {
    /// Whether `addr` is inside this rule's network and port range.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        if !self.ports.contains(addr.port()) {
            return false;
        }
        let ip = canonical(addr.ip());
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = mask_u32(self.prefix);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = mask_u128(self.prefix);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses are compared as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn mask_u32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask_u128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for AllowRule {
    type Err = ControlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ControlError::InvalidArgument {
            field: "allow rule",
            reason: format!(
                "{s:?}: {reason} (expected NETWORK/PREFIX[:PORTS], e.g. 10.0.0.0/8:5000-6000)"
            ),
        };
        let (net, rest) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("missing /PREFIX".into()))?;
        let net = net.trim_start_matches('[').trim_end_matches(']');
        let net: IpAddr = net
            .parse()
            .map_err(|_| bad(format!("{net:?} is not an IP address")))?;
        let (prefix, ports) = match rest.split_once(':') {
            Some((p, ports)) => (p, Some(ports)),
            None => (rest, None),
        };
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad(format!("bad prefix {prefix:?}")))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(format!("prefix {prefix} is longer than {max}")));
        }
        let ports = match ports {
            Some(p) => p.parse::<PortRange>().map_err(|e| bad(e.to_string()))?,
            None => PortRange {
                first: 1,
                last: u16::MAX,
            },
        };
        Ok(AllowRule {
            net: canonical(net),
            prefix,
            ports,
        })
    }
}

impl TryFrom<String> for AllowRule {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AllowRule> for String {
    fn from(r: AllowRule) -> String {
        r.to_string()
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.net, self.prefix, self.ports)
    }
}

/// The list of rules; a target is allowed if any rule contains it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllowList(pub Vec<AllowRule>);

impl AllowList {
    /// Whether `addr` is allowed (false for an empty list).
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        self.0.iter().any(|r| r.contains(addr))
    }

    /// Checks every target; the first one outside the list is the error.
    pub fn check_all(&self, targets: &[SocketAddr]) -> Result<(), ControlError> {
        match targets.iter().find(|t| !self.allows(t)) {
            Some(t) => Err(ControlError::TargetNotAllowed {
                target: t.to_string(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> AllowList {
        AllowList(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn deny_by_default() {
        assert!(!AllowList::default().allows(&"127.0.0.1:5000".parse().unwrap()));
    }

    #[test]
    fn v4_and_v6() {
        let l = list(&["10.1.0.0/16:5000-5100", "::1/128:5000", "[fd00::]/8"]);
        assert!(l.allows(&"10.1.200.3:5000".parse().unwrap()));
        assert!(!l.allows(&"10.2.0.3:5000".parse().unwrap()));
        assert!(!l.allows(&"10.1.0.3:5101".parse().unwrap()));
        assert!(l.allows(&"[::1]:5000".parse().unwrap()));
        assert!(!l.allows(&"[::1]:5001".parse().unwrap()));
        assert!(l.allows(&"[fd12::7]:22".parse().unwrap()));
        assert!(l.allows(&"[::ffff:10.1.0.1]:5000".parse().unwrap()));
        assert!(l.check_all(&["10.9.9.9:1".parse().unwrap()]).is_err());
    }

    #[test]
    fn bad_rules() {
        for r in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/8:0-5", "::/129"] {
            assert!(r.parse::<AllowRule>().is_err(), "{r}");
        }
        assert!("0.0.0.0/0".parse::<AllowRule>().is_ok());
    }
}
