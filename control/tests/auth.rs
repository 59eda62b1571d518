//! Authentication with the token file and with RFC 7662 introspection
//! against a real HTTP server started here; authorization by owner/admin.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{TestServer, base_config, introspection, port_range, uid};
use control::auth::AuthConfig;
use control::client::ClientError;
use control::{Role, SessionId};
use tonic::Code;

const BASE: u16 = 25000;

fn rpc_code<T>(r: Result<T, ClientError>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        Err(e) => panic!("expected an RPC error, got {e}"),
    }
}

async fn full_session(c: &control::client::Client, uid: &SessionId) {
    let c2 = c.clone();
    let u = uid.clone();
    let req = tokio::spawn(async move { c2.req(&u, Role::Prod, 1, 0).await });
    c.hello_after_req(uid, Role::Prod, &["127.0.0.1:7000".into()])
        .await
        .expect("hello");
    req.await.unwrap().expect("req");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_and_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "alice tok-alice\nbob tok-bob\nroot tok-root\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.auth = Some(AuthConfig::TokenFile {
        path: tokens.clone(),
    });
    cfg.admins = vec!["root".into()];
    let err =
        control::ControlServer::new(cfg.clone(), Arc::new(control::PlainCopyDataPlane::new()))
            .await
            .err()
            .expect("a 0644 token file must be refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = TestServer::start(cfg).await;

    let (k, m) = rpc_code(
        srv.client(None)
            .await
            .req(&uid("u1"), Role::Prod, 1, 0)
            .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("no token"), "{m}");
    let (k, m) = rpc_code(
        srv.client(Some("tok-wrong"))
            .await
            .req(&uid("u1"), Role::Prod, 1, 0)
            .await,
    );
    assert_eq!(k, Code::Unauthenticated);
    assert!(!m.contains("tok-wrong"), "tokens must not be echoed: {m}");

    let alice = srv.client(Some("tok-alice")).await;
    let bob = srv.client(Some("tok-bob")).await;
    let root = srv.client(Some("tok-root")).await;
    assert_eq!(alice.version().await.unwrap().identity, "alice");
    // Raw token without "Bearer " works too (the old client's form).
    let mut raw = alice.raw().control;
    let mut req = tonic::Request::new(control::proto::Release { uid: "none".into() });
    req.metadata_mut()
        .insert("authorization", "tok-alice".parse().unwrap());
    let st = raw.release(req).await.expect_err("unknown uid");
    assert_eq!(st.code(), Code::NotFound);

    let a1 = uid("a1");
    full_session(&alice, &a1).await;
    let (k, m) = rpc_code(
        bob.update(&a1, Role::Prod, &["127.0.0.1:7000".into()], None)
            .await,
    );
    assert_eq!(k, Code::PermissionDenied);
    assert!(m.contains("bob") && m.contains("a1"), "{m}");
    let (k, _) = rpc_code(bob.release(&a1).await);
    assert_eq!(k, Code::PermissionDenied);
    let (k, _) = rpc_code(bob.status(&a1).await);
    assert_eq!(k, Code::PermissionDenied);
    assert!(bob.list().await.unwrap().sessions.is_empty());
    assert_eq!(alice.list().await.unwrap().sessions.len(), 1);
    assert_eq!(root.list().await.unwrap().sessions.len(), 1);
    assert_eq!(alice.status(&a1).await.unwrap().owner, "alice");
    root.release(&a1).await.expect("admin may release");
    srv.stop().await;
}

#[derive(Default)]
struct Idp {
    calls: AtomicUsize,
    /// token -> (username, scope, absolute exp in Unix seconds)
    tokens: std::sync::Mutex<HashMap<String, (String, String, i64)>>,
    /// token -> its `aud` (a string or a list); none without an entry.
    audiences: std::sync::Mutex<HashMap<String, serde_json::Value>>,
}

