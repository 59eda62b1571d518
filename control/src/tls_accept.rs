//! The control server's TLS, done here rather than by tonic so that its
//! certificate can be rotated while it serves: [`ControlIdentity`] holds
//! the certificate every new handshake presents (a reload reads the files
//! again and swaps it in; established connections, an open `watch` among
//! them, keep theirs), and [`incoming`] accepts TCP connections, runs each
//! TLS handshake in a task of its own under a deadline (a slow or silent
//! client holds up no one), and hands the finished streams to tonic. ALPN
//! offers `h2`, which gRPC clients (grpcio among them) require.
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::errors::ControlError;
use crate::tls::TlsMaterial;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 512;

fn tls_error(reason: String) -> ControlError {
    ControlError::Tls { reason }
}

/// A certificate and key read and checked (the key matches the
/// certificate), with its fingerprint.
pub struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    fingerprint: String,
}

impl LoadedCertificate {
    /// Parses and checks `material`'s certificate chain and key.
    pub fn from_material(material: &TlsMaterial) -> Result<LoadedCertificate, ControlError> {
        let chain = CertificateDer::pem_slice_iter(&material.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(format!("certificate {}: {e}", material.cert_path.display())))?;
        if chain.is_empty() {
            return Err(tls_error(format!(
                "certificate {}: no certificate in the file",
                material.cert_path.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(material.key_pem())
            .map_err(|e| tls_error(format!("the control certificate's key: {e}")))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            tls_error(format!(
                "certificate {} and its key: {e}",
                material.cert_path.display()
            ))
        })?;
        Ok(LoadedCertificate {
            key: Arc::new(key),
            fingerprint: material.fingerprint.clone(),
        })
    }

    /// Its SHA-256 fingerprint, "AB:CD:...".
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The certificate new handshakes present.
pub struct ControlIdentity {
    current: RwLock<Arc<LoadedCertificate>>,
}

impl fmt::Debug for ControlIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlIdentity")
            .field("fingerprint", &self.current().fingerprint)
            .finish()
    }
}

impl ControlIdentity {
    pub fn new(loaded: LoadedCertificate) -> ControlIdentity {
        ControlIdentity {
            current: RwLock::new(Arc::new(loaded)),
        }
    }

    fn current(&self) -> Arc<LoadedCertificate> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Uses `loaded` from the next handshake on; returns the fingerprints
    /// before and after.
    pub fn install(&self, loaded: LoadedCertificate) -> (String, String) {
        let after = loaded.fingerprint.clone();
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let before = current.fingerprint.clone();
        *current = Arc::new(loaded);
        (before, after)
    }
}

impl ResolvesServerCert for ControlIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }
}

/// The rustls configuration of the control server: the certificate from
/// `identity`, client certificates of `client_ca_pem` required if given,
/// ALPN `h2`.
pub fn acceptor(
    identity: Arc<ControlIdentity>,
    client_ca_pem: Option<&[u8]>,
) -> Result<TlsAcceptor, ControlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS versions: {e}")))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| tls_error(format!("client CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_error(format!("client CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS connections accepted on `listener`, for tonic. Ends (releasing the
/// listener) when tonic drops it.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of descriptors and the like: pause, then go on.
                    tracing::warn!(error = %err, "control listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::debug!(%peer, "control listener: too many TLS handshakes in progress; closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let result = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await;
                drop(permit);
                match result {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "control TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "control TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
