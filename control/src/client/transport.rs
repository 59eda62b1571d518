//! The client's transport and identity: the bearer token on every call
//! ([`TokenInterceptor`]), the connection options ([`ClientOptions`]: server,
//! pinned certificate, token), an optional client certificate
//! ([`ClientIdentity`]), and what a refused TLS handshake means for the user.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::ClientError;

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct TokenInterceptor(pub(super) Option<MetadataValue<Ascii>>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An authenticated channel.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

/// How to reach a control server.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// "host:port" of the control server.
    pub s2cs: String,
    /// The server certificate (PEM) to pin.
    pub server_cert: Option<PathBuf>,
    /// The server certificate (PEM) itself (takes precedence).
    pub server_cert_pem: Option<Vec<u8>>,
    /// TLS name to verify (default: the host part of `s2cs`).
    pub tls_domain: Option<String>,
    /// Bearer token.
    pub token: Option<Zeroizing<String>>,
    /// Client certificate and key, for servers that require one.
    pub client_identity: Option<ClientIdentity>,
    /// Plaintext (only for servers started with TLS disabled).
    pub plaintext: bool,
}

/// A client certificate chain and its private key (PEM), checked when
/// loaded: presented to control servers that require client certificates.
#[derive(Clone)]
pub struct ClientIdentity {
    pub(super) cert_pem: Vec<u8>,
    pub(super) key_pem: Zeroizing<Vec<u8>>,
}

impl ClientIdentity {
    /// Reads `cert` and `key` (PEM). The key must be readable by its owner
    /// only (mode 0600), like every other secret the control plane reads.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| ClientError::Io {
                context: format!("reading {what} {}", path.display()),
                source: e,
            })
        };
        let cert_pem = read(cert, "client certificate")?;
        crate::auth::check_private_file(key, "client key")
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let key_pem = Zeroizing::new(read(key, "client key")?);
        Self::from_pem(cert_pem, key_pem.to_vec()).map_err(|e| match e {
            ClientError::Invalid(reason) => ClientError::Invalid(format!(
                "{reason} (certificate {}, key {})",
                cert.display(),
                key.display()
            )),
            other => other,
        })
    }

    /// Checks that `cert_pem` holds a certificate chain and `key_pem` a
    /// private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, ClientError> {
        let key_pem = Zeroizing::new(key_pem);
        let mut certs = 0;
        for c in CertificateDer::pem_slice_iter(&cert_pem) {
            c.map_err(|e| {
                ClientError::Invalid(format!("the client certificate is not valid PEM: {e}"))
            })?;
            certs += 1;
        }
        if certs == 0 {
            return Err(ClientError::Invalid(
                "the client certificate file holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)".into(),
            ));
        }
        // The parsed key is dropped at once; only the PEM is kept (zeroized).
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            ClientError::Invalid(format!(
                "the client key file holds no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {e}"
            ))
        })?;
        Ok(ClientIdentity { cert_pem, key_pem })
    }
}

/// What a TLS alert from the server (`alert`, e.g. "received fatal alert:
/// UnknownCA") means for the user.
pub(super) fn tls_refusal_hint(alert: &str) -> &'static str {
    const NO_CERT: &[&str] = &["CertificateRequired", "HandshakeFailure"];
    const BAD_CERT: &[&str] = &[
        "UnknownCA",
        "BadCertificate",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateExpired",
        "CertificateRevoked",
        "DecryptError",
    ];
    if NO_CERT.iter().any(|a| alert.contains(a)) {
        "it requires a client certificate: pass --client-cert and --client-key"
    } else if BAD_CERT.iter().any(|a| alert.contains(a)) {
        "it does not accept this client certificate: not signed by a CA it trusts, expired, or not for client authentication"
    } else {
        "see the server's log"
    }
}

/// The message of a call that failed because the server refused the TLS
/// handshake with `alert`.
pub(super) fn refused_message(message: &str, alert: &str) -> String {
    format!(
        "{message}; the server refused the TLS handshake ({alert}): {}",
        tls_refusal_hint(alert)
    )
}

/// The host part of "host:port" / "[v6]:port".
pub fn host_of(s2cs: &str) -> &str {
    let h = match s2cs.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => s2cs,
    };
    h.trim_start_matches('[').trim_end_matches(']')
}
