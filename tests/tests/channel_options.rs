//! The data-channel options of `s2cs serve`, end to end: two gateways in the
//! namespace topology (PROD in gwa, listeners on the WAN; CONS in gwb,
//! listeners on LAN B), a session set up with `s2uc connect` from gwb,
//! ProdApp in prod, ConsApp in cons.
//!
//! - CA-signed certificates: both gateways present a certificate of a test
//!   CA (rcgen) naming their advertised IP (`--channel-cert`,
//!   `--channel-key`) and verify the other's against that CA
//!   (`--channel-peer-ca`); the CONS gateway also allows TLS 1.2
//!   (`--channel-tls12`). A stream arrives hash-verified; TLS 1.3 is still
//!   what two gateways negotiate; both print their certificate's
//!   fingerprint and count one established channel.
//! - A certificate of another CA, on the PROD gateway (the CONS gateway
//!   refuses the server certificate) or on the CONS gateway (the PROD
//!   gateway refuses the client certificate): the consumer's connection is
//!   closed without a byte, ProdApp never gets a connection, and the
//!   refusing gateway logs and counts a certificate failure.
//! - `--channel plaintext-after-auth --data-path sockmap`: the plaintext leg
//!   after the mutual proof runs on the sockmap path the operator chose (the
//!   log line and the connection metrics say so), and the stream arrives.
//!
//! Needs root and the built binaries (`cargo build -p gateway -p control`).
//! Every wait is bounded; a failing test prints both gateways' output.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use e2e::gateway::CONTROL_PORT;
use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Gateway, Link, Node, Topology, eventually};
use sha2::{Digest, Sha256};
use support::{METRICS_ADDR, PRODUCER_PORT, Setup, join, start_consumer};

mod support;

const SECS_10: Duration = Duration::from_secs(10);
const SECS_60: Duration = Duration::from_secs(60);

fn tmp_parent() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A certificate authority made for one test, its certificate in a PEM file.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: PathBuf,
}

