//! Tests of the harness itself: the topology isolates what it should, connects
//! what it should, cleans up after panics and in parallel, and the stream
//! source/sink catch every kind of damage. Needs root (as CI runs).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::stream::{self, StreamError, StreamSpec};
use e2e::{Link, Node, Topology, eventually};

const SECS_5: Duration = Duration::from_secs(5);
const SECS_2: Duration = Duration::from_secs(2);

fn topo() -> Topology {
    Topology::new().unwrap_or_else(|e| panic!("cannot build the test topology: {e:#}"))
}

fn host_ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from `from` to `to` and returns the error kind, asserting the
/// attempt fails fast.
fn connect_fails_fast(topo: &Topology, from: Node, to: SocketAddr) -> ErrorKind {
    let start = Instant::now();
    let result = topo
        .run_in(from, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(10))
        })
        .expect("entering the namespace");
    let err = match result {
        Ok(_) => panic!("{from} connected to {to}, but should have no route"),
        Err(e) => e,
    };
    // No route fails at once; a dropped SYN would wait for the timeout.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{from} -> {to} failed only after {:?} ({err})",
        start.elapsed()
    );
    err.kind()
}

#[test]
fn prod_cannot_reach_cons_directly() {
    let topo = topo();
    // Something listens on cons, so only the network can be what fails.
    let _listener = topo
        .tcp_listen(Node::Cons, "[::]:5001".parse().unwrap())
        .expect("listen");
    for to in [
        topo.sockaddr(Node::Cons, Link::LanB, 5001),
        topo.sockaddr6(Node::Cons, Link::LanB, 5001),
    ] {
        assert_eq!(
            connect_fails_fast(&topo, Node::Prod, to),
            ErrorKind::NetworkUnreachable,
            "{to}"
        );
    }
    // Nor the far gateway, nor back from cons to prod.
    let gwb_wan = topo.sockaddr(Node::Gwb, Link::Wan, 5001);
    assert_eq!(
        connect_fails_fast(&topo, Node::Prod, gwb_wan),
        ErrorKind::NetworkUnreachable
    );
    let prod = topo.sockaddr(Node::Prod, Link::LanA, 5001);
    assert_eq!(
        connect_fails_fast(&topo, Node::Cons, prod),
        ErrorKind::NetworkUnreachable
    );
    // But cons itself is reachable from its own gateway.
    topo.tcp_connect(
        Node::Gwb,
        topo.sockaddr(Node::Cons, Link::LanB, 5001),
        SECS_5,
    )
    .expect("gwb reaches cons");
}

#[test]
fn gateways_do_not_forward_even_with_routes() {
    let topo = topo();
    let listener = topo
        .tcp_listen(Node::Cons, "0.0.0.0:5002".parse().unwrap())
        .expect("listen");
    let cons = topo.sockaddr(Node::Cons, Link::LanB, 5002);
    // Give every hop a route, as a misconfigured site might.
    for (node, route) in [
        (Node::Prod, ["10.3.0.0/24", "via", "10.1.0.1"]),
        (Node::Gwa, ["10.3.0.0/24", "via", "10.2.0.2"]),
        (Node::Gwb, ["10.1.0.0/24", "via", "10.2.0.1"]),
        (Node::Cons, ["10.1.0.0/24", "via", "10.3.0.1"]),
    ] {
        let mut args = vec!["route", "add"];
        args.extend(route);
        topo.ip(node, &args).expect("adding a route");
    }
    let attempt = |timeout| {
        topo.run_in(Node::Prod, || TcpStream::connect_timeout(&cons, timeout))
            .expect("entering prod")
    };
    let err = attempt(Duration::from_millis(300))
        .map(drop)
        .expect_err("gwa must not forward");
    assert!(
        matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::HostUnreachable),
        "unexpected error {err}"
    );
    // The same routes with forwarding on do connect: so it is forwarding=0
    // (set by the harness) that keeps prod and cons apart.
    for node in [Node::Gwa, Node::Gwb] {
        topo.run_in(node, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .expect("entering")
        .expect("enabling forwarding");
    }
    attempt(SECS_5).expect("with forwarding on, prod reaches cons");
    drop(listener);
}

