//! Control-channel client-certificate authentication (`tls.client_ca`, the
//! operator's `--client-ca`): a real control server over TLS that requires
//! client certificates signed by a CA made here with rcgen. A client with a
//! certificate from that CA gets in; one without a certificate and one with a
//! certificate from another CA are refused, and what the user sees says the
//! client certificate is the problem. Checked with the library client and
//! with the real `s2uc` binary (`--client-cert`/`--client-key`, or
//! `$S2UC_CLIENT_CERT`/`$S2UC_CLIENT_KEY`).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use clap::Parser;
use common::{TestServer, base_config, port_range};
use control::client::ClientIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const BASE: u16 = 29000;

/// A CA that signs client certificates.
fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("self-signed CA")
}

/// A client certificate for `name` signed by `ca`: (certificate PEM, key PEM).
fn client_cert(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("client key");
    let cert = params.signed_by(&key, ca).expect("client certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes `text` to `dir/name` with `mode` and returns the path.
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// The server's CA, a client certificate it signed (`good`) and one signed
/// by an unrelated CA (`rogue`), as files.
struct Pki {
    ca: PathBuf,
    good: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca = make_ca("control clients CA");
    let other = make_ca("someone else's CA");
    let (gc, gk) = client_cert(&ca, "alice");
    let (rc, rk) = client_cert(&other, "mallory");
    Pki {
        ca: write(dir, "client-ca.pem", &ca.pem(), 0o644),
        good: (
            write(dir, "alice.pem", &gc, 0o644),
            write(dir, "alice-key.pem", &gk, 0o600),
        ),
        rogue: (
            write(dir, "mallory.pem", &rc, 0o644),
            write(dir, "mallory-key.pem", &rk, 0o600),
        ),
    }
}

/// Connects with `identity` and makes one authenticated call.
async fn call(srv: &TestServer, identity: Option<ClientIdentity>) -> Result<String, String> {
    let mut opts = srv.options(None);
    opts.client_identity = identity;
    TestServer::call_with(&opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_the_ca_get_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki(dir.path());
    let mut cfg = base_config(port_range(BASE, 4), dir.path());
    cfg.tls.client_ca = Some(pki.ca.clone());
    let srv = TestServer::start(cfg).await;

    let good = ClientIdentity::load(&pki.good.0, &pki.good.1).expect("alice's certificate loads");
    let who = call(&srv, Some(good.clone()))
        .await
        .expect("a certificate signed by the client CA must be accepted");
    assert_eq!(who, "anonymous", "--no-auth server: the token identity");

    let err = call(&srv, None)
        .await
        .expect_err("a client without certificate must be refused");
    eprintln!("without a client certificate: {err}");
    assert!(
        err.contains("requires a client certificate") && err.contains("--client-cert"),
        "the error must say a client certificate is required: {err}"
    );

    let rogue = ClientIdentity::load(&pki.rogue.0, &pki.rogue.1).expect("mallory's certificate");
    let err = call(&srv, Some(rogue))
        .await
        .expect_err("a certificate from another CA must be refused");
    eprintln!("with a certificate from another CA: {err}");
    assert!(
        err.contains("does not accept this client certificate"),
        "the error must say the client certificate was not accepted: {err}"
    );

    // The refusals did not disturb the server.
    call(&srv, Some(good))
        .await
        .expect("the good client still gets in");
    srv.stop().await;
}

#[test]
fn operator_flag_requires_client_certificates() {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        server: control::ServerArgs,
    }
    let flags = Flags::try_parse_from(["s2cs", "--no-auth", "--client-ca", "/etc/s2cs/ca.pem"])
        .expect("--client-ca is an s2cs flag");
    let cfg = flags.server.into_config().expect("valid configuration");
    assert_eq!(
        cfg.tls.client_ca.as_deref(),
        Some(Path::new("/etc/s2cs/ca.pem"))
    );
}

async fn s2uc(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let home = tempfile::tempdir().expect("HOME for s2uc");
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    common::s2uc(args, &env, home.path(), b"").await
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_presents_its_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = pki(dir.path());
    let mut cfg = base_config(port_range(BASE, 4), dir.path());
    cfg.tls.client_ca = Some(pki.ca.clone());
    let srv = TestServer::start(cfg).await;
    let server_cert = write(
        dir.path(),
        "server.pem",
        &String::from_utf8(srv.cert_pem.clone()).expect("PEM is text"),
        0o644,
    );
    let addr = srv.addr.to_string();
    let sc = server_cert.display().to_string();
    let list = ["list", "--s2cs", &addr, "--server-cert", &sc];
    let with = |cert: &Path, key: &Path| -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        v.extend([
            "--client-cert".into(),
            cert.display().to_string(),
            "--client-key".into(),
            key.display().to_string(),
        ]);
        v
    };
    let run_with = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s2uc(&args, &[]).await
    };

    let ok = run_with(with(&pki.good.0, &pki.good.1)).await;
    assert!(
        ok.status.success(),
        "s2uc list with a good client certificate: {}",
        stderr(&ok)
    );
    let ok = s2uc(
        &list,
        &[
            ("S2UC_CLIENT_CERT", &pki.good.0),
            ("S2UC_CLIENT_KEY", &pki.good.1),
        ],
    )
    .await;
    assert!(
        ok.status.success(),
        "s2uc list with the certificate from the environment: {}",
        stderr(&ok)
    );

    let no_cert = s2uc(&list, &[]).await;
    assert!(!no_cert.status.success(), "no client certificate must fail");
    let e = stderr(&no_cert);
    assert!(
        e.contains("requires a client certificate") && e.contains("--client-cert"),
        "s2uc without a client certificate must say one is required: {e}"
    );

    let rogue = run_with(with(&pki.rogue.0, &pki.rogue.1)).await;
    assert!(
        !rogue.status.success(),
        "another CA's certificate must fail"
    );
    let e = stderr(&rogue);
    assert!(
        e.contains("does not accept this client certificate"),
        "s2uc with another CA's certificate must say it was not accepted: {e}"
    );

    // Bad local files are reported before anything is sent.
    let missing = dir.path().join("missing.pem");
    let out = run_with(with(&missing, &pki.good.1)).await;
    let e = stderr(&out);
    assert!(
        !out.status.success()
            && e.contains("reading client certificate")
            && e.contains("missing.pem"),
        "a missing certificate file must be named: {e}"
    );
    let not_pem = write(dir.path(), "not-a-cert.pem", "hello\n", 0o644);
    let out = run_with(with(&not_pem, &pki.good.1)).await;
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("holds no certificate"),
        "a file without a certificate must be refused: {e}"
    );
    let cert_as_key = write(
        dir.path(),
        "cert-as-key.pem",
        &std::fs::read_to_string(&pki.good.0).expect("reading the certificate"),
        0o600,
    );
    let out = run_with(with(&pki.good.0, &cert_as_key)).await;
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("no usable private key"),
        "a key file without a key must be refused: {e}"
    );
    std::fs::set_permissions(&pki.good.1, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run_with(with(&pki.good.0, &pki.good.1)).await;
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("chmod 600"),
        "a key readable by others must be refused: {e}"
    );
    std::fs::set_permissions(&pki.good.1, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A certificate with someone else's key.
    let out = run_with(with(&pki.good.0, &pki.rogue.1)).await;
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("does the client key belong to the client certificate"),
        "a key that does not match the certificate must be refused: {e}"
    );
    let mut half: Vec<&str> = list.to_vec();
    let gc = pki.good.0.display().to_string();
    half.extend(["--client-cert", &gc]);
    let out = s2uc(&half, &[]).await;
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("--client-key"),
        "--client-cert alone must ask for --client-key: {e}"
    );
    srv.stop().await;
}