async fn introspect(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<axum::Json<serde_json::Value>, StatusCode> {
    idp.calls.fetch_add(1, Ordering::SeqCst);
    // Basic auth "rs-client:rs-secret".
    let expected = "Basic cnMtY2xpZW50OnJzLXNlY3JldA==";
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let tok = form.get("token").cloned().unwrap_or_default();
    let known = entry(&idp.tokens, &tok);
    let aud = entry(&idp.audiences, &tok);
    Ok(axum::Json(match known {
        Some((user, scope, exp)) => {
            let mut answer = serde_json::json!({
                "active": true, "username": user, "sub": "uuid-1", "scope": scope, "exp": exp,
            });
            if let Some(aud) = aud {
                answer["aud"] = aud;
            }
            answer
        }
        None => serde_json::json!({"active": false}),
    }))
}

/// The value `map` holds for `token`, if any.
fn entry<T: Clone>(map: &std::sync::Mutex<HashMap<String, T>>, token: &str) -> Option<T> {
    map.lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(token)
        .cloned()
}

/// Serves `idp`'s introspection endpoint on loopback; returns its address.
async fn serve_idp(idp: &Arc<Idp>) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route("/introspect", post(introspect))
        .with_state(Arc::clone(idp));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(http, app).await });
    addr
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_with_scope_and_cache() {
    let now = unix_now();
    let idp = Arc::new(Idp::default());
    let issue = |token: &str, user: &str, scope: &str, exp: i64| {
        idp.tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(token.into(), (user.into(), scope.into(), exp));
    };
    issue("good", "alice@example.org", "other scistream", now + 3600);
    issue("noscope", "bob@example.org", "other", now + 3600);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.auth = Some(introspection(
        serve_idp(&idp).await,
        dir.path(),
        Some("scistream"),
    ));
    let srv = TestServer::start(cfg).await;

    let good = srv.client(Some("good")).await;
    assert_eq!(good.version().await.unwrap().identity, "alice@example.org");
    assert_eq!(idp.calls.load(Ordering::SeqCst), 1);
    good.list().await.unwrap();
    good.list().await.unwrap();
    assert_eq!(
        idp.calls.load(Ordering::SeqCst),
        1,
        "answers must be cached"
    );

    let (k, m) = rpc_code(srv.client(Some("noscope")).await.list().await);
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("scope"), "{m}");
    let (k, m) = rpc_code(srv.client(Some("unknown")).await.list().await);
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("not active"), "{m}");

    // A token expiring in 3 s (issued now, so a slow start cannot eat into
    // it) is cached at most until then.
    let short_exp = unix_now() + 3;
    issue("short", "carol@example.org", "scistream", short_exp);
    let short = srv.client(Some("short")).await;
    short.list().await.unwrap();
    let before = idp.calls.load(Ordering::SeqCst);
    short.list().await.unwrap();
    assert_eq!(
        idp.calls.load(Ordering::SeqCst),
        before,
        "cached while valid"
    );
    while unix_now() <= short_exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (k, _) = rpc_code(short.list().await);
    assert_eq!(k, Code::Unauthenticated, "expired token must be refused");
    assert!(
        idp.calls.load(Ordering::SeqCst) > before,
        "expired cache entry re-checked"
    );

    let g1 = uid("g1");
    full_session(&good, &g1).await;
    good.release(&g1).await.unwrap();
    srv.stop().await;
}

