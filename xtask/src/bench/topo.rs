//! The benchmark's own networks, built with `netlab` and removed again on
//! every exit path.
//!
//! ```text
//!   client 10.201.1.2 --veth-- 10.201.1.1 relay 10.201.2.1 --veth-- 10.201.2.2 server
//! ```
//!
//! [`BenchNet`]: three namespaces joined by two veth pairs (MTU 1500). The
//! client and the server route each other's subnet through the relay
//! namespace, whose forwarding is off except while the "direct" case runs
//! ([`Forwarding`]); every other case has a relay process listening in the
//! relay namespace. [`PairNet`]: the gateway-pair benchmark's four namespaces.
//!
//! Names are `s2bench-PID-TAG-{cli,rly,srv}` (`{cli,gwb,gwa,srv}`), so runs
//! never collide; dropping a net kills whatever still runs inside and deletes
//! the namespaces (which deletes the veths), also when the bench fails or is
//! interrupted with Ctrl-C (the handler in `mod.rs` makes the run stop at its
//! next check, so the guards run). A run killed outright (SIGKILL) leaves them
//! behind: building the next net sweeps namespaces whose owning pid is dead
//! (`netlab::sweep_stale`).
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use anyhow::Context;
use netlab::{Lab, Veth};

/// Prefix of every namespace the benchmark creates.
const NS_PREFIX: &str = "s2bench-";

/// The client's address.
pub(super) const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
/// The relay's address on the client side (where relays listen).
pub(super) const RELAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
/// The relay's address on the server side.
const RELAY_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
/// The server's address (where iperf3 -s listens).
pub(super) const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
/// The iperf3 server's port.
pub(super) const SERVER_PORT: u16 = 5201;
/// MTU of every link.
pub(super) const MTU: u32 = 1500;

/// The iperf3 server, as the relays dial it.
pub(super) fn server_sockaddr() -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)
}

/// The three namespaces (full names); dropping it removes them.
#[derive(Debug)]
pub(super) struct BenchNet {
    pub(super) client: String,
    pub(super) relay: String,
    pub(super) server: String,
    /// Kept for its `Drop`, which removes the namespaces.
    _lab: Lab,
}

impl BenchNet {
    /// Builds the topology (after sweeping leftovers of dead runs). On error,
    /// whatever was created is removed again.
    pub(super) fn create() -> anyhow::Result<BenchNet> {
        let lab = Lab::builder(NS_PREFIX)
            .namespace("cli")
            .namespace("rly")
            .namespace("srv")
            .veth(Veth::new(("cli", "eth0"), ("rly", "cli")).mtu(MTU))
            .veth(Veth::new(("srv", "eth0"), ("rly", "srv")).mtu(MTU))
            .address("cli", "eth0", (CLIENT_ADDR, 24))
            .address("rly", "cli", (RELAY_ADDR, 24))
            .address("rly", "srv", (RELAY_SERVER_SIDE, 24))
            .address("srv", "eth0", (SERVER_ADDR, 24))
            .route("cli", (Ipv4Addr::new(10, 201, 2, 0), 24), RELAY_ADDR)
            .route("srv", (Ipv4Addr::new(10, 201, 1, 0), 24), RELAY_SERVER_SIDE)
            .forwarding("rly", false)
            .build()
            .context("building the bench topology")?;
        Ok(BenchNet {
            client: lab.ns("cli"),
            relay: lab.ns("rly"),
            server: lab.ns("srv"),
            _lab: lab,
        })
    }

    /// `ip netns exec NS PROGRAM`: `ip` execs the program in place, so the
    /// child's pid is the program's.
    pub(super) fn command(&self, ns: &str, program: &str) -> Command {
        ns_command(ns, program)
    }

    /// Kills every process in `ns` and waits (up to 2 s) until none is left.
    pub(super) fn kill_all(&self, ns: &str) -> anyhow::Result<()> {
        netlab::kill_all(ns)
    }
}

