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
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{sk_action, xdp_action},
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict, xdp},
    maps::{HashMap, RingBuf, SockHash},
    programs::{SkBuffContext, XdpContext},
};
use core::ptr::{read_volatile, write_volatile};
use gateway_common::{MAX_RELAYED_SOCKETS, NOTIFY_EVERY, PASS_TO_USER, RelayEntry};

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
    let Some(entry) = RELAY.get_ptr_mut(&cookie) else {
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

/// Guard of the data ports, attached to the WAN interface. This build only
/// proves XDP attaches here (`s2cs check`); it passes every packet.
#[xdp]
pub fn xdp_guard(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
