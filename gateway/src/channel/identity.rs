//! This gateway's data-channel certificate and key: where they come from
//! ([`CertSource`]: a self-signed pair generated on first start into a
//! directory, key 0600, or the operator's PEM files), their SHA-256
//! [`Fingerprint`], what every handshake presents, both ways (a PROD
//! gateway's server certificate, a CONS gateway's client certificate), and
//! their rotation: [`ChannelIdentity::load`] reads
//! the files again and checks them without touching anything,
//! [`ChannelIdentity::install`] swaps them in for the handshakes that start
//! afterwards. Established connections keep the keys they negotiated, so
//! rotation drops no stream.
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::digest;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::error::ChannelError;
use super::pem::{self, PemFileError};

/// A certificate and key read and checked, ready to be installed.
pub struct LoadedIdentity {
    key: Arc<CertifiedKey>,
    fingerprint: Fingerprint,
}

impl LoadedIdentity {
    /// The SHA-256 fingerprint of its certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// The certificate in use and where it comes from.
pub struct ChannelIdentity {
    source: CertSource,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<LoadedIdentity>>,
}

impl fmt::Debug for ChannelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelIdentity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ChannelIdentity {
    /// Reads (or, self-signed, generates on first start) the certificate
    /// and key of `source`.
    pub fn new(
        source: CertSource,
        provider: Arc<CryptoProvider>,
    ) -> Result<ChannelIdentity, ChannelError> {
        let loaded = read(&source, &provider)?;
        Ok(ChannelIdentity {
            source,
            provider,
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// Reads the certificate and key files again and checks them (the key
    /// file's mode, that the key matches the certificate); nothing changes
    /// until [`ChannelIdentity::install`].
    pub fn load(&self) -> Result<LoadedIdentity, ChannelError> {
        read(&self.source, &self.provider)
    }

    /// Uses `loaded` for every handshake from now on; returns the
    /// fingerprints before and after.
    pub fn install(&self, loaded: LoadedIdentity) -> (Fingerprint, Fingerprint) {
        let after = loaded.fingerprint;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let before = current.fingerprint;
        *current = Arc::new(loaded);
        (before, after)
    }

    /// The fingerprint of the certificate in use.
    pub fn fingerprint(&self) -> Fingerprint {
        self.current().fingerprint
    }

    fn current(&self) -> Arc<LoadedIdentity> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

fn read(source: &CertSource, provider: &CryptoProvider) -> Result<LoadedIdentity, ChannelError> {
    let (chain, key) = load_identity(source, provider)?;
    let fingerprint = Fingerprint::of_der(chain[0].as_ref());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ChannelError::config(format!("the channel's private key: {e}")))?;
    Ok(LoadedIdentity {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        fingerprint,
    })
}

impl ResolvesServerCert for ChannelIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }
}

impl ResolvesClientCert for ChannelIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Certificate file name in a self-signed directory.
pub const CHANNEL_CERT_FILE: &str = "channel-cert.pem";
/// Key file name in a self-signed directory (mode 0600).
pub const CHANNEL_KEY_FILE: &str = "channel-key.pem";
/// Where this gateway's certificate and key come from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// A self-signed certificate generated into `dir` on first start and
    /// reused afterwards; `names` are extra subject alternative names.
    SelfSigned { dir: PathBuf, names: Vec<String> },
    /// The operator's PEM files (the key file must not be group/world readable).
    Files { cert: PathBuf, key: PathBuf },
}

/// SHA-256 of a certificate (DER), for pinning.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Fingerprint(out)
    }

    /// Parses "AB:CD:..." or plain hex (64 digits).
    pub fn parse(text: &str) -> Result<Self, ChannelError> {
        text.parse()
            .map_err(|e: BadFingerprint| ChannelError::config(e.to_string()))
    }
}

/// Text that is not a SHA-256 fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a SHA-256 fingerprint: expected 64 hex digits, optionally in pairs \
     separated by colons (AB:CD:...)"
)]
pub struct BadFingerprint {
    text: String,
}

impl std::str::FromStr for Fingerprint {
    type Err = BadFingerprint;

    /// Parses "AB:CD:..." or plain hex (64 digits), either case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint {
            text: text.to_owned(),
        };
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

pub(super) fn load_identity(
    source: &CertSource,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ChannelError> {
    let (cert, key) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::SelfSigned { dir, names } => {
            let cert = dir.join(CHANNEL_CERT_FILE);
            let key = dir.join(CHANNEL_KEY_FILE);
            if !cert.exists() {
                generate_self_signed(dir, names)?;
            }
            (cert, key)
        }
    };
    let file_err = |path: &Path, what: &str, err: PemFileError| {
        ChannelError::config(format!("the {what} {}: {err}", path.display()))
    };
    // The key first: a key others can read is refused whatever else is wrong.
    let key_der = pem::read_private_key(&key).map_err(|e| file_err(&key, "key file", e))?;
    let chain = pem::read_cert_chain(&cert).map_err(|e| file_err(&cert, "certificate file", e))?;
    pem::check_key_pair(&chain, &key_der, provider).map_err(|e| file_err(&key, "key file", e))?;
    Ok((chain, key_der))
}

fn generate_self_signed(dir: &Path, extra: &[String]) -> Result<(), ChannelError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ChannelError::config(format!("creating {}: {e}", dir.display())))?;
    let mut names = vec!["localhost".to_string(), "s2cs-gateway".to_string()];
    names.extend(extra.iter().cloned());
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ChannelError::config(format!("generating a self-signed certificate: {e}")))?;
    let key_pem = Zeroizing::new(generated.signing_key.serialize_pem());
    let write = |name: &str, data: &[u8], mode: u32| -> Result<(), ChannelError> {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| ChannelError::config(format!("creating {}: {e}", path.display())))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| ChannelError::config(format!("writing {}: {e}", path.display())))
    };
    // The key first: a crash in between leaves no certificate, so the next
    // start generates again (after removing the stray key).
    let _ = std::fs::remove_file(dir.join(CHANNEL_KEY_FILE));
    write(CHANNEL_KEY_FILE, key_pem.as_bytes(), 0o600)?;
    write(CHANNEL_CERT_FILE, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        dir = %dir.display(),
        fingerprint = %Fingerprint::of_der(generated.cert.der()),
        "channel: generated a self-signed certificate"
    );
    Ok(())
}
