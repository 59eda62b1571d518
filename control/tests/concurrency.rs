//! 1,000 sessions created and released concurrently: each req gets its own
//! listeners, hello answers go to the right req, and the port range is fully
//! free afterwards.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestServer, base_config, port_range};
use control::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sessions_no_mixups() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let range = port_range(22000, 2100);
    let mut cfg = base_config(range, dir.path());
    cfg.hello_timeout_secs = 60.0;
    let srv = TestServer::start(cfg).await;
    let clients: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(srv.client(None).await);
        }
        v
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let c = clients[i % clients.len()].clone();
        tasks.spawn(async move {
            let uid = common::uid(&format!("sess-{i}"));
            // Each session announces a distinct producer port, so a mix-up
            // shows as a wrong prod_listeners in the req answer.
            let prod = vec![format!("127.0.0.1:{}", 10000 + i)];
            let c2 = c.clone();
            let uid2 = uid.clone();
            let req = tokio::spawn(async move { c2.req(&uid2, Role::Prod, 2, 0).await });
            let hello = c
                .hello_after_req(&uid, Role::Prod, &prod)
                .await
                .unwrap_or_else(|e| panic!("hello {uid}: {e}"));
            let resp = req
                .await
                .expect("req task")
                .unwrap_or_else(|e| panic!("req {uid}: {e}"));
            assert_eq!(
                resp.prod_listeners, prod,
                "{uid}: req answer of another session"
            );
            assert_eq!(
                resp.listeners, hello.listeners,
                "{uid}: hello/req listeners differ"
            );
            assert_eq!(resp.listeners.len(), 2);
            let up = c
                .update(&uid, Role::Prod, &prod, None)
                .await
                .unwrap_or_else(|e| panic!("update {uid}: {e}"));
            assert_eq!(up.listeners, resp.listeners);
            assert_eq!(up.prod_listeners, vec![prod[0].clone(), prod[0].clone()]);
            (uid, resp.listeners)
        });
    }
    let mut all_listeners = HashSet::new();
    let mut uids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (uid, ls) = r.expect("session task must not panic");
        for l in ls {
            assert!(
                all_listeners.insert(l.clone()),
                "listener {l} handed out twice"
            );
        }
        uids.push(uid);
    }
    assert_eq!(all_listeners.len(), 2 * N);
    assert_eq!(srv.handle.ports_in_use(), 2 * N);
    assert_eq!(srv.dp.running(), N);
    for l in &all_listeners {
        let a: std::net::SocketAddr = l.parse().unwrap();
        assert!(range.contains(a.port()), "{a} outside {range}");
    }
    // Release all concurrently.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, uid) in uids.into_iter().enumerate() {
        let c = clients[i % clients.len()].clone();
        tasks.spawn(async move {
            c.release(&uid)
                .await
                .unwrap_or_else(|e| panic!("release {uid}: {e}"));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("release task must not panic");
    }
    assert_eq!(srv.handle.sessions(), 0);
    assert_eq!(srv.handle.ports_in_use(), 0);
    assert_eq!(srv.dp.running(), 0);
    // Every handed-out port can be bound again: nothing leaked.
    for l in &all_listeners {
        std::net::TcpListener::bind(l).unwrap_or_else(|e| panic!("port {l} still bound: {e}"));
    }
    // No persisted session files are left behind.
    let left: Vec<_> = std::fs::read_dir(srv.state_dir.join("sessions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "persisted files left: {left:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    srv.stop().await;
}