/// With `required_audience`, only tokens issued for this gateway pass: an
/// active token of the same authorization server issued to another service
/// (or naming no audience) is refused, naming the audience, whatever its
/// scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_checks_the_audience_when_configured() {
    let now = unix_now();
    let idp = Arc::new(Idp::default());
    let issue = |token: &str, user: &str, aud: Option<serde_json::Value>| {
        idp.tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(token.into(), (user.into(), "scistream".into(), now + 3600));
        if let Some(aud) = aud {
            idp.audiences
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(token.into(), aud);
        }
    };
    issue(
        "ours",
        "alice@example.org",
        Some(serde_json::json!(["other", "s2cs-gw"])),
    );
    issue(
        "ours-one",
        "carol@example.org",
        Some(serde_json::json!("s2cs-gw")),
    );
    issue(
        "theirs",
        "bob@example.org",
        Some(serde_json::json!("other-service")),
    );
    issue("no-aud", "dave@example.org", None);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 40, 10), dir.path());
    let mut auth = introspection(serve_idp(&idp).await, dir.path(), Some("scistream"));
    if let AuthConfig::Introspection(c) = &mut auth {
        c.required_audience = Some("s2cs-gw".into());
    }
    cfg.auth = Some(auth);
    let srv = TestServer::start(cfg).await;

    for (token, who) in [
        ("ours", "alice@example.org"),
        ("ours-one", "carol@example.org"),
    ] {
        let client = srv.client(Some(token)).await;
        assert_eq!(client.version().await.unwrap().identity, who, "{token}");
    }
    for token in ["theirs", "no-aud"] {
        let (k, m) = rpc_code(srv.client(Some(token)).await.list().await);
        assert_eq!(k, Code::Unauthenticated, "{token}: {m}");
        assert!(
            m.contains("audience") && m.contains("s2cs-gw"),
            "{token}: {m}"
        );
    }
    srv.stop().await;
}

/// A flood of calls with bad tokens asks the identity provider once per
/// distinct token (answers, refusals included, are cached; concurrent
/// calls with one token wait for one introspection), and a good token
/// still works meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_costs_one_introspection_per_token() {
    let idp = idp_with_a_good_token();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE + 20, 10), dir.path());
    cfg.auth = Some(introspection(serve_idp(&idp).await, dir.path(), None));
    let srv = TestServer::start(cfg).await;

    const DISTINCT: usize = 10;
    const CALLS: usize = 1000;
    let clients = futures_clients(&srv, DISTINCT).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = Arc::clone(&clients[i % DISTINCT]);
        calls.spawn(async move { rpc_code(client.list().await).0 });
    }
    let good = srv.client(Some("good")).await;
    assert_eq!(good.version().await.unwrap().identity, "alice@example.org");
    while let Some(code) = calls.join_next().await {
        assert_eq!(code.expect("call task"), Code::Unauthenticated);
    }
    let asked = idp.calls.load(Ordering::SeqCst);
    assert!(
        asked <= DISTINCT + 1,
        "{CALLS} calls with {DISTINCT} bad tokens asked the identity provider {asked} times"
    );
    srv.stop().await;
}

/// An identity provider knowing one token, "good" (alice's, valid for an
/// hour).
fn idp_with_a_good_token() -> Arc<Idp> {
    let idp = Arc::new(Idp::default());
    idp.tokens
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(
            "good".into(),
            (
                "alice@example.org".into(),
                "scistream".into(),
                unix_now() + 3600,
            ),
        );
    idp
}

/// One client per bad token `bad-0`, `bad-1`, ...
async fn futures_clients(srv: &TestServer, n: usize) -> Vec<Arc<control::client::Client>> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(Arc::new(srv.client(Some(&format!("bad-{i}"))).await));
    }
    clients
}

/// `s2uc connect` (the real binary) between `prod` and `cons` with `token`
/// for the producer `producer`; returns how long it took. Releases the
/// session again.
async fn timed_connect(
    prod: &TestServer,
    cons: &TestServer,
    certs: (&std::path::Path, &std::path::Path),
    producer: &str,
    token: &str,
) -> std::time::Duration {
    let home = tempfile::tempdir().unwrap();
    let (pa, ca) = (prod.addr.to_string(), cons.addr.to_string());
    let (pc, cc) = (certs.0.display().to_string(), certs.1.display().to_string());
    let started = std::time::Instant::now();
    let out = common::s2uc(
        &[
            "connect",
            "--prod-s2cs",
            &pa,
            "--cons-s2cs",
            &ca,
            "--prod-cert",
            &pc,
            "--cons-cert",
            &cc,
            "--producer",
            producer,
        ],
        &[("S2UC_TOKEN", std::ffi::OsStr::new(token))],
        home.path(),
        b"",
    )
    .await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "s2uc connect failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = uid(text
        .lines()
        .find_map(|l| l.strip_prefix("uid: "))
        .expect("uid printed"));
    for srv in [prod, cons] {
        srv.client(Some(token))
            .await
            .release(&uid)
            .await
            .expect("release");
    }
    took
}

