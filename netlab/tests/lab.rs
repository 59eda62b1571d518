//! Labs really built and removed (needs root, like the e2e suites).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use netlab::{Cidr, End, Lab, Veth};

const SECS_5: Duration = Duration::from_secs(5);

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// Our namespaces with `prefix` (this process's), as /run/netns lists them.
fn listed(prefix: &str) -> Vec<String> {
    let mine = format!("{prefix}{}-", std::process::id());
    match std::fs::read_dir(netlab::NETNS_DIR) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&mine))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn gone(names: &[String]) {
    for name in names {
        assert!(
            !Path::new(netlab::NETNS_DIR).join(name).exists(),
            "{name} left behind"
        );
        let inside = Command::new("ip")
            .args(["-n", name, "link"])
            .stderr(Stdio::null())
            .output()
            .expect("ip");
        assert!(!inside.status.success(), "{name} still usable");
    }
}

/// Listens in `server`, connects from `client`, sends a few bytes across.
fn tcp_across(lab: &Lab, client: &str, server: &str, addr: SocketAddr) -> std::io::Result<()> {
    let listener = lab
        .run_in(server, || TcpListener::bind(addr))
        .expect("thread")?;
    let mut conn = lab
        .run_in(client, || TcpStream::connect_timeout(&addr, SECS_5))
        .expect("thread")?;
    let (mut accepted, _) = listener.accept()?;
    conn.write_all(b"across")?;
    drop(conn);
    let mut got = String::new();
    accepted.read_to_string(&mut got)?;
    assert_eq!(got, "across");
    Ok(())
}

#[test]
fn veth_pair_carries_tcp_and_everything_is_gone_after_drop() {
    let v6a: Ipv6Addr = "fd00:1ab::1".parse().expect("v6");
    let v6b: Ipv6Addr = "fd00:1ab::2".parse().expect("v6");
    let lab = Lab::builder("nlt-")
        .namespace("a")
        .namespace("b")
        .veth(Veth::new(("a", "eth0"), ("b", "peer")).mtu(1400))
        .address("a", "eth0", Cidr::new(v4(10, 77, 0, 1), 24))
        .address("b", "peer", Cidr::new(v4(10, 77, 0, 2), 24))
        .address("a", "eth0", Cidr::new(v6a, 64))
        .address("b", "peer", Cidr::new(v6b, 64))
        .forwarding("a", false)
        .forwarding("b", false)
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let names = lab.namespaces().to_vec();
    assert_eq!(names, [lab.ns("a"), lab.ns("b")]);
    assert!(names.iter().all(|n| n.starts_with(lab.id())));

    let link = lab.ip("a", &["-o", "link", "show", "eth0"]).expect("link");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(lab.id()), "alias missing: {link}");
    let lo = lab.ip("b", &["-o", "link", "show", "lo"]).expect("lo");
    assert!(lo.contains("UP"), "{lo}");
    assert!(!netlab::forwarding::forwarding(&lab.ns("a")).expect("read"));

    tcp_across(
        &lab,
        "a",
        "b",
        SocketAddr::new(v4(10, 77, 0, 2).into(), 7000),
    )
    .expect("v4");
    tcp_across(&lab, "b", "a", SocketAddr::new(IpAddr::V6(v6a), 7000)).expect("v6");

    // Nothing of the lab in the host's namespace.
    let host = netlab::ip::ip(&["-o", "link"]).expect("host links");
    assert!(!host.contains(lab.id()), "{host}");

    drop(lab);
    gone(&names);
}