#[test]
fn gwa_reaches_prod_and_gwb_with_verified_bytes() {
    let topo = topo();
    let spec = StreamSpec::new(42, 8 << 20);
    // prod listens on LAN A, gwa sends; gwb listens on the WAN (IPv6), gwa sends.
    for (server, addr) in [
        (Node::Prod, topo.sockaddr(Node::Prod, Link::LanA, 6000)),
        (Node::Gwb, topo.sockaddr6(Node::Gwb, Link::Wan, 6000)),
    ] {
        let listener = topo.tcp_listen(server, addr).expect("listen");
        let sink = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            stream::verify_tcp(&conn, spec, SECS_5)
        });
        let conn = topo
            .tcp_connect(Node::Gwa, addr, SECS_5)
            .expect("gwa connects");
        let sent = stream::send_tcp(&conn, spec, SECS_5).expect("send");
        let got = sink
            .join()
            .expect("sink thread")
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        assert_eq!(got.bytes, spec.len);
        assert_eq!(got.sha256, sent.sha256);
        assert_eq!(got.sha256, spec.sha256());
    }
}

#[test]
fn wait_for_port_polls_until_listening() {
    let topo = topo();
    let addr = topo.sockaddr(Node::Gwb, Link::Wan, 6001);
    // Nothing listens yet: the wait fails at its deadline, not before, not much after.
    let start = Instant::now();
    topo.wait_for_port(Node::Gwa, addr, Duration::from_millis(200))
        .expect_err("nothing listens");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A server that starts late is found.
    let server = topo
        .spawn_thread_in(Node::Gwb, move || {
            std::thread::sleep(Duration::from_millis(100));
            let listener = std::net::TcpListener::bind(addr).expect("bind");
            listener.accept().map(drop)
        })
        .expect("server thread");
    topo.wait_for_port(Node::Gwa, addr, SECS_5)
        .expect("gwb listening");
    server
        .join_deadline(SECS_5)
        .expect("server")
        .expect("accepted the probe");
}

#[test]
fn tokio_stream_between_gateways() {
    let topo = topo();
    let spec = StreamSpec::new(8, 4 << 20);
    let addr = topo.sockaddr(Node::Gwb, Link::Wan, 6002);
    let listener = topo.tcp_listen(Node::Gwb, addr).expect("listen");
    let server = topo
        .spawn_tokio_in(Node::Gwb, move || async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let (mut conn, _) = listener.accept().await.expect("accept");
            stream::verify_async(&mut conn, spec, SECS_5).await
        })
        .expect("server thread");
    let sent = topo
        .block_on_in(Node::Gwa, || async move {
            use tokio::io::AsyncWriteExt;
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let report = stream::send_async(&mut conn, spec, SECS_5)
                .await
                .expect("send");
            conn.shutdown().await.expect("shutdown");
            report
        })
        .expect("client");
    let got = server
        .join_deadline(SECS_5)
        .expect("server")
        .expect("verified");
    assert_eq!(got.sha256, sent.sha256);
}

#[test]
fn processes_run_inside_namespaces() {
    let topo = topo();
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "addr"]);
    let out = topo.output(Node::Gwb, cmd, SECS_5).expect("ip addr in gwb");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("10.2.0.2/24") && text.contains("10.3.0.1/24"),
        "{text}"
    );
    assert!(text.contains("fd00:e2e:2::2/64"), "{text}");
    assert!(!text.contains("10.1.0."), "{text}");

    let mut cmd = Command::new("cat");
    cmd.arg("/proc/sys/net/ipv4/ip_forward");
    let out = topo.output(Node::Gwa, cmd, SECS_5).expect("cat in gwa");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // A long-running child is killed by its guard.
    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    let child = topo.spawn(Node::Cons, sleep).expect("spawn sleep");
    let pid = child.id();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived its guard"
    );

    // A deadline kills a process that runs too long.
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let start = Instant::now();
    topo.output(Node::Prod, cmd, Duration::from_millis(200))
        .expect_err("must time out");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the 30 s sleep was not cut short"
    );
}

