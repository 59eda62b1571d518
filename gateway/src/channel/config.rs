//! Channel configuration: this gateway's certificate (kept by
//! [`super::identity`]), how the peer's certificate is verified (not at all: the
//! per-session proof authenticates; a pinned SHA-256 fingerprint; or a CA),
//! the protocol versions, the plaintext-after-authentication opt-in and the
//! handshake deadline. [`ChannelConfig::new`] validates everything and builds
//! the rustls configurations once.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::error::{ChannelError, ChannelFailures};
use super::identity::ChannelIdentity;
pub use super::identity::{
    BadFingerprint, CHANNEL_CERT_FILE, CHANNEL_KEY_FILE, CertSource, Fingerprint,
};
use super::key_updates::KeyUpdates;
use super::pem;
use super::record::AES_GCM_RECORD_LIMIT;

/// ALPN protocol id of the channel, so no other TLS service mistakes it.
pub const ALPN: &[u8] = b"s2cs-channel/1";
/// Default deadline for the TCP-to-proof phase.
pub const DEFAULT_PROOF_TIMEOUT: Duration = Duration::from_secs(5);

/// How the peer gateway's certificate is checked. With `None` the TLS layer
/// accepts any certificate and the per-session proof alone authenticates the
/// peer (a man in the middle without the secret still fails). With `Pinned`
/// or `Ca` both directions are checked: the CONS side verifies the PROD
/// gateway's certificate and the PROD side requires and verifies the CONS
/// gateway's client certificate.
#[derive(Clone, Debug)]
pub enum PeerVerification {
    None,
    /// The peer's certificate must have one of these SHA-256 fingerprints.
    Pinned(Vec<Fingerprint>),
    /// The peer's certificate must chain to a CA in this PEM file (and, on
    /// the CONS side, match the server name given to `connect`).
    Ca {
        roots_pem: PathBuf,
    },
}

/// What the operator configures (all plain data; see [`ChannelConfig::new`]).
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    pub certs: CertSource,
    pub verify: PeerVerification,
    /// Also accept TLS 1.2 (AEAD suites only), for kernels whose kTLS lacks 1.3.
    pub allow_tls12: bool,
    /// After the mutual proof, both gateways leave TLS and continue in plain
    /// TCP on the same connection (trusted private circuits only).
    pub plaintext_after_auth: bool,
    /// Deadline from the TCP connection to a verified proof.
    pub proof_timeout: Duration,
    /// Offer (CONS) and choose (PROD) ChaCha20-Poly1305 first instead of
    /// AES-128-GCM: set when this gateway's kernel TLS cannot take new keys,
    /// so that long streams stay on kernel TLS (ChaCha20-Poly1305 has no
    /// practical per-key limit, AES-GCM needs key updates).
    pub prefer_chacha20: bool,
    /// Test only: records sealed under one AES-GCM key before a key update,
    /// instead of [`AES_GCM_RECORD_LIMIT`], so that tests see many updates
    /// in a few MiB.
    pub aes_gcm_record_limit: Option<u64>,
}

impl ChannelSettings {
    /// Secure defaults with a self-signed certificate kept in `dir`.
    pub fn self_signed(dir: impl Into<PathBuf>) -> Self {
        ChannelSettings {
            certs: CertSource::SelfSigned {
                dir: dir.into(),
                names: Vec::new(),
            },
            verify: PeerVerification::None,
            allow_tls12: false,
            plaintext_after_auth: false,
            proof_timeout: DEFAULT_PROOF_TIMEOUT,
            prefer_chacha20: false,
            aes_gcm_record_limit: None,
        }
    }
}

/// A validated channel configuration, shared by every connection.
#[derive(Clone)]
pub struct ChannelConfig {
    pub(super) server: Arc<ServerConfig>,
    pub(super) client: Arc<ClientConfig>,
    pub(super) plaintext_after_auth: bool,
    pub(super) proof_timeout: Duration,
    pub(super) failures: Arc<ChannelFailures>,
    pub(super) key_updates: Arc<KeyUpdates>,
    pub(super) aes_gcm_record_limit: u64,
    identity: Arc<ChannelIdentity>,
    verify: PeerVerification,
}

impl fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("fingerprint", &self.fingerprint())
            .field("verify", &self.verify)
            .field("plaintext_after_auth", &self.plaintext_after_auth)
            .field("proof_timeout", &self.proof_timeout)
            .finish_non_exhaustive()
    }
}

