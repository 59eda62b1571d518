//! Network namespaces for the workspace's tests, benches and demo: one place
//! that builds them, runs things inside them and removes them again.
//!
//! This crate owns the mechanics, not any particular topology: the e2e
//! harness (`e2e::netns`), the benchmark networks (`xtask bench`) and the
//! demo (`xtask demo`) describe their layout with a [`LabBuilder`] and keep
//! their own address plans.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use netlab::{Cidr, Lab, Veth};
//!
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder("mylab-")
//!     .namespace("a")
//!     .namespace("b")
//!     .veth(Veth::new(("a", "eth0"), ("b", "eth0")).mtu(1500))
//!     .address("a", "eth0", Cidr::new(Ipv4Addr::new(10, 9, 0, 1), 24))
//!     .address("b", "eth0", Cidr::new(Ipv4Addr::new(10, 9, 0, 2), 24))
//!     .forwarding("a", false)
//!     .build()?;
//! let out = lab.command("a", "ping").args(["-c1", "10.9.0.2"]).output()?;
//! drop(lab); // kills what still runs inside, deletes the namespaces
//! # let _ = out; Ok(()) }
//! ```
//!
//! What it does, module by module:
//! - [`plan`]: the [`LabBuilder`] (namespaces, [`Veth`] pairs with optional
//!   MTU and bridge master, bridges, addresses, routes, forwarding) and its
//!   checks, before anything is created;
//! - [`lab`]: [`LabBuilder::build`] and the live [`Lab`]: every namespace
//!   gets `lo` up, veth pairs are created directly inside the namespaces
//!   (nothing appears in the host's namespace), every veth end carries the
//!   lab's id as its alias, IPv6 addresses are added `nodad`; dropping the
//!   lab kills the processes left inside and deletes its namespaces in
//!   reverse creation order, without ever panicking (also while a panicking
//!   test unwinds). A failed build removes what it had created;
//! - [`name`]: namespace names, `PREFIX PID-TAG-NODE` (unique per lab, so
//!   labs run in parallel) or fixed `PREFIX NODE` (the demo's);
//! - [`netns`]: one namespace by name: add, list its processes, kill them
//!   all and wait, destroy;
//! - [`sweep`]: [`sweep_stale`] removes namespaces of a prefix whose owning
//!   process is dead (a crashed or killed run);
//! - [`forwarding`]: IPv4/IPv6 forwarding on or off in a namespace;
//! - [`exec`]: `ip netns exec` commands and closures run on a thread inside a
//!   namespace;
//! - [`ip`]: running iproute2's `ip`, alone or as a batch;
//! - [`cidr`]: an address with its prefix length.
//!
//! Everything that touches namespaces needs root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN) and iproute2.

#![forbid(unsafe_code)]

pub mod cidr;
pub mod exec;
pub mod forwarding;
pub mod ip;
pub mod lab;
pub mod name;
pub mod netns;
pub mod plan;
pub mod sweep;

pub use cidr::Cidr;
pub use exec::{command, run_in_netns};
pub use forwarding::set_forwarding;
pub use lab::Lab;
pub use netns::{NETNS_DIR, destroy, kill_all, pids};
pub use plan::{End, LabBuilder, Veth};
pub use sweep::sweep_stale;

/// Fails with a clear message unless the process runs as root.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "network namespaces and veth pairs need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        )
    }
}
