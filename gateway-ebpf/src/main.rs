//! The gateway's eBPF programs.
//!
//! `relay_verdict` is an sk_skb stream verdict program attached to the `SOCKS`
//! SockHash. Every socket buffer arriving on a relayed socket is redirected to
//! the egress of its peer socket (looked up in `RELAY` by socket cookie), so the
//! bytes of a plaintext relay never leave the kernel. The program counts what it
//! redirected so userspace can tell when a half-closed direction has drained.
//! When the peer is not in the SockHash (the instant between inserting the two
//! sockets of a pair, or teardown) the socket switches to passing its bytes to
//! userspace for good, so nothing is ever dropped or reordered.
//!
//! `udp_fastpath` is a tc ingress program: datagrams of authenticated UDP
//! flows (plaintext after authentication) are rewritten and sent on by the
//! kernel; see its doc.
//!
//! `xdp_guard` is an XDP program on the gateway's WAN interface: it drops TCP
//! packets addressed to the data-port range unless `XDP_ALLOW` (kept in step
//! with the live sessions by userspace) allows their source for that port,
//! and counts drops by reason in `XDP_STATS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, sk_action, xdp_action,
    },
    helpers::{bpf_get_socket_cookie, bpf_redirect_neigh},
    macros::{classifier, map, stream_verdict, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, SockHash, lpm_trie::Key},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use core::ptr::{read_volatile, write_volatile};
use gateway_common::{
    ALLOW_PREFIX_ADDR, AllowKey, FAMILY_V4, MAX_RELAYED_SOCKETS, MAX_UDP_FLOW_ENTRIES,
    MAX_XDP_ALLOW, NOTIFY_EVERY, PASS_TO_USER, RelayEntry, UdpFlowAction, UdpFlowCounters,
    UdpFlowKey, XDP_STAT_ALLOWED, XDP_STAT_COUNT, XDP_STAT_MALFORMED, XDP_STAT_NOT_ALLOWED,
    XdpConfig,
    packet::{MAX_OFFSET, Packet, Verdict, classify, udp4_flow},
};

#[map(name = "SOCKS")]
static SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map(name = "RELAY")]
static RELAY: HashMap<u64, RelayEntry> = HashMap::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[stream_verdict]
pub fn relay_verdict(ctx: SkBuffContext) -> u32 {
    try_relay_verdict(&ctx)
}

fn try_relay_verdict(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the helper only reads the socket the context's skb belongs to.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    // A socket without a relay entry is not ours to touch: leave its bytes to it.
    let Some(entry) = RELAY.get_ptr_mut(cookie) else {
        return sk_action::SK_PASS;
    };
    let len = u64::from(ctx.len());
    // The verdict of one socket runs serialized under that socket's lock, and
    // it is the only writer of its entry's counters (userspace writes the entry
    // once, before the socket enters the SockHash, and then only reads it), so
    // plain aligned loads and stores suffice; BPF has no 64-bit atomic RMW in core.
    // SAFETY: `entry` points at a live, aligned map value.
    let (peer, flags) = unsafe { ((*entry).peer, read_volatile(&raw const (*entry).flags)) };
    if flags & PASS_TO_USER == 0 {
        // A bare FIN arrives as an empty buffer. TCP has already recorded the
        // end of stream on this socket (userspace carries it over once the
        // peer drained); sending an empty buffer out of the peer would make
        // the kernel report EPIPE there and break the relay, so drop it.
        if len == 0 {
            return sk_action::SK_DROP;
        }
        let mut key = peer;
        // flags 0: to the peer's egress (it is sent out of the peer socket).
        if SOCKS.redirect_skb(ctx, &mut key, 0) == i64::from(sk_action::SK_PASS) {
            // SAFETY: as above.
            let total = unsafe { add(&raw mut (*entry).redirected_bytes, len) };
            // SAFETY: as above.
            let noted = unsafe { read_volatile(&raw const (*entry).notified_bytes) };
            if total.wrapping_sub(noted) >= NOTIFY_EVERY {
                // SAFETY: as above.
                unsafe { write_volatile(&raw mut (*entry).notified_bytes, total) };
                // A full ring only delays flow control until the next tick.
                let _ = EVENTS.output::<u64>(&cookie, 0);
            }
            return sk_action::SK_PASS;
        }
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut (*entry).flags, flags | PASS_TO_USER) };
    }
    // SAFETY: as above.
    unsafe { add(&raw mut (*entry).passed_bytes, len) };
    sk_action::SK_PASS
}

