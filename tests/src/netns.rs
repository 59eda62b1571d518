//! Network topologies in namespaces: builds them, names them, knows their
//! addresses, and removes them.
//!
//! ```text
//!   prod --LAN A-- gwa ==WAN== gwb --LAN B-- cons
//!                          |
//!                       attacker   (optional, see TopologyBuilder::attacker)
//! ```
//!
//! Each box is a network namespace with `lo` up. Each link is a veth pair
//! created directly inside the namespaces (nothing ever appears in the host's
//! namespace), with IPv4 `10.L.0.H/24` and IPv6 `fd00:e2e:L::H/64` (`nodad`),
//! where `L` is 1 for LAN A, 2 for the WAN, 3 for LAN B and `H` is 1 for the
//! gateway (or gwa on the WAN), 2 for the other end (gwb on the WAN) and 66
//! for the attacker. Only connected routes exist and forwarding is off in
//! every namespace, so prod and cons cannot reach each other except through
//! programs running on the gateways.
//!
//! With an attacker, the WAN is a bridge `br0` in a helper namespace
//! (`…-wansw`) with one veth to each of gwa, gwb and attacker; the WAN
//! interfaces in gwa and gwb keep their name and addresses, so a test that
//! attaches XDP to gwb's WAN interface sees the attacker's packets.
//!
//! Namespace names are `e2ens-PID-SEQRAND-NODE`: unique per topology, so tests
//! run in parallel (in one process or several). [`Topology`]'s `Drop` kills any
//! process left in its namespaces and deletes them (which deletes the veths),
//! also while a panicking test unwinds; [`sweep_stale`] removes namespaces
//! whose owning process is dead (a crashed or killed run).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "e2ens-";

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A host of the topology, each in its own network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Node {
    /// The producer, on LAN A.
    Prod,
    /// The producer-side gateway, on LAN A and the WAN.
    Gwa,
    /// The consumer-side gateway, on the WAN and LAN B.
    Gwb,
    /// The consumer, on LAN B.
    Cons,
    /// A host on the WAN segment (only with [`TopologyBuilder::attacker`]).
    Attacker,
}

impl Node {
    /// The four hosts every topology has.
    pub const BASIC: [Node; 4] = [Node::Prod, Node::Gwa, Node::Gwb, Node::Cons];

    /// Short lowercase name, also the suffix of the namespace name.
    pub const fn name(self) -> &'static str {
        match self {
            Node::Prod => "prod",
            Node::Gwa => "gwa",
            Node::Gwb => "gwb",
            Node::Cons => "cons",
            Node::Attacker => "attacker",
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A network segment of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Link {
    /// prod - gwa.
    LanA,
    /// gwa - gwb (and the attacker, if any).
    Wan,
    /// gwb - cons.
    LanB,
}

impl Link {
    /// Short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Link::LanA => "lana",
            Link::Wan => "wan",
            Link::LanB => "lanb",
        }
    }

    /// The `L` in the address plan: 10.L.0.0/24, fd00:e2e:L::/64.
    const fn number(self) -> u8 {
        match self {
            Link::LanA => 1,
            Link::Wan => 2,
            Link::LanB => 3,
        }
    }

    /// The IPv4 subnet of this link (prefix length 24).
    pub const fn subnet_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number(), 0, 0)
    }

    /// The IPv6 subnet of this link (prefix length 64).
    pub const fn subnet_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x0e2e, self.number() as u16, 0, 0, 0, 0, 0)
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One interface of one node: the address plan, in one table.
struct Attachment {
    node: Node,
    link: Link,
    ifname: &'static str,
    host: u8,
}

const ATTACHMENTS: [Attachment; 7] = [
    Attachment {
        node: Node::Prod,
        link: Link::LanA,
        ifname: "lana",
        host: 2,
    },
    Attachment {
        node: Node::Gwa,
        link: Link::LanA,
        ifname: "lana",
        host: 1,
    },
    Attachment {
        node: Node::Gwa,
        link: Link::Wan,
        ifname: "wan",
        host: 1,
    },
    Attachment {
        node: Node::Gwb,
        link: Link::Wan,
        ifname: "wan",
        host: 2,
    },
    Attachment {
        node: Node::Gwb,
        link: Link::LanB,
        ifname: "lanb",
        host: 1,
    },
    Attachment {
        node: Node::Cons,
        link: Link::LanB,
        ifname: "lanb",
        host: 2,
    },
    Attachment {
        node: Node::Attacker,
        link: Link::Wan,
        ifname: "wan",
        host: 66,
    },
];

