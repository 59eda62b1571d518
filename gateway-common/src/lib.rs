//! Plain-data types shared between the gateway's eBPF programs (`gateway-ebpf`)
//! and its userspace loader (`gateway`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of implicit padding, and in host
//! byte order unless a field's doc says otherwise. Map names are constants so the
//! kernel side and the user side cannot disagree on them.
#![no_std]
// `unsafe` only to declare the map types plain data for aya (`user`).
#![deny(unsafe_code)]

pub mod packet;

/// Name of the SockHash holding every socket relayed in the kernel, keyed by
/// socket cookie (`SO_COOKIE`).
pub const SOCKS_MAP: &str = "SOCKS";
/// Name of the hash map from a socket's cookie to its [`RelayEntry`].
pub const RELAY_MAP: &str = "RELAY";
/// Name of the sk_skb stream verdict program that redirects to the peer socket.
pub const VERDICT_PROG: &str = "relay_verdict";
/// Name of the XDP program guarding the data ports.
pub const XDP_GUARD_PROG: &str = "xdp_guard";
/// Capacity of the SockHash and of the relay map (sockets, i.e. twice the
/// number of connections relayed in the kernel at once).
pub const MAX_RELAYED_SOCKETS: u32 = 65_536;

/// Per-socket relay state, keyed by the cookie of the socket whose *incoming*
/// bytes it describes.
///
/// Userspace writes `peer` before it puts the socket into the SockHash; the
/// verdict program adds to the counters atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayEntry {
    /// Cookie of the socket that receives this socket's incoming bytes.
    pub peer: u64,
    /// Bytes redirected to the peer's egress so far.
    pub redirected_bytes: u64,
    /// Bytes handed to userspace instead (see [`PASS_TO_USER`]).
    pub passed_bytes: u64,
    /// Bit flags, see [`PASS_TO_USER`].
    pub flags: u64,
    /// `redirected_bytes` when the program last notified userspace through
    /// [`EVENTS_MAP`] (every [`NOTIFY_EVERY`] bytes).
    pub notified_bytes: u64,
}

/// Name of the ring buffer through which the verdict program wakes userspace
/// (records: the socket cookie, a u64) so flow control reacts within a few
/// MiB of data instead of at a polling interval.
pub const EVENTS_MAP: &str = "EVENTS";
/// Redirected bytes between two notifications of one socket.
pub const NOTIFY_EVERY: u64 = 2 << 20;

/// Set by the verdict program when it could not redirect because the peer was
/// not (yet, or any more) in the SockHash: from then on every incoming byte of
/// this socket is passed to its own receive queue, in order, and userspace
/// relays this direction itself. This closes the window between inserting the
/// two sockets of a pair without ever dropping or reordering a byte.
pub const PASS_TO_USER: u64 = 1;

#[cfg(feature = "user")]
// SAFETY: RelayEntry is repr(C), Copy, has no padding (five u64) and every bit
// pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for RelayEntry {}

// ---------------------------------------------------------------------------
// XDP guard of the data ports
// ---------------------------------------------------------------------------

/// Name of the one-entry array holding the guard's [`XdpConfig`] (index 0).
pub const XDP_CONFIG_MAP: &str = "XDP_CONFIG";
/// Name of the LPM trie of allowed (data port, source prefix) pairs: keys are
/// [`AllowKey`]s behind a prefix length (see [`AllowKey`]), values a `u32`
/// (reserved, userspace writes 1).
pub const XDP_ALLOW_MAP: &str = "XDP_ALLOW";
/// Name of the per-CPU array of `u64` packet counters, indexed by the
/// `XDP_STAT_*` constants.
pub const XDP_STATS_MAP: &str = "XDP_STATS";
/// Capacity of the allow trie (entries: one per data port and peer prefix).
pub const MAX_XDP_ALLOW: u32 = 16_384;

/// Counter: dropped, TCP to a data port from a source no allow entry covers.
pub const XDP_STAT_NOT_ALLOWED: u32 = 0;
/// Counter: dropped, an IPv4/IPv6 TCP packet whose headers are truncated or
/// inconsistent (bad IHL, TCP header cut before its ports, IPv6 extension
/// header chain too long to walk).
pub const XDP_STAT_MALFORMED: u32 = 1;
/// Counter: passed, TCP to a data port from an allowed source.
pub const XDP_STAT_ALLOWED: u32 = 2;
/// Number of counters in [`XDP_STATS_MAP`].
pub const XDP_STAT_COUNT: u32 = 3;

