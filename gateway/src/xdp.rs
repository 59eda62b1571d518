//! The XDP guard of the data ports: attaches `xdp_guard` (see
//! `gateway-ebpf`) to the gateway's WAN interface and keeps its allow-list.
//!
//! [`XdpGuard::attach`] loads the program, writes the data-port range into
//! `XDP_CONFIG` and attaches it, native (driver) mode first and generic (skb)
//! mode if the driver cannot; [`XdpGuard::mode`] says which. From then on a
//! TCP packet to a port of the range is dropped before the socket layer
//! unless an allow entry covers (port, source): [`XdpGuard::allow`] /
//! [`XdpGuard::allow_net`] add one (reference counted, so two owners of the
//! same entry do not revoke each other's), [`XdpGuard::revoke`] /
//! [`XdpGuard::revoke_net`] remove it. [`XdpGuard::drop_counters`] sums the
//! program's per-CPU counters. Dropping the guard detaches the program (the
//! kernel link is also closed if the process dies).
//!
//! Byte orders: the port range in `XDP_CONFIG` is host order; allow keys are
//! network order (see `gateway_common::AllowKey`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use gateway_common::{
    ALLOW_PREFIX_ADDR, ALLOW_PREFIX_PORT, AllowKey, EVENTS_MAP, FAMILY_V4, FAMILY_V6, RELAY_MAP,
    SOCKS_MAP, XDP_ALLOW_MAP, XDP_CONFIG_MAP, XDP_GUARD_PROG, XDP_STAT_ALLOWED, XDP_STAT_MALFORMED,
    XDP_STAT_NOT_ALLOWED, XDP_STATS_MAP, XdpConfig,
};

use crate::ebpf::PROGRAMS;
use crate::privileges::{self, MissingCaps};

/// Why the guard could not be set up or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// Operator: no interface of that name in this network namespace.
    #[error("no network interface named {iface:?} here")]
    UnknownInterface {
        iface: String,
        #[source]
        source: nix::Error,
    },
    /// Operator/system: the data-port range is empty or contains port 0.
    #[error("invalid data-port range {first}-{last}")]
    InvalidRange { first: u16, last: u16 },
    /// System: the eBPF object could not be loaded; `missing` names the
    /// capabilities this process lacks for it (empty when it holds them).
    #[error("loading the eBPF object failed{missing}")]
    Load {
        missing: MissingCaps,
        #[source]
        source: aya::EbpfError,
    },
    /// Build bug: the object lacks a program or map.
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    /// System: the verifier or the kernel refused the program.
    #[error("program {name}: {action} failed{missing}")]
    Program {
        name: &'static str,
        action: &'static str,
        /// The capabilities this process lacks for it ("" if none, or if
        /// they cannot be the cause).
        missing: MissingCaps,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// System: neither native nor generic XDP attaches to the interface
    /// (another XDP program may already be attached).
    #[error("attaching XDP to {iface} failed in native mode ({native}) and in generic mode")]
    Attach {
        iface: String,
        native: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// System: a map operation failed (e.g. the allow trie is full).
    #[error("map {name}: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Caller bug: the port is outside the guarded range.
    #[error("port {port} is outside the guarded data-port range {first}-{last}")]
    PortOutOfRange { port: u16, first: u16, last: u16 },
}

/// How the program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists (fastest).
    Native,
    /// In the core network stack, after the skb is built (any interface).
    Generic,
}

impl AttachMode {
    /// "native" or "generic".
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source prefix allowed on a data port: an address and a prefix length
/// (`10.2.0.2`, `10.2.0.0/24`, `fd00::/64`). Host bits are cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerNet {
    addr: IpAddr,
    prefix: u8,
}