fn attachment(node: Node, link: Link) -> Option<&'static Attachment> {
    ATTACHMENTS
        .iter()
        .find(|a| a.node == node && a.link == link)
}

fn v4(link: Link, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, link.number(), 0, host)
}

fn v6(link: Link, host: u8) -> Ipv6Addr {
    let [a, b, c, d, e, f, g, _] = link.subnet_v6().segments();
    Ipv6Addr::new(a, b, c, d, e, f, g, u16::from(host))
}

/// Name of the bridge on the WAN when there is an attacker.
const WAN_BRIDGE: &str = "br0";
/// Suffix of the helper namespace holding the WAN bridge.
const WAN_SWITCH: &str = "wansw";

/// Options for a [`Topology`]; [`TopologyBuilder::build`] creates it.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct TopologyBuilder {
    attacker: bool,
}

impl TopologyBuilder {
    /// Adds [`Node::Attacker`] on the WAN segment (10.2.0.66): the WAN becomes
    /// a bridge in a helper namespace, so the attacker reaches gwb's (and
    /// gwa's) WAN address through their usual WAN interface.
    pub fn attacker(mut self, yes: bool) -> Self {
        self.attacker = yes;
        self
    }

    /// Creates the namespaces, links, addresses and sysctls. On error,
    /// whatever was created is removed again.
    pub fn build(self) -> anyhow::Result<Topology> {
        crate::require_root()?;
        if let Err(e) = sweep_stale() {
            eprintln!("e2e: could not sweep stale namespaces: {e:#}");
        }
        let mut nodes = Node::BASIC.to_vec();
        if self.attacker {
            nodes.push(Node::Attacker);
        }
        let mut topo = Topology {
            id: new_id(),
            nodes,
            created: Vec::new(),
        };
        // On error `topo` is dropped here, which deletes what was created.
        topo.create()
            .with_context(|| format!("building topology {}", topo.id))?;
        Ok(topo)
    }
}

/// A live topology; dropping it kills the processes left inside and deletes its
/// namespaces and links. See the [module docs](self) for the layout.
#[derive(Debug)]
pub struct Topology {
    id: String,
    nodes: Vec<Node>,
    /// Namespaces created so far, in creation order (all deleted on drop).
    created: Vec<String>,
}

impl Topology {
    /// Options: `Topology::builder().attacker(true).build()`.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The basic four-node topology.
    pub fn new() -> anyhow::Result<Self> {
        Self::builder().build()
    }

    /// Unique id of this topology: the common prefix of its namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The nodes this topology has.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether `node` exists in this topology.
    pub fn has(&self, node: Node) -> bool {
        self.nodes.contains(&node)
    }

    /// Names of all namespaces this topology created (nodes and helpers).
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// Name of `node`'s namespace (as `ip netns list` shows it).
    pub fn ns_name(&self, node: Node) -> String {
        format!("{}-{}", self.id, node.name())
    }

    /// Path of `node`'s namespace file, for setns(2) or `nsenter --net=`.
    pub fn netns_path(&self, node: Node) -> PathBuf {
        Path::new(NETNS_DIR).join(self.ns_name(node))
    }

    /// `node`'s IPv4 address on `link`.
    ///
    /// # Panics
    /// If `node` has no interface on `link` in this topology (a bug in the
    /// test); see [`Topology::try_addr`].
    pub fn addr(&self, node: Node, link: Link) -> IpAddr {
        IpAddr::V4(self.expect_attachment(node, link, "addr").0)
    }

    /// `node`'s IPv6 address on `link` (panics like [`Topology::addr`]).
    pub fn addr6(&self, node: Node, link: Link) -> IpAddr {
        IpAddr::V6(self.expect_attachment(node, link, "addr6").1)
    }

