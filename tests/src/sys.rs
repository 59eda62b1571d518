//! The crate's only `unsafe` code: making a child process enter a network
//! namespace between fork and exec, and reading a socket's TCP state.
//!
//! Threads enter namespaces with the safe [`nix::sched::setns`] (see
//! `netlab::exec`); only the pre-exec hook of [`std::process::Command`] is
//! `unsafe` by signature.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};

/// Makes `cmd`'s child call `setns(ns, CLONE_NEWNET)` before it execs, so the
/// program starts inside the network namespace `ns` (an open `/run/netns/NAME`).
///
/// The file stays open as long as `cmd` lives; it is close-on-exec, so the
/// program does not inherit it.
pub(crate) fn enter_netns_before_exec(cmd: &mut Command, ns: File) {
    // pre_exec wants a closure that is Send + Sync + 'static: share the file.
    let ns = Arc::new(ns);
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe work is allowed. It does no allocation and takes no
    // lock: it calls setns(2) on a descriptor opened before the fork, and turns
    // a failure into io::Error with from_raw_os_error (nix's From<Errno>),
    // which does not allocate either.
    unsafe {
        cmd.pre_exec(move || setns(&*ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
    }
}

/// Linux's TCP_CLOSE state: where a socket goes when it is reset (or once
/// both ends have closed).
pub const TCP_CLOSE: u8 = 7;

/// The socket's TCP state (`tcpi_state`, the first byte of TCP_INFO). Tells
/// a reset (TCP_CLOSE) from a FIN (CLOSE_WAIT, TIME_WAIT, ...) after a read
/// returned 0: a reset's error is reported to one call only, which may be
/// another thread's.
pub fn tcp_state(socket: &std::net::TcpStream) -> io::Result<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which lives
    // across the call; the descriptor is borrowed from a live socket.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[0])
}

/// Makes a packet socket prefix every frame it reads with a
/// `virtio_net_hdr` (PACKET_VNET_HDR), which carries the segment size of a
/// UDP GSO frame (one frame holding several datagrams, as QUIC sends them).
pub(crate) fn packet_vnet_hdr(socket: &impl AsRawFd) -> io::Result<()> {
    let on: nix::libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`, which
    // lives across the call; the descriptor is borrowed from a live socket.
    let rc = unsafe {
        nix::libc::setsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_PACKET,
            nix::libc::PACKET_VNET_HDR,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
