//! The old client's sequence and every error class, against a real server
//! with TLS on loopback.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, base_config, port_range, uid};
use control::Role;
use control::client::{Client, ClientError};
use control::proto;
use tonic::Code;

const BASE: u16 = 21000;

fn code(r: Result<impl Sized, ClientError>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        Err(e) => panic!("expected an RPC error, got {e}"),
    }
}

/// `req` (asking for a channel secret, as [`Client::req`]) with any uid and
/// role strings, through the raw gRPC client: the typed client cannot send
/// an invalid one, and the server's own validation is under test here.
async fn raw_req(
    c: &Client,
    uid: &str,
    role: &str,
    num_conn: i32,
) -> Result<proto::Response, ClientError> {
    c.raw()
        .control
        .req(proto::Request {
            uid: uid.into(),
            role: role.into(),
            num_conn,
            rate: 0,
            want_channel_secret: true,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| ClientError::rpc("req", s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_client_inbound_then_outbound_then_release() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(base_config(port_range(BASE, 20), dir.path())).await;
    let c = srv.client(Some("placeholder-token-from-old-client")).await;
    let uid = control::client::new_uid();

    // Inbound: req (no secret asked, as the old client), hello 0.5 s later.
    let mut ctl = c.raw().control;
    let req = proto::Request {
        uid: uid.to_string(),
        role: "PROD".into(),
        num_conn: 3,
        rate: 10000,
        want_channel_secret: false,
    };
    let t0 = Instant::now();
    let pending = tokio::spawn(async move { ctl.req(req).await });
    // The old client sends hello 0.5 s after req; wait for the req to be
    // registered first, so a slow machine cannot reorder the two.
    common::eventually("req registered", || srv.handle.sessions() == 1).await;
    tokio::time::sleep_until((t0 + Duration::from_millis(500)).into()).await;
    assert!(!pending.is_finished(), "req must wait for hello");
    let hello_at = Instant::now();
    let app = c
        .hello(
            &uid,
            Role::Prod,
            &["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
        )
        .await
        .expect("hello");
    let resp = pending
        .await
        .unwrap()
        .expect("req answers after hello")
        .into_inner();
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "req must wait for hello"
    );
    // Promptly: well inside the old client's 5 s, also on a loaded machine.
    assert!(
        hello_at.elapsed() < Duration::from_secs(3),
        "req must answer promptly after hello"
    );
    assert_eq!(resp.listeners.len(), 3);
    assert_eq!(app.listeners, resp.listeners);
    assert_eq!(
        resp.prod_listeners,
        vec!["127.0.0.1:7001", "127.0.0.1:7002"]
    );
    assert!(resp.channel_secret.is_empty(), "old clients get no secret");
    for l in &resp.listeners {
        let a: std::net::SocketAddr = l.parse().unwrap();
        assert_eq!(a.ip().to_string(), "127.0.0.1");
    }
    // The advertised listeners are really listening.
    for l in &resp.listeners {
        std::net::TcpStream::connect(l).expect("listener must accept before update");
    }
    // update(uid, prod_listeners, "PROD").
    let up = c
        .update(&uid, Role::Prod, &resp.prod_listeners, None)
        .await
        .expect("update");
    assert_eq!(up.listeners, resp.listeners);
    assert_eq!(
        up.prod_listeners,
        vec!["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7001"]
    );
    let st = c.status(&uid).await.unwrap();
    assert_eq!(st.state, "ACTIVE");
    assert!(st.legacy_secret);

    // Outbound on a second gateway: hello carries role "PROD" (old quirk),
    // update has an empty role and no secret.
    let dir2 = tempfile::tempdir().unwrap();
    let cons = TestServer::start(base_config(port_range(BASE, 20), dir2.path())).await;
    let cc = cons.client(Some("placeholder")).await;
    let mut ctl = cc.raw().control;
    let req = proto::Request {
        uid: uid.to_string(),
        role: "CONS".into(),
        num_conn: 3,
        rate: 10000,
        want_channel_secret: false,
    };
    let pending = tokio::spawn(async move { ctl.req(req).await });
    common::eventually("cons req registered", || cons.handle.sessions() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cc.hello(&uid, Role::Prod, &resp.listeners)
        .await
        .expect("cons hello");
    let cresp = pending.await.unwrap().expect("cons req").into_inner();
    assert_eq!(cresp.listeners.len(), 3);
    // The empty role goes through the raw client: the typed one always
    // names a role.
    let cup = cc
        .raw()
        .control
        .update(proto::UpdateTargets {
            uid: uid.to_string(),
            remote_listeners: resp.listeners.clone(),
            role: String::new(),
            channel_secret: Vec::new(),
        })
        .await
        .expect("cons update")
        .into_inner();
    assert_eq!(cup.listeners, cresp.listeners);

    assert_eq!(c.release(&uid).await.expect("release").state, "RELEASED");
    assert_eq!(cc.release(&uid).await.expect("release").state, "RELEASED");
    assert_eq!(srv.handle.ports_in_use(), 0);
    assert_eq!(cons.handle.ports_in_use(), 0);
    srv.stop().await;
    cons.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 4), dir.path());
    cfg.hello_timeout_secs = 0.3;
    let srv = TestServer::start(cfg).await;
    let c = srv.client(None).await;

    // NOT_FOUND: unknown uid.
    let nope = uid("nope");
    let (k, m) = code(c.hello(&nope, Role::Prod, &[]).await);
    assert_eq!(k, Code::NotFound);
    assert!(m.contains("nope"), "{m}");
    let (k, _) = code(c.release(&nope).await);
    assert_eq!(k, Code::NotFound);

    // INVALID_ARGUMENT: bad uid, role (sent raw), num_conn, address.
    let (k, m) = code(raw_req(&c, "a/b", "PROD", 1).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("uid"), "{m}");
    let (k, m) = code(raw_req(&c, "x1", "BOTH", 1).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("role"), "{m}");
    let (k, m) = code(c.req(&uid("x1"), Role::Prod, 0, 0).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("num_conn"), "{m}");

    // DEADLINE_EXCEEDED: no hello; the session is released afterwards.
    let (k, m) = code(c.req(&uid("late"), Role::Prod, 1, 0).await);
    assert_eq!(k, Code::DeadlineExceeded);
    assert!(m.contains("no hello"), "{m}");
    assert_eq!(srv.handle.ports_in_use(), 0);
    assert_eq!(srv.handle.sessions(), 0);

    // A session in REQUESTED state for the rest.
    let s1 = uid("s1");
    let (c2, s1_req) = (c.clone(), s1.clone());
    let pending = tokio::spawn(async move { c2.req(&s1_req, Role::Prod, 2, 0).await });
    common::eventually("session s1 exists", || srv.handle.sessions() == 1).await;
    // ALREADY_EXISTS.
    let (k, m) = code(c.req(&s1, Role::Prod, 1, 0).await);
    assert_eq!(k, Code::AlreadyExists);
    assert!(m.contains("s1"), "{m}");
    // RESOURCE_EXHAUSTED: 2 of 4 ports used, 3 wanted.
    let (k, m) = code(c.req(&uid("s2"), Role::Prod, 3, 0).await);
    assert_eq!(k, Code::ResourceExhausted);
    assert!(m.contains("no free port"), "{m}");
    // FAILED_PRECONDITION: update before hello.
    let (k, m) = code(
        c.update(&s1, Role::Prod, &["127.0.0.1:9".into()], None)
            .await,
    );
    assert_eq!(k, Code::FailedPrecondition);
    assert!(m.contains("hello"), "{m}");
    // INVALID_ARGUMENT: bad hello address.
    let (k, m) = code(c.hello(&s1, Role::Prod, &["localhost:80".into()]).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("localhost:80"), "{m}");
    c.hello(&s1, Role::Prod, &["[::1]:7000".into()])
        .await
        .expect("hello");
    pending.await.unwrap().expect("req after hello");
    // FAILED_PRECONDITION: second hello.
    let (k, _) = code(c.hello(&s1, Role::Prod, &[]).await);
    assert_eq!(k, Code::FailedPrecondition);
    // PERMISSION_DENIED: target outside the allow-list (IPv6 and IPv4).
    let (k, m) = code(
        c.update(&s1, Role::Prod, &["[2001:db8::1]:5000".into()], None)
            .await,
    );
    assert_eq!(k, Code::PermissionDenied);
    assert!(m.contains("allow-list"), "{m}");
    let (k, _) = code(
        c.update(&s1, Role::Prod, &["10.1.2.3:5000".into()], None)
            .await,
    );
    assert_eq!(k, Code::PermissionDenied);
    // INVALID_ARGUMENT: bad update address, bad secret length.
    let (k, _) = code(
        c.update(&s1, Role::Prod, &["[::1]:5000:1".into()], None)
            .await,
    );
    assert_eq!(k, Code::InvalidArgument);
    // Allowed IPv6 target works.
    let up = c
        .update(&s1, Role::Prod, &["[::1]:7000".into()], None)
        .await
        .expect("update");
    assert_eq!(up.prod_listeners, vec!["[::1]:7000", "[::1]:7000"]);
    // FAILED_PRECONDITION: second update.
    let (k, m) = code(
        c.update(&s1, Role::Prod, &["[::1]:7000".into()], None)
            .await,
    );
    assert_eq!(k, Code::FailedPrecondition);
    assert!(m.contains("already active"), "{m}");
    c.release(&s1).await.expect("release");
    let (k, _) = code(c.release(&s1).await);
    assert_eq!(k, Code::NotFound);
    assert_eq!(srv.handle.ports_in_use(), 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_while_req_waits_and_legacy_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 4), dir.path());
    cfg.allow_legacy_secret = false;
    let srv = TestServer::start(cfg).await;
    let c = srv.client(None).await;
    let w1 = uid("w1");
    let (c2, w1_req) = (c.clone(), w1.clone());
    let pending = tokio::spawn(async move { c2.req(&w1_req, Role::Prod, 1, 0).await });
    common::eventually("session w1 exists", || srv.handle.sessions() == 1).await;
    c.release(&w1).await.expect("release");
    let (k, m) = code(pending.await.unwrap());
    assert_eq!(k, Code::FailedPrecondition);
    assert!(m.contains("released while"), "{m}");

    // Old PROD client (no secret asked) is refused by policy.
    let mut ctl = c.raw().control;
    let st = ctl
        .req(proto::Request {
            uid: "old".into(),
            role: "PROD".into(),
            num_conn: 1,
            rate: 0,
            want_channel_secret: false,
        })
        .await
        .expect_err("legacy forbidden");
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert!(st.message().contains("legacy"), "{}", st.message());
    // CONS update without a secret is refused too; with one it works.
    let cons1 = uid("cons1");
    let (c3, cons1_req) = (c.clone(), cons1.clone());
    let pending = tokio::spawn(async move { c3.req(&cons1_req, Role::Cons, 1, 0).await });
    c.hello_after_req(&cons1, Role::Prod, &[])
        .await
        .expect("hello");
    pending.await.unwrap().expect("req");
    let (k, _) = code(
        c.update(&cons1, Role::Cons, &["127.0.0.1:9".into()], None)
            .await,
    );
    assert_eq!(k, Code::FailedPrecondition);
    let s = control::SessionSecret::generate().unwrap();
    c.update(&cons1, Role::Cons, &["127.0.0.1:9".into()], Some(&s))
        .await
        .expect("update with secret");
    let mut ctl = c.raw().control;
    let bad = ctl
        .update(proto::UpdateTargets {
            uid: "cons1".into(),
            remote_listeners: vec!["127.0.0.1:9".into()],
            role: "CONS".into(),
            channel_secret: vec![1, 2, 3],
        })
        .await
        .expect_err("short secret");
    assert_eq!(bad.code(), Code::InvalidArgument);
    c.release(&cons1).await.unwrap();
    srv.stop().await;
}