impl PeerNet {
    /// `addr/prefix`; fails if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(PeerNet { addr, prefix })
    }

    /// One host.
    pub fn host(addr: IpAddr) -> Self {
        PeerNet {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The (masked) address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for PeerNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
        match prefix {
            None => Ok(PeerNet::host(addr)),
            Some(p) => {
                let prefix: u8 = p
                    .parse()
                    .map_err(|e| format!("prefix {p:?} is not a number: {e}"))?;
                PeerNet::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The trie key of `port` and `peer` (`None`: every source).
fn allow_key(port: u16, peer: Option<PeerNet>) -> Key<AllowKey> {
    let mut data = AllowKey {
        port: port.to_be_bytes(),
        ..AllowKey::default()
    };
    let Some(peer) = peer else {
        return Key::new(ALLOW_PREFIX_PORT, data);
    };
    match peer.addr {
        IpAddr::V4(a) => {
            data.family = FAMILY_V4;
            data.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            data.family = FAMILY_V6;
            data.addr = a.octets();
        }
    }
    Key::new(ALLOW_PREFIX_ADDR + u32::from(peer.prefix), data)
}

/// Packets the guard counted, summed over CPUs, since it was attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdpCounters {
    /// Dropped: TCP to a data port from a source nothing allows.
    pub not_allowed: u64,
    /// Dropped: IPv4/IPv6 TCP with truncated or inconsistent headers.
    pub malformed: u64,
    /// Passed: TCP to a data port from an allowed source.
    pub allowed: u64,
}

impl XdpCounters {
    /// Every drop reason with its label, for metrics.
    pub fn drops(&self) -> [(&'static str, u64); 2] {
        [
            ("not_allowed", self.not_allowed),
            ("malformed", self.malformed),
        ]
    }
}

/// The allow trie and how many owners each entry has.
struct AllowTable {
    trie: LpmTrie<MapData, AllowKey, u32>,
    refs: HashMap<(u16, Option<PeerNet>), usize>,
}

/// `xdp_guard` attached to one interface. Detached on drop.
pub struct XdpGuard {
    iface: String,
    mode: AttachMode,
    ports: RangeInclusive<u16>,
    allow: Mutex<AllowTable>,
    stats: PerCpuArray<MapData, u64>,
    link: Option<XdpLinkId>,
    /// Owns the program (and through it the link).
    ebpf: Ebpf,
}

impl fmt::Debug for XdpGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpGuard")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// Loads the object with the relay's maps shrunk to a minimum (this load
/// only runs the XDP program), and returns the verified, unattached guard
/// program's owner.
pub(crate) fn load_guard_program() -> Result<Ebpf, XdpError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(SOCKS_MAP, 1)
        .map_max_entries(RELAY_MAP, 1)
        .map_max_entries(EVENTS_MAP, 4096)
        .load(PROGRAMS)
        .map_err(|source| XdpError::Load {
            missing: MissingCaps::of(&privileges::XDP),
            source,
        })?;
    let program = xdp_program(&mut ebpf)?;
    program.load().map_err(|source| XdpError::Program {
        name: XDP_GUARD_PROG,
        action: "load (verifier)",
        missing: MissingCaps::of(&privileges::XDP),
        source,
    })?;
    Ok(ebpf)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(XDP_GUARD_PROG)
        .ok_or(XdpError::Missing {
            kind: "program",
            name: XDP_GUARD_PROG,
        })?
        .try_into()
        .map_err(|source| XdpError::Program {
            name: XDP_GUARD_PROG,
            action: "type check",
            missing: MissingCaps::none(),
            source,
        })
}

/// Attaches a loaded guard program to `if_index`: native mode first, then
/// generic. Returns the link and the mode that worked.
pub(crate) fn attach_native_or_generic(
    ebpf: &mut Ebpf,
    iface: &str,
    if_index: u32,
) -> Result<(XdpLinkId, AttachMode), XdpError> {
    let program = xdp_program(ebpf)?;
    match program.attach_to_if_index(if_index, XdpMode::Driver) {
        Ok(link) => Ok((link, AttachMode::Native)),
        Err(native) => match program.attach_to_if_index(if_index, XdpMode::Skb) {
            Ok(link) => {
                tracing::debug!(iface, error = %crate::error_chain::error_chain(&native), "native XDP refused; generic mode attached");
                Ok((link, AttachMode::Generic))
            }
            Err(source) => Err(XdpError::Attach {
                iface: iface.to_owned(),
                native: crate::error_chain::error_chain(&native),
                source: Box::new(source),
            }),
        },
    }
}

/// The index of interface `iface` in this network namespace.
pub(crate) fn if_index(iface: &str) -> Result<u32, XdpError> {
    nix::net::if_::if_nametoindex(iface).map_err(|source| XdpError::UnknownInterface {
        iface: iface.to_owned(),
        source,
    })
}

impl XdpGuard {
    /// Checks, without loading or attaching anything, that the guard could
    /// be attached to `iface` for `ports`: the interface exists and the
    /// range is valid.
    pub fn preflight(iface: &str, ports: RangeInclusive<u16>) -> Result<(), XdpError> {
        let (first, last) = (*ports.start(), *ports.end());
        if first == 0 || first > last {
            return Err(XdpError::InvalidRange { first, last });
        }
        if_index(iface).map(drop)
    }

    /// Loads `xdp_guard`, configures it to guard `ports` and attaches it to
    /// `iface` (native mode, else generic). No port is allowed yet: from now
    /// on every TCP packet to `ports` arriving on `iface` is dropped until
    /// [`XdpGuard::allow`] says otherwise.
    pub fn attach(iface: &str, ports: RangeInclusive<u16>) -> Result<Self, XdpError> {
        let (first, last) = (*ports.start(), *ports.end());
        if first == 0 || first > last {
            return Err(XdpError::InvalidRange { first, last });
        }
        let index = if_index(iface)?;
        let mut ebpf = load_guard_program()?;
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(XdpError::Missing { kind: "map", name })
        };
        let mut config: Array<MapData, XdpConfig> =
            Array::try_from(map(&mut ebpf, XDP_CONFIG_MAP)?).map_err(|source| XdpError::Map {
                name: XDP_CONFIG_MAP,
                action: "open",
                source,
            })?;
        let trie: LpmTrie<MapData, AllowKey, u32> =
            LpmTrie::try_from(map(&mut ebpf, XDP_ALLOW_MAP)?).map_err(|source| XdpError::Map {
                name: XDP_ALLOW_MAP,
                action: "open",
                source,
            })?;
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(map(&mut ebpf, XDP_STATS_MAP)?).map_err(|source| {
                XdpError::Map {
                    name: XDP_STATS_MAP,
                    action: "open",
                    source,
                }
            })?;
        let cfg = XdpConfig {
            first_port: first,
            last_port: last,
            enabled: 1,
        };
        config.set(0, cfg, 0).map_err(|source| XdpError::Map {
            name: XDP_CONFIG_MAP,
            action: "write the port range",
            source,
        })?;
        let (link, mode) = attach_native_or_generic(&mut ebpf, iface, index)?;
        tracing::info!(iface, %mode, first_port = first, last_port = last, "XDP guard attached to the data ports");
        Ok(XdpGuard {
            iface: iface.to_owned(),
            mode,
            ports,
            allow: Mutex::new(AllowTable {
                trie,
                refs: HashMap::new(),
            }),
            stats,
            link: Some(link),
            ebpf,
        })
    }

    /// The interface the guard is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Native or generic XDP.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The guarded data-port range.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.ports.clone()
    }

    fn table(&self) -> MutexGuard<'_, AllowTable> {
        self.allow
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn check_port(&self, port: u16) -> Result<(), XdpError> {
        if self.ports.contains(&port) {
            Ok(())
        } else {
            Err(XdpError::PortOutOfRange {
                port,
                first: *self.ports.start(),
                last: *self.ports.end(),
            })
        }
    }

    /// Lets TCP to `port` from `peer` through (`None`: from every source).
    pub fn allow(&self, port: u16, peer: Option<IpAddr>) -> Result<(), XdpError> {
        self.allow_net(port, peer.map(PeerNet::host))
    }

    /// Lets TCP to `port` from a whole prefix through (`None`: every source).
    /// Entries are counted: each `allow_net` needs its own `revoke_net`.
    pub fn allow_net(&self, port: u16, peer: Option<PeerNet>) -> Result<(), XdpError> {
        self.check_port(port)?;
        let mut table = self.table();
        let refs = table.refs.get(&(port, peer)).copied().unwrap_or(0);
        if refs == 0 {
            table
                .trie
                .insert(&allow_key(port, peer), 1, 0)
                .map_err(|source| XdpError::Map {
                    name: XDP_ALLOW_MAP,
                    action: "insert",
                    source,
                })?;
        }
        table.refs.insert((port, peer), refs + 1);
        Ok(())
    }

    /// Undoes one [`XdpGuard::allow`]; unknown entries are ignored.
    pub fn revoke(&self, port: u16, peer: Option<IpAddr>) -> Result<(), XdpError> {
        self.revoke_net(port, peer.map(PeerNet::host))
    }

    /// Undoes one [`XdpGuard::allow_net`]; unknown entries are ignored.
    pub fn revoke_net(&self, port: u16, peer: Option<PeerNet>) -> Result<(), XdpError> {
        let mut table = self.table();
        match table.refs.get(&(port, peer)).copied() {
            None => Ok(()),
            Some(refs) if refs > 1 => {
                table.refs.insert((port, peer), refs - 1);
                Ok(())
            }
            Some(_) => {
                table.refs.remove(&(port, peer));
                match table.trie.remove(&allow_key(port, peer)) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    Err(source) => Err(XdpError::Map {
                        name: XDP_ALLOW_MAP,
                        action: "remove",
                        source,
                    }),
                }
            }
        }
    }

    /// How many distinct allow entries exist now.
    pub fn allowed_entries(&self) -> usize {
        self.table().refs.len()
    }

    /// The program's counters, summed over CPUs.
    pub fn drop_counters(&self) -> Result<XdpCounters, XdpError> {
        let sum = |index: u32| -> Result<u64, XdpError> {
            let values = self.stats.get(&index, 0).map_err(|source| XdpError::Map {
                name: XDP_STATS_MAP,
                action: "read",
                source,
            })?;
            Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        };
        Ok(XdpCounters {
            not_allowed: sum(XDP_STAT_NOT_ALLOWED)?,
            malformed: sum(XDP_STAT_MALFORMED)?,
            allowed: sum(XDP_STAT_ALLOWED)?,
        })
    }
}

