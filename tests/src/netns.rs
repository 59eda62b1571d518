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
//!
//! This module holds the layout and the address plan; the `netlab` crate
//! (shared with the bench and the demo) creates, enters and removes the
//! namespaces.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use netlab::{Cidr, End, Lab, LabBuilder, Veth};

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "e2ens-";

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = netlab::NETNS_DIR;

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
/// Node name of the helper namespace holding the WAN bridge.
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

    /// Creates the namespaces, links, addresses and sysctls (after sweeping
    /// leftovers of dead runs). On error, whatever was created is removed
    /// again.
    pub fn build(self) -> anyhow::Result<Topology> {
        crate::require_root()?;
        let mut nodes = Node::BASIC.to_vec();
        if self.attacker {
            nodes.push(Node::Attacker);
        }
        let lab = plan(&nodes)?.build().context("building the e2e topology")?;
        Ok(Topology { lab, nodes })
    }
}

/// The lab for `nodes`: see the [module docs](self).
fn plan(nodes: &[Node]) -> anyhow::Result<LabBuilder> {
    let mut plan = Lab::builder(NS_PREFIX);
    for node in nodes {
        plan = plan.namespace(node.name());
    }
    let attacker = nodes.contains(&Node::Attacker);
    if attacker {
        plan = plan.namespace(WAN_SWITCH).bridge(WAN_SWITCH, WAN_BRIDGE);
    }
    plan = plan
        .veth(pair(Node::Prod, Node::Gwa, Link::LanA)?)
        .veth(pair(Node::Gwb, Node::Cons, Link::LanB)?);
    if attacker {
        // One port per host on the bridge, named after the host.
        for node in [Node::Gwa, Node::Gwb, Node::Attacker] {
            let ifname = interface(node, Link::Wan)?;
            plan = plan.veth(Veth::new(
                End::new(WAN_SWITCH, node.name()).master(WAN_BRIDGE),
                (node.name(), ifname),
            ));
        }
    } else {
        plan = plan.veth(pair(Node::Gwa, Node::Gwb, Link::Wan)?);
    }
    for node in nodes {
        for a in ATTACHMENTS.iter().filter(|a| a.node == *node) {
            plan = plan
                .address(node.name(), a.ifname, Cidr::new(v4(a.link, a.host), 24))
                .address(node.name(), a.ifname, Cidr::new(v6(a.link, a.host), 64));
        }
        // No forwarding anywhere: the gateways relay only through programs.
        plan = plan.forwarding(node.name(), false);
    }
    Ok(plan)
}

/// A veth pair from `a` to `b` on `link`.
fn pair(a: Node, b: Node, link: Link) -> anyhow::Result<Veth> {
    Ok(Veth::new(
        (a.name(), interface(a, link)?),
        (b.name(), interface(b, link)?),
    ))
}

fn interface(node: Node, link: Link) -> anyhow::Result<&'static str> {
    attachment(node, link)
        .map(|a| a.ifname)
        .with_context(|| format!("{node} has no interface on {link}"))
}

/// A live topology; dropping it kills the processes left inside and deletes its
/// namespaces and links. See the [module docs](self) for the layout.
#[derive(Debug)]
pub struct Topology {
    /// The namespaces; its `Drop` removes them.
    lab: Lab,
    nodes: Vec<Node>,
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
        self.lab.id()
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
        self.lab.namespaces()
    }

    /// Name of `node`'s namespace (as `ip netns list` shows it).
    pub fn ns_name(&self, node: Node) -> String {
        self.lab.ns(node.name())
    }

    /// Path of `node`'s namespace file, for setns(2) or `nsenter --net=`.
    pub fn netns_path(&self, node: Node) -> PathBuf {
        self.lab.path(node.name())
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
        self.lab.ip(node.name(), args)
    }
}

/// Removes namespaces left by earlier runs of this harness whose owning
/// process is gone (crashed, killed, aborted), after killing the processes
/// still inside them. Namespaces of live processes (other test binaries running
/// now) are left alone. Returns the names removed. [`TopologyBuilder::build`]
/// does this first.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    netlab::sweep_stale(NS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(v4(Link::Wan, 2), Ipv4Addr::new(10, 2, 0, 2));
        assert_eq!(v6(Link::LanB, 1).to_string(), "fd00:e2e:3::1");
        for a in &ATTACHMENTS {
            assert!(a.ifname.len() <= 15);
        }
    }

    #[test]
    fn plans_check() {
        plan(&Node::BASIC)
            .expect("basic")
            .check()
            .expect("basic plan");
        let mut nodes = Node::BASIC.to_vec();
        nodes.push(Node::Attacker);
        plan(&nodes)
            .expect("attacker")
            .check()
            .expect("attacker plan");
    }
}