/// The control plane under a flood of 10,000 calls with bad and random
/// tokens from 100 concurrent callers: every one is refused, the identity
/// provider is asked at most once per distinct token, and a real
/// `s2uc connect` with a good token still completes (its latency with and
/// without the flood is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_connect_completes_during_a_flood_of_bad_tokens() {
    const CALLS: usize = 10_000;
    const REPEATED: usize = 50;
    const RANDOM: usize = 450;
    const CALLERS: usize = 100;
    let idp = idp_with_a_good_token();
    let idp_addr = serve_idp(&idp).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: std::path::PathBuf, base: u16| {
        let mut cfg = base_config(port_range(base, 20), &dir);
        cfg.auth = Some(introspection(idp_addr, &dir, None));
        TestServer::start(cfg)
    };
    let prod = start(d1.path().to_owned(), BASE + 40).await;
    let cons = start(d2.path().to_owned(), BASE + 60).await;
    let (pc, cc) = (d1.path().join("prod.pem"), d2.path().join("cons.pem"));
    std::fs::write(&pc, &prod.cert_pem).unwrap();
    std::fs::write(&cc, &cons.cert_pem).unwrap();
    let echo = control::mock::start_echo_servers(1, "127.0.0.1".parse().unwrap())
        .await
        .unwrap();
    let producer = echo.addrs[0].to_string();

    let quiet = timed_connect(&prod, &cons, (&pc, &cc), &producer, "good").await;
    let asked_before = idp.calls.load(Ordering::SeqCst);

    // The callers: 50 bad tokens used over and over, 450 used once each.
    let mut clients = futures_clients(&prod, REPEATED).await;
    for i in 0..RANDOM {
        let token = format!("random-{i}-{:016x}", rand_u64(i as u64));
        clients.push(Arc::new(prod.client(Some(&token)).await));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (clients, next) = (clients.clone(), Arc::clone(&next));
        flood.spawn(async move {
            let mut refused = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= CALLS {
                    return refused;
                }
                let client = if i < RANDOM {
                    &clients[REPEATED + i]
                } else {
                    &clients[i % REPEATED]
                };
                let (code, _) = rpc_code(client.list().await);
                assert!(
                    matches!(code, Code::Unauthenticated | Code::ResourceExhausted),
                    "a bad token's call answered {code:?}"
                );
                refused += 1;
            }
        });
    }
    // Wait until the flood is under way, then connect.
    while next.load(Ordering::Relaxed) < CALLS / 10 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let flooded = timed_connect(&prod, &cons, (&pc, &cc), &producer, "good").await;
    let during = next.load(Ordering::Relaxed).min(CALLS);
    let mut refused = 0;
    while let Some(n) = flood.join_next().await {
        refused += n.expect("flood task");
    }
    assert_eq!(refused, CALLS);
    let asked = idp.calls.load(Ordering::SeqCst) - asked_before;
    assert!(
        asked <= REPEATED + RANDOM + 2,
        "{CALLS} calls with {} distinct bad tokens asked the identity provider {asked} times",
        REPEATED + RANDOM
    );
    eprintln!(
        "control flood: s2uc connect took {quiet:?} without a flood and {flooded:?} while \
         {CALLS} bad-token calls ran ({during} sent by the time it finished); the identity \
         provider was asked {asked} times for {} distinct bad tokens",
        REPEATED + RANDOM
    );
    prod.stop().await;
    cons.stop().await;
}

/// A deterministic scramble (splitmix64) for distinct random-looking tokens.
fn rand_u64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
