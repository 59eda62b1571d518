//! The demo's four network namespaces (prod, gwa, gwb, cons) joined by veth
//! pairs: LAN A 10.1.0.0/24 (gwa .1, prod .2), WAN 10.2.0.0/24 (gwa .1,
//! gwb .2), LAN B 10.3.0.0/24 (gwb .1, cons .2). Forwarding is off, so prod
//! can reach cons only through the gateways. Built with `netlab` under fixed
//! names (`s2demo-NODE`, easy to type while the demo runs); `Topology` removes
//! everything (processes inside, namespaces, veths) on drop; `cleanup_all`
//! does the same by name from a Ctrl-C handler.
use std::net::Ipv4Addr;
use std::process::Command;

use netlab::{Lab, Veth};

pub const PREFIX: &str = "s2demo-";
pub const NODES: [&str; 4] = ["prod", "gwa", "gwb", "cons"];

/// (node a, interface in a, address of a, node b, interface in b, address of b)
const LINKS: [(&str, &str, Ipv4Addr, &str, &str, Ipv4Addr); 3] = [
    (
        "prod",
        "lana",
        Ipv4Addr::new(10, 1, 0, 2),
        "gwa",
        "lana",
        Ipv4Addr::new(10, 1, 0, 1),
    ),
    (
        "gwa",
        "wan",
        Ipv4Addr::new(10, 2, 0, 1),
        "gwb",
        "wan",
        Ipv4Addr::new(10, 2, 0, 2),
    ),
    (
        "gwb",
        "lanb",
        Ipv4Addr::new(10, 3, 0, 1),
        "cons",
        "lanb",
        Ipv4Addr::new(10, 3, 0, 2),
    ),
];

pub fn ns(node: &str) -> String {
    netlab::name::fixed_name(PREFIX, node)
}

/// A command that runs `program` inside `node`'s namespace.
pub fn exec_in(node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    netlab::command(&ns(node), program)
}

/// The demo's namespaces; dropping it removes them.
pub struct Topology {
    _lab: Lab,
}

impl Topology {
    /// Builds the namespaces, replacing any left by an earlier demo.
    pub fn create() -> anyhow::Result<Topology> {
        Topology::create_with(PREFIX)
    }

    /// The demo's network under `prefix` (the tests use their own).
    pub(crate) fn create_with(prefix: &str) -> anyhow::Result<Topology> {
        let mut plan = Lab::builder(prefix).fixed_names();
        for node in NODES {
            plan = plan.namespace(node).forwarding(node, false);
        }
        for (a, a_if, a_addr, b, b_if, b_addr) in LINKS {
            plan = plan
                .veth(Veth::new((a, a_if), (b, b_if)))
                .address(a, a_if, (a_addr, 24))
                .address(b, b_if, (b_addr, 24));
        }
        Ok(Topology {
            _lab: plan.build()?,
        })
    }
}

/// Kills every process in the demo's namespaces and deletes them (their
/// veths go with them). Safe to call at any time, also twice.
pub fn cleanup_all() {
    cleanup_with(PREFIX);
}

pub(crate) fn cleanup_with(prefix: &str) {
    for node in NODES.iter().rev() {
        let name = netlab::name::fixed_name(prefix, node);
        if let Err(e) = netlab::destroy(&name) {
            eprintln!("demo: removing namespace {name}: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The demo's network really built and removed (needs root), under a
    //! prefix of its own so a demo running meanwhile is left alone.
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn prefix() -> String {
        format!("s2demotest{}-", std::process::id())
    }

    fn name(node: &str) -> String {
        netlab::name::fixed_name(&prefix(), node)
    }

    fn exists(node: &str) -> bool {
        Path::new(netlab::NETNS_DIR).join(name(node)).exists()
    }

    fn connect(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        netlab::run_in_netns(&netlab::netns::path(&name(from)), || {
            TcpStream::connect_timeout(&to, Duration::from_millis(500))
        })
        .expect("thread")
    }

    #[test]
    fn links_addresses_no_forwarding_and_cleanup() {
        let topology = Topology::create_with(&prefix()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(ns("gwa"), "s2demo-gwa");
        for node in NODES {
            assert!(exists(node), "{node}");
            assert!(!netlab::forwarding::forwarding(&name(node)).expect("read"));
        }
        let addrs = netlab::ip::ip_in(&name("gwb"), &["-o", "addr"]).expect("addrs");
        for want in ["10.2.0.2/24 ", "10.3.0.1/24 "] {
            assert!(addrs.contains(want), "{want} missing:\n{addrs}");
        }
        // gwa reaches gwb over the WAN; prod does not reach cons.
        let gwb = SocketAddr::from(([10, 2, 0, 2], 7000));
        let listener = netlab::run_in_netns(&netlab::netns::path(&name("gwb")), || {
            TcpListener::bind(gwb)
        })
        .expect("thread")
        .expect("bind");
        connect("gwa", gwb).expect("gwa to gwb");
        listener.accept().expect("accept");
        assert!(connect("prod", SocketAddr::from(([10, 3, 0, 2], 7000))).is_err());

        // The Ctrl-C path: delete by name while the topology still lives.
        cleanup_with(&prefix());
        assert!(NODES.iter().all(|node| !exists(node)));
        drop(topology);
        cleanup_with(&prefix());
    }
}
