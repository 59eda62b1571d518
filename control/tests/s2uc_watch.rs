//! `s2uc watch UID` with its standard output on a pipe (not a terminal):
//! the real binary against a real control server whose session relays a
//! stream while it is watched. What a user piping it into a log or `grep`
//! relies on: plain lines (no ANSI escapes, no carriage-return redraws), each
//! one printed when its interval ends (not all at exit), with byte and
//! connection counters that follow the traffic, and the end of the watch
//! when the session is released.
//!
//! Stand-in: the session runs on `PlainCopyDataPlane`, the control crate's
//! userspace relay, not the gateway's kernel data plane (this crate has no
//! eBPF; the `e2e` suites cover the kernel one). What is tested here is the
//! `s2uc` side, which reads the counters through the same
//! `DataPlane::counters` and `ControlExt.watch` either way.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestServer, base_config, port_range};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BASE: u16 = 30000;
const INTERVAL_MS: u64 = 100;
/// Lines read while the session is live before it is released.
const LIVE_LINES: usize = 10;

/// One parsed watch line.
#[derive(Debug)]
struct Line {
    state: String,
    to_target: u64,
    from_target: u64,
    active: u64,
    total: u64,
    mbps: f64,
}

/// Parses "UID STATE to_target=N from_target=N conns=A/T R Mbit/s".
fn parse(uid: &str, line: &str) -> Line {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 7, "7 space-separated fields in {line:?}");
    assert_eq!(f[0], uid, "uid first in {line:?}");
    assert_eq!(f[6], "Mbit/s", "unit last in {line:?}");
    let num = |field: &str, prefix: &str| -> u64 {
        field
            .strip_prefix(prefix)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix}N expected, got {field:?} in {line:?}"))
    };
    let (active, total) = f[4]
        .strip_prefix("conns=")
        .and_then(|c| c.split_once('/'))
        .unwrap_or_else(|| panic!("conns=A/T expected in {line:?}"));
    Line {
        state: f[1].to_owned(),
        to_target: num(f[2], "to_target="),
        from_target: num(f[3], "from_target="),
        active: active.parse().expect("open connections are a number"),
        total: total.parse().expect("total connections are a number"),
        mbps: f[5].parse().expect("the rate is a number"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_pipe_prints_one_plain_line_per_interval() {
    let echo = control::mock::start_echo_servers(1, "127.0.0.1".parse().expect("IP"))
        .await
        .expect("echo target");
    let dir = tempfile::tempdir().expect("state dir");
    let srv = TestServer::start(base_config(port_range(BASE, 4), dir.path())).await;
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, &srv.cert_pem).expect("server certificate");
    let client = srv.client(None).await;
    let uid = control::client::new_uid();
    let session = client
        .inbound(&uid, 1, 0, &[echo.addrs[0].to_string()], true)
        .await
        .expect("a live session");

    // Traffic through the session for as long as the watch runs: 32 KiB
    // out and back every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = tokio::net::TcpStream::connect(&session.listeners[0])
        .await
        .expect("connecting to the session's listener");
    let feeder = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let chunk = vec![0x5au8; 32 * 1024];
            let mut back = vec![0u8; chunk.len()];
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&chunk)
                    .await
                    .expect("sending through the session");
                conn.read_exact(&mut back)
                    .await
                    .expect("the echo comes back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let home = tempfile::tempdir().expect("HOME for s2uc");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2uc"))
        .args([
            "watch",
            "--s2cs",
            &srv.addr.to_string(),
            "--server-cert",
            &cert.display().to_string(),
            "--interval-ms",
            &INTERVAL_MS.to_string(),
            uid.as_str(),
        ])
        .env("HOME", home.path())
        .env_remove("S2UC_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting s2uc watch");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);

    // Lines arrive one by one while the process runs.
    let mut raw: Vec<u8> = Vec::new();
    let mut arrivals: Vec<Instant> = Vec::new();
    while arrivals.len() < LIVE_LINES {
        let mut line = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read_until(b'\n', &mut line))
            .await
            .expect("a watch line within 30 s: lines must not wait for the end")
            .expect("reading s2uc's stdout");
        assert!(n > 0, "s2uc watch ended early; output so far: {raw:?}");
        arrivals.push(Instant::now());
        raw.extend_from_slice(&line);
    }
    let span = arrivals[LIVE_LINES - 1].duration_since(arrivals[0]);
    let intervals = (LIVE_LINES - 1) as u64;
    // Paced by the interval, not written in one burst (loosely: a loaded
    // machine may stall s2uc and deliver a few lines together).
    assert!(
        span >= Duration::from_millis(INTERVAL_MS * 2),
        "{LIVE_LINES} lines within {span:?}: one line per {INTERVAL_MS} ms interval expected"
    );
    assert!(
        span <= Duration::from_millis(INTERVAL_MS * intervals * 4),
        "{LIVE_LINES} lines took {span:?}: one line per {INTERVAL_MS} ms interval expected"
    );

    // Releasing the session ends the watch; s2uc exits cleanly.
    stop.store(true, Ordering::Relaxed);
    feeder.await.expect("the feeder ran without panicking");
    client.release(&uid).await.expect("release");
    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut raw))
        .await
        .expect("s2uc watch ends after release")
        .expect("reading s2uc's stdout");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("s2uc exits after release")
        .expect("waiting for s2uc");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).await.expect("reading stderr");
    }
    assert!(status.success(), "s2uc watch failed ({status}): {err}");

    // Plain text only.
    assert!(
        !raw.contains(&0x1b) && !raw.contains(&b'\r'),
        "escape sequences or carriage returns on a pipe: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8(raw).expect("UTF-8 output");
    assert!(text.ends_with('\n'), "the last line ends too: {text:?}");
    let lines: Vec<Line> = text.lines().map(|l| parse(uid.as_str(), l)).collect();
    eprintln!("{text}");

    // The counters follow the traffic: they only grow, they grew while
    // watched, the open connection shows, the rate is positive while it runs.
    for w in lines.windows(2) {
        assert!(
            w[1].to_target >= w[0].to_target && w[1].from_target >= w[0].from_target,
            "byte counters went down: {w:?}"
        );
    }
    let live: Vec<&Line> = lines.iter().filter(|l| l.state == "ACTIVE").collect();
    assert!(live.len() >= LIVE_LINES - 1, "ACTIVE lines: {lines:?}");
    let (first, last) = (live[0], live[live.len() - 1]);
    assert!(
        last.to_target > first.to_target && last.from_target > first.from_target,
        "the counters must move while bytes flow: {first:?} .. {last:?}"
    );
    assert!(
        live.iter().any(|l| l.active == 1 && l.total == 1),
        "one open connection: {lines:?}"
    );
    assert!(
        live.iter().filter(|l| l.mbps > 0.0).count() >= 2,
        "a positive rate while bytes flow: {lines:?}"
    );
    assert_eq!(
        lines.last().map(|l| l.state.as_str()),
        Some("RELEASED"),
        "the last line reports the release"
    );
    srv.stop().await;
}
