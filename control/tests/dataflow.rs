//! Bytes flow end to end through two gateways (PlainCopyDataPlane) set up
//! with the one-shot connect; watch/status counters; restart with a live
//! persisted session.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestServer, base_config, port_range, uid};
use control::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const BASE: u16 = 26000;

async fn echo_roundtrip(addr: &str, payload: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(payload).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(write, read);
    n.expect("read");
    assert_eq!(got.len(), payload.len(), "echo length through {addr}");
    assert!(got == payload, "echo content through {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_both_sides_and_stream() {
    let echo = control::mock::start_echo_servers(2, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let prod = TestServer::start(base_config(port_range(BASE, 10), d1.path())).await;
    let cons = TestServer::start(base_config(port_range(BASE, 10), d2.path())).await;
    let pc = prod.client(None).await;
    let cc = cons.client(None).await;
    let targets: Vec<String> = echo.addrs.iter().map(|a| a.to_string()).collect();
    let t0 = std::time::Instant::now();
    let conn = control::client::connect_both(&pc, &cc, &targets, 4, 0)
        .await
        .expect("connect both sides");
    println!("setup time (req..update on both sides): {:?}", t0.elapsed());
    assert_eq!(conn.cons_listeners.len(), 4);
    assert_eq!(conn.prod_listeners.len(), 4);
    // Both gateways use the same non-legacy secret.
    let ps = pc.status(&conn.uid).await.unwrap();
    assert!(!ps.legacy_secret);
    assert!(!cc.status(&conn.uid).await.unwrap().legacy_secret);

    let mut watch = pc.watch(&conn.uid, 50).await.expect("watch");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for l in &conn.cons_listeners {
        echo_roundtrip(l, &payload).await;
    }
    // Counters on the PROD gateway show 4 MB each way.
    let want = 4 * payload.len() as u64;
    let mut seen = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch event in time")
    {
        let ev = ev.expect("watch item");
        let c = ev.counters.unwrap_or_default();
        if c.bytes_to_target == want && c.bytes_from_target == want && c.connections_total == 4 {
            seen = true;
            break;
        }
    }
    assert!(seen, "watch must report the relayed bytes");
    let st = cc.status(&conn.uid).await.unwrap();
    assert_eq!(st.counters.unwrap().bytes_to_target, want);

    pc.release(&conn.uid).await.unwrap();
    // The watch stream ends with RELEASED.
    let mut last = String::new();
    while let Some(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("watch ends")
    {
        last = ev.state;
    }
    assert_eq!(last, "RELEASED");
    cc.release(&conn.uid).await.unwrap();
    prod.stop().await;
    cons.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_live_session() {
    let echo = control::mock::start_echo_servers(1, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(port_range(BASE, 10), dir.path());
    let srv = TestServer::start(cfg.clone()).await;
    let c = srv.client(None).await;
    let (live, ready) = (uid("live-1"), uid("ready-1"));
    let inbound = c
        .inbound(&live, 2, 0, &[echo.addrs[0].to_string()], true)
        .await
        .expect("inbound");
    // A second session left READY (hello, no update).
    let (c2, ready2) = (c.clone(), ready.clone());
    let req = tokio::spawn(async move { c2.req(&ready2, Role::Cons, 1, 0).await });
    c.hello_after_req(&ready, Role::Cons, &[]).await.unwrap();
    req.await.unwrap().unwrap();
    echo_roundtrip(&inbound.listeners[0], b"before restart").await;
    let session_file = dir.path().join("sessions").join("live-1.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&session_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "session files hold secrets");
    let fp = srv.fingerprint.clone();
    srv.stop().await;
    // Listeners are closed while the server is down.
    assert!(std::net::TcpStream::connect(&inbound.listeners[0]).is_err());

    let srv = TestServer::start(cfg).await;
    assert_eq!(srv.fingerprint, fp, "the self-signed certificate is reused");
    assert_eq!(srv.handle.sessions(), 2);
    let c = srv.client(None).await;
    let st = c.status(&live).await.expect("restored");
    assert_eq!(st.state, "ACTIVE");
    assert_eq!(st.listeners, inbound.listeners);
    for l in &inbound.listeners {
        echo_roundtrip(l, b"after restart").await;
    }
    assert_eq!(c.status(&ready).await.unwrap().state, "READY");
    c.update(
        &ready,
        Role::Cons,
        &[echo.addrs[0].to_string()],
        inbound.secret.as_ref(),
    )
    .await
    .expect("update of the restored READY session");
    c.release(&live).await.unwrap();
    c.release(&ready).await.unwrap();
    assert!(
        !session_file.exists(),
        "released sessions leave nothing behind"
    );
    assert_eq!(srv.handle.ports_in_use(), 0);
    srv.stop().await;
}