#[test]
fn namespaces_and_veths_are_gone_after_a_panic() {
    let mut names = Vec::new();
    let mut id = String::new();
    let mut leaked_pid = 0;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let topo = topo();
        names = topo.namespaces().to_vec();
        id = topo.id().to_owned();
        let links = topo.ip(Node::Gwa, &["-o", "link"]).expect("links in gwa");
        assert!(links.contains("lana") && links.contains("wan"), "{links}");
        // A process the test forgot: the topology must kill it.
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let child = topo.spawn(Node::Gwb, sleep).expect("spawn");
        leaked_pid = child.id();
        std::mem::forget(child);
        panic!("intentional panic: testing cleanup while unwinding");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 4);

    let listed = host_ip(&["netns", "list"]);
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} still listed:\n{listed}"
        );
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} still mounted"
        );
        let inside = Command::new("ip")
            .args(["-n", name, "link"])
            .output()
            .expect("ip");
        assert!(!inside.status.success(), "{name} still usable");
    }
    // Every veth carried the topology id as alias; none is left in the host.
    let host_links = host_ip(&["-o", "link"]);
    assert!(!host_links.contains(&id), "{host_links}");

    // The forgotten process was killed (reap it: it is our child).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(leaked_pid).expect("pid"));
    let status = eventually(SECS_5, || {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => Err("still alive".to_owned()),
            Ok(status) => Ok(status),
            Err(e) => Err(e.to_string()),
        }
    })
    .expect("leaked process reaped");
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
}

#[test]
fn parallel_topologies_do_not_collide() {
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let topo = topo();
                // Same address and port in every topology.
                let addr = topo.sockaddr(Node::Gwb, Link::Wan, 7000);
                let listener = topo.tcp_listen(Node::Gwb, addr).expect("listen");
                let token = topo.id().to_owned();
                let server = std::thread::spawn(move || {
                    let (mut conn, _) = listener.accept().expect("accept");
                    conn.write_all(token.as_bytes()).expect("write");
                });
                let mut conn = topo.tcp_connect(Node::Gwa, addr, SECS_5).expect("connect");
                conn.set_read_timeout(Some(SECS_5)).expect("timeout");
                let mut got = String::new();
                conn.read_to_string(&mut got).expect("read");
                server.join().expect("server");
                assert_eq!(got, topo.id(), "reached another topology's gwb");
                topo.namespaces().to_vec()
            })
        })
        .collect();
    let mut all: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "namespace names collided");
    for name in &all {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn attacker_sits_on_the_wan() {
    let topo = Topology::builder()
        .attacker(true)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the test topology: {e:#}"));
    assert_eq!(topo.ifname(Node::Gwb, Link::Wan), Some("wan"));
    let addr = topo.sockaddr(Node::Gwb, Link::Wan, 7001);
    let listener = topo.tcp_listen(Node::Gwb, addr).expect("listen");
    for from in [Node::Attacker, Node::Gwa] {
        topo.tcp_connect(from, addr, SECS_5).expect("connect");
        let (conn, peer) = listener.accept().expect("accept");
        drop(conn);
        assert_eq!(peer.ip(), topo.addr(from, Link::Wan));
    }
    let cons = topo.sockaddr(Node::Cons, Link::LanB, 7001);
    assert_eq!(
        connect_fails_fast(&topo, Node::Attacker, cons),
        ErrorKind::NetworkUnreachable
    );
    let names = topo.namespaces().to_vec();
    assert_eq!(names.len(), 6);
    drop(topo);
    for name in &names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "{name} left behind"
        );
    }
}

#[test]
fn sweep_removes_namespaces_of_dead_runs_only() {
    let live = topo();
    // A pid that is certainly dead: a child we reaped.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let stale = format!("{}{dead}-0dead-prod", e2e::netns::NS_PREFIX);
    host_ip(&["netns", "add", &stale]);
    e2e::sweep_stale().expect("sweep");
    assert!(
        !Path::new("/run/netns").join(&stale).exists(),
        "{stale} survived the sweep"
    );
    for name in live.namespaces() {
        assert!(
            Path::new("/run/netns").join(name).exists(),
            "sweep removed live {name}"
        );
    }
}

