//! `s2cs`, the gateway daemon: the data plane that relays SciStream sessions'
//! TCP connections, preferably inside the kernel, and the probes that tell an
//! operator what this kernel offers.
//!
//! Its modules, each owning one thing, are listed in dependency order in
//! docs/ARCHITECTURE.md, the one module map (xtask's layering test checks
//! the code against it).
// `unsafe` only in `sys` (system calls) and in the eBPF map glue of `ebpf`,
// each with a SAFETY note.
#![deny(unsafe_code)]

// The fuzz checks (fuzz/checks) name this crate as `gateway`, as the fuzz
// crate does; the replay tests include them here.
#[cfg(test)]
extern crate self as gateway;

pub mod channel;
pub mod check;
pub mod daemon;
pub mod drain;
pub mod ebpf;
pub mod error_chain;
#[cfg(test)]
mod fuzz_replay;
pub mod host_tuning;
pub mod metrics;
pub mod privileges;
pub mod proxy;
pub mod refusal_log;
pub mod relay;
pub mod relay_limit;
pub mod session;
mod sockets;
pub mod sys;
pub mod udp;
pub mod udp_fastpath;
pub mod wan_admission;
pub mod xdp;
