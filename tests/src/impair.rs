//! A lossy, reordering WAN without netem (this machine's kernel has none;
//! `CONFIG_NET_SCH_NETEM` is not set): on one node's interface, nftables
//! drops a share of the outgoing UDP packets at random and steers half of
//! the rest into a slow HTB class, where they queue behind each other and
//! arrive late, after packets sent later through the fast class. Real
//! kernel queueing and real drops, on the real packets the gateways send.
//!
//! Needs `tc` (iproute2) and `nft` (nftables), which `cargo xtask setup`
//! installs.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::netns::{Link, Node, Topology};

/// What the impaired interface does to outgoing UDP.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    /// Share of UDP packets dropped at random, in percent.
    pub loss_percent: u8,
    /// Rate of the slow class half the UDP packets go through, in Mbit/s:
    /// they wait in its short queue (delay and jitter) and fall behind the
    /// other half (reordering); a burst beyond the queue is dropped.
    pub slow_mbit: u32,
}

/// Impairs `node`'s outgoing UDP on `link` (until the topology is dropped).
pub fn impair_udp_egress(
    topo: &Topology,
    node: Node,
    link: Link,
    how: Impairment,
) -> anyhow::Result<()> {
    let dev = topo
        .ifname(node, link)
        .with_context(|| format!("{node} has no interface on {link:?}"))?;
    let slow = format!("{}mbit", how.slow_mbit.max(1));
    // The slow class's queue is short: a packet waits behind at most 40
    // others, so it falls at most a few dozen packets behind (a WAN's
    // reordering; QUIC takes a packet more than 128 behind for a replay).
    // A burst beyond it overflows: loss, as on a real bottleneck.
    let tc: [&[&str]; 5] = [
        &[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ],
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
        ],
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", &slow,
            "ceil", &slow,
        ],
        &[
            "qdisc", "add", "dev", dev, "parent", "1:10", "pfifo", "limit", "10000",
        ],
        &[
            "qdisc", "add", "dev", dev, "parent", "1:20", "pfifo", "limit", "10000",
        ],
    ];
    for args in tc {
        let mut cmd = topo.command(node, "tc");
        cmd.args(args);
        run(topo, node, cmd)?;
    }
    let rules = format!(
        "table ip s2cs_test_impair {{\n  chain out {{\n    type filter hook postrouting priority 0; policy accept;\n    oifname \"{dev}\" meta l4proto udp numgen random mod 100 < {loss} drop\n    oifname \"{dev}\" meta l4proto udp meta priority set numgen random mod 2 map {{ 0 : 1:10, 1 : 1:20 }}\n  }}\n}}\n",
        loss = how.loss_percent.min(100),
    );
    let file = tempfile::NamedTempFile::new().context("a file for the nft rules")?;
    std::fs::write(file.path(), rules).context("writing the nft rules")?;
    let mut cmd = topo.command(node, "nft");
    cmd.arg("-f").arg(file.path());
    run(topo, node, cmd)
}

fn run(topo: &Topology, node: Node, cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = topo
        .output(node, cmd, Duration::from_secs(20))
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
