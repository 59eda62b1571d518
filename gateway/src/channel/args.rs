//! The data-channel options of `s2cs serve` ([`ChannelArgs`], flattened into
//! its flags) and their translation into [`ChannelSettings`]:
//! - which certificate this gateway presents: the self-signed one generated
//!   on first start (`--channel-cert-dir`, key 0600), or the operator's
//!   chain and key (`--channel-cert` + `--channel-key`, e.g. CA-signed);
//! - how peer gateways' certificates are checked: not at all (the
//!   per-session mutual proof authenticates them), against a CA
//!   (`--channel-peer-ca`) or by pinned fingerprints
//!   (`--channel-peer-fingerprint`), one of these;
//! - TLS 1.2 (off unless `--channel-tls12`) and the handshake-and-proof
//!   deadline (`--channel-proof-timeout`).
//!
//! [`ChannelArgs::settings`] checks everything an operator can get wrong,
//! files included, before anything listens; each [`ChannelOptionError`]
//! names the option, the file and the problem. Command-line parsing (clap)
//! already refuses the plain conflicts; `settings` checks them again for
//! arguments built in code.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ParsedCertificate;

use super::ChannelMode;
use super::config::DEFAULT_PROOF_TIMEOUT;
use super::pem::{self, PemFileError};
use super::{CertSource, ChannelSettings, Fingerprint, PeerVerification};

/// Longest accepted `--channel-proof-timeout` (a stalled peer holds a
/// connection slot this long).
pub const MAX_PROOF_TIMEOUT: Duration = Duration::from_secs(300);

/// Data-channel flags of `s2cs serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ChannelArgs {
    /// How the link between gateways is carried: tls (TLS 1.3 with a mutual
    /// proof of the session secret; kernel TLS where available),
    /// plaintext-after-auth (the same proof, then plain TCP on the
    /// --data-path so the kernel relay runs end to end: trusted circuits
    /// only), or plain (no encryption, no authentication: tests only; takes
    /// none of the other --channel-* options).
    #[arg(long = "channel", value_name = "MODE", default_value = "tls")]
    pub mode: ChannelMode,
    /// Directory of the data channel's self-signed certificate (generated on
    /// first start, key 0600), used when no --channel-cert is given.
    /// Default: `<state-dir>/channel`.
    #[arg(long, value_name = "DIR", conflicts_with = "channel_cert")]
    pub channel_cert_dir: Option<PathBuf>,
    /// The data channel's certificate chain (PEM: this gateway's certificate
    /// first, then intermediates), e.g. signed by a CA the peer gateways
    /// trust; with --channel-key. It serves both ends of the channel: for
    /// peers that verify it with --channel-peer-ca it must name this
    /// gateway's advertised IP address (--advertise-ip) as an IP subject
    /// alternative name (a CONS gateway checks the address it dialled), and
    /// its extended key usage, if present, must allow TLS server and client
    /// authentication.
    #[arg(long, value_name = "PEM", requires = "channel_key")]
    pub channel_cert: Option<PathBuf>,
    /// The private key of --channel-cert (PEM: PKCS#8, PKCS#1 or SEC1; the
    /// file must not be readable by group or others: chmod 600).
    #[arg(long, value_name = "PEM", requires = "channel_cert")]
    pub channel_key: Option<PathBuf>,
    /// Verify peer gateways' certificates against the CA certificates in
    /// this PEM file, both ways: a CONS gateway checks the PROD gateway's
    /// certificate and the IP address it dialled; a PROD gateway requires a
    /// client certificate of that CA. Give every gateway a certificate of
    /// that CA (--channel-cert).
    #[arg(long, value_name = "PEM", conflicts_with = "channel_peer_fingerprint")]
    pub channel_peer_ca: Option<PathBuf>,
    /// Accept only peer gateways whose certificate has this SHA-256
    /// fingerprint (64 hex digits, colons allowed; `s2cs serve` prints its
    /// own at start); repeatable, both ways like --channel-peer-ca.
    #[arg(long = "channel-peer-fingerprint", value_name = "SHA256")]
    pub channel_peer_fingerprint: Vec<Fingerprint>,
    /// Also allow TLS 1.2 on the data channel (AEAD suites only), for peers
    /// or kernels without TLS 1.3. Off by default; logs a warning.
    #[arg(long)]
    pub channel_tls12: bool,
    /// Seconds a new data-channel connection has for the TLS handshake and
    /// the mutual proof before it is closed (at most 300). Default: 5.
    #[arg(long, value_name = "SECS")]
    pub channel_proof_timeout: Option<f64>,
    /// Never use kernel TLS for the data channel (userspace TLS only).
    #[arg(long)]
    pub no_ktls: bool,
    /// What to do where this kernel's TLS cannot take new keys (before Linux
    /// 6.14), since AES-GCM needs key updates on long streams: chacha20
    /// (default) offers and prefers ChaCha20-Poly1305, which needs none, so
    /// connections stay on kernel TLS; userspace keeps AES-GCM first, and a
    /// connection that negotiates it uses userspace TLS (which updates keys).
    #[arg(long, value_name = "POLICY", default_value = "chacha20")]
    pub ktls_without_rekey: KtlsWithoutRekey,
    /// Test only: records sealed under one AES-GCM key before a key update,
    /// instead of 2^24 (tests use a few hundred to see many updates).
    #[arg(long, value_name = "RECORDS", hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub channel_test_record_limit: Option<u64>,
}