impl Drop for XdpGuard {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        match xdp_program(&mut self.ebpf) {
            Ok(program) => match program.detach(link) {
                Ok(()) => tracing::info!(iface = %self.iface, "XDP guard detached"),
                Err(err) => {
                    tracing::warn!(iface = %self.iface, error = %crate::error_chain::error_chain(&err), "detaching the XDP guard failed (it goes with the process)")
                }
            },
            Err(err) => {
                tracing::warn!(iface = %self.iface, error = %err, "XDP guard program missing at detach")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_nets_parse_and_mask() {
        let net: PeerNet = "10.2.0.77/24".parse().expect("valid");
        assert_eq!(net.to_string(), "10.2.0.0/24");
        assert_eq!("10.2.0.2".parse::<PeerNet>().expect("host").prefix(), 32);
        assert_eq!(
            "fd00::1/64".parse::<PeerNet>().expect("v6").to_string(),
            "fd00::/64"
        );
        assert_eq!("::/0".parse::<PeerNet>().expect("all").prefix(), 0);
        assert!("10.0.0.0/33".parse::<PeerNet>().is_err());
        assert!("10.0.0.0/x".parse::<PeerNet>().is_err());
        assert!("host".parse::<PeerNet>().is_err());
    }

    #[test]
    fn keys_match_the_program_layout() {
        assert_eq!(size_of::<AllowKey>(), 20);
        assert_eq!(align_of::<AllowKey>(), 1);
        let wildcard = allow_key(5100, None);
        assert_eq!(wildcard.prefix_len(), ALLOW_PREFIX_PORT);
        assert_eq!(wildcard.data().port, 5100u16.to_be_bytes());
        let host = allow_key(5100, Some(PeerNet::host("10.2.0.2".parse().expect("ip"))));
        assert_eq!(host.prefix_len(), ALLOW_PREFIX_ADDR + 32);
        assert_eq!(host.data().family, FAMILY_V4);
        assert_eq!(&host.data().addr[..5], &[10, 2, 0, 2, 0]);
        let net = allow_key(5101, Some("fd00:e2e:2::/64".parse().expect("net")));
        assert_eq!(net.prefix_len(), ALLOW_PREFIX_ADDR + 64);
        assert_eq!(net.data().family, FAMILY_V6);
    }
}