    /// `node`'s IPv4 address on `link` with `port`.
    pub fn sockaddr(&self, node: Node, link: Link, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(node, link), port)
    }

    /// `node`'s IPv6 address on `link` with `port`.
    pub fn sockaddr6(&self, node: Node, link: Link, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr6(node, link), port)
    }

    /// `node`'s IPv4 address on `link`, or `None` if it has none.
    pub fn try_addr(&self, node: Node, link: Link) -> Option<Ipv4Addr> {
        self.attachment(node, link).map(|(a, _, _)| a)
    }

    /// `node`'s IPv6 address on `link`, or `None` if it has none.
    pub fn try_addr6(&self, node: Node, link: Link) -> Option<Ipv6Addr> {
        self.attachment(node, link).map(|(_, a, _)| a)
    }

    /// Name of `node`'s interface on `link` (inside `node`'s namespace), e.g.
    /// for attaching XDP to gwb's WAN side; `None` if it has none.
    pub fn ifname(&self, node: Node, link: Link) -> Option<&'static str> {
        self.attachment(node, link).map(|(_, _, name)| name)
    }

    fn attachment(&self, node: Node, link: Link) -> Option<(Ipv4Addr, Ipv6Addr, &'static str)> {
        if !self.has(node) {
            return None;
        }
        attachment(node, link).map(|a| (v4(a.link, a.host), v6(a.link, a.host), a.ifname))
    }

    fn expect_attachment(&self, node: Node, link: Link, what: &str) -> (Ipv4Addr, Ipv6Addr) {
        match self.attachment(node, link) {
            Some((a4, a6, _)) => (a4, a6),
            None => panic!("{what}: node {node} has no interface on link {link} in this topology"),
        }
    }

    /// Runs `ip -n <node's namespace> ARGS...` and returns its standard output,
    /// e.g. `topo.ip(Node::Gwb, &["-o", "link"])`.
    pub fn ip(&self, node: Node, args: &[&str]) -> anyhow::Result<String> {
        let ns = self.ns_name(node);
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn switch_ns(&self) -> String {
        format!("{}-{WAN_SWITCH}", self.id)
    }

    fn create(&mut self) -> anyhow::Result<()> {
        let mut names: Vec<String> = self.nodes.iter().map(|n| self.ns_name(*n)).collect();
        let attacker = self.has(Node::Attacker);
        if attacker {
            names.push(self.switch_ns());
        }
        for name in names {
            add_netns(&name)?;
            self.created.push(name);
        }

        self.veth(Node::Prod, Node::Gwa, Link::LanA)?;
        self.veth(Node::Gwb, Node::Cons, Link::LanB)?;
        if attacker {
            let sw = self.switch_ns();
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                WAN_BRIDGE,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ])?;
            let mut lines = vec![format!("link set {WAN_BRIDGE} up")];
            for node in [Node::Gwa, Node::Gwb, Node::Attacker] {
                let port = node.name();
                let peer_ns = self.ns_name(node);
                let ifname = self.ifname(node, Link::Wan).context("WAN interface name")?;
                ip(&[
                    "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", ifname,
                    "netns", &peer_ns,
                ])?;
                lines.push(format!("link set {port} master {WAN_BRIDGE}"));
                lines.push(format!("link set {port} up"));
            }
            ip_batch(&sw, &lines)?;
        } else {
            self.veth(Node::Gwa, Node::Gwb, Link::Wan)?;
        }

        for node in self.nodes.clone() {
            let mut lines = vec!["link set lo up".to_owned()];
            for a in ATTACHMENTS.iter().filter(|a| a.node == node) {
                let dev = a.ifname;
                lines.push(format!("addr add {}/24 dev {dev}", v4(a.link, a.host)));
                lines.push(format!(
                    "addr add {}/64 dev {dev} nodad",
                    v6(a.link, a.host)
                ));
                lines.push(format!("link set dev {dev} alias {}", self.id));
                lines.push(format!("link set dev {dev} up"));
            }
            ip_batch(&self.ns_name(node), &lines)?;
            // No forwarding anywhere: the gateways relay only through programs.
            self.run_in(node, || -> anyhow::Result<()> {
                for (path, value) in [
                    ("/proc/sys/net/ipv4/ip_forward", "0"),
                    ("/proc/sys/net/ipv6/conf/all/forwarding", "0"),
                ] {
                    fs::write(path, value).with_context(|| format!("writing {path}"))?;
                }
                Ok(())
            })
            .and_then(|r| r)
            .with_context(|| format!("setting sysctls in {node}"))?;
        }
        Ok(())
    }

    /// A veth pair from `a` to `b` on `link`, created inside the namespaces.
    fn veth(&self, a: Node, b: Node, link: Link) -> anyhow::Result<()> {
        let (ns_a, ns_b) = (self.ns_name(a), self.ns_name(b));
        let if_a = self.ifname(a, link).context("interface name")?;
        let if_b = self.ifname(b, link).context("interface name")?;
        ip(&[
            "-n", &ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", &ns_b,
        ])
        .map(drop)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        for name in self.created.iter().rev() {
            if let Err(e) = destroy_netns(name) {
                eprintln!("e2e: cleaning up namespace {name}: {e:#}");
            }
        }
    }
}