/// `--ktls-without-rekey`: the data channel's policy on kernels whose TLS
/// cannot take new keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KtlsWithoutRekey {
    /// Prefer ChaCha20-Poly1305 (no key updates needed): kernel TLS.
    #[default]
    Chacha20,
    /// Keep AES-GCM first; connections that use it go to userspace TLS.
    Userspace,
}

impl KtlsWithoutRekey {
    /// Whether the handshake should prefer ChaCha20-Poly1305, given what
    /// this kernel's TLS can do.
    pub fn prefer_chacha20(self, ktls: &super::KtlsSupport) -> bool {
        self == KtlsWithoutRekey::Chacha20 && ktls.available() && !ktls.rekey && ktls.chacha20
    }
}

/// An unusable data-channel option: which one, its file (if any), and why.
#[derive(Debug, thiserror::Error)]
#[error("{option}{}: {problem}", path_text(.path))]
pub struct ChannelOptionError {
    /// The flag, e.g. `--channel-key`.
    pub option: &'static str,
    /// The file it names, when the file is the problem.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub problem: String,
}

fn path_text(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

impl ChannelOptionError {
    fn new(option: &'static str, problem: impl Into<String>) -> Self {
        ChannelOptionError {
            option,
            path: None,
            problem: problem.into(),
        }
    }

    fn file(option: &'static str, path: &Path, err: PemFileError) -> Self {
        ChannelOptionError {
            option,
            path: Some(path.to_path_buf()),
            problem: err.to_string(),
        }
    }
}

impl ChannelArgs {
    /// The secure channel's settings, or `None` with `--channel plain`.
    /// Reads and checks every file now: the operator's certificate, key
    /// (private, matching the certificate) and CA. `state_dir` holds the
    /// self-signed certificate by default; `advertise_ip` is the address
    /// peers dial, which an operator certificate should name (a warning
    /// otherwise: peers verifying against a CA would refuse it).
    pub fn settings(
        &self,
        state_dir: Option<&Path>,
        advertise_ip: IpAddr,
    ) -> Result<Option<ChannelSettings>, ChannelOptionError> {
        if self.mode == ChannelMode::Plain {
            return match self.given().first() {
                Some(option) => Err(ChannelOptionError::new(
                    option,
                    "--channel plain carries no TLS and takes no data-channel options; use \
                     --channel tls (or plaintext-after-auth), or drop the option",
                )),
                None => Ok(None),
            };
        }
        let proof_timeout = self.proof_timeout()?;
        let certs = self.certs(state_dir, advertise_ip)?;
        let verify = self.verification()?;
        if matches!(verify, PeerVerification::Ca { .. })
            && matches!(certs, CertSource::SelfSigned { .. })
        {
            tracing::warn!(
                "--channel-peer-ca without --channel-cert: this gateway presents its self-signed \
                 certificate, which peer gateways that verify against a CA refuse"
            );
        }
        Ok(Some(ChannelSettings {
            certs,
            verify,
            allow_tls12: self.channel_tls12,
            plaintext_after_auth: self.mode == ChannelMode::PlaintextAfterAuth,
            proof_timeout,
            // Set from the kernel probe by the caller (`s2cs serve`).
            prefer_chacha20: false,
            aes_gcm_record_limit: self.channel_test_record_limit,
        }))
    }

    /// The data-channel options given (for `--channel plain`).
    fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        for (set, option) in [
            (self.channel_cert_dir.is_some(), "--channel-cert-dir"),
            (self.channel_cert.is_some(), "--channel-cert"),
            (self.channel_key.is_some(), "--channel-key"),
            (self.channel_peer_ca.is_some(), "--channel-peer-ca"),
            (
                !self.channel_peer_fingerprint.is_empty(),
                "--channel-peer-fingerprint",
            ),
            (self.channel_tls12, "--channel-tls12"),
            (
                self.channel_proof_timeout.is_some(),
                "--channel-proof-timeout",
            ),
            (self.no_ktls, "--no-ktls"),
        ] {
            if set {
                given.push(option);
            }
        }
        given
    }

    fn proof_timeout(&self) -> Result<Duration, ChannelOptionError> {
        let Some(secs) = self.channel_proof_timeout else {
            return Ok(DEFAULT_PROOF_TIMEOUT);
        };
        match Duration::try_from_secs_f64(secs) {
            Ok(timeout) if !timeout.is_zero() && timeout <= MAX_PROOF_TIMEOUT => Ok(timeout),
            _ => Err(ChannelOptionError::new(
                "--channel-proof-timeout",
                format!(
                    "must be a number of seconds above 0 and at most {}, got {secs}",
                    MAX_PROOF_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    fn certs(
        &self,
        state_dir: Option<&Path>,
        advertise_ip: IpAddr,
    ) -> Result<CertSource, ChannelOptionError> {
        let (cert, key) = match (&self.channel_cert, &self.channel_key) {
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(ChannelOptionError::new(
                    "--channel-cert",
                    "needs --channel-key (the certificate's private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(ChannelOptionError::new(
                    "--channel-key",
                    "needs --channel-cert (the certificate it belongs to)",
                ));
            }
            (None, None) => {
                let dir = match (&self.channel_cert_dir, state_dir) {
                    (Some(dir), _) => dir.clone(),
                    (None, Some(state)) => state.join("channel"),
                    (None, None) => PathBuf::from("channel"),
                };
                return Ok(CertSource::SelfSigned {
                    dir,
                    names: Vec::new(),
                });
            }
        };
        if self.channel_cert_dir.is_some() {
            return Err(ChannelOptionError::new(
                "--channel-cert-dir",
                "cannot be combined with --channel-cert: the directory holds the self-signed \
                 certificate used when no --channel-cert is given",
            ));
        }
        let chain = pem::read_cert_chain(cert)
            .map_err(|e| ChannelOptionError::file("--channel-cert", cert, e))?;
        let key_der = pem::read_private_key(key)
            .map_err(|e| ChannelOptionError::file("--channel-key", key, e))?;
        pem::check_key_pair(&chain, &key_der, &rustls::crypto::ring::default_provider()).map_err(
            |e| match e {
                PemFileError::BadCertificate(_) => {
                    ChannelOptionError::file("--channel-cert", cert, e)
                }
                PemFileError::KeyMismatch => ChannelOptionError {
                    option: "--channel-key",
                    path: Some(key.clone()),
                    problem: format!(
                        "is not the private key of the certificate in --channel-cert {} (their \
                         public keys differ)",
                        cert.display()
                    ),
                },
                other => ChannelOptionError::file("--channel-key", key, other),
            },
        )?;
        warn_unless_named(&chain[0], cert, advertise_ip);
        Ok(CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
    }

    fn verification(&self) -> Result<PeerVerification, ChannelOptionError> {
        match (
            &self.channel_peer_ca,
            self.channel_peer_fingerprint.as_slice(),
        ) {
            (Some(_), [_, ..]) => Err(ChannelOptionError::new(
                "--channel-peer-ca",
                "cannot be combined with --channel-peer-fingerprint: verify peer gateways either \
                 against a CA or by pinned fingerprints",
            )),
            (Some(ca), []) => {
                pem::read_roots(ca)
                    .map_err(|e| ChannelOptionError::file("--channel-peer-ca", ca, e))?;
                Ok(PeerVerification::Ca {
                    roots_pem: ca.clone(),
                })
            }
            (None, []) => Ok(PeerVerification::None),
            (None, pins) => {
                let mut unique: Vec<Fingerprint> = Vec::with_capacity(pins.len());
                for pin in pins {
                    if !unique.contains(pin) {
                        unique.push(*pin);
                    }
                }
                Ok(PeerVerification::Pinned(unique))
            }
        }
    }
}

/// Warns when the operator's certificate does not name `ip` (the address
/// peer gateways dial): those verifying against a CA would refuse it. Not an
/// error: peers may reach this gateway through address translation.
fn warn_unless_named(end_entity: &CertificateDer<'_>, cert: &Path, ip: IpAddr) {
    if ip.is_unspecified() {
        return;
    }
    let named = ParsedCertificate::try_from(end_entity).and_then(|parsed| {
        rustls::client::verify_server_name(&parsed, &ServerName::IpAddress(ip.into()))
    });
    if let Err(err) = named {
        tracing::warn!(
            cert = %cert.display(),
            %ip,
            error = %err,
            "--channel-cert does not name the advertised address as an IP subject alternative \
             name: peer gateways that verify it with --channel-peer-ca will refuse it"
        );
    }
}

/// How peers are verified, for the start-up log.
pub fn describe_verification(verify: &PeerVerification) -> String {
    match verify {
        PeerVerification::None => {
            "peer certificates not verified (the per-session proof authenticates peers)".into()
        }
        PeerVerification::Pinned(pins) => format!("{} pinned peer certificate(s)", pins.len()),
        PeerVerification::Ca { roots_pem } => {
            format!(
                "peer certificates verified against the CA in {}",
                roots_pem.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::OpenOptionsExt as _;

    const ADVERTISED: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1));
    const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    /// `s2cs serve`'s channel flags alone, parsed as clap parses them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        channel: ChannelArgs,
    }

    fn parse(args: &[&str]) -> Result<ChannelArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("s2cs").chain(args.iter().copied()))
            .map(|cli| cli.channel)
    }

    fn write(path: &Path, data: &[u8], mode: u32) {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .expect("write a test file");
    }

    /// A CA, a certificate it signed for the advertised IP and its key, the
    /// key of another certificate, and a file that is not PEM.
    struct Files {
        dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        other_key: PathBuf,
        text: PathBuf,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().expect("CA key");
            let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("CA cert");
            let params =
                rcgen::CertificateParams::new(vec![ADVERTISED.to_string()]).expect("params");
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &*ca).expect("sign");
            let other = rcgen::KeyPair::generate().expect("other key");
            let path = |name: &str| dir.path().join(name);
            write(&path("ca.pem"), ca.pem().as_bytes(), 0o644);
            write(&path("cert.pem"), cert.pem().as_bytes(), 0o644);
            write(&path("key.pem"), key.serialize_pem().as_bytes(), 0o600);
            write(
                &path("other-key.pem"),
                other.serialize_pem().as_bytes(),
                0o600,
            );
            write(&path("text"), b"not a certificate\n", 0o600);
            Files {
                ca: path("ca.pem"),
                cert: path("cert.pem"),
                key: path("key.pem"),
                other_key: path("other-key.pem"),
                text: path("text"),
                dir,
            }
        }

        fn s(path: &Path) -> &str {
            path.to_str().expect("UTF-8 temp path")
        }
    }

    fn settings(args: &ChannelArgs) -> Result<Option<ChannelSettings>, ChannelOptionError> {
        args.settings(Some(Path::new("/var/lib/s2cs")), ADVERTISED)
    }

    #[track_caller]
    fn refused(args: &ChannelArgs, option: &str, problem: &str) {
        let err = settings(args).expect_err("the options must be refused");
        assert_eq!(err.option, option, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(option) && text.contains(problem),
            "{text:?} should name {option} and say {problem:?}"
        );
    }

    #[test]
    fn defaults_are_a_self_signed_certificate_tls13_and_the_proof_alone() {
        let args = parse(&[]).expect("no flags");
        let s = settings(&args).expect("valid").expect("a secure channel");
        match &s.certs {
            CertSource::SelfSigned { dir, names } => {
                assert_eq!(dir, Path::new("/var/lib/s2cs/channel"));
                assert!(names.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.verify, PeerVerification::None));
        assert!(!s.allow_tls12, "TLS 1.2 is off unless enabled");
        assert!(!s.plaintext_after_auth);
        assert_eq!(s.proof_timeout, DEFAULT_PROOF_TIMEOUT);
        // Without a state directory the certificate is kept in ./channel.
        let s = args
            .settings(None, ADVERTISED)
            .expect("valid")
            .expect("secure");
        assert!(
            matches!(s.certs, CertSource::SelfSigned { dir, .. } if dir == Path::new("channel"))
        );

        let args = parse(&["--channel-cert-dir", "/etc/s2cs/ch"]).expect("cert dir");
        let s = settings(&args).expect("valid").expect("secure");
        assert!(
            matches!(s.certs, CertSource::SelfSigned { dir, .. } if dir == Path::new("/etc/s2cs/ch"))
        );
    }

    #[test]
    fn modes_map_to_settings() {
        let args = parse(&["--channel", "plaintext-after-auth"]).expect("mode");
        let s = settings(&args).expect("valid").expect("secure");
        assert!(s.plaintext_after_auth);
        let args = parse(&["--channel", "plain"]).expect("mode");
        assert!(settings(&args).expect("valid").is_none(), "plain: no TLS");
        assert!(parse(&["--channel", "nope"]).is_err());
    }

    #[test]
    fn operator_certificate_ca_tls12_and_timeout_map_to_settings() {
        let f = Files::new();
        let args = parse(&[
            "--channel-cert",
            Files::s(&f.cert),
            "--channel-key",
            Files::s(&f.key),
            "--channel-peer-ca",
            Files::s(&f.ca),
            "--channel-tls12",
            "--channel-proof-timeout",
            "2.5",
            "--no-ktls",
        ])
        .expect("flags");
        let s = settings(&args).expect("valid").expect("secure");
        assert!(
            matches!(&s.certs, CertSource::Files { cert, key } if *cert == f.cert && *key == f.key)
        );
        assert!(matches!(&s.verify, PeerVerification::Ca { roots_pem } if *roots_pem == f.ca));
        assert!(s.allow_tls12);
        assert_eq!(s.proof_timeout, Duration::from_millis(2500));
        assert!(args.no_ktls);
        // And the channel builds with them.
        crate::channel::ChannelConfig::new(s).expect("a usable configuration");
    }

    #[test]
    fn pinned_fingerprints_repeat_in_any_notation() {
        let plain_hex = FP.replace(':', "").to_lowercase();
        let other = "11".repeat(32);
        let args = parse(&[
            "--channel-peer-fingerprint",
            FP,
            "--channel-peer-fingerprint",
            &plain_hex,
            "--channel-peer-fingerprint",
            &other,
        ])
        .expect("flags");
        let s = settings(&args).expect("valid").expect("secure");
        match s.verify {
            PeerVerification::Pinned(pins) => {
                assert_eq!(pins.len(), 2, "the same pin twice counts once: {pins:?}");
                assert_eq!(pins[0], FP.parse::<Fingerprint>().expect("pin"));
                assert_eq!(pins[1], Fingerprint([0x11; 32]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_refuses_bad_fingerprints_and_conflicts() {
        let f = Files::new();
        for bad in ["AB:CD", &"G".repeat(64), &"+1".repeat(32), ""] {
            let err = parse(&["--channel-peer-fingerprint", bad]).expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains("--channel-peer-fingerprint") && text.contains("64 hex digits"),
                "{bad:?}: {text}"
            );
        }
        let cases: [(&[&str], &str); 4] = [
            (
                &[
                    "--channel-peer-ca",
                    Files::s(&f.ca),
                    "--channel-peer-fingerprint",
                    FP,
                ],
                "--channel-peer-fingerprint",
            ),
            (&["--channel-cert", Files::s(&f.cert)], "--channel-key"),
            (&["--channel-key", Files::s(&f.key)], "--channel-cert"),
            (
                &[
                    "--channel-cert",
                    Files::s(&f.cert),
                    "--channel-key",
                    Files::s(&f.key),
                    "--channel-cert-dir",
                    "/tmp",
                ],
                "--channel-cert",
            ),
        ];
        for (args, names) in cases {
            let err = parse(args).expect_err("conflict");
            assert!(err.to_string().contains(names), "{args:?}: {err}");
        }
    }

    #[test]
    fn combinations_are_refused_in_code_too() {
        let f = Files::new();
        let base = ChannelArgs::default;
        refused(
            &ChannelArgs {
                channel_cert: Some(f.cert.clone()),
                ..base()
            },
            "--channel-cert",
            "needs --channel-key",
        );
        refused(
            &ChannelArgs {
                channel_key: Some(f.key.clone()),
                ..base()
            },
            "--channel-key",
            "needs --channel-cert",
        );
        refused(
            &ChannelArgs {
                channel_cert: Some(f.cert.clone()),
                channel_key: Some(f.key.clone()),
                channel_cert_dir: Some(f.dir.path().to_path_buf()),
                ..base()
            },
            "--channel-cert-dir",
            "cannot be combined with --channel-cert",
        );
        refused(
            &ChannelArgs {
                channel_peer_ca: Some(f.ca.clone()),
                channel_peer_fingerprint: vec![Fingerprint([1; 32])],
                ..base()
            },
            "--channel-peer-ca",
            "cannot be combined with --channel-peer-fingerprint",
        );
    }

    #[test]
    fn plain_mode_refuses_every_channel_option() {
        let f = Files::new();
        let plain = || ChannelArgs {
            mode: ChannelMode::Plain,
            ..ChannelArgs::default()
        };
        let cases: Vec<(ChannelArgs, &str)> = vec![
            (
                ChannelArgs {
                    channel_cert_dir: Some(f.dir.path().to_path_buf()),
                    ..plain()
                },
                "--channel-cert-dir",
            ),
            (
                ChannelArgs {
                    channel_cert: Some(f.cert.clone()),
                    channel_key: Some(f.key.clone()),
                    ..plain()
                },
                "--channel-cert",
            ),
            (
                ChannelArgs {
                    channel_key: Some(f.key.clone()),
                    ..plain()
                },
                "--channel-key",
            ),
            (
                ChannelArgs {
                    channel_peer_ca: Some(f.ca.clone()),
                    ..plain()
                },
                "--channel-peer-ca",
            ),
            (
                ChannelArgs {
                    channel_peer_fingerprint: vec![Fingerprint([1; 32])],
                    ..plain()
                },
                "--channel-peer-fingerprint",
            ),
            (
                ChannelArgs {
                    channel_tls12: true,
                    ..plain()
                },
                "--channel-tls12",
            ),
            (
                ChannelArgs {
                    channel_proof_timeout: Some(5.0),
                    ..plain()
                },
                "--channel-proof-timeout",
            ),
            (
                ChannelArgs {
                    no_ktls: true,
                    ..plain()
                },
                "--no-ktls",
            ),
        ];
        for (args, option) in &cases {
            refused(args, option, "--channel plain carries no TLS");
        }
        // From the command line as well.
        let args = parse(&["--channel", "plain", "--channel-tls12"]).expect("parses");
        refused(&args, "--channel-tls12", "--channel plain");
    }

    #[test]
    fn proof_timeout_must_be_positive_finite_and_bounded() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 300.5, 1e30] {
            let args = ChannelArgs {
                channel_proof_timeout: Some(bad),
                ..ChannelArgs::default()
            };
            refused(
                &args,
                "--channel-proof-timeout",
                "must be a number of seconds",
            );
        }
        let args = parse(&["--channel-proof-timeout", "300"]).expect("flag");
        let s = settings(&args).expect("valid").expect("secure");
        assert_eq!(s.proof_timeout, MAX_PROOF_TIMEOUT);
        assert!(parse(&["--channel-proof-timeout", "soon"]).is_err());
    }

    #[test]
    fn unusable_files_are_refused_naming_the_option_and_the_file() {
        let f = Files::new();
        let missing = f.dir.path().join("missing.pem");
        let with = |cert: &Path, key: &Path| ChannelArgs {
            channel_cert: Some(cert.to_path_buf()),
            channel_key: Some(key.to_path_buf()),
            ..ChannelArgs::default()
        };
        let check = |args: ChannelArgs, option: &str, path: &Path, problem: &str| {
            let err = settings(&args).expect_err("refused");
            assert_eq!(err.option, option, "{err}");
            assert_eq!(err.path.as_deref(), Some(path), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{option} {}: ", path.display()))
                    && text.contains(problem),
                "{text:?} should say {problem:?}"
            );
        };
        // The certificate: missing, not PEM, a key instead of a certificate,
        // a damaged PEM section.
        check(
            with(&missing, &f.key),
            "--channel-cert",
            &missing,
            "cannot be read",
        );
        check(
            with(&f.text, &f.key),
            "--channel-cert",
            &f.text,
            "holds no PEM certificate",
        );
        check(
            with(&f.key, &f.key),
            "--channel-cert",
            &f.key,
            "holds no PEM certificate",
        );
        let damaged = f.dir.path().join("damaged.pem");
        write(
            &damaged,
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            0o644,
        );
        check(
            with(&damaged, &f.key),
            "--channel-cert",
            &damaged,
            "is not valid PEM",
        );
        // A PEM "certificate" that is not X.509.
        let junk = f.dir.path().join("junk-cert.pem");
        write(
            &junk,
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            0o644,
        );
        check(
            with(&junk, &f.key),
            "--channel-cert",
            &junk,
            "cannot be used",
        );
        // The key: missing, readable by others, not PEM, not the certificate's.
        check(
            with(&f.cert, &missing),
            "--channel-key",
            &missing,
            "cannot be read",
        );
        let exposed = f.dir.path().join("exposed.pem");
        let key_pem = std::fs::read(&f.key).expect("key");
        write(&exposed, &key_pem, 0o644);
        check(
            with(&f.cert, &exposed),
            "--channel-key",
            &exposed,
            "chmod 600",
        );
        check(
            with(&f.cert, &f.text),
            "--channel-key",
            &f.text,
            "holds no PEM private key",
        );
        check(
            with(&f.cert, &f.other_key),
            "--channel-key",
            &f.other_key,
            "is not the private key of the certificate in --channel-cert",
        );
        // The CA: missing, not PEM.
        let ca = |path: &Path| ChannelArgs {
            channel_peer_ca: Some(path.to_path_buf()),
            ..ChannelArgs::default()
        };
        check(
            ca(&missing),
            "--channel-peer-ca",
            &missing,
            "cannot be read",
        );
        check(
            ca(&f.text),
            "--channel-peer-ca",
            &f.text,
            "holds no PEM certificate",
        );
        check(
            ca(&junk),
            "--channel-peer-ca",
            &junk,
            "cannot be used as a CA",
        );
    }

    #[test]
    fn chacha20_is_preferred_only_where_kernel_tls_cannot_rekey_but_has_it() {
        use crate::channel::KtlsSupport;
        let default = parse(&[]).expect("no flags");
        assert_eq!(default.ktls_without_rekey, KtlsWithoutRekey::Chacha20);
        assert_eq!(default.channel_test_record_limit, None);
        let kernel = |rekey, chacha20| KtlsSupport {
            ulp: true,
            tls13: true,
            rekey,
            chacha20,
            detail: String::new(),
        };
        let policy = KtlsWithoutRekey::Chacha20;
        assert!(
            policy.prefer_chacha20(&kernel(false, true)),
            "old kernel: ChaCha20"
        );
        assert!(
            !policy.prefer_chacha20(&kernel(true, true)),
            "rekeying kernel: AES-GCM"
        );
        assert!(
            !policy.prefer_chacha20(&kernel(false, false)),
            "no ChaCha20 in the kernel"
        );
        assert!(
            !policy.prefer_chacha20(&KtlsSupport::unavailable("none")),
            "no kernel TLS: userspace updates keys"
        );
        let userspace = parse(&["--ktls-without-rekey", "userspace"]).expect("userspace");
        assert!(
            !userspace
                .ktls_without_rekey
                .prefer_chacha20(&kernel(false, true))
        );
        let err = parse(&["--ktls-without-rekey", "aes"]).expect_err("unknown policy");
        assert!(err.to_string().contains("chacha20"), "{err}");
        let limited = parse(&["--channel-test-record-limit", "64"]).expect("limit");
        let settings = settings(&limited).expect("settings").expect("tls");
        assert_eq!(settings.aes_gcm_record_limit, Some(64));
        assert!(
            parse(&["--channel-test-record-limit", "0"]).is_err(),
            "0 records"
        );
    }
}
