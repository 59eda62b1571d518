//! `s2cs check` on this machine: the eBPF object really loads and relays, and
//! a run without privileges explains itself instead of failing obscurely.
//! Needs root (CI runs as root); the kernel must have BPF and sockmap, as
//! every kernel this project targets does.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

use gateway::check::{self, BPF_LOAD, SOCKMAP, SPLICE, TCP, UDP_FAST};
use gateway::relay::DataPath;

#[test]
fn the_ebpf_object_loads_and_relays_in_this_kernel() {
    let report = check::run();
    assert!(report.root, "this test must run as root");
    for name in [TCP, BPF_LOAD, SOCKMAP, SPLICE, UDP_FAST] {
        let cap = report
            .capability(name)
            .unwrap_or_else(|| panic!("no {name} in the report"));
        assert!(cap.available, "{name} unavailable: {}", cap.detail);
    }
    // sockmap works here but is opt-in; auto picks splice.
    assert_eq!(report.plaintext_path, DataPath::Splice);
    assert!(report.can_run);
    let text = check::render(&report);
    assert!(text.contains("plaintext relay = splice"), "{text}");
    assert!(
        text.contains("TLS13_AES_128_GCM_SHA256") && text.contains("of a core to seal"),
        "{text}"
    );
    assert!(
        text.contains("UDP between gateways = QUIC datagrams (tls); the kernel"),
        "{text}"
    );
}

#[test]
fn the_binary_reports_json_and_exit_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_s2cs"))
        .args(["check", "--json", "--require", "sockmap"])
        .output()
        .expect("run s2cs check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["plaintext_path"], "splice");
    assert_eq!(report["can_run"], true);
    // The userspace record layer's speed, per suite, for the bench's bound.
    let speeds = report["record_speed"].as_array().expect("record_speed");
    let suites: Vec<&str> = speeds.iter().filter_map(|s| s["suite"].as_str()).collect();
    assert_eq!(
        suites,
        ["TLS13_AES_128_GCM_SHA256", "TLS13_CHACHA20_POLY1305_SHA256"]
    );
    for speed in speeds {
        for side in ["seal_gb_per_s", "open_gb_per_s"] {
            let rate = speed[side].as_f64().unwrap_or(0.0);
            assert!(rate > 0.0 && rate.is_finite(), "{side}: {speed}");
        }
    }
    assert_eq!(report["record_speed_errors"], serde_json::json!([]));
}

/// Without root the BPF checks fail with a message that says why and what to
/// do, nothing panics, and the gateway still reports it can run (userspace).
#[test]
fn a_non_root_run_explains_itself() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(["--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_s2cs"))
        .args(["check"])
        .output()
        .expect("run s2cs check through setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "s2cs panicked: {err}");
    assert!(text.contains("not root"), "{text}");
    assert!(text.contains("capabilities: none"), "{text}");
    assert!(
        text.contains("lacks CAP_BPF (loading the eBPF programs")
            && text.contains("CAP_NET_ADMIN (loading networking eBPF programs"),
        "the missing capabilities and what they enable are named: {text}"
    );
    assert!(text.contains("plaintext relay = splice"), "{text}");
    assert!(
        out.status.success(),
        "copy/splice still work without root: {text}{err}"
    );
    let required = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(["--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_s2cs"))
        .args(["check", "--require", "sockmap"])
        .output()
        .expect("run s2cs check --require sockmap");
    assert!(
        !required.status.success(),
        "--require sockmap must fail without root"
    );
}

/// `s2cs config check` and `show` through the binary: a good file passes
/// with a summary, a bad one fails naming the key, show prints TOML that
/// reads back, with the `[gateway]` defaults filled in.
#[test]
fn config_check_and_show_explain_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s2cs = env!("CARGO_BIN_EXE_s2cs");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "port_range = \"6100-6109\"\n[auth]\nkind = \"none\"\n[gateway]\ndata_path = \"splice\"\n[gateway.channel]\nmode = \"plaintext-after-auth\"\n",
    )
    .expect("write");
    let out = Command::new(s2cs)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run s2cs config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok: "), "{stdout}");
    assert!(stdout.contains("data path splice"), "{stdout}");
    assert!(stdout.contains("channel plaintext-after-auth"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[auth]\nkind = \"none\"\n[gateway]\nrelease_grace_secs = -3\n",
    )
    .expect("write");
    let out = Command::new(s2cs)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .expect("run s2cs config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("would not start") && stderr.contains("release-grace"),
        "{stderr}"
    );

    let out = Command::new(s2cs)
        .args(["config", "show"])
        .arg(&good)
        .output()
        .expect("run s2cs config show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("TOML");
    assert_eq!(shown["port_range"].as_str(), Some("6100-6109"));
    let gateway = shown["gateway"].as_table().expect("[gateway]");
    assert_eq!(gateway["data_path"].as_str(), Some("splice"));
    assert_eq!(gateway["control_listen"].as_str(), Some("0.0.0.0:5000"));
    assert_eq!(gateway["channel"]["ktls"].as_bool(), Some(true));
}

/// The capabilities the service unit grants, as setpriv names them.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/s2cs.service"),
    )
    .expect("reading the unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_service_unit_grants_exactly_what_the_gateway_says_it_needs() {
    let granted = unit_capabilities();
    let needed: Vec<String> = gateway::privileges::SERVICE_CAPABILITIES
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(granted, needed);
}

#[test]
fn with_the_units_capabilities_and_no_root_the_kernel_relay_loads() {
    let set: String = std::iter::once("-all".to_owned())
        .chain(
            unit_capabilities()
                .iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(env!("CARGO_BIN_EXE_s2cs"))
        .args(["check", "--json", "--require", "sockmap"])
        .output()
        .expect("run s2cs check through setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the sockmap relay works as nobody with the unit's capabilities: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(report["root"], false);
    assert_eq!(
        report["privileges"],
        serde_json::json!(["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"])
    );
}
