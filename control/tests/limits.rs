//! The control server's limits under load from clients: concurrent calls,
//! `watch` streams per identity and in total, the size of a request, and
//! the request timeout (a call that outlives it still completes).
//! Each refusal is RESOURCE_EXHAUSTED with a message naming the limit and
//! the setting that raises it, and the server serves again once the load
//! is gone. A real server with TLS on loopback.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::time::Duration;

use common::{TestServer, base_config, port_range, uid};
use control::client::ClientError;
use control::{DataPlane as _, Role, SessionId};
use tonic::Code;

const BASE: u16 = 31000;

fn code_and_message<T>(r: Result<T, ClientError>) -> (Code, String) {
    match r {
        Ok(_) => panic!("the call must be refused"),
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        Err(other) => panic!("not a gRPC status: {other}"),
    }
}

/// An identity provider that takes `delay` to answer (every token is
/// alice's).
async fn slow_idp(delay: Duration) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/introspect",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(serde_json::json!({"active": true, "username": "alice"}))
        }),
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(http, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_past_the_limit_are_refused_naming_it() {
    let idp = slow_idp(Duration::from_secs(6)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.max_concurrent_calls = 2;
    cfg.auth = Some(common::introspection(idp, dir.path(), None));
    let srv = TestServer::start(cfg).await;
    // Two calls wait on the slow identity provider: two calls at once; a
    // third waits a second for a slot, then is refused.
    let waiting: Vec<_> = ["token-1", "token-2"]
        .into_iter()
        .map(|token| {
            let srv_client = srv.options(Some(token));
            tokio::spawn(async move {
                let c = control::client::Client::connect(&srv_client).await.unwrap();
                c.list().await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = srv.client(Some("token-3")).await;
    let (code, message) = code_and_message(third.list().await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("too many control calls at once")
            && message.contains("limit is 2")
            && message.contains("--max-concurrent-calls"),
        "{message}"
    );
    // The load goes: calls are served again.
    for w in waiting {
        w.await.unwrap().expect("the slow calls are answered");
    }
    third.list().await.expect("served again");
    srv.stop().await;
}

/// A req waiting for its hello does not hold a call slot: with a limit of
/// two calls, two pending reqs still let their hellos through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_hello_do_not_hold_call_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 80, 10), dir.path());
    cfg.max_concurrent_calls = 2;
    let srv = TestServer::start(cfg).await;
    let client = srv.client(None).await;
    let held = [uid("held-1"), uid("held-2")];
    let waiting: Vec<_> = held
        .iter()
        .map(|u| {
            let (c, u) = (client.clone(), u.clone());
            tokio::spawn(async move { c.req(&u, Role::Prod, 1, 0).await })
        })
        .collect();
    common::eventually("both req calls are waiting", || srv.handle.sessions() == 2).await;
    for u in &held {
        client
            .hello(u, Role::Prod, &["127.0.0.1:7000".into()])
            .await
            .expect("hello is served while reqs wait");
    }
    for w in waiting {
        w.await.unwrap().expect("req answered");
    }
    srv.stop().await;
}

/// A READY PROD session `uid` (req, then hello).
async fn ready_session(client: &control::client::Client, uid: &SessionId) {
    let (c, u) = (client.clone(), uid.clone());
    let req = tokio::spawn(async move { c.req(&u, Role::Prod, 1, 0).await });
    client
        .hello_after_req(uid, Role::Prod, &["127.0.0.1:7000".into()])
        .await
        .expect("hello");
    req.await.unwrap().expect("req");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_limited_per_identity_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 20, 10), dir.path());
    cfg.max_watch_per_identity = 1;
    cfg.max_watch_total = 2;
    let srv = TestServer::start(cfg).await;
    let client = srv.client(None).await;
    let watched = uid("watched");
    ready_session(&client, &watched).await;

    let first = client.watch(&watched, 100).await.expect("first watch");
    let (code, message) = code_and_message(client.watch(&watched, 100).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("watch streams open for anonymous")
            && message.contains("limit is 1")
            && message.contains("--max-watch-per-identity"),
        "{message}"
    );
    // A closed stream frees its place.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        match client.watch(&watched, 100).await {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(again.is_some(), "a watch after the first one closed");
    drop(again);
    srv.stop().await;

    // In total: two identities' worth with a total of 1.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 40, 10), dir.path());
    cfg.max_watch_per_identity = 5;
    cfg.max_watch_total = 1;
    let srv = TestServer::start(cfg).await;
    let client = srv.client(None).await;
    ready_session(&client, &watched).await;
    let _first = client.watch(&watched, 100).await.expect("first watch");
    let (code, message) = code_and_message(client.watch(&watched, 100).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("too many watch streams open:") && message.contains("--max-watch"),
        "{message}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 60, 10), dir.path());
    cfg.max_message_bytes = 2048;
    let srv = TestServer::start(cfg).await;
    let client = srv.client(None).await;
    let listeners: Vec<String> = (0..400)
        .map(|i| format!("127.0.0.1:{}", 7000 + i))
        .collect();
    let (code, message) = code_and_message(client.hello(&uid("big"), Role::Prod, &listeners).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("is too large")
            && message.contains("limit is 2048")
            && message.contains("--max-message-bytes"),
        "{message}"
    );
    // A normal call still works.
    client.list().await.expect("served");
    srv.stop().await;
}

/// The request timeout: a call stuck on a slow identity provider is
/// answered RESOURCE_EXHAUSTED naming the setting, long before the provider
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stuck_on_the_identity_provider_times_out_naming_the_limit() {
    let idp = slow_idp(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 120, 10), dir.path());
    cfg.request_timeout_secs = 1.0;
    cfg.auth = Some(common::introspection(idp, dir.path(), None));
    let srv = TestServer::start(cfg).await;
    let client = srv.client(Some("token-slow")).await;
    let started = std::time::Instant::now();
    let (code, message) = code_and_message(client.list().await);
    let waited = started.elapsed();
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("not served within 1 s") && message.contains("--request-timeout"),
        "{message}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "the caller waited {waited:?} for a 1 s request timeout"
    );
    srv.stop().await;
}

/// Starts sessions only after a delay: the one way to make the data plane
/// slow on purpose (a real one is fast here). Stops are immediate.
struct SlowStart {
    inner: std::sync::Arc<control::PlainCopyDataPlane>,
    delay: Duration,
}

impl control::DataPlane for SlowStart {
    fn start_session(
        &self,
        plan: control::SessionPlan,
    ) -> control::BoxFuture<'_, Result<(), control::DataPlaneError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.start_session(plan).await
        })
    }
    fn stop_session<'a>(&'a self, uid: &'a control::SessionId) -> control::BoxFuture<'a, ()> {
        self.inner.stop_session(uid)
    }
    fn counters(&self, uid: &control::SessionId) -> Option<control::SessionCounters> {
        self.inner.counters(uid)
    }
}

/// An update that outlives the request timeout: its caller is told so, and
/// the update still completes (the session becomes ACTIVE, not half set
/// up); release then leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_past_the_request_timeout_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 140, 10), dir.path());
    cfg.request_timeout_secs = 1.0;
    let srv = TestServer::start_with(cfg, |inner| {
        std::sync::Arc::new(SlowStart {
            inner,
            delay: Duration::from_secs(3),
        })
    })
    .await;
    let client = srv.client(None).await;
    let uid = uid("slow-update");
    ready_session(&client, &uid).await;
    let (code, message) = code_and_message(
        client
            .update(&uid, Role::Prod, &["127.0.0.1:7001".into()], None)
            .await,
    );
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("update call was not served within 1 s"),
        "{message}"
    );
    common::eventually("the update's data plane start completes", || {
        srv.dp.counters(&uid).is_some()
    })
    .await;
    let state = client.status(&uid).await.expect("status").state;
    assert_eq!(
        state, "ACTIVE",
        "the update completed after its caller left"
    );
    client.release(&uid).await.expect("release");
    assert_eq!(srv.handle.sessions(), 0);
    assert_eq!(srv.handle.ports_in_use(), 0);
    srv.stop().await;
}