impl ChannelConfig {
    /// Loads (or generates) the certificate and builds the TLS configurations.
    pub fn new(settings: ChannelSettings) -> Result<Self, ChannelError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = if settings.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        Self::build(settings, versions)
    }

    /// Test hook: a gateway end that speaks TLS 1.2 only (like one whose TLS
    /// stack or kernel lacks 1.3), to exercise the TLS 1.2 opt-in end to
    /// end. Not for production use.
    #[doc(hidden)]
    pub fn new_tls12_only(settings: ChannelSettings) -> Result<Self, ChannelError> {
        Self::build(settings, &[&rustls::version::TLS12])
    }

    fn build(
        settings: ChannelSettings,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Self, ChannelError> {
        let provider = Arc::new(provider(settings.prefer_chacha20));
        let identity = Arc::new(ChannelIdentity::new(
            settings.certs.clone(),
            Arc::clone(&provider),
        )?);
        let tls_err =
            |what: &str, err: rustls::Error| ChannelError::config(format!("{what}: {err}"));
        let algorithms = provider.signature_verification_algorithms;

        let server_builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| tls_err("TLS versions", e))?;
        let server_builder = match &settings.verify {
            PeerVerification::None => server_builder.with_no_client_auth(),
            PeerVerification::Pinned(pins) => {
                server_builder.with_client_cert_verifier(Arc::new(Pinned {
                    pins: pins.clone(),
                    algorithms,
                }))
            }
            PeerVerification::Ca { roots_pem } => {
                let roots = load_roots(roots_pem)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
                        .build()
                        .map_err(|e| ChannelError::config(format!("client verifier: {e}")))?;
                server_builder.with_client_cert_verifier(verifier)
            }
        };
        // The certificate through a resolver, so a reload can rotate it.
        let mut server = server_builder.with_cert_resolver(identity.clone());
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.max_early_data_size = 0;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Our own order wins only when it matters to our kernel TLS.
        server.ignore_client_order = settings.prefer_chacha20;

        let client_builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| tls_err("TLS versions", e))?;
        let server_verifier: Arc<dyn ServerCertVerifier> = match &settings.verify {
            PeerVerification::None => Arc::new(AnyCertificate { algorithms }),
            PeerVerification::Pinned(pins) => Arc::new(Pinned {
                pins: pins.clone(),
                algorithms,
            }),
            PeerVerification::Ca { roots_pem } => {
                let roots = load_roots(roots_pem)?;
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| ChannelError::config(format!("server verifier: {e}")))?
            }
        };
        let mut client = client_builder
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_cert_resolver(identity.clone());
        client.enable_secret_extraction = true;
        client.resumption = Resumption::disabled();
        client.alpn_protocols = vec![ALPN.to_vec()];

        if settings.allow_tls12 {
            tracing::warn!(
                "channel: TLS 1.2 is allowed on the data channel (opt-in): use it only for peers or \
                 kernels without TLS 1.3; TLS 1.2 connections get no key update, so the AES-GCM \
                 usage limit is not enforced on them"
            );
        }
        if settings.plaintext_after_auth {
            tracing::warn!(
                "channel: PLAINTEXT AFTER AUTHENTICATION is enabled: after the mutual proof, session data \
                 crosses the WAN unencrypted and unauthenticated; use only on trusted private circuits"
            );
        }
        Ok(ChannelConfig {
            server: Arc::new(server),
            client: Arc::new(client),
            plaintext_after_auth: settings.plaintext_after_auth,
            proof_timeout: settings.proof_timeout,
            failures: Arc::new(ChannelFailures::default()),
            key_updates: Arc::new(KeyUpdates::default()),
            aes_gcm_record_limit: settings
                .aes_gcm_record_limit
                .unwrap_or(AES_GCM_RECORD_LIMIT),
            identity,
            verify: settings.verify,
        })
    }

    /// SHA-256 fingerprint of this gateway's certificate in use (for the
    /// peer to pin).
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// This gateway's certificate and key: read again and swapped in by a
    /// reload (rotation in place, see [`ChannelIdentity`]).
    pub fn identity(&self) -> &Arc<ChannelIdentity> {
        &self.identity
    }

    /// Reads the certificate files again and uses them for every handshake
    /// from now on (established connections go on); returns the
    /// fingerprints before and after. On error nothing changes.
    pub fn reload_certificate(&self) -> Result<(Fingerprint, Fingerprint), ChannelError> {
        let loaded = self.identity.load()?;
        Ok(self.identity.install(loaded))
    }

    /// Counters of refused connections, by reason.
    pub fn failures(&self) -> &Arc<ChannelFailures> {
        &self.failures
    }

    /// Counters of TLS key updates on this configuration's connections.
    pub fn key_updates(&self) -> &Arc<KeyUpdates> {
        &self.key_updates
    }

    /// Uses `failures` (e.g. one registry shared by several configurations).
    pub fn with_failures(mut self, failures: Arc<ChannelFailures>) -> Self {
        self.failures = failures;
        self
    }

    /// Whether this gateway leaves TLS after the proof.
    pub fn plaintext_after_auth(&self) -> bool {
        self.plaintext_after_auth
    }
}

/// The ring provider with AEAD suites only, fastest first (AES-128-GCM,
/// AES-256-GCM, ChaCha20-Poly1305), or with ChaCha20-Poly1305 first when
/// `prefer_chacha20`. (rustls implements no other kind.)
fn provider(prefer_chacha20: bool) -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    if prefer_chacha20 {
        cipher_suites.sort_by_key(|suite| {
            !matches!(
                suite.suite(),
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
    CryptoProvider {
        cipher_suites,
        ..rustls::crypto::ring::default_provider()
    }
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, ChannelError> {
    pem::read_roots(path)
        .map_err(|e| ChannelError::config(format!("the CA file {}: {e}", path.display())))
}

/// Accepts any server certificate (the handshake signature is still checked
/// against it): the per-session proof authenticates the peer instead.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

/// Accepts only certificates with a pinned fingerprint (either direction).
#[derive(Debug)]
struct Pinned {
    pins: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = Fingerprint::of_der(end_entity.as_ref());
        if self.pins.contains(&seen) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

macro_rules! signatures_via {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    signatures_via!();
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }
    signatures_via!();
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }
    signatures_via!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn self_signed_once_with_private_key_and_fingerprint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = ChannelConfig::new(ChannelSettings::self_signed(dir.path().join("tls"))).unwrap();
        let mode = std::fs::metadata(dir.path().join("tls").join(CHANNEL_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = ChannelConfig::new(ChannelSettings::self_signed(dir.path().join("tls"))).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            Fingerprint::parse(&a.fingerprint().to_string()).unwrap(),
            a.fingerprint()
        );
        assert!(Fingerprint::parse("AB:CD").is_err());
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ChannelConfig::new(ChannelSettings::self_signed(dir.path())).unwrap();
        let key = dir.path().join(CHANNEL_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ChannelConfig::new(ChannelSettings::self_signed(dir.path())).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
