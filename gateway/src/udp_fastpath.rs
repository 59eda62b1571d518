//! The kernel fast path of UDP flows in the plaintext-after-authentication
//! mode: loads `udp_fastpath` (a tc ingress program, see `gateway-ebpf`),
//! attaches it to the interfaces flows arrive on (once per interface, the
//! first time a flow needs it), installs each flow's two entries (one per
//! direction: the datagram as it arrives, and how it leaves) and removes
//! them when the flow ends, and reads their per-CPU counters.
//!
//! An entry is installed only after the peer gateway proved the session
//! secret over the flow's QUIC connection, and it matches the exact
//! addresses and ports of that peer: a datagram from any other source is
//! not forwarded (the flow is pinned to the address that proved the
//! secret; a spoofed source address is this mode's documented limit).
//! Dropping [`UdpFastPath`] detaches the program everywhere.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use gateway_common::{
    EVENTS_MAP, MAX_UDP_FLOW_ENTRIES, RELAY_MAP, SOCKS_MAP, UDP_COUNTERS_MAP, UDP_FAST_PROG,
    UDP_FLOWS_MAP, UdpFlowAction, UdpFlowCounters, UdpFlowKey,
};

use crate::ebpf::PROGRAMS;
use crate::privileges::{self, MissingCaps};

