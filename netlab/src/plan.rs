//! What a lab is made of, described before anything is created:
//! [`LabBuilder`] collects namespaces, bridges, [`Veth`] pairs, addresses,
//! routes and forwarding switches, and checks them as a whole
//! ([`LabBuilder::check`]) so that a mistake in the plan fails before the
//! first `ip` runs. [`LabBuilder::build`] (in [`crate::lab`]) carries it out.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, bail, ensure};

use crate::cidr::Cidr;

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// One end of a veth pair: an interface named `ifname` in namespace `node`,
/// optionally a port of a bridge in that namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub(crate) node: String,
    pub(crate) ifname: String,
    pub(crate) master: Option<String>,
}

impl End {
    /// Interface `ifname` in `node`'s namespace.
    pub fn new(node: impl Into<String>, ifname: impl Into<String>) -> End {
        End {
            node: node.into(),
            ifname: ifname.into(),
            master: None,
        }
    }

    /// Makes this end a port of `bridge` (declared with
    /// [`LabBuilder::bridge`] in the same namespace).
    pub fn master(mut self, bridge: impl Into<String>) -> End {
        self.master = Some(bridge.into());
        self
    }
}

impl<N: Into<String>, I: Into<String>> From<(N, I)> for End {
    fn from((node, ifname): (N, I)) -> End {
        End::new(node, ifname)
    }
}

/// A veth pair between two namespaces, created directly inside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    pub(crate) a: End,
    pub(crate) b: End,
    pub(crate) mtu: Option<u32>,
}

impl Veth {
    /// A pair from `a` to `b`, e.g. `Veth::new(("prod", "lana"), ("gwa", "lana"))`.
    pub fn new(a: impl Into<End>, b: impl Into<End>) -> Veth {
        Veth {
            a: a.into(),
            b: b.into(),
            mtu: None,
        }
    }

    /// The MTU of both ends (the kernel's default otherwise).
    pub fn mtu(mut self, mtu: u32) -> Veth {
        self.mtu = Some(mtu);
        self
    }
}

/// An address on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) node: String,
    pub(crate) ifname: String,
    pub(crate) cidr: Cidr,
}

/// A route in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) node: String,
    pub(crate) dest: Cidr,
    pub(crate) via: IpAddr,
}

/// A bridge in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bridge {
    pub(crate) node: String,
    pub(crate) name: String,
}

/// The plan of a lab; [`crate::Lab::builder`] starts one,
/// [`LabBuilder::build`] creates it.
///
/// Nodes are short names (`"prod"`); their namespaces are named after the
/// prefix (see [`crate::name`]). Everything is created in this order:
/// namespaces (with `lo` up), bridges, veth pairs, then per namespace: bridge
/// ports, aliases, addresses, links up, routes; last, forwarding.
#[derive(Clone, Debug)]
#[must_use = "a plan does nothing until built"]
pub struct LabBuilder {
    pub(crate) prefix: String,
    pub(crate) fixed_names: bool,
    pub(crate) nodes: Vec<String>,
    pub(crate) bridges: Vec<Bridge>,
    pub(crate) veths: Vec<Veth>,
    pub(crate) addresses: Vec<Address>,
    pub(crate) routes: Vec<Route>,
    pub(crate) forwarding: Vec<(String, bool)>,
}

impl LabBuilder {
    /// An empty plan whose namespaces are named with `prefix` (end it with
    /// `-`, e.g. `"e2ens-"`).
    pub fn new(prefix: impl Into<String>) -> LabBuilder {
        LabBuilder {
            prefix: prefix.into(),
            fixed_names: false,
            nodes: Vec::new(),
            bridges: Vec::new(),
            veths: Vec::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            forwarding: Vec::new(),
        }
    }

    /// Names namespaces `PREFIX NODE` instead of `PREFIX PID-TAG-NODE`: one
    /// such lab per prefix at a time, never swept; building it first removes
    /// namespaces of the same names (and what runs in them) left by an
    /// earlier run.
    pub fn fixed_names(mut self) -> LabBuilder {
        self.fixed_names = true;
        self
    }

    /// A namespace for `node`. Namespaces are created in the order declared
    /// and deleted in reverse.
    pub fn namespace(mut self, node: impl Into<String>) -> LabBuilder {
        self.nodes.push(node.into());
        self
    }

    /// A bridge `name` in `node`'s namespace (forward delay 0, up); attach
    /// veth ends to it with [`End::master`].
    pub fn bridge(mut self, node: impl Into<String>, name: impl Into<String>) -> LabBuilder {
        self.bridges.push(Bridge {
            node: node.into(),
            name: name.into(),
        });
        self
    }

    /// A veth pair; both ends are brought up.
    pub fn veth(mut self, veth: Veth) -> LabBuilder {
        self.veths.push(veth);
        self
    }

    /// Address `cidr` on `ifname` in `node`'s namespace (IPv6 ones `nodad`,
    /// usable at once).
    pub fn address(
        mut self,
        node: impl Into<String>,
        ifname: impl Into<String>,
        cidr: impl Into<Cidr>,
    ) -> LabBuilder {
        self.addresses.push(Address {
            node: node.into(),
            ifname: ifname.into(),
            cidr: cidr.into(),
        });
        self
    }

    /// A route to `dest` via `via` in `node`'s namespace.
    pub fn route(
        mut self,
        node: impl Into<String>,
        dest: impl Into<Cidr>,
        via: impl Into<IpAddr>,
    ) -> LabBuilder {
        self.routes.push(Route {
            node: node.into(),
            dest: dest.into(),
            via: via.into(),
        });
        self
    }