/// The consumer's address (iperf3 client, LAN B).
pub(super) const PAIR_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 202, 3, 2);
/// gwB's address on LAN B: where the consumer side's relays listen and gwB's
/// control server.
pub(super) const PAIR_GWB_LAN: Ipv4Addr = Ipv4Addr::new(10, 202, 3, 1);
/// gwB's WAN address.
pub(super) const PAIR_GWB_WAN: Ipv4Addr = Ipv4Addr::new(10, 202, 2, 2);
/// gwA's WAN address (TLS listeners, gwA's control server).
pub(super) const PAIR_GWA_WAN: Ipv4Addr = Ipv4Addr::new(10, 202, 2, 1);
/// gwA's address on LAN A.
pub(super) const PAIR_GWA_LAN: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 1);
/// The producer's address (iperf3 server, LAN A).
pub(super) const PAIR_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 2);

/// The gateway-pair benchmark's network: four namespaces joined by three
/// veth pairs (MTU 1500), no routing between them (forwarding off), so the
/// only way from the consumer to the producer is through both gateways:
///
/// ```text
///   client 10.202.3.2 -LAN B- 10.202.3.1 gwb 10.202.2.2 =WAN= 10.202.2.1 gwa 10.202.1.1 -LAN A- 10.202.1.2 server
///   (consumer, iperf3 -c -R)                                                                 (producer, iperf3 -s)
/// ```
///
/// Names are `s2bench-PID-TAG-{cli,gwb,gwa,srv}` (swept like [`BenchNet`]'s
/// when their run died); dropping it kills everything inside and deletes them.
#[derive(Debug)]
pub(super) struct PairNet {
    pub(super) client: String,
    pub(super) gwb: String,
    pub(super) gwa: String,
    pub(super) server: String,
    /// Kept for its `Drop`, which removes the namespaces.
    _lab: Lab,
}

impl PairNet {
    /// Builds the topology; on error, whatever was created is removed again.
    pub(super) fn create() -> anyhow::Result<PairNet> {
        PairNet::create_with_mtu(MTU)
    }

    /// [`PairNet::create`] with every link at `mtu`.
    pub(super) fn create_with_mtu(mtu: u32) -> anyhow::Result<PairNet> {
        let mut plan = Lab::builder(NS_PREFIX)
            .namespace("cli")
            .namespace("gwb")
            .namespace("gwa")
            .namespace("srv")
            .veth(Veth::new(("cli", "eth0"), ("gwb", "lan")).mtu(mtu))
            .veth(Veth::new(("gwb", "wan"), ("gwa", "wan")).mtu(mtu))
            .veth(Veth::new(("srv", "eth0"), ("gwa", "lan")).mtu(mtu))
            .address("cli", "eth0", (PAIR_CLIENT_ADDR, 24))
            .address("gwb", "lan", (PAIR_GWB_LAN, 24))
            .address("gwb", "wan", (PAIR_GWB_WAN, 24))
            .address("gwa", "wan", (PAIR_GWA_WAN, 24))
            .address("gwa", "lan", (PAIR_GWA_LAN, 24))
            .address("srv", "eth0", (PAIR_SERVER_ADDR, 24));
        for node in ["cli", "gwb", "gwa", "srv"] {
            plan = plan.forwarding(node, false);
        }
        let lab = plan.build().context("building the gateway-pair topology")?;
        Ok(PairNet {
            client: lab.ns("cli"),
            gwb: lab.ns("gwb"),
            gwa: lab.ns("gwa"),
            server: lab.ns("srv"),
            _lab: lab,
        })
    }

    /// Kills every process in `ns` and waits (up to 2 s) until none is left.
    pub(super) fn kill_all(&self, ns: &str) -> anyhow::Result<()> {
        netlab::kill_all(ns)
    }
}

/// `ip netns exec NS PROGRAM` (the child's pid is the program's).
pub(super) fn ns_command(ns: &str, program: &str) -> Command {
    netlab::command(ns, program)
}

/// Turns forwarding in the relay namespace on for as long as it lives
/// (the "direct" case), and off again on drop.
pub(super) struct Forwarding<'a> {
    ns: &'a str,
}

