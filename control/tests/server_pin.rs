//! How `s2uc` trusts a control server's certificate (`--server-cert`): a
//! server that presents exactly the certificate in that file is trusted
//! whatever its extensions, as SciStream's own client does, including the
//! certificate `openssl req -x509 -newkey ... -subj /CN=...` makes (marked
//! CA:TRUE, no subject alternative name); any other certificate must chain
//! to one in the file and name the server (CA verification); a server with
//! another certificate is refused, saying so in one line. Real control
//! servers over TLS with certificates made here with rcgen.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{TestServer, base_config, port_range};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const BASE: u16 = 29400;

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// A self-signed certificate as `openssl req -x509 -newkey ... -subj
/// /CN=name` makes it: CA:TRUE, no subject alternative name.
fn openssl_style(name: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// A plain self-signed server certificate for `names` (IP or DNS SANs).
fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let params = CertificateParams::new(names).expect("parameters");
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// A CA, and a server certificate for `names` it signed.
fn ca_and_server(names: &[&str]) -> (String, (String, String)) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "gateways CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(names)
        .expect("server parameters")
        .signed_by(&key, &ca)
        .expect("signed");
    (ca.pem(), (cert.pem(), key.serialize_pem()))
}

/// A control server presenting `cert`/`key`.
async fn server(dir: &Path, (cert, key): &(String, String)) -> TestServer {
    let mut cfg = base_config(port_range(BASE, 8), dir);
    cfg.tls.cert = Some(write(dir, "server.pem", cert, 0o644));
    cfg.tls.key = Some(write(dir, "server-key.pem", key, 0o600));
    TestServer::start(cfg).await
}

/// Connects trusting `pem` and makes one call.
async fn call(srv: &TestServer, pem: &str) -> Result<String, String> {
    let mut opts = srv.options(None);
    opts.server_cert_pem = Some(pem.as_bytes().to_vec());
    TestServer::call_with(&opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exact_pinned_certificate_is_trusted_whatever_its_extensions() {
    for (case, identity) in [
        (
            "openssl req -x509 style (CA:TRUE, no SAN)",
            openssl_style("gateway"),
        ),
        ("self-signed with an IP SAN", self_signed(&["127.0.0.1"])),
        (
            "self-signed for another name",
            self_signed(&["elsewhere.example"]),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let srv = server(dir.path(), &identity).await;
        call(&srv, &identity.0)
            .await
            .unwrap_or_else(|e| panic!("{case}: pinned certificate refused: {e}"));
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_certificate_than_the_pinned_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let presented = openssl_style("gateway");
    let srv = server(dir.path(), &presented).await;
    for (case, pinned) in [
        ("an openssl-style certificate", openssl_style("gateway").0),
        (
            "a certificate for this address",
            self_signed(&["127.0.0.1"]).0,
        ),
    ] {
        let err = call(&srv, &pinned)
            .await
            .expect_err("a server with another certificate must be refused");
        assert!(
            err.contains("is not the one in --server-cert")
                && !err.contains('\n')
                && !err.contains("Other("),
            "{case}: the error should say the certificate is not the pinned one, in words, on \
             one line: {err}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_in_the_file_verifies_certificates_it_signed_for_this_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, identity) = ca_and_server(&["127.0.0.1"]);
    let srv = server(dir.path(), &identity).await;
    call(&srv, &ca)
        .await
        .expect("signed by the CA, names 127.0.0.1");
    srv.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, identity) = ca_and_server(&["elsewhere.example"]);
    let srv = server(dir.path(), &identity).await;
    let err = call(&srv, &ca)
        .await
        .expect_err("signed by the CA but for another name");
    assert!(err.contains("does not name 127.0.0.1"), "{err}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_trusts_the_pinned_openssl_style_certificate_and_explains_a_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let presented = openssl_style("gateway");
    let srv = server(dir.path(), &presented).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let addr = srv.addr.to_string();
    let right = write(dir.path(), "pinned.pem", &presented.0, 0o644);
    let ok = common::s2uc(
        &[
            "check-auth",
            "--s2cs",
            &addr,
            "--server-cert",
            right.to_str().expect("path"),
        ],
        &[],
        &home,
        b"",
    )
    .await;
    assert!(
        ok.status.success(),
        "s2uc with the pinned certificate: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = write(dir.path(), "other.pem", &openssl_style("gateway").0, 0o644);
    let refused = common::s2uc(
        &[
            "check-auth",
            "--s2cs",
            &addr,
            "--server-cert",
            wrong.to_str().expect("path"),
        ],
        &[("RUST_BACKTRACE", std::ffi::OsStr::new("1"))],
        &home,
        b"",
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line, no Debug dump or backtrace: {stderr}"
    );
    assert!(
        lines[0].starts_with("s2uc: error: cannot connect to")
            && lines[0].contains("is not the one in --server-cert"),
        "{stderr}"
    );
    srv.stop().await;
}
