//! Forwarding on or off in a namespace (`net.ipv4.ip_forward` and
//! `net.ipv6.conf.all.forwarding`).
//!
//! A new namespace may inherit IPv4 forwarding from the host (see
//! `net.core.devconf_inherit_init_net`): a lab that must not route says so
//! explicitly ([`crate::LabBuilder::forwarding`]).

use std::fs;
use std::io;

use anyhow::Context;

use crate::exec::run_in_netns;
use crate::netns;

const IPV4: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns IPv4 and IPv6 forwarding in namespace `ns` (by name) on or off. IPv6
/// is skipped if the kernel has none.
pub fn set_forwarding(ns: &str, on: bool) -> anyhow::Result<()> {
    let value = if on { "1" } else { "0" };
    // /proc/sys/net shows the namespace of the task that opens it.
    run_in_netns(&netns::path(ns), || -> anyhow::Result<()> {
        fs::write(IPV4, value).with_context(|| format!("writing {value} to {IPV4}"))?;
        match fs::write(IPV6, value) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_context(|| format!("writing {value} to {IPV6}")),
        }
    })
    .and_then(|r| r)
    .with_context(|| {
        format!(
            "turning forwarding {} in {ns}",
            if on { "on" } else { "off" }
        )
    })
}

/// Whether IPv4 forwarding is on in namespace `ns`.
pub fn forwarding(ns: &str) -> anyhow::Result<bool> {
    run_in_netns(&netns::path(ns), || fs::read_to_string(IPV4))?
        .map(|v| v.trim() == "1")
        .with_context(|| format!("reading {IPV4} in {ns}"))
}
