//! `s2cs`, the gateway daemon: the data plane that relays SciStream sessions'
//! TCP connections, preferably inside the kernel, and the probes that tell an
//! operator what this kernel offers.
//!
//! Layout:
//! - [`sys`]: every raw system call outside aya (socket options, ioctls, splice);
//! - [`error_chain`]: one line for an error and its sources;
//! - [`ebpf`]: loads the embedded eBPF object and owns the kernel relay maps;
//! - [`relay`]: the relay engine and its three data paths;
//! - [`channel`]: the secure gateway-to-gateway channel (TLS, per-session
//!   proof, kernel/userspace TLS data paths);
//! - [`check`]: `s2cs check`, the capability report;
//! - [`host_tuning`]: the host settings for 100 Gbit/s that `check` reports,
//!   each with the command that fixes it;
//! - [`proxy`]: a listener that relays every accepted connection to a target;
//! - [`session`]: the data plane of SciStream sessions (`control::DataPlane`)
//!   and `s2cs serve`;
//! - [`admission`]: the budget of WAN connections not yet authenticated
//!   (gateway-wide, per source, per second);
//! - [`relay_limit`]: the budget of relayed connections (gateway-wide);
//! - [`refusal_log`]: one log line a second summing up refused WAN
//!   connections;
//! - [`xdp`]: the XDP guard of the data ports on the WAN interface and its
//!   allow-list;
//! - [`metrics`]: the Prometheus registry of `s2cs serve` and its HTTP
//!   endpoint.
//! - [`privileges`]: the Linux capabilities the gateway uses, what each
//!   enables, and which this process holds.
// `unsafe` only in `sys` (system calls) and in the eBPF map glue of `ebpf`,
// each with a SAFETY note.
#![deny(unsafe_code)]

// The fuzz checks (fuzz/checks) name this crate as `gateway`, as the fuzz
// crate does; the replay tests include them here.
#[cfg(test)]
extern crate self as gateway;

pub mod admission;
pub mod channel;
pub mod check;
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
pub mod sys;
pub mod udp;
pub mod udp_fastpath;
pub mod xdp;
