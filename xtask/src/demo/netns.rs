//! The demo's four network namespaces (prod, gwa, gwb, cons) joined by veth
//! pairs: LAN A 10.1.0.0/24 (gwa .1, prod .2), WAN 10.2.0.0/24 (gwa .1,
//! gwb .2), LAN B 10.3.0.0/24 (gwb .1, cons .2). Forwarding is off, so prod
//! can reach cons only through the gateways. `Topology` removes everything
//! (processes inside, namespaces, veths) on drop; `cleanup_all` does the same
//! from a Ctrl-C handler.
use std::process::Command;

use anyhow::Context as _;

use crate::cmd;

pub const PREFIX: &str = "s2demo-";
pub const NODES: [&str; 4] = ["prod", "gwa", "gwb", "cons"];

/// (node a, interface in a, address of a, node b, interface in b, address of b)
const LINKS: [(&str, &str, &str, &str, &str, &str); 3] = [
    ("prod", "lana", "10.1.0.2/24", "gwa", "lana", "10.1.0.1/24"),
    ("gwa", "wan", "10.2.0.1/24", "gwb", "wan", "10.2.0.2/24"),
    ("gwb", "lanb", "10.3.0.1/24", "cons", "lanb", "10.3.0.2/24"),
];

pub fn ns(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// A command that runs `program` inside `node`'s namespace.
pub fn exec_in(node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns(node)]).arg(program);
    command
}

pub struct Topology;

impl Topology {
    pub fn create() -> anyhow::Result<Topology> {
        cleanup_all();
        let topology = Topology;
        for node in NODES {
            cmd::run(Command::new("ip").args(["netns", "add", &ns(node)]))?;
            cmd::run(Command::new("ip").args(["-n", &ns(node), "link", "set", "lo", "up"]))?;
            for key in ["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"] {
                cmd::run(Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns(node),
                    "sysctl",
                    "-qw",
                    key,
                ]))?;
            }
        }
        for (index, (a, a_if, a_addr, b, b_if, b_addr)) in LINKS.iter().enumerate() {
            // Create both ends in the root namespace under temporary names,
            // then move and rename them.
            let (tmp_a, tmp_b) = (format!("s2d{index}a"), format!("s2d{index}b"));
            cmd::run(Command::new("ip").args([
                "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
            ]))
            .context("creating a veth pair")?;
            for (tmp, node, name, addr) in [(&tmp_a, a, a_if, a_addr), (&tmp_b, b, b_if, b_addr)] {
                cmd::run(Command::new("ip").args(["link", "set", tmp, "netns", &ns(node)]))?;
                cmd::run(Command::new("ip").args([
                    "-n",
                    &ns(node),
                    "link",
                    "set",
                    tmp,
                    "name",
                    name,
                ]))?;
                cmd::run(Command::new("ip").args([
                    "-n",
                    &ns(node),
                    "addr",
                    "add",
                    addr,
                    "dev",
                    name,
                ]))?;
                cmd::run(Command::new("ip").args(["-n", &ns(node), "link", "set", name, "up"]))?;
            }
        }
        Ok(topology)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        cleanup_all();
    }
}

/// Kills every process in the demo's namespaces and deletes them (their
/// veths go with them). Safe to call at any time, also twice.
pub fn cleanup_all() {
    for node in NODES {
        let name = ns(node);
        if let Ok(pids) = cmd::output(Command::new("ip").args(["netns", "pids", &name])) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
