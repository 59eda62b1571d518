//! The gateway and its process limits: `s2cs serve` raises its soft limit
//! of open descriptors to the hard limit at start, and when it does run
//! out of descriptors (EMFILE from accept) it backs off instead of
//! spinning, logs that at most once a second, and serves again once
//! descriptors are free.
//!
//! One test in its own binary: it lowers this test process's own
//! descriptor limit for a moment (the gateways inherit it), which would
//! disturb tests running beside it. Needs root (namespaces, prlimit on
//! another process). Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::procfs::{cpu_time as cpu, open_fds as fds};
use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Link, Node, Topology, eventually};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use support::{PRODUCER_PORT, SECS_30, Setup, join};

/// "Max open files" soft and hard limits of a process.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap_or_default().to_owned(),
        fields.next().unwrap_or_default().to_owned(),
    )
}

/// Sets a process's soft limit of descriptors (the hard one stays: raising
/// a hard limit again would need CAP_SYS_RESOURCE).
fn prlimit(pid: u32, soft: u64) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:"))
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_raises_its_descriptor_limit_and_backs_off_when_out_of_them() {
    // The gateways start with a low soft limit (inherited from us).
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let low = 256.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).expect("lower our soft limit");
    let topo = Topology::builder().attacker(true).build();
    let started = topo.map(|topo| {
        Setup::start(
            topo,
            vec!["--data-path".into(), "splice".into()],
            Vec::new(),
        )
    });
    setrlimit(Resource::RLIMIT_NOFILE, soft.max(low), hard).expect("restore our limit");
    let mut s = started.unwrap_or_else(|e| panic!("{e:#}"));
    let pid = s.gwa.pid();
    let (gw_soft, gw_hard) = nofile(pid);
    assert_eq!(
        gw_soft, gw_hard,
        "the gateway raised its soft limit to the hard limit"
    );
    if low < hard {
        assert!(
            s.gwa
                .log()
                .contains("open descriptor limit raised to the hard limit"),
            "{}",
            s.gwa.log()
        );
    }

    let spec = StreamSpec::new(91, 16 * 1024 * 1024);
    let producer_addr = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = s
        .topo
        .tcp_listen(Node::Prod, producer_addr)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let c = s.connect(&[producer_addr], 0);

    // Now the gateway runs out of descriptors: a few more than it holds.
    let limit = fds(pid) + 8;
    prlimit(pid, limit);
    let target: SocketAddr = c.prod_listeners[0];
    let log_before = s.gwa.log().lines().count();
    let attacker = s
        .topo
        .spawn_thread_in(Node::Attacker, move || {
            let conns: Vec<_> = (0..64)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()
                })
                .collect();
            std::thread::sleep(Duration::from_secs(4));
            conns.len()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Out of descriptors: accept fails, and the gateway must not spin.
    eventually(SECS_30, || {
        if s.gwa.log().contains("accept failed; backing off") {
            Ok(())
        } else {
            Err("no accept failure yet")
        }
    })
    .unwrap_or_else(|e| panic!("the gateway never ran out of descriptors: {e:#}"));
    let (cpu_before, at) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (used, window) = (cpu(pid) - cpu_before, at.elapsed());
    eprintln!("out of descriptors: the gateway used {used:?} of CPU in {window:?}");
    assert!(
        used < window / 2,
        "the gateway spun while out of descriptors: {used:?} of CPU in {window:?}"
    );
    let connected = attacker
        .join_deadline(SECS_30)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(connected > 8, "the attacker's connections: {connected}");
    let log = s.gwa.log();
    let warnings = log
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("accept failed; backing off"))
        .count();
    assert!(
        warnings <= 8,
        "{warnings} accept warnings in about 5 s (at most one a second):\n{log}"
    );

    // Descriptors back: the session serves again.
    prlimit(pid, hard);
    let producer = std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("non-blocking");
        let conn = eventually(Duration::from_secs(60), || {
            listener.accept().map(|(c, _)| c)
        })
        .unwrap_or_else(|e| panic!("nobody connected to the producer: {e:#}"));
        conn.set_nonblocking(false).expect("blocking");
        stream::send_tcp(&conn, spec, Deadline::after(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("producer: {e}"));
    });
    let consumer = s
        .topo
        .tcp_connect(Node::Cons, c.cons_listeners[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let report = stream::verify_tcp(&consumer, spec, Deadline::after(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("the stream after the descriptors came back: {e}"));
    assert_eq!(report.sha256, spec.sha256());
    join(producer);
    s.gwa.terminate().unwrap_or_else(|e| panic!("{e:#}"));
}
