//! The crate's only `unsafe` code: making a child process enter a network
//! namespace between fork and exec.
//!
//! Threads enter namespaces with the safe [`nix::sched::setns`] (see
//! [`crate::exec`]); only the pre-exec hook of [`std::process::Command`] is
//! `unsafe` by signature.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
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
