//! Test harness for the gateway's end-to-end tests: real network topologies in
//! network namespaces, code and processes running inside them, and verifiable
//! byte streams.
//!
//! Layout:
//! - [`netns`]: the [`Topology`] of namespaces `prod`, `gwa`, `gwb`, `cons`
//!   (and an optional `attacker` on the WAN), its address plan, cleanup on drop
//!   and [`sweep_stale`] for leftovers of crashed runs.
//! - [`exec`]: running a process ([`Topology::spawn`]), a closure
//!   ([`Topology::run_in`]) or a tokio runtime ([`Topology::block_on_in`])
//!   inside a namespace.
//! - [`stream`]: a seeded pseudo-random byte source and a sink that verifies
//!   every byte in order, with SHA-256 digests, bounded in bytes and time.
//! - [`datagram`]: verifiable UDP datagrams (tag, sequence, SHA-256) and a
//!   receiver that tallies intact, corrupt, stranger and lost ones.
//! - [`wait`]: [`Deadline`], [`eventually`] and [`wait_for_port`] (poll, never
//!   sleep blindly).
//! - [`procfs`]: a process's open descriptors, memory and CPU time.
//! - [`wire`]: capturing a namespace's UDP datagrams off the wire and
//!   sending datagrams from spoofed sources (attack tests).
//! - [`daemon`]: the workspace's binaries ([`Bin`]: `s2cs`, `s2uc`), a
//!   [`Daemon`] in a namespace whose output is printed when a test fails, and
//!   [`S2uc`] to run the client.
//! - [`gateway`]: `s2cs serve` as the suites run it ([`Gateway`]) and the
//!   `s2uc connect` / `status` / `release` commands against it.
//! - [`impair`]: a lossy, reordering WAN (nftables and HTB; no netem here).
//! - [`leaks`]: every daemon's and client's output scanned for secrets.
//! - `sys` (private): the crate's only `unsafe` code ([`tcp_state`] is its
//!   public part).
//!
//! Everything here needs root (namespaces, veths); [`require_root`] says so
//! clearly. Traffic only ever goes to loopback or to addresses inside the
//! namespaces a [`Topology`] created.

#![deny(unsafe_code)]

pub mod daemon;
pub mod datagram;
pub mod exec;
pub mod gateway;
pub mod impair;
pub mod leaks;
pub mod netns;
pub mod procfs;
pub mod stream;
mod sys;
pub mod wait;
pub mod wire;

pub use daemon::{Bin, Daemon, S2uc};
pub use exec::{NsChild, NsThread};
pub use gateway::{Connected, Gateway, GatewaySpec};
pub use netns::{Link, Node, Topology, TopologyBuilder, sweep_stale};
pub use stream::{Report, StreamError, StreamSpec};
pub use sys::{TCP_CLOSE, tcp_state};
pub use wait::{Deadline, eventually, wait_for_port};

/// Fails with a clear message unless the process runs as root: creating network
/// namespaces and veth pairs needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "the e2e tests build network namespaces and need root (CAP_SYS_ADMIN and \
             CAP_NET_ADMIN); run them as root, e.g. `sudo -E cargo test -p e2e` (CI runs as root)"
        )
    }
}