/// The guard's configuration, written by userspace at attach time.
///
/// All fields in host byte order. While `enabled` is 0 the program passes
/// every packet (the state between loading and configuring).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// First TCP port of the gateway's data-port range (inclusive).
    pub first_port: u16,
    /// Last TCP port of the data-port range (inclusive).
    pub last_port: u16,
    /// 1: guard the range; 0: pass everything.
    pub enabled: u32,
}

/// `AllowKey::family` of an IPv4 source.
pub const FAMILY_V4: u8 = 4;
/// `AllowKey::family` of an IPv6 source.
pub const FAMILY_V6: u8 = 6;

/// The data of an [`XDP_ALLOW_MAP`] key. The trie matches the leading
/// `prefix_len` *bits* of these bytes in order, so:
///
/// - a wildcard for a port (every source) has prefix length
///   [`ALLOW_PREFIX_PORT`] (16: the port only);
/// - a source prefix `addr/n` has prefix length
///   [`ALLOW_PREFIX_ADDR`] + `n` (port, family, then `n` bits of address).
///
/// Every field is a byte array in network byte order, so the struct has
/// alignment 1 and no padding the trie could see: `_reserved` is never
/// covered by a prefix and must be zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllowKey {
    /// TCP destination port (network byte order).
    pub port: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`] (0 in wildcard keys, not matched).
    pub family: u8,
    /// Source address in network byte order: IPv4 in the first 4 bytes,
    /// the rest zero.
    pub addr: [u8; 16],
    /// Zero.
    pub _reserved: u8,
}

/// Prefix length (bits) of a wildcard key: the port only.
pub const ALLOW_PREFIX_PORT: u32 = 16;
/// Prefix length (bits) of the port and family, before the address bits.
pub const ALLOW_PREFIX_ADDR: u32 = 24;

#[cfg(feature = "user")]
// SAFETY: XdpConfig is repr(C), Copy, two u16 and a u32 (no padding), and
// every bit pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for XdpConfig {}

#[cfg(feature = "user")]
// SAFETY: AllowKey is repr(C), Copy, made of u8 arrays only (alignment 1,
// no padding), and every bit pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for AllowKey {}

// ---------------------------------------------------------------------------
// Kernel fast path of UDP flows (plaintext after authentication)
// ---------------------------------------------------------------------------

/// Name of the tc classifier that forwards the datagrams of authenticated
/// UDP flows in the kernel.
pub const UDP_FAST_PROG: &str = "udp_fastpath";
/// Name of the hash map from a datagram's [`UdpFlowKey`] (as it arrives)
/// to its [`UdpFlowAction`] (how it leaves).
pub const UDP_FLOWS_MAP: &str = "UDP_FLOWS";
/// Name of the per-CPU array of [`UdpFlowCounters`], indexed by an entry's
/// [`UdpFlowAction::slot`].
pub const UDP_COUNTERS_MAP: &str = "UDP_COUNTERS";
/// Capacity of the flow map and of the counters: two entries per flow (one
/// per direction).
pub const MAX_UDP_FLOW_ENTRIES: u32 = 16_384;

/// An IPv4 UDP datagram's addresses and ports as it arrives, all in network
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlowKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// How a matching datagram leaves: its new addresses and ports (network
/// byte order), the interface it is sent out of, and where it is counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlowAction {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// The interface (index, host order) whose egress the datagram goes to.
    pub ifindex: u32,
    /// This entry's index in [`UDP_COUNTERS_MAP`] (host order), unique
    /// among installed entries.
    pub slot: u32,
}

/// One flow entry's counters on one CPU: datagrams, and bytes of UDP
/// payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlowCounters {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: UdpFlowKey is repr(C), Copy, u8 arrays only (alignment 1, no
// padding), and every bit pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for UdpFlowKey {}

#[cfg(feature = "user")]
// SAFETY: UdpFlowAction is repr(C), Copy; 12 bytes of u8 arrays and two u32
// (at offsets 12 and 16): no padding; every bit pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for UdpFlowAction {}

#[cfg(feature = "user")]
// SAFETY: UdpFlowCounters is repr(C), Copy, two u64 (no padding), and every
// bit pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for UdpFlowCounters {}