#[test]
fn drop_kills_the_processes_left_inside() {
    let lab = Lab::builder("nlt-")
        .namespace("solo")
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = lab
        .command("solo", "sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let ns = lab.ns("solo");
    netlab::forwarding::forwarding(&ns).expect("namespace usable");
    // `ip netns exec` execs in place: the child's pid is in the namespace.
    let deadline = std::time::Instant::now() + SECS_5;
    while !netlab::pids(&ns).expect("pids").contains(&child.id()) {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep never showed up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(lab);
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    gone(&[ns]);
}

#[test]
fn routes_through_a_middle_namespace_follow_its_forwarding() {
    let lab = Lab::builder("nlt-")
        .namespace("cli")
        .namespace("mid")
        .namespace("srv")
        .veth(Veth::new(("cli", "eth0"), ("mid", "cli")).mtu(1500))
        .veth(Veth::new(("srv", "eth0"), ("mid", "srv")).mtu(1500))
        .address("cli", "eth0", Cidr::new(v4(10, 78, 1, 2), 24))
        .address("mid", "cli", Cidr::new(v4(10, 78, 1, 1), 24))
        .address("mid", "srv", Cidr::new(v4(10, 78, 2, 1), 24))
        .address("srv", "eth0", Cidr::new(v4(10, 78, 2, 2), 24))
        .route("cli", Cidr::new(v4(10, 78, 2, 0), 24), v4(10, 78, 1, 1))
        .route("srv", Cidr::new(v4(10, 78, 1, 0), 24), v4(10, 78, 2, 1))
        .forwarding("mid", false)
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let routes = lab.ip("cli", &["route"]).expect("routes");
    assert!(routes.contains("10.78.2.0/24 via 10.78.1.1"), "{routes}");

    let server = SocketAddr::new(v4(10, 78, 2, 2).into(), 7001);
    let listener = lab
        .run_in("srv", || TcpListener::bind(server))
        .expect("thread")
        .expect("bind");
    let blocked = lab
        .run_in("cli", || {
            TcpStream::connect_timeout(&server, Duration::from_millis(300))
        })
        .expect("thread");
    assert!(blocked.is_err(), "reached srv with forwarding off");

    lab.set_forwarding("mid", true).expect("forwarding on");
    assert!(netlab::forwarding::forwarding(&lab.ns("mid")).expect("read"));
    lab.run_in("cli", || TcpStream::connect_timeout(&server, SECS_5))
        .expect("thread")
        .expect("connect with forwarding on");
    listener.accept().expect("accept");
}

#[test]
fn a_bridge_joins_three_namespaces() {
    let mut plan = Lab::builder("nlt-")
        .namespace("x")
        .namespace("y")
        .namespace("z")
        .namespace("sw")
        .bridge("sw", "br0");
    for (host, node) in [(1, "x"), (2, "y"), (3, "z")] {
        plan = plan
            .veth(Veth::new(End::new("sw", node).master("br0"), (node, "wan")))
            .address(node, "wan", Cidr::new(v4(10, 79, 0, host), 24));
    }
    let lab = plan.build().unwrap_or_else(|e| panic!("{e:#}"));
    let ports = lab
        .ip("sw", &["-o", "link", "show", "master", "br0"])
        .expect("ports");
    for node in ["x", "y", "z"] {
        assert!(ports.contains(&format!(" {node}@")), "{ports}");
    }
    tcp_across(
        &lab,
        "x",
        "z",
        SocketAddr::new(v4(10, 79, 0, 3).into(), 7002),
    )
    .expect("x to z");
    tcp_across(
        &lab,
        "z",
        "y",
        SocketAddr::new(v4(10, 79, 0, 2).into(), 7002),
    )
    .expect("z to y");
    let names = lab.namespaces().to_vec();
    assert_eq!(names.len(), 4);
    drop(lab);
    gone(&names);
}

#[test]
fn sweep_removes_namespaces_of_dead_runs_only() {
    let live = Lab::builder("nlsweep-")
        .namespace("live")
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    // A pid that is certainly dead: a child we reaped.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let stale = format!("nlsweep-{dead}-0dead-x");
    netlab::ip::ip(&["netns", "add", &stale]).expect("add stale");
    let removed = netlab::sweep_stale("nlsweep-").expect("sweep");
    assert!(removed.contains(&stale), "{removed:?}");
    gone(&[stale]);
    assert!(Path::new(netlab::NETNS_DIR).join(live.ns("live")).exists());
}

#[test]
fn fixed_names_replace_leftovers_and_go_on_drop() {
    // Fixed names cannot be shared between runs: make the prefix ours.
    let prefix = format!("nlfix{}-", std::process::id());
    let leftover = format!("{prefix}one");
    netlab::ip::ip(&["netns", "add", &leftover]).expect("add leftover");
    let lab = Lab::builder(prefix.as_str())
        .fixed_names()
        .namespace("one")
        .namespace("two")
        .veth(Veth::new(("one", "a"), ("two", "b")))
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lab.namespaces(), [leftover.clone(), format!("{prefix}two")]);
    assert_eq!(lab.id(), prefix.trim_end_matches('-'));
    let names = lab.namespaces().to_vec();
    drop(lab);
    gone(&names);
    // Deleting by name is idempotent.
    netlab::destroy(&leftover).expect("destroy twice");
    netlab::kill_all(&leftover).expect("kill_all in a missing namespace");
}

#[test]
fn a_failed_build_removes_what_it_created() {
    let err = Lab::builder("nlerr-")
        .namespace("a")
        .namespace("b")
        .veth(Veth::new(("a", "eth0"), ("b", "eth0")))
        .address("a", "eth0", Cidr::new(v4(10, 80, 0, 1), 24))
        // No connected network holds the gateway: `ip route add` refuses.
        .route("a", Cidr::new(v4(10, 81, 0, 0), 24), v4(10, 82, 0, 1))
        .build()
        .expect_err("unreachable gateway");
    let text = format!("{err:#}");
    assert!(text.contains("configuring a"), "{text}");
    assert_eq!(listed("nlerr-"), Vec::<String>::new());

    let bad_plan = Lab::builder("nlerr-")
        .namespace("a")
        .address("a", "eth9", Cidr::new(v4(10, 80, 0, 1), 24))
        .build()
        .expect_err("no such interface");
    assert!(format!("{bad_plan:#}").contains("checking"), "{bad_plan:#}");
    assert_eq!(listed("nlerr-"), Vec::<String>::new());
}