/// Adds to a counter that only the calling program instance writes.
///
/// # Safety
/// `counter` must point at a live, aligned u64 inside a map value.
#[inline(always)]
unsafe fn add(counter: *mut u64, len: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let total = read_volatile(counter).wrapping_add(len);
        write_volatile(counter, total);
        total
    }
}

// ---------------------------------------------------------------------------
// XDP guard of the data ports
// ---------------------------------------------------------------------------

/// Index 0: the guard's configuration (port range, enabled), set by userspace.
#[map(name = "XDP_CONFIG")]
static XDP_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// Allowed (data port, source prefix) pairs; see `AllowKey`.
#[map(name = "XDP_ALLOW")]
static XDP_ALLOW: LpmTrie<AllowKey, u32> = LpmTrie::with_max_entries(MAX_XDP_ALLOW, 0);

/// Packet counters by reason (`XDP_STAT_*`), per CPU.
#[map(name = "XDP_STATS")]
static XDP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_STAT_COUNT, 0);

/// Guard of the gateway's data ports, attached to its WAN interface.
///
/// A TCP segment (over IPv4, or IPv6 with up to six extension headers,
/// behind up to two VLAN tags) whose destination port lies in the configured
/// data-port range passes only if `XDP_ALLOW` has an entry for that port
/// covering the source address (or a wildcard for the port); otherwise it is
/// dropped before the socket layer, so the sender gets no answer at all (no
/// SYN-ACK, no RST). Everything else passes: other ports (the control port),
/// non-TCP traffic, ARP, non-first IP fragments (they carry no TCP header;
/// the kernel cannot reassemble them without the first one, which is
/// checked). IPv4/IPv6 TCP packets whose headers are truncated are dropped
/// as malformed (the kernel would drop them too).
#[xdp]
pub fn xdp_guard(ctx: XdpContext) -> u32 {
    match try_xdp_guard(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The verdict for one packet: `Ok(action)`, or `Err(counter)` to drop it
/// and count it under `counter`. The parsing is `gateway_common::packet`,
/// shared with the fuzz target.
#[inline(always)]
fn try_xdp_guard(ctx: &XdpContext) -> Result<u32, u32> {
    let Some(config) = XDP_CONFIG.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if config.enabled == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    match classify(&XdpPacket(ctx), config.first_port, config.last_port) {
        Verdict::Pass => Ok(xdp_action::XDP_PASS),
        Verdict::Malformed => Err(XDP_STAT_MALFORMED),
        Verdict::Check(key) => {
            let bits = if key.family == FAMILY_V4 { 32 } else { 128 };
            if XDP_ALLOW
                .get(Key::new(ALLOW_PREFIX_ADDR + bits, key))
                .is_some()
            {
                count(XDP_STAT_ALLOWED);
                return Ok(xdp_action::XDP_PASS);
            }
            Err(XDP_STAT_NOT_ALLOWED)
        }
    }
}

/// The packet behind an XDP context, read through the one bounds-checked
/// packet read the verifier accepts.
struct XdpPacket<'a>(&'a XdpContext);

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET {
            return None;
        }
        let start = self.0.data();
        let end = self.0.data_end();
        if start + offset + N > end {
            return None;
        }
        // SAFETY: [start + offset, start + offset + N) lies inside the
        // packet (checked just above); any bytes are a valid [u8; N] and
        // the unaligned read is fine.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

/// Adds one to a per-CPU counter. XDP runs with preemption disabled, so a
/// plain read-modify-write of this CPU's slot cannot race.
#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = XDP_STATS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a live array value.
        unsafe { *counter += 1 };
    }
}

// ---------------------------------------------------------------------------
// Kernel fast path of authenticated UDP flows
// ---------------------------------------------------------------------------

