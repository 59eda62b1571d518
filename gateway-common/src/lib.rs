//! Plain-data types shared between the gateway's eBPF programs (`gateway-ebpf`)
//! and its userspace loader (`gateway`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of implicit padding, and in host
//! byte order unless a field's doc says otherwise. Map names are constants so the
//! kernel side and the user side cannot disagree on them.
#![no_std]

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
unsafe impl aya::Pod for RelayEntry {}