    /// IPv4 and IPv6 forwarding on or off in `node`'s namespace (left as the
    /// kernel made it otherwise, which may be inherited from the host).
    pub fn forwarding(mut self, node: impl Into<String>, on: bool) -> LabBuilder {
        self.forwarding.push((node.into(), on));
        self
    }

    /// The interfaces the plan creates in `node`'s namespace (veth ends and
    /// bridges).
    pub(crate) fn interfaces<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let ends = self
            .ends()
            .filter(move |e| e.node == node)
            .map(|e| e.ifname.as_str());
        let bridges = self
            .bridges
            .iter()
            .filter(move |b| b.node == node)
            .map(|b| b.name.as_str());
        ends.chain(bridges)
    }

    /// Every veth end, pair by pair.
    pub(crate) fn ends(&self) -> impl Iterator<Item = &End> {
        self.veths.iter().flat_map(|v| [&v.a, &v.b])
    }

    /// Checks the plan as a whole: names are valid and unique, everything
    /// refers to declared namespaces, interfaces and bridges, addresses and
    /// routes are well formed.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(!self.prefix.is_empty(), "the namespace prefix is empty");
        ensure!(
            !self.prefix.contains('/'),
            "prefix {:?} contains '/'",
            self.prefix
        );
        let mut nodes = BTreeSet::new();
        for node in &self.nodes {
            ensure!(
                !node.is_empty() && !node.contains(['/', ' ']),
                "bad node name {node:?}"
            );
            ensure!(nodes.insert(node.as_str()), "node {node} declared twice");
        }
        ensure!(!nodes.is_empty(), "a lab needs at least one namespace");
        let known = |node: &str| -> anyhow::Result<()> {
            ensure!(nodes.contains(node), "no namespace {node:?} in the plan");
            Ok(())
        };
        for node in &self.nodes {
            let mut seen = BTreeSet::new();
            for ifname in self.interfaces(node) {
                check_ifname(ifname).with_context(|| format!("in {node}"))?;
                ensure!(
                    seen.insert(ifname),
                    "interface {ifname} declared twice in {node}"
                );
            }
        }
        for bridge in &self.bridges {
            known(&bridge.node).with_context(|| format!("bridge {}", bridge.name))?;
        }
        for veth in &self.veths {
            for end in [&veth.a, &veth.b] {
                known(&end.node).with_context(|| format!("veth end {}", end.ifname))?;
                if let Some(master) = &end.master {
                    ensure!(
                        self.bridges
                            .iter()
                            .any(|b| b.node == end.node && &b.name == master),
                        "veth end {} in {}: no bridge {master} there",
                        end.ifname,
                        end.node
                    );
                }
            }
            ensure!(
                veth.a.node != veth.b.node,
                "veth {}-{}: both ends in {}",
                veth.a.ifname,
                veth.b.ifname,
                veth.a.node
            );
            if let Some(mtu) = veth.mtu {
                ensure!(
                    (68..=65535).contains(&mtu),
                    "veth {}: MTU {mtu}",
                    veth.a.ifname
                );
            }
        }
        for a in &self.addresses {
            known(&a.node).with_context(|| format!("address {}", a.cidr))?;
            a.cidr.check()?;
            ensure!(
                a.ifname == "lo" || self.interfaces(&a.node).any(|i| i == a.ifname),
                "address {}: no interface {} in {}",
                a.cidr,
                a.ifname,
                a.node
            );
        }
        for r in &self.routes {
            known(&r.node).with_context(|| format!("route to {}", r.dest))?;
            r.dest.check()?;
            ensure!(
                r.dest.is_ipv6() == r.via.is_ipv6(),
                "route to {} via {}: mixed address families",
                r.dest,
                r.via
            );
        }
        for (node, _) in &self.forwarding {
            known(node).context("forwarding")?;
        }
        Ok(())
    }
}

fn check_ifname(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        bail!("interface name {name:?} must have 1 to {MAX_IFNAME} bytes");
    }
    if name.contains(['/', ' ', ':']) || name == "lo" {
        bail!("bad interface name {name:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn two() -> LabBuilder {
        LabBuilder::new("t-")
            .namespace("a")
            .namespace("b")
            .veth(Veth::new(("a", "eth0"), ("b", "eth0")).mtu(1400))
    }

    #[test]
    fn a_good_plan_passes() {
        two()
            .address("a", "eth0", Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 24))
            .address("b", "lo", Cidr::new(Ipv4Addr::new(10, 9, 0, 1), 32))
            .route(
                "a",
                Cidr::new(Ipv4Addr::new(10, 9, 0, 0), 24),
                Ipv4Addr::new(10, 0, 0, 2),
            )
            .forwarding("b", false)
            .check()
            .expect("good plan");
    }

    #[test]
    fn mistakes_fail_before_anything_is_created() {
        let addr = Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 24);
        let bad = [
            two().namespace("a"),
            two().address("c", "eth0", addr),
            two().address("a", "eth1", addr),
            two().address("a", "eth0", Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 33)),
            two().veth(Veth::new(("a", "eth0"), ("b", "x"))),
            two().veth(Veth::new(("a", "x"), ("a", "y"))),
            two().veth(Veth::new(("a", "averyveryverylongname"), ("b", "y"))),
            two().veth(Veth::new(("a", "p"), End::new("b", "q").master("br0"))),
            two().route("a", addr, "fd00::1".parse::<IpAddr>().expect("v6")),
            two().forwarding("z", true),
            LabBuilder::new("t-"),
            LabBuilder::new("").namespace("a"),
        ];
        for plan in bad {
            assert!(plan.check().is_err(), "{plan:?}");
        }
    }
}