/// A gateway certificate and key (0600) in PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    /// SHA-256 of the certificate, as `s2cs` prints it (AB:CD:...).
    fingerprint: String,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("s2cs e2e CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem = dir.join(format!("ca-{name}.pem"));
        std::fs::write(&pem, issuer.pem()).expect("writing the CA certificate");
        TestCa { issuer, pem }
    }

    /// A certificate for `ip` (an IP subject alternative name), valid for
    /// TLS server and client authentication.
    fn issue(&self, dir: &Path, stem: &str, ip: IpAddr) -> Issued {
        let mut params = rcgen::CertificateParams::new(vec![ip.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &*self.issuer).expect("signing");
        let (cert_path, key_path) = (
            dir.join(format!("{stem}-cert.pem")),
            dir.join(format!("{stem}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
            .expect("writing the key");
        let fingerprint = Sha256::digest(cert.der())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        Issued {
            cert: cert_path,
            key: key_path,
            fingerprint,
        }
    }
}

/// `--channel-cert`, `--channel-key` and `--channel-peer-ca`.
fn ca_flags(own: &Issued, trusted: &TestCa) -> Vec<String> {
    [
        "--channel-cert",
        &own.cert.display().to_string(),
        "--channel-key",
        &own.key.display().to_string(),
        "--channel-peer-ca",
        &trusted.pem.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

// ---------------------------------------------------------------------------
// Gateways, applications, metrics
// ---------------------------------------------------------------------------

/// `flags` plus `--metrics-listen METRICS_ADDR`.
fn with_metrics(mut flags: Vec<String>) -> Vec<String> {
    flags.extend(["--metrics-listen".to_owned(), METRICS_ADDR.to_owned()]);
    flags
}

/// `s2uc connect` from gwb for one producer listener; the consumer's
/// address (on gwb's LAN B).
fn connect(pair: &Setup, producer: SocketAddr) -> SocketAddr {
    pair.connect(&[producer], 0).cons_listeners[0]
}

fn topology() -> Topology {
    e2e::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    Topology::new().unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"))
}

/// ProdApp's listener in prod.
fn producer_listener(topo: &Topology) -> (SocketAddr, TcpListener) {
    let addr = topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = topo
        .tcp_listen(Node::Prod, addr)
        .unwrap_or_else(|e| panic!("producer listener: {e:#}"));
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    (addr, listener)
}

/// ProdApp: sends `spec` to the first connection.
fn start_producer(listener: TcpListener, spec: StreamSpec) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = eventually(SECS_60, || listener.accept().map(|(c, _)| c))
            .unwrap_or_else(|e| panic!("nobody connected to the producer: {e:#}"));
        conn.set_nonblocking(false).expect("blocking connection");
        stream::send_tcp(&conn, spec, Deadline::after(Duration::from_secs(120)))
            .unwrap_or_else(|e| panic!("producer sending: {e}"));
    })
}

/// Log lines of `gw` containing every one of `parts`.
fn log_lines(gw: &Gateway, parts: &[&str]) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn ca_signed_certificates_carry_a_verified_stream() {
    let topo = topology();
    let certs = e2e::Daemon::workdir(tmp_parent(), &format!("{}-certs", topo.id()))
        .expect("a directory for the certificates");
    let site = TestCa::new(certs.path(), "site");
    // Each names its advertised address: the CONS gateway checks the PROD
    // gateway's against the IP it dials.
    let a = site.issue(certs.path(), "gwa", topo.addr(Node::Gwa, Link::Wan));
    let b = site.issue(certs.path(), "gwb", topo.addr(Node::Gwb, Link::LanB));
    let mut gwb_flags = ca_flags(&b, &site);
    gwb_flags.push("--channel-tls12".to_owned());
    let pair = Setup::start(
        topo,
        with_metrics(ca_flags(&a, &site)),
        with_metrics(gwb_flags),
    );

    let spec = StreamSpec::new(51, 16 << 20);
    let (producer_addr, listener) = producer_listener(&pair.topo);
    let producer = start_producer(listener, spec);
    let consumer_addr = connect(&pair, producer_addr);
    let consumer = start_consumer(&pair.topo, consumer_addr, spec);
    join(consumer);
    join(producer);

    for (gw, issued) in [(&pair.gwa, &a), (&pair.gwb, &b)] {
        let node = gw.node;
        let printed = format!(
            "data channel certificate {} SHA-256 fingerprint {}",
            issued.cert.display(),
            issued.fingerprint
        );
        assert!(
            gw.stdout().contains(&printed),
            "{node} must print {printed:?}:\n{}",
            gw.stdout()
        );
        let ca_line = format!(
            "data channel: peer certificates verified against the CA in {}",
            site.pem.display()
        );
        assert_eq!(log_lines(gw, &[&ca_line]).len(), 1, "{node}: {ca_line:?}");
        // One channel, TLS 1.3 even where TLS 1.2 is allowed: the opt-in
        // never downgrades two gateways that both speak 1.3.
        let relayed = log_lines(gw, &["channel: relaying"]);
        assert_eq!(relayed.len(), 1, "{node}: one channel: {relayed:#?}");
        assert!(relayed[0].contains("TLSv1.3"), "{node}: {relayed:#?}");
        let established = eventually(SECS_10, || {
            match pair.metric(node, "s2cs_channel_established_total", &[]) {
                Some(n) if n >= 1.0 => Ok(n),
                other => Err(format!("{other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{node}: no established channel counted: {e:#}"));
        assert_eq!(established, 1.0, "{node}");
        assert_eq!(
            pair.metric(
                node,
                "s2cs_channel_refused_total",
                &[("reason", "certificate")]
            ),
            Some(0.0),
            "{node}"
        );
    }
    assert_eq!(
        log_lines(&pair.gwb, &["TLS 1.2 is allowed on the data channel"]).len(),
        1,
        "gwb warns about its TLS 1.2 opt-in"
    );
    assert!(
        log_lines(&pair.gwa, &["TLS 1.2 is allowed"]).is_empty(),
        "gwa did not opt in"
    );
}

/// A read or write error that means the peer closed the connection.
fn is_closed(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

/// The gateway in `foreign` presents a certificate of another CA (naming
/// the right address); the other one must refuse it.
fn certificate_of_another_ca_gets_no_data_through(foreign: Node) {
    let refusing = if foreign == Node::Gwa {
        Node::Gwb
    } else {
        Node::Gwa
    };
    let topo = topology();
    let certs = e2e::Daemon::workdir(tmp_parent(), &format!("{}-certs", topo.id()))
        .expect("a directory for the certificates");
    let (site, other) = (
        TestCa::new(certs.path(), "site"),
        TestCa::new(certs.path(), "other"),
    );
    let issuer = |node: Node| if node == foreign { &other } else { &site };
    let a = issuer(Node::Gwa).issue(certs.path(), "gwa", topo.addr(Node::Gwa, Link::Wan));
    let b = issuer(Node::Gwb).issue(certs.path(), "gwb", topo.addr(Node::Gwb, Link::LanB));
    // Both trust only the site CA.
    let pair = Setup::start(
        topo,
        with_metrics(ca_flags(&a, &site)),
        with_metrics(ca_flags(&b, &site)),
    );

    let (producer_addr, producer) = producer_listener(&pair.topo);
    let consumer_addr = connect(&pair, producer_addr);

    // ConsApp connects and writes; its connection is closed without a byte.
    // The refusal can be fast enough that the reset arrives while connect
    // itself is still returning: that too is a connection closed at once.
    match pair
        .topo
        .tcp_connect(Node::Cons, consumer_addr, Duration::from_secs(5))
    {
        Ok(mut conn) => {
            let _ = conn.write_all(b"bytes that must not reach the producer");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("read timeout");
            let mut buf = [0u8; 4096];
            match conn.read(&mut buf) {
                Ok(0) => {}
                Err(e) if is_closed(&e) => {}
                Ok(n) => panic!("the consumer received {n} bytes through a refused channel"),
                Err(e) => panic!("the consumer's connection was not closed: {e}"),
            }
        }
        Err(e)
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == ErrorKind::ConnectionReset)
            }) => {}
        Err(e) => panic!("consumer connecting to {consumer_addr}: {e:#}"),
    }

    // The refusing gateway logged and counted a certificate failure.
    let gw = pair.gateway(refusing);
    eventually(SECS_10, || {
        let lines = log_lines(gw, &["channel: connection refused", "certificate"]);
        if lines.is_empty() {
            Err("no certificate refusal logged yet")
        } else {
            Ok(())
        }
    })
    .unwrap_or_else(|e| panic!("{refusing}: {e:#}:\n{}", gw.log()));
    let refused = pair
        .metric(
            refusing,
            "s2cs_channel_refused_total",
            &[("reason", "certificate")],
        )
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "{refusing}: certificate refusals {refused}");
    for node in [Node::Gwa, Node::Gwb] {
        assert_eq!(
            pair.metric(node, "s2cs_channel_established_total", &[]),
            Some(0.0),
            "{node}: no channel may be established"
        );
        assert!(
            log_lines(pair.gateway(node), &["channel: relaying"]).is_empty(),
            "{node} relayed"
        );
    }

    // ProdApp never got a connection: the PROD gateway dials it only after
    // the channel is established.
    std::thread::sleep(Duration::from_millis(300));
    match producer.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("the producer got a connection from {peer}"),
        Err(e) => panic!("the producer's listener failed: {e}"),
    }
}

#[test]
fn prod_gateway_certificate_of_another_ca_is_refused_by_the_cons_gateway() {
    certificate_of_another_ca_gets_no_data_through(Node::Gwa);
}

#[test]
fn cons_gateway_certificate_of_another_ca_is_refused_by_the_prod_gateway() {
    certificate_of_another_ca_gets_no_data_through(Node::Gwb);
}

#[test]
fn plaintext_after_auth_relays_on_the_sockmap_path_chosen_by_the_operator() {
    let topo = topology();
    let flags = || -> Vec<String> {
        [
            "--channel",
            "plaintext-after-auth",
            "--data-path",
            "sockmap",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let pair = Setup::start(topo, with_metrics(flags()), with_metrics(flags()));

    let spec = StreamSpec::new(52, 16 << 20);
    let (producer_addr, listener) = producer_listener(&pair.topo);
    let producer = start_producer(listener, spec);
    let consumer_addr = connect(&pair, producer_addr);
    let consumer = start_consumer(&pair.topo, consumer_addr, spec);
    join(consumer);
    join(producer);

    for gw in [&pair.gwa, &pair.gwb] {
        let node = gw.node;
        assert!(
            gw.stdout()
                .contains("data path sockmap, gateway channel plaintext-after-auth"),
            "{node}:\n{}",
            gw.stdout()
        );
        // The plaintext leg was planned on sockmap (not the engine's
        // default, splice) ...
        let lines = log_lines(gw, &["channel: plaintext after authentication"]);
        assert_eq!(lines.len(), 1, "{node}: {lines:#?}");
        assert!(
            lines[0].contains("path=plaintext-sockmap"),
            "{node}: {lines:#?}"
        );
        // ... and ran there (the metrics count the path really used).
        eventually(SECS_10, || {
            match pair.metric(
                node,
                "s2cs_connections_finished_total",
                &[("path", "plaintext-sockmap"), ("outcome", "ok")],
            ) {
                Some(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .unwrap_or_else(|e| panic!("{node}: connections finished on plaintext-sockmap: {e:#}"));
        assert_eq!(
            pair.metric(node, "s2cs_channel_established_total", &[]),
            Some(1.0),
            "{node}"
        );
    }
}

/// Bad data-channel options stop `s2cs serve` at start, before it listens,
/// with an error naming the option (and the file).
#[test]
fn bad_channel_options_stop_the_gateway_at_start() {
    let topo = topology();
    let files = e2e::Daemon::workdir(tmp_parent(), &format!("{}-bad", topo.id()))
        .expect("a work directory");
    let site = TestCa::new(files.path(), "site");
    let good = site.issue(files.path(), "gwa", topo.addr(Node::Gwa, Link::Wan));
    let other = site.issue(files.path(), "other", topo.addr(Node::Gwa, Link::Wan));
    let exposed = files.path().join("exposed-key.pem");
    std::fs::copy(&good.key, &exposed).expect("copying the key");
    std::fs::set_permissions(
        &exposed,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod 644");
    let missing = files.path().join("missing.pem");
    let text = |p: &Path| p.display().to_string();
    let control = topo.sockaddr(Node::Gwa, Link::Wan, CONTROL_PORT);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "--channel-cert".into(),
                text(&good.cert),
                "--channel-key".into(),
                text(&other.key),
            ],
            format!(
                "--channel-key {}: is not the private key of the certificate",
                other.key.display()
            ),
        ),
        (
            vec![
                "--channel-cert".into(),
                text(&good.cert),
                "--channel-key".into(),
                text(&exposed),
            ],
            format!("--channel-key {}: has mode 644", exposed.display()),
        ),
        (
            vec!["--channel-peer-ca".into(), text(&missing)],
            format!("--channel-peer-ca {}: cannot be read", missing.display()),
        ),
        (
            vec!["--channel-peer-fingerprint".into(), "AB:CD".into()],
            "--channel-peer-fingerprint".into(),
        ),
        (
            vec!["--channel".into(), "plain".into(), "--channel-tls12".into()],
            "--channel-tls12: --channel plain carries no TLS".into(),
        ),
    ];
    let s2cs = e2e::Bin::S2cs.path().unwrap_or_else(|e| panic!("{e:#}"));
    for (flags, expected) in cases {
        let mut cmd = std::process::Command::new(&s2cs);
        cmd.args(["serve", "--no-auth", "--control-listen"])
            .arg(control.to_string())
            .arg("--state-dir")
            .arg(files.path().join("state"))
            .args(&flags)
            .env("NO_COLOR", "1");
        let out = topo
            .output(Node::Gwa, cmd, SECS_10)
            .unwrap_or_else(|e| panic!("running s2cs serve {flags:?}: {e:#}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} must fail:\n{stderr}");
        assert!(
            stderr.contains(&expected),
            "{flags:?}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("control server on"),
            "{flags:?}: it must not have started serving"
        );
    }
}
