//! The gateway's eBPF programs.
//!
//! `relay_verdict` is an sk_skb stream verdict program attached to the `SOCKS`
//! SockHash. Every socket buffer arriving on a relayed socket is redirected to
//! the egress of its peer socket (looked up in `RELAY` by socket cookie), so the
//! bytes of a plaintext relay never leave the kernel. The program counts what it
//! redirected so userspace can tell when a half-closed direction has drained.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action,
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
};
use core::sync::atomic::{AtomicU64, Ordering};
use gateway_common::{MAX_RELAYED_SOCKETS, RelayEntry};

#[map(name = "SOCKS")]
static SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[map(name = "RELAY")]
static RELAY: HashMap<u64, RelayEntry> = HashMap::with_max_entries(MAX_RELAYED_SOCKETS, 0);

#[stream_verdict]
pub fn relay_verdict(ctx: SkBuffContext) -> u32 {
    try_relay_verdict(&ctx).unwrap_or_else(|action| action)
}

fn try_relay_verdict(ctx: &SkBuffContext) -> Result<u32, u32> {
    // SAFETY: the helper only reads the socket the context's skb belongs to.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    // A socket without a relay entry is not ours to touch: leave its bytes to it.
    let entry = RELAY.get_ptr_mut(&cookie).ok_or(sk_action::SK_PASS)?;
    // SAFETY: get_ptr_mut returned a pointer to a live map value; the fields
    // are only accessed through atomics (userspace reads them concurrently).
    let (peer, redirected, failures) = unsafe {
        (
            (*entry).peer,
            AtomicU64::from_ptr(&raw mut (*entry).redirected_bytes),
            AtomicU64::from_ptr(&raw mut (*entry).redirect_failures),
        )
    };
    let len = u64::from(ctx.len());
    let mut key = peer;
    // flags 0: to the peer's egress (it is sent out of the peer socket).
    if SOCKS.redirect_skb(ctx, &mut key, 0) == i64::from(sk_action::SK_PASS) {
        redirected.fetch_add(len, Ordering::Relaxed);
        Ok(sk_action::SK_PASS)
    } else {
        failures.fetch_add(1, Ordering::Relaxed);
        Err(sk_action::SK_DROP)
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
