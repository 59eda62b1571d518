//! Rate caps that do not surprise, through a real control server: an old
//! client's rate (SciStream's always-sent default) is no cap unless the
//! operator honors it; our client caps only when asked; the operator's
//! maxima per session and per identity hold; `status` (and `s2uc status`)
//! shows the cap in force and where it came from, also after a restart.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{TestServer, base_config, port_range, uid};
use control::auth::AuthConfig;
use control::rate::LegacyClientRate;

const BASE: u16 = 31500;

/// A PROD session made with `rate` Mbit/s, as a new client (asking for the
/// channel secret) or an old one; returns (cap, source) from `status`.
async fn cap_of(
    srv: &TestServer,
    token: Option<&str>,
    id: &str,
    rate: i32,
    new_client: bool,
) -> (i32, String) {
    let client = srv.client(token).await;
    let prod_app = ["127.0.0.1:9".to_owned()];
    client
        .inbound(&uid(id), 1, rate, &prod_app, new_client)
        .await
        .expect("inbound");
    let status = client.status(&uid(id)).await.expect("status");
    (status.rate, status.rate_source)
}

fn tokens(dir: &std::path::Path) -> AuthConfig {
    let path = dir.join("tokens");
    std::fs::write(&path, "alice tok-alice\nbob tok-bob\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    AuthConfig::TokenFile { path }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_gateways_cap_nothing_an_old_client_did_not_really_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.auth = Some(tokens(dir.path()));
    let srv = TestServer::start(cfg).await;
    // SciStream's client: no secret asked, its default rate of 10000.
    let (cap, source) = cap_of(&srv, Some("tok-alice"), "old-default", 10_000, false).await;
    assert_eq!(cap, 0, "an old client's default is not a cap");
    assert!(
        source.contains("ignored") && source.contains("10000"),
        "{source}"
    );
    // Ours without --rate: nothing asked, nothing capped.
    let (cap, source) = cap_of(&srv, Some("tok-alice"), "new-default", 0, true).await;
    assert_eq!(cap, 0);
    assert!(source.contains("no cap"), "{source}");
    // Ours with --rate 2500.
    let (cap, source) = cap_of(&srv, Some("tok-alice"), "new-asked", 2_500, true).await;
    assert_eq!(cap, 2_500);
    assert!(source.contains("client"), "{source}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_maxima_per_session_and_per_identity_hold_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.auth = Some(tokens(dir.path()));
    cfg.rates.max_session_mbps = 40_000;
    cfg.rates.identities.insert("alice".into(), 5_000);
    cfg.rates.legacy_client_rate = LegacyClientRate::Honor;
    let srv = TestServer::start(cfg.clone()).await;
    let (cap, source) = cap_of(&srv, Some("tok-bob"), "bob-unasked", 0, true).await;
    assert_eq!(cap, 40_000);
    assert!(source.contains("maximum per session"), "{source}");
    let (cap, _) = cap_of(&srv, Some("tok-bob"), "bob-asked-more", 90_000, true).await;
    assert_eq!(cap, 40_000, "no request goes over the operator's maximum");
    let (cap, source) = cap_of(&srv, Some("tok-bob"), "bob-asked-less", 1_000, true).await;
    assert_eq!((cap, source.contains("client")), (1_000, true), "{source}");
    // Honored: an old client's rate is a request.
    let (cap, source) = cap_of(&srv, Some("tok-bob"), "bob-old", 10_000, false).await;
    assert_eq!((cap, source.contains("client")), (10_000, true), "{source}");
    let (cap, source) = cap_of(&srv, Some("tok-alice"), "alice-unasked", 0, true).await;
    assert_eq!(cap, 5_000);
    assert!(source.contains("alice"), "{source}");
    srv.stop().await;

    // Persisted sessions come back with their cap and its source.
    let srv = TestServer::start(cfg).await;
    let client = srv.client(Some("tok-alice")).await;
    let status = client.status(&uid("alice-unasked")).await.expect("status");
    assert_eq!(status.rate, 5_000);
    assert!(
        status.rate_source.contains("alice"),
        "{}",
        status.rate_source
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_status_shows_the_cap_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.rates.max_session_mbps = 40_000;
    let srv = TestServer::start(cfg).await;
    let (cap, _) = cap_of(&srv, None, "shown", 0, true).await;
    assert_eq!(cap, 40_000);
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, &srv.cert_pem).unwrap();
    let out = common::s2uc(
        &[
            "status",
            "--s2cs",
            &srv.addr.to_string(),
            "--server-cert",
            &cert.display().to_string(),
            "shown",
        ],
        &[],
        dir.path(),
        b"",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rate cap: 40000 Mbit/s (the operator's maximum per session"),
        "{stdout}"
    );
    srv.stop().await;
}