/// Why the fast path could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FastPathError {
    /// The eBPF object or the program could not be loaded.
    #[error("loading the UDP fast path program failed{missing}")]
    Load {
        missing: MissingCaps,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The program could not be attached to an interface.
    #[error("attaching the UDP fast path to {iface} failed")]
    Attach {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A flow's addresses are not ones this path can forward (not IPv4, no
    /// local interface holds the address).
    #[error("UDP fast path: {0}")]
    Route(String),
    /// A map operation failed (e.g. the flow map is full).
    #[error("UDP fast path map {name}: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// One direction of a flow: a datagram from `from` to `to` leaves as one
/// from `new_from` to `new_to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub new_from: SocketAddrV4,
    pub new_to: SocketAddrV4,
}

impl Rewrite {
    /// The other direction of the same flow: what arrives where this one
    /// leaves to goes back where this one came from.
    pub fn reversed(&self) -> Rewrite {
        Rewrite {
            from: self.new_to,
            to: self.new_from,
            new_from: self.to,
            new_to: self.from,
        }
    }

    fn key(&self) -> UdpFlowKey {
        UdpFlowKey {
            saddr: self.from.ip().octets(),
            daddr: self.to.ip().octets(),
            sport: self.from.port().to_be_bytes(),
            dport: self.to.port().to_be_bytes(),
        }
    }
}

/// The kernel fast path of one gateway, shared by every session.
pub struct UdpFastPath {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for UdpFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("UdpFastPath")
            .field("attached", &inner.attached.keys().collect::<Vec<_>>())
            .field("entries", &inner.slots.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    ebpf: Ebpf,
    /// Interfaces the program is attached to (ingress), by name.
    attached: HashMap<String, SchedClassifierLinkId>,
    /// Installed entries and their counter slots.
    slots: HashMap<UdpFlowKey, u32>,
    free: Vec<u32>,
}

/// A flow's two installed entries; removed from the kernel when dropped.
pub struct FastFlow {
    path: Arc<UdpFastPath>,
    /// (to target, from target).
    keys: [UdpFlowKey; 2],
}

impl FastFlow {
    /// Datagrams and payload bytes forwarded so far, to and from the target.
    pub fn counters(&self) -> [UdpFlowCounters; 2] {
        let inner = self.path.lock();
        self.keys.map(|key| inner.counters(&key))
    }
}

impl Drop for FastFlow {
    fn drop(&mut self) {
        let mut inner = self.path.lock();
        for key in &self.keys {
            inner.remove(key);
        }
    }
}

impl UdpFastPath {
    /// Loads and verifies the program (nothing is attached yet).
    pub fn load() -> Result<Arc<Self>, FastPathError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| FastPathError::Load {
            missing: MissingCaps::of(&privileges::XDP),
            source,
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(SOCKS_MAP, 1)
            .map_max_entries(RELAY_MAP, 1)
            .map_max_entries(EVENTS_MAP, 4096)
            .load(PROGRAMS)
            .map_err(|e| failed(Box::new(e)))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(UDP_FAST_PROG)
            .ok_or_else(|| failed(format!("no program {UDP_FAST_PROG} in the object").into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| failed(Box::new(e)))?;
        program.load().map_err(|e| failed(Box::new(e)))?;
        Ok(Arc::new(UdpFastPath {
            inner: Mutex::new(Inner {
                ebpf,
                attached: HashMap::new(),
                slots: HashMap::new(),
                free: (0..MAX_UDP_FLOW_ENTRIES).rev().collect(),
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a flow: `to_target` and its mirror for the replies
    /// ([`Rewrite::reversed`]). Each direction arrives on the interface
    /// holding its `to` address and leaves by the interface facing its
    /// `new_to`. All or nothing.
    pub fn install(self: &Arc<Self>, to_target: Rewrite) -> Result<FastFlow, FastPathError> {
        let from_target = to_target.reversed();
        let mut planned = Vec::with_capacity(2);
        for rewrite in [to_target, from_target] {
            let (ingress, _) = interface_holding(*rewrite.to.ip())?;
            let (_, egress) = interface_holding(*rewrite.new_from.ip())?;
            planned.push((rewrite, ingress, egress));
        }
        let mut inner = self.lock();
        for (_, ingress, _) in &planned {
            inner.attach(ingress)?;
        }
        let mut done = Vec::new();
        for (rewrite, _, egress) in &planned {
            match inner.insert(rewrite, *egress) {
                Ok(key) => done.push(key),
                Err(err) => {
                    for key in &done {
                        inner.remove(key);
                    }
                    return Err(err);
                }
            }
        }
        drop(inner);
        Ok(FastFlow {
            path: Arc::clone(self),
            keys: [to_target.key(), from_target.key()],
        })
    }

    /// Attaches the program at tc ingress of `iface` (as [`Self::install`]
    /// does on first use; `s2cs check` tries it).
    pub fn attach(&self, iface: &str) -> Result<(), FastPathError> {
        self.lock().attach(iface)
    }

    /// Installed entries (two per flow).
    pub fn entries(&self) -> usize {
        self.lock().slots.len()
    }
}

impl Inner {
    fn attach(&mut self, iface: &str) -> Result<(), FastPathError> {
        if self.attached.contains_key(iface) {
            return Ok(());
        }
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(UDP_FAST_PROG)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| FastPathError::Route(format!("program {UDP_FAST_PROG} missing")))?;
        let link = match program.attach(iface, TcAttachType::Ingress) {
            Ok(link) => link,
            // Kernels before TCX (6.6) attach through a clsact qdisc.
            Err(_) => {
                let _ = aya::programs::tc::qdisc_add_clsact(iface);
                program
                    .attach(iface, TcAttachType::Ingress)
                    .map_err(|source| FastPathError::Attach {
                        iface: iface.to_owned(),
                        source,
                    })?
            }
        };
        tracing::info!(iface, "UDP fast path attached (tc ingress)");
        self.attached.insert(iface.to_owned(), link);
        Ok(())
    }

    fn flows(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, UdpFlowKey, UdpFlowAction>, FastPathError> {
        let map = self.ebpf.map_mut(UDP_FLOWS_MAP).ok_or_else(|| {
            FastPathError::Route(format!("map {UDP_FLOWS_MAP} missing from the object"))
        })?;
        BpfHashMap::try_from(map).map_err(|source| FastPathError::Map {
            name: UDP_FLOWS_MAP,
            action: "open",
            source,
        })
    }

    fn counter_map(&self) -> Option<PerCpuArray<&MapData, UdpFlowCounters>> {
        PerCpuArray::try_from(self.ebpf.map(UDP_COUNTERS_MAP)?).ok()
    }

    fn insert(&mut self, rewrite: &Rewrite, egress: u32) -> Result<UdpFlowKey, FastPathError> {
        let key = rewrite.key();
        let slot = self.free.pop().ok_or_else(|| {
            FastPathError::Route(format!("flow table full ({MAX_UDP_FLOW_ENTRIES} entries)"))
        })?;
        // A fresh slot counts from zero.
        if let (Some(map), Ok(cpus)) = (self.ebpf.map_mut(UDP_COUNTERS_MAP), aya::util::nr_cpus())
            && let (Ok(mut counters), Ok(zero)) = (
                PerCpuArray::<_, UdpFlowCounters>::try_from(map),
                PerCpuValues::try_from(vec![UdpFlowCounters::default(); cpus]),
            )
        {
            let _ = counters.set(slot, zero, 0);
        }
        let action = UdpFlowAction {
            saddr: rewrite.new_from.ip().octets(),
            daddr: rewrite.new_to.ip().octets(),
            sport: rewrite.new_from.port().to_be_bytes(),
            dport: rewrite.new_to.port().to_be_bytes(),
            ifindex: egress,
            slot,
        };
        match self.flows()?.insert(key, action, 0) {
            Ok(()) => {
                self.slots.insert(key, slot);
                Ok(key)
            }
            Err(source) => {
                self.free.push(slot);
                Err(FastPathError::Map {
                    name: UDP_FLOWS_MAP,
                    action: "insert",
                    source,
                })
            }
        }
    }

    fn remove(&mut self, key: &UdpFlowKey) {
        if let Ok(mut flows) = self.flows()
            && let Err(err) = flows.remove(key)
        {
            tracing::warn!(error = %err, "UDP fast path: removing a flow entry failed");
        }
        if let Some(slot) = self.slots.remove(key) {
            self.free.push(slot);
        }
    }

    fn counters(&self, key: &UdpFlowKey) -> UdpFlowCounters {
        let Some(&slot) = self.slots.get(key) else {
            return UdpFlowCounters::default();
        };
        let Some(values) = self.counter_map().and_then(|m| m.get(&slot, 0).ok()) else {
            return UdpFlowCounters::default();
        };
        values
            .iter()
            .fold(UdpFlowCounters::default(), |sum, c| UdpFlowCounters {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })
    }
}

/// The interface that holds local IPv4 address `ip`: its name and index.
fn interface_holding(ip: Ipv4Addr) -> Result<(String, u32), FastPathError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| FastPathError::Route(format!("listing interfaces: {e}")))?;
    for ifa in addrs {
        let holds = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == ip);
        if holds {
            let index =
                nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).map_err(|e| {
                    FastPathError::Route(format!("interface {}: {e}", ifa.interface_name))
                })?;
            return Ok((ifa.interface_name, index));
        }
    }
    Err(FastPathError::Route(format!(
        "no local interface holds {ip}"
    )))
}

/// The local address this host sends from towards `dest`.
pub fn source_towards(dest: SocketAddrV4) -> io::Result<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(dest)?;
    match socket.local_addr()? {
        std::net::SocketAddr::V4(local) => Ok(*local.ip()),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("an IPv6 route to an IPv4 address")),
    }
}
