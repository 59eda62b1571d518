//! A reload of a serving control server (what `s2cs` does on SIGHUP), with
//! real TLS clients: the token file and the allow-list change for the next
//! calls; the control certificate replaced in place is presented by new
//! connections while an open connection goes on; a reload that changes a
//! key needing a restart, or brings a broken certificate, changes nothing.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{TestServer, base_config, port_range};
use control::ServerConfig;
use control::auth::AuthConfig;
use control::client::ClientOptions;
use zeroize::Zeroizing;

const BASE: u16 = 32500;

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        auth: Some(AuthConfig::TokenFile {
            path: dir.join("tokens"),
        }),
        ..base_config(port_range(BASE, 10), dir)
    }
}

fn pinned(server: &TestServer, cert_pem: &[u8], token: &str) -> ClientOptions {
    ClientOptions {
        server_cert_pem: Some(cert_pem.to_vec()),
        token: Some(Zeroizing::new(token.to_owned())),
        ..server.options(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_the_control_certificate_change_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("tokens"), "alice token-alice-0123456789\n");
    let cfg = config(dir.path());
    let server = TestServer::start(cfg.clone()).await;
    let old_pem = server.cert_pem.clone();
    let alice = pinned(&server, &old_pem, "token-alice-0123456789");
    assert_eq!(TestServer::call_with(&alice).await.unwrap(), "alice");
    // An open connection, kept across the reload.
    let early = control::client::Client::connect(&alice).await.unwrap();
    assert_eq!(early.version().await.unwrap().identity, "alice");

    // The operator adds bob and replaces the certificate files in place.
    write_private(
        &dir.path().join("tokens"),
        "alice token-alice-0123456789\nbob token-bob-9876543210\n",
    );
    let tls = dir.path().join("tls");
    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let new_pem = fresh.cert.pem();
    std::fs::write(tls.join("control-cert.pem"), &new_pem).unwrap();
    write_private(
        &tls.join("control-key.pem"),
        &fresh.signing_key.serialize_pem(),
    );
    let done = server.handle.reload(&cfg).expect("reload");
    let (before, after) = done.control_certificate.expect("TLS is on");
    assert_eq!(before, server.fingerprint);
    assert_ne!(before, after);

    // New connections get the new certificate (a client pinning the old
    // one is refused) and bob's token works.
    let bob = pinned(&server, new_pem.as_bytes(), "token-bob-9876543210");
    assert_eq!(TestServer::call_with(&bob).await.unwrap(), "bob");
    let stale = TestServer::call_with(&alice).await.unwrap_err();
    assert!(stale.contains("certificate"), "{stale}");
    // The connection opened before the reload goes on.
    assert_eq!(early.version().await.unwrap().identity, "alice");

    // A broken key: refused, nothing changes (bob still gets the new certificate).
    write_private(&tls.join("control-key.pem"), "not a key");
    write_private(&dir.path().join("tokens"), "carol token-carol-000000000\n");
    let err = server.handle.reload(&cfg).unwrap_err().to_string();
    assert!(err.contains("key"), "{err}");
    assert_eq!(TestServer::call_with(&bob).await.unwrap(), "bob");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_needs_a_restart_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("tokens"), "alice token-alice-0123456789\n");
    let cfg = config(dir.path());
    let server = TestServer::start(cfg.clone()).await;
    write_private(&dir.path().join("tokens"), "bob token-bob-9876543210\n");
    let mut changed = cfg.clone();
    changed.max_sessions = 7;
    changed.rates.max_session_mbps = 100;
    let err = server.handle.reload(&changed).unwrap_err().to_string();
    assert!(
        err.contains("max_sessions cannot change while the gateway serves"),
        "{err}"
    );
    let alice = pinned(&server, &server.cert_pem, "token-alice-0123456789");
    assert_eq!(TestServer::call_with(&alice).await.unwrap(), "alice");
    let bob = pinned(&server, &server.cert_pem, "token-bob-9876543210");
    assert!(TestServer::call_with(&bob).await.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_changes_for_the_next_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(port_range(BASE, 10), dir.path());
    cfg.allow = control::allowlist::AllowList(vec!["10.9.0.0/16".parse().unwrap()]);
    let server = TestServer::start(cfg.clone()).await;
    let client = server.client(None).await;
    let refused = client
        .inbound(
            &control::client::new_uid(),
            1,
            0,
            &["127.0.0.1:7000".to_owned()],
            true,
        )
        .await;
    let err = refused
        .err()
        .expect("127.0.0.1 is not allowed yet")
        .to_string();
    assert!(err.contains("127.0.0.1"), "{err}");
    cfg.allow = control::allowlist::AllowList(vec!["127.0.0.0/8".parse().unwrap()]);
    let done = server.handle.reload(&cfg).unwrap();
    assert_eq!(done.changed, vec!["allow"]);
    client
        .inbound(
            &control::client::new_uid(),
            1,
            0,
            &["127.0.0.1:7000".to_owned()],
            true,
        )
        .await
        .expect("allowed after the reload");
    server.stop().await;
}