/// Removes namespaces left by earlier runs of this harness whose owning
/// process is gone (crashed, killed, aborted), after killing the processes
/// still inside them. Namespaces of live processes (other test binaries running
/// now) are left alone. Returns the names removed. [`TopologyBuilder::build`]
/// calls this first.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match destroy_netns(&name) {
            Ok(()) => removed.push(name),
            // Another process may be sweeping the same leftovers right now.
            Err(e) if !Path::new(NETNS_DIR).join(&name).exists() => drop(e),
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The pid in a name `e2ens-PID-...`, or `None` if the name is not ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// `e2ens-PID-SEQRAND`: the pid for [`sweep_stale`], a per-process counter and
/// a random part so ids are unique even across pid reuse.
fn new_id() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(seq);
    let random = hasher.finish() & 0xffff;
    format!("{NS_PREFIX}{}-{seq}{random:04x}", std::process::id())
}

fn add_netns(name: &str) -> anyhow::Result<()> {
    // The first `ip netns add` on a machine sets up the /run/netns mount; two
    // racing ones can stack it twice. Serialize them within this process.
    static ADD: Mutex<()> = Mutex::new(());
    let _guard = ADD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ip(&["netns", "add", name]).map(drop)
}

/// Kills what still runs in namespace `name` and deletes it. Deleting the last
/// reference to a namespace deletes its veths (and their peers).
fn destroy_netns(name: &str) -> anyhow::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    // Processes keep a namespace (and its veths) alive: kill what is left.
    // They were all started by this harness's tests.
    let me = std::process::id();
    match ip(&["netns", "pids", name]) {
        Ok(pids) => {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                if pid == me {
                    continue;
                }
                let Ok(raw) = i32::try_from(pid) else {
                    continue;
                };
                // ESRCH: it exited meanwhile.
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        Err(e) => eprintln!("e2e: listing processes in {name}: {e:#}"),
    }
    // What `ip netns del` does: detach the bind mount, remove the file.
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Runs `ip ARGS...`; fails with its standard error if it fails.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NS -batch -` with `lines` (one process for many commands).
fn ip_batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    let what = || format!("`ip -n {ns} -batch -` with:\n{}", lines.join("\n"));
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (is iproute2 installed?)", what()))?;
    let mut input = lines.join("\n");
    input.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).with_context(what)?;
    }
    let out = child.wait_with_output().with_context(what)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            what(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_back_to_pid() {
        let id = new_id();
        assert_eq!(owner_pid(&format!("{id}-prod")), Some(std::process::id()));
        assert_eq!(owner_pid("other-123-prod"), None);
        assert_eq!(owner_pid("e2ens-x-prod"), None);
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn address_plan() {
        assert_eq!(v4(Link::Wan, 2), Ipv4Addr::new(10, 2, 0, 2));
        assert_eq!(v6(Link::LanB, 1).to_string(), "fd00:e2e:3::1");
        for a in &ATTACHMENTS {
            assert!(a.ifname.len() <= 15);
        }
    }
}