impl<'a> Forwarding<'a> {
    pub(super) fn enable(net: &'a BenchNet) -> anyhow::Result<Forwarding<'a>> {
        netlab::set_forwarding(&net.relay, true)?;
        Ok(Forwarding { ns: &net.relay })
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        if let Err(e) = netlab::set_forwarding(self.ns, false) {
            eprintln!("bench: turning forwarding off in {}: {e:#}", self.ns);
        }
    }
}

/// The pids of the processes in namespace `ns`.
pub(super) fn ns_pids(ns: &str) -> anyhow::Result<Vec<u32>> {
    netlab::pids(ns)
}

#[cfg(test)]
mod tests {
    //! The benchmark networks really built and removed (needs root).
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn exists(ns: &str) -> bool {
        Path::new(netlab::NETNS_DIR).join(ns).exists()
    }

    fn forwarding(ns: &str) -> bool {
        netlab::forwarding::forwarding(ns).expect("reading ip_forward")
    }

    #[test]
    fn bench_net_routes_through_the_relay_only_when_forwarding() {
        let net = BenchNet::create().unwrap_or_else(|e| panic!("{e:#}"));
        let names = [net.client.clone(), net.relay.clone(), net.server.clone()];
        let mine = format!("{NS_PREFIX}{}-", std::process::id());
        for (name, suffix) in names.iter().zip(["-cli", "-rly", "-srv"]) {
            assert!(name.starts_with(&mine) && name.ends_with(suffix), "{name}");
            assert!(exists(name), "{name}");
        }
        let link = netlab::ip::ip_in(&net.client, &["-o", "link", "show", "eth0"]).expect("link");
        assert!(link.contains(&format!("mtu {MTU}")), "{link}");
        assert!(!forwarding(&net.relay));

        let server = SocketAddr::from(server_sockaddr());
        let in_ns = |ns: &str| netlab::netns::path(ns);
        let listener = netlab::run_in_netns(&in_ns(&net.server), || TcpListener::bind(server))
            .expect("thread")
            .expect("bind");
        {
            let _on = Forwarding::enable(&net).expect("forwarding on");
            assert!(forwarding(&net.relay));
            netlab::run_in_netns(&in_ns(&net.client), || {
                TcpStream::connect_timeout(&server, Duration::from_secs(5))
            })
            .expect("thread")
            .expect("client reaches the server through the relay");
            let (_, peer) = listener.accept().expect("accept");
            assert_eq!(peer.ip(), CLIENT_ADDR);
        }
        assert!(!forwarding(&net.relay), "forwarding left on");

        // A process left in a namespace goes with the net.
        let mut sleep = net
            .command(&net.relay, "sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        // `ip netns exec` enters the namespace after it starts: wait until
        // the process is in it, or dropping the net may come first.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ns_pids(&net.relay).expect("pids").contains(&sleep.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep never entered {}",
                net.relay
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(net);
        let status = sleep.wait().expect("wait");
        assert!(!status.success(), "{status:?}");
        for name in &names {
            assert!(!exists(name), "{name} left behind");
        }
    }

    #[test]
    fn pair_net_builds_and_drops() {
        let net = PairNet::create().unwrap_or_else(|e| panic!("{e:#}"));
        let names = [
            net.client.clone(),
            net.gwb.clone(),
            net.gwa.clone(),
            net.server.clone(),
        ];
        for name in &names {
            assert!(exists(name), "{name}");
            assert!(!forwarding(name), "forwarding on in {name}");
        }
        let addrs = netlab::ip::ip_in(&net.gwa, &["-o", "addr"]).expect("addrs");
        assert!(addrs.contains(&format!("{PAIR_GWA_WAN}/24")), "{addrs}");
        assert!(addrs.contains(&format!("{PAIR_GWA_LAN}/24")), "{addrs}");
        drop(net);
        for name in &names {
            assert!(!exists(name), "{name} left behind");
        }
    }
}
