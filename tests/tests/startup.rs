//! Start-up with a bad option: `s2cs serve` (with the XDP guard, metrics
//! and a control port asked for) exits at once with an error naming the
//! problem, and leaves nothing behind: no XDP program on the interface, no
//! port bound, nothing loaded or attached before the check that failed (its
//! log never says the guard was attached). Also when the failure is the
//! environment's (the control port is taken), which is found before the
//! guard is attached.
//!
//! Needs root (namespaces, XDP). Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Bin, Link, Node, Topology};
use support::{METRICS_ADDR, SECS_30};

const CONTROL_PORT: u16 = 5001;

/// `ip -d link show dev IFACE` in gwa: names an attached XDP program.
fn link_details(topo: &Topology, iface: &str) -> String {
    let mut cmd = topo.command(Node::Gwa, "ip");
    cmd.args(["-d", "link", "show", "dev", iface]);
    let out = topo
        .output(Node::Gwa, cmd, SECS_30)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "ip link show dev {iface} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `s2cs serve` in gwa with the guard on its WAN interface (or
/// `guard_on`), metrics, a state dir, and `bad` on top; returns its combined output after
/// checking that it failed fast and left nothing behind.
fn refused(
    topo: &Topology,
    state: &std::path::Path,
    guard_on: Option<&str>,
    bad: &[&str],
) -> String {
    let iface = topo
        .ifname(Node::Gwa, Link::Wan)
        .expect("gwa has a WAN interface");
    let control = SocketAddr::new(topo.addr(Node::Gwa, Link::Wan), CONTROL_PORT);
    let mut cmd = Command::new(Bin::S2cs.path().unwrap_or_else(|e| panic!("{e:#}")));
    cmd.args(["serve", "--control-listen", &control.to_string()])
        .args(["--allow", "10.1.0.0/24", "--port-range", "5300-5399"])
        .args(["--xdp-iface", guard_on.unwrap_or(iface)])
        .args(["--metrics-listen", METRICS_ADDR])
        .arg("--state-dir")
        .arg(state)
        .args(bad)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    if !bad.iter().any(|f| *f == "--token-file" || *f == "--config") {
        cmd.arg("--no-auth");
    }
    let started = Instant::now();
    let out = topo
        .output(Node::Gwa, cmd, SECS_30)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{bad:?} must be refused:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{bad:?} refused only after {:?}",
        started.elapsed()
    );
    assert!(
        !text.contains("XDP guard attached"),
        "{bad:?}: the guard was attached before the check failed:\n{text}"
    );
    // Nothing left: no XDP program on the interface, the ports free.
    let link = link_details(topo, iface);
    assert!(
        !link.contains("xdp"),
        "{bad:?}: an XDP program is left on {iface}:\n{link}"
    );
    for addr in [METRICS_ADDR.parse().expect("metrics addr"), control] {
        topo.tcp_listen(Node::Gwa, addr)
            .unwrap_or_else(|e| panic!("{bad:?}: {addr} is still bound: {e:#}"));
    }
    text
}

#[test]
fn a_bad_option_leaves_no_port_bound_and_no_xdp_program_attached() {
    let topo = Topology::new().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");

    let loose = dir.path().join("tokens");
    std::fs::write(&loose, "alice s3cret-token-value\n").expect("token file");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let bad_toml = dir.path().join("s2cs.toml");
    std::fs::write(
        &bad_toml,
        "port_range = \"5300-5399\"\nmax_sessions = \"many\"\n",
    )
    .expect("config file");
    let missing = dir.path().join("no-such-cert.pem");
    let missing_str = missing.display().to_string();
    let loose_str = loose.display().to_string();
    let toml_str = bad_toml.display().to_string();

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--token-file", &loose_str],
            vec!["token file", "0644", "chmod 600"],
        ),
        (
            vec!["--config", &toml_str],
            vec!["s2cs.toml", "max_sessions"],
        ),
        (
            vec![
                "--channel-cert",
                &missing_str,
                "--channel-key",
                &missing_str,
            ],
            vec!["no-such-cert.pem"],
        ),
        (
            vec!["--tls-cert", &missing_str, "--tls-key", &missing_str],
            vec!["TLS key", "no-such-cert.pem"],
        ),
        (
            vec!["--max-relayed-connections", "0"],
            vec!["--max-relayed-connections must be at least 1"],
        ),
        (vec!["--wan-keepalive=-3"], vec!["--wan-keepalive"]),
    ];
    for (bad, expected) in &cases {
        let text = refused(&topo, &state, None, bad);
        for e in expected {
            assert!(
                text.contains(e),
                "{bad:?}: the error must name {e:?}:\n{text}"
            );
        }
    }

    // An interface that does not exist: named, nothing loaded.
    let text = refused(&topo, &state, Some("nosuch0"), &[]);
    assert!(text.contains("nosuch0"), "{text}");

    // The control port taken by someone else: found before the guard is
    // attached or any session restored; the metrics port is free again.
    let control = SocketAddr::new(topo.addr(Node::Gwa, Link::Wan), CONTROL_PORT);
    let holder = topo
        .tcp_listen(Node::Gwa, control)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let iface = topo.ifname(Node::Gwa, Link::Wan).expect("iface");
    let mut cmd = Command::new(Bin::S2cs.path().unwrap_or_else(|e| panic!("{e:#}")));
    cmd.args([
        "serve",
        "--control-listen",
        &control.to_string(),
        "--no-auth",
    ])
    .args(["--allow", "10.1.0.0/24", "--port-range", "5300-5399"])
    .args(["--xdp-iface", iface, "--metrics-listen", METRICS_ADDR])
    .arg("--state-dir")
    .arg(&state)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1");
    let out = topo
        .output(Node::Gwa, cmd, SECS_30)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&control.to_string()) && !text.contains("XDP guard attached"),
        "{text}"
    );
    drop(holder);
    let link = link_details(&topo, iface);
    assert!(
        !link.contains("xdp"),
        "an XDP program is left on {iface}:\n{link}"
    );
    topo.tcp_listen(Node::Gwa, METRICS_ADDR.parse().expect("addr"))
        .unwrap_or_else(|e| panic!("the metrics port is still bound: {e:#}"));
}