/// Flows userspace installed once the peer gateway proved the session
/// secret: a datagram's addresses and ports as it arrives, to how it leaves.
#[map(name = "UDP_FLOWS")]
static UDP_FLOWS: HashMap<UdpFlowKey, UdpFlowAction> =
    HashMap::with_max_entries(MAX_UDP_FLOW_ENTRIES, 0);

/// Datagrams and payload bytes per installed entry (its `slot`), per CPU.
#[map(name = "UDP_COUNTERS")]
static UDP_COUNTERS: PerCpuArray<UdpFlowCounters> =
    PerCpuArray::with_max_entries(MAX_UDP_FLOW_ENTRIES, 0);

/// tc ingress program of the plaintext-after-authentication UDP path.
///
/// An IPv4 UDP datagram whose (source, destination, ports) is an installed
/// flow gets the flow's new source and destination (IP and UDP checksums
/// updated incrementally; a zero UDP checksum stays zero) and goes straight
/// to the egress of the flow's interface (`bpf_redirect_neigh`: the kernel
/// resolves the next hop's link address), without entering the socket
/// layer. Everything else passes unchanged to the stack: other flows, other
/// protocols, fragments, and datagrams of a flow from any other source,
/// which is how the flow stays pinned to the peer that proved the secret.
#[classifier]
pub fn udp_fastpath(ctx: TcContext) -> i32 {
    match try_udp_fastpath(&ctx) {
        Ok(action) => action,
        // A helper failed half-way through a rewrite: never forward a
        // half-rewritten datagram.
        Err(_) => TC_ACT_SHOT as i32,
    }
}

#[inline(always)]
fn try_udp_fastpath(ctx: &TcContext) -> Result<i32, i64> {
    let Some(flow) = udp4_flow(&TcPacket(ctx)) else {
        return Ok(TC_ACT_OK as i32);
    };
    // SAFETY: the value is plain data that userspace writes before it
    // inserts the entry and never changes after; it is copied out at once.
    let Some(a) = (unsafe { UDP_FLOWS.get(&flow.key) }).copied() else {
        return Ok(TC_ACT_OK as i32);
    };
    let (l3, l4) = (flow.l3, flow.l4);
    // Addresses: the IP header checksum, and the UDP checksum's pseudo
    // header.
    for (old, new) in [(flow.key.saddr, a.saddr), (flow.key.daddr, a.daddr)] {
        let (old, new) = (
            u64::from(u32::from_ne_bytes(old)),
            u64::from(u32::from_ne_bytes(new)),
        );
        ctx.l3_csum_replace(l3 + 10, old, new, 4)?;
        ctx.l4_csum_replace(
            l4 + 6,
            old,
            new,
            u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) | 4,
        )?;
    }
    ctx.store(l3 + 12, &a.saddr, 0)?;
    ctx.store(l3 + 16, &a.daddr, 0)?;
    // Ports: the UDP checksum.
    for (old, new) in [(flow.key.sport, a.sport), (flow.key.dport, a.dport)] {
        let (old, new) = (
            u64::from(u16::from_ne_bytes(old)),
            u64::from(u16::from_ne_bytes(new)),
        );
        ctx.l4_csum_replace(l4 + 6, old, new, u64::from(BPF_F_MARK_MANGLED_0) | 2)?;
    }
    ctx.store(l4, &a.sport, 0)?;
    ctx.store(l4 + 2, &a.dport, 0)?;
    let payload = u64::from(ctx.len()).saturating_sub((l4 + 8) as u64);
    if let Some(counters) = UDP_COUNTERS.get_ptr_mut(a.slot) {
        // SAFETY: this CPU's slot of a live array value; the program runs
        // with migration disabled and nothing else on this CPU writes it.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += payload;
        }
    }
    // SAFETY: a plain helper call; no parameters block (the kernel looks the
    // next hop up from the rewritten destination).
    let verdict = unsafe { bpf_redirect_neigh(a.ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(verdict as i32)
}

/// The packet behind a tc context, read with `bpf_skb_load_bytes` (which
/// checks the bounds itself).
struct TcPacket<'a>(&'a TcContext);

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET {
            return None;
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
