//! The client's TLS to a control server. `--server-cert` names the server's
//! certificate (or a CA): a server that presents exactly one of the
//! certificates in that file is trusted whatever its extensions (a
//! self-signed certificate made by `openssl req -x509`, marked CA:TRUE and
//! often without a subject alternative name, as SciStream's own client
//! accepts it); any other certificate must chain to one of them and name the
//! server (CA verification). Either way the server proves it holds the key
//! (the handshake signature is checked).
//!
//! tonic's own TLS settings offer only CA verification, so the connection is
//! made here with tokio-rustls and handed to tonic as an established stream
//! ([`connect`]).
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::ClientError;

/// Trusts the pinned certificates as presented, and otherwise verifies
/// against them as CAs.
#[derive(Debug)]
pub(crate) struct PinnedOrCa {
    pinned: Vec<CertificateDer<'static>>,
    /// None when no certificate in the file can serve as a CA.
    ca: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedOrCa {
    pub(crate) fn new(pem: &[u8], provider: &Arc<CryptoProvider>) -> Result<Self, ClientError> {
        let pinned = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ClientError::Invalid(format!("the server certificate file is not PEM: {e}"))
            })?;
        if pinned.is_empty() {
            return Err(ClientError::Invalid(
                "the server certificate file holds no certificate".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &pinned {
            // A certificate that cannot be a trust anchor can still be pinned.
            let _ = roots.add(cert.clone());
        }
        let ca = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                .build()
                .ok()
        };
        Ok(PinnedOrCa {
            pinned,
            ca,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|pin| pin.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        let why = match &self.ca {
            Some(ca) => match ca.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(verified) => return Ok(verified),
                Err(err) => ca_refusal(&err, server_name),
            },
            None => "no certificate in the file can be a CA".to_string(),
        };
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(
            NotPinned(format!(
                "the server's certificate (SHA-256 {}) is not the one in --server-cert, nor \
                 signed by a CA in that file: {why}",
                crate::tls::fingerprint_der(end_entity.as_ref())
            )),
        ))))
    }

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
}

/// The server presented a certificate we do not trust, and why.
#[derive(Debug)]
struct NotPinned(String);

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPinned {}

/// Why CA verification refused a certificate, in words (rustls prints some
/// of its reasons only as Debug text).
fn ca_refusal(err: &rustls::Error, server_name: &ServerName<'_>) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "no CA in the file signed it".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName)
        | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => format!(
            "it does not name {} (pass --tls-domain NAME if the server is known by another name)",
            server_name.to_str()
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "it has expired".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet".to_string()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => "its signature is wrong".to_string(),
        _ => "it is not signed by a CA in the file for this server".to_string(),
    }
}

/// The rustls client configuration: the server verified by [`PinnedOrCa`],
/// our certificate presented if given, HTTP/2 by ALPN.
pub(crate) fn client_config(
    server_cert_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedOrCa::new(server_cert_pem, &provider)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Invalid(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| ClientError::Invalid(format!("client key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Invalid(format!(
                    "client certificate and key: {e} (does the client key belong to the client \
                     certificate?)"
                ))
            })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects `endpoint` (an `http://host:port` endpoint: TLS is done here)
/// over TLS with `config`, checking the server as `domain`.
pub(crate) async fn connect(
    endpoint: Endpoint,
    address: String,
    domain: String,
    config: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(Arc::new(config));
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, address, domain) = (connector.clone(), address.clone(), domain.clone());
            async move {
                let name = ServerName::try_from(domain.clone()).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("server name {domain:?}: {e}"),
                    )
                })?;
                let tcp = TcpStream::connect(&address).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}
