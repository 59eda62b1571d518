//! An address with its prefix length: `10.1.0.2/24`, `fd00::1/64`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, bail};

/// An IPv4 or IPv6 address with a prefix length: an interface address
/// (`10.1.0.2/24`) or a route's destination (`10.1.0.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `addr/len`. A length beyond the family's (32, 128) is reported when
    /// the lab is built (and by [`Cidr::check`]).
    pub fn new(addr: impl Into<IpAddr>, len: u8) -> Cidr {
        Cidr {
            addr: addr.into(),
            len,
        }
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether the address is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Fails if the prefix length is too long for the family.
    pub fn check(&self) -> anyhow::Result<()> {
        let max = if self.is_ipv6() { 128 } else { 32 };
        if self.len > max {
            bail!("{self}: prefix length {} is over {max}", self.len);
        }
        Ok(())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    /// `ADDR/LEN`.
    fn from_str(s: &str) -> anyhow::Result<Cidr> {
        let (addr, len) = s
            .split_once('/')
            .with_context(|| format!("{s:?}: not ADDR/LEN"))?;
        let addr: IpAddr = addr
            .parse()
            .with_context(|| format!("{s:?}: bad address"))?;
        let len: u8 = len
            .parse()
            .with_context(|| format!("{s:?}: bad prefix length"))?;
        let cidr = Cidr::new(addr, len);
        cidr.check()?;
        Ok(cidr)
    }
}

impl From<(IpAddr, u8)> for Cidr {
    fn from((addr, len): (IpAddr, u8)) -> Cidr {
        Cidr::new(addr, len)
    }
}

impl From<(Ipv4Addr, u8)> for Cidr {
    fn from((addr, len): (Ipv4Addr, u8)) -> Cidr {
        Cidr::new(addr, len)
    }
}

impl From<(Ipv6Addr, u8)> for Cidr {
    fn from((addr, len): (Ipv6Addr, u8)) -> Cidr {
        Cidr::new(addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c: Cidr = "10.1.0.2/24".parse().expect("v4");
        assert_eq!(c, Cidr::new(Ipv4Addr::new(10, 1, 0, 2), 24));
        assert_eq!(c.to_string(), "10.1.0.2/24");
        let c6: Cidr = "fd00:e2e:1::1/64".parse().expect("v6");
        assert!(c6.is_ipv6());
        assert_eq!(c6.to_string(), "fd00:e2e:1::1/64");
        for bad in ["10.1.0.2", "10.1.0.2/33", "x/24", "::1/129", "10.0.0.1/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!(Cidr::new(Ipv4Addr::LOCALHOST, 40).check().is_err());
    }
}
