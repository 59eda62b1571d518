//! Reading the channel's PEM inputs: this gateway's certificate chain and
//! private key (which must not be readable by group or others) and the CA
//! certificates peers are verified against. Each reader says what is wrong
//! with the file ([`PemFileError`]); the caller names the file (and, in
//! `s2cs serve`, the option it came from). [`check_key_pair`] checks that a
//! key belongs to a chain's end-entity certificate.
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Why a PEM file cannot be used. The messages complete a sentence that
/// starts with the file's name ("/etc/s2cs/key.pem: has mode 644: ...").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemFileError {
    /// Missing, a directory, no permission, ...
    #[error("cannot be read: {0}")]
    Read(std::io::Error),
    /// A PEM section is damaged (bad base64, no end line).
    #[error("is not valid PEM: {0}")]
    Pem(String),
    /// Not PEM at all, or PEM without a certificate in it.
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// Not PEM at all, or PEM without a private key in it.
    #[error(
        "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey,
    /// A private key that others can read.
    #[error("has mode {mode:o}: a private key must not be readable by group or others (chmod 600)")]
    KeyExposed { mode: u32 },
    /// The certificate is not a well-formed X.509 end-entity certificate.
    #[error("holds a certificate that cannot be used: {0}")]
    BadCertificate(rustls::Error),
    /// A certificate that cannot be a trust anchor.
    #[error("holds a certificate that cannot be used as a CA: {0}")]
    BadCa(rustls::Error),
    /// The key type or encoding is not supported.
    #[error("holds a private key that cannot be used: {0}")]
    BadKey(rustls::Error),
    /// The key is not the certificate's.
    #[error("is not the private key of the certificate (their public keys differ)")]
    KeyMismatch,
}

/// Reads a certificate chain (end entity first, then intermediates).
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let bytes = std::fs::read(path).map_err(PemFileError::Read)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemFileError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(PemFileError::NoCertificate);
    }
    Ok(chain)
}

/// Reads a private key, refusing a file that group or others can read
/// (checked on the opened file, so it is the file that is read).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemFileError> {
    let mut file = std::fs::File::open(path).map_err(PemFileError::Read)?;
    let meta = file.metadata().map_err(PemFileError::Read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PemFileError::KeyExposed { mode });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(PemFileError::Read)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => PemFileError::NoKey,
        other => PemFileError::Pem(other.to_string()),
    })
}

/// Reads CA certificates (at least one) into a root store.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, PemFileError> {
    let mut roots = RootCertStore::empty();
    for cert in read_cert_chain(path)? {
        roots.add(cert).map_err(PemFileError::BadCa)?;
    }
    Ok(Arc::new(roots))
}

/// Checks that `key` can sign with `provider` and belongs to the end-entity
/// certificate of `chain` (the first one), which must parse.
pub fn check_key_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<(), PemFileError> {
    let end_entity = chain.first().ok_or(PemFileError::NoCertificate)?;
    ParsedCertificate::try_from(end_entity).map_err(PemFileError::BadCertificate)?;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(PemFileError::BadKey)?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        // A key whose public half rustls cannot derive is not refused here
        // (rustls does the same when it builds the configuration).
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(PemFileError::KeyMismatch),
        Err(other) => Err(PemFileError::BadCertificate(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt as _;

    fn write(path: &Path, data: &[u8], mode: u32) {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(data))
            .expect("write");
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn reads_a_matching_pair_and_refuses_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).expect("cert a");
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).expect("cert b");
        let (cert_a, key_a, key_b) = (
            dir.path().join("a.pem"),
            dir.path().join("a.key"),
            dir.path().join("b.key"),
        );
        write(&cert_a, a.cert.pem().as_bytes(), 0o644);
        write(&key_a, a.signing_key.serialize_pem().as_bytes(), 0o600);
        write(&key_b, b.signing_key.serialize_pem().as_bytes(), 0o600);

        let chain = read_cert_chain(&cert_a).expect("chain");
        let key = read_private_key(&key_a).expect("key");
        check_key_pair(&chain, &key, &provider()).expect("matching pair");
        let other = read_private_key(&key_b).expect("key b");
        assert!(matches!(
            check_key_pair(&chain, &other, &provider()),
            Err(PemFileError::KeyMismatch)
        ));

        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            read_cert_chain(&missing),
            Err(PemFileError::Read(_))
        ));
        assert!(matches!(
            read_private_key(&missing),
            Err(PemFileError::Read(_))
        ));
        // A key is not a certificate, and a certificate is not a key.
        assert!(matches!(
            read_cert_chain(&key_a),
            Err(PemFileError::NoCertificate)
        ));
        let cert_copy = dir.path().join("cert-as-key.pem");
        write(&cert_copy, a.cert.pem().as_bytes(), 0o600);
        assert!(matches!(
            read_private_key(&cert_copy),
            Err(PemFileError::NoKey)
        ));
        let text = dir.path().join("text");
        write(&text, b"hello\n", 0o600);
        assert!(matches!(
            read_roots(&text),
            Err(PemFileError::NoCertificate)
        ));
        let exposed = dir.path().join("exposed.key");
        write(&exposed, a.signing_key.serialize_pem().as_bytes(), 0o640);
        let err = read_private_key(&exposed).expect_err("group-readable key");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        // A damaged PEM section.
        let damaged = dir.path().join("damaged.pem");
        write(
            &damaged,
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            0o644,
        );
        assert!(matches!(
            read_cert_chain(&damaged),
            Err(PemFileError::Pem(_))
        ));
    }
}