#[test]
fn sink_detects_corruption_truncation_and_extra_bytes() {
    let spec = StreamSpec::new(3, 1 << 20);
    let good = spec.to_vec();

    let mut corrupt = good.clone();
    corrupt[123_457] ^= 0x20;
    match stream::verify(&mut &corrupt[..], spec, SECS_5) {
        Err(StreamError::Mismatch {
            offset: 123_457,
            expected,
            got,
        }) => {
            assert_eq!(expected, good[123_457]);
            assert_eq!(got, corrupt[123_457]);
        }
        other => panic!("corruption not caught: {other:?}"),
    }
    match stream::verify(&mut &good[..good.len() - 1000], spec, SECS_5) {
        Err(StreamError::Short { received, expected }) => {
            assert_eq!((received, expected), (spec.len - 1000, spec.len));
        }
        other => panic!("truncation not caught: {other:?}"),
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"xyz");
    match stream::verify(&mut &longer[..], spec, SECS_5) {
        Err(StreamError::Extra { expected, extra: 3 }) => assert_eq!(expected, spec.len),
        other => panic!("extra bytes not caught: {other:?}"),
    }
    // Another seed is caught at once.
    let other = StreamSpec::new(4, spec.len).to_vec();
    assert!(matches!(
        stream::verify(&mut &other[..], spec, SECS_5),
        Err(StreamError::Mismatch { offset: 0..8, .. })
    ));
    stream::verify(&mut &good[..], spec, SECS_5).expect("the intact stream passes");
}

#[test]
fn sink_over_tcp_detects_damage_and_never_hangs() {
    let topo = topo();
    let spec = StreamSpec::new(9, 256 << 10);
    let addr = topo.sockaddr(Node::Prod, Link::LanA, 6100);
    let listener = topo.tcp_listen(Node::Prod, addr).expect("listen");
    let good = spec.to_vec();
    let mut corrupt = good.clone();
    corrupt[100_000] ^= 1;

    struct Case {
        what: &'static str,
        /// What gwa sends.
        data: Vec<u8>,
        /// Whether gwa then closes its write side.
        close: bool,
        deadline: Duration,
        check: fn(&Result<stream::Report, StreamError>) -> bool,
    }
    let short = Duration::from_millis(300);
    let cases = [
        Case {
            what: "truncated",
            data: good[..200_000].to_vec(),
            close: true,
            deadline: SECS_5,
            check: |r| {
                matches!(
                    r,
                    Err(StreamError::Short {
                        received: 200_000,
                        ..
                    })
                )
            },
        },
        Case {
            what: "corrupted",
            data: corrupt,
            close: true,
            deadline: SECS_5,
            check: |r| {
                matches!(
                    r,
                    Err(StreamError::Mismatch {
                        offset: 100_000,
                        ..
                    })
                )
            },
        },
        Case {
            what: "silent",
            data: Vec::new(),
            close: false,
            deadline: short,
            check: |r| matches!(r, Err(StreamError::Timeout { done: 0, .. })),
        },
        Case {
            what: "never closed",
            data: good.clone(),
            close: false,
            // Long enough to receive all 256 KiB on a loaded machine.
            deadline: SECS_2,
            check: |r| matches!(r, Err(StreamError::NoEof { .. })),
        },
        Case {
            what: "intact",
            data: good,
            close: true,
            deadline: SECS_5,
            check: |r| matches!(r, Ok(report) if report.bytes == 256 << 10),
        },
    ];
    for case in cases {
        let conn = topo.tcp_connect(Node::Gwa, addr, SECS_5).expect("connect");
        let (server_side, _) = listener.accept().expect("accept");
        let (data, close) = (case.data, case.close);
        let writer = std::thread::spawn(move || {
            let mut conn = conn;
            // The sink may stop reading early (and close): ignore write errors.
            if conn.write_all(&data).is_ok() && close {
                let _ = conn.shutdown(Shutdown::Write);
            }
            conn
        });
        let start = Instant::now();
        let result = stream::verify_tcp(&server_side, spec, case.deadline);
        let took = start.elapsed();
        assert!((case.check)(&result), "{}: {result:?}", case.what);
        assert!(
            took < case.deadline + Duration::from_secs(1),
            "{} took {took:?}",
            case.what
        );
        drop(server_side);
        drop(writer.join().expect("writer"));
    }
}
