//! Control-channel TLS material: the operator's certificate and key, or a
//! self-signed certificate generated on first start with rcgen (key file
//! mode 0600) and reused afterwards. [`TlsMaterial::fingerprint`] is the
//! SHA-256 of the certificate (DER), for clients to check and pin.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::auth::check_private_file;
use crate::config::TlsConfig;
use crate::errors::ControlError;

/// File names inside the self-signed directory.
pub const CONTROL_CERT_FILE: &str = "control-cert.pem";
/// Key file name inside the self-signed directory.
pub const CONTROL_KEY_FILE: &str = "control-key.pem";

/// Loaded certificate, key and optional client CA.
pub struct TlsMaterial {
    /// Server certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    /// CA for client certificates (PEM), if required.
    pub client_ca_pem: Option<Vec<u8>>,
    /// SHA-256 of the leaf certificate, "AB:CD:...".
    pub fingerprint: String,
    /// Where the certificate is (for the operator to hand to clients).
    pub cert_path: PathBuf,
}

impl TlsMaterial {
    /// The SHA-256 fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The private key (PEM).
    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

/// SHA-256 fingerprint of the first certificate in a PEM blob.
pub fn fingerprint_pem(pem: &[u8]) -> Result<String, ControlError> {
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| ControlError::Tls {
            reason: "no certificate in PEM".into(),
        })?
        .map_err(|e| ControlError::Tls {
            reason: format!("bad certificate PEM: {e}"),
        })?;
    Ok(fingerprint_der(der.as_ref()))
}

pub(crate) fn fingerprint_der(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ControlError> {
    std::fs::read(path)
        .map_err(|e| ControlError::io(format!("reading {what} {}", path.display()), e))
}

/// Loads the operator's files or the self-signed certificate (generating it
/// on first start). `state_dir` is the fallback home of the self-signed pair.
pub fn load_or_generate(
    cfg: &TlsConfig,
    state_dir: Option<&Path>,
) -> Result<TlsMaterial, ControlError> {
    let client_ca_pem = match &cfg.client_ca {
        Some(p) => Some(read(p, "client CA")?),
        None => None,
    };
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        check_private_file(key, "TLS key")?;
        let cert_pem = read(cert, "TLS certificate")?;
        let key_pem = Zeroizing::new(read(key, "TLS key")?);
        let fingerprint = fingerprint_pem(&cert_pem)?;
        return Ok(TlsMaterial {
            cert_pem,
            key_pem,
            client_ca_pem,
            fingerprint,
            cert_path: cert.clone(),
        });
    }
    let dir = match (&cfg.self_signed_dir, state_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => s.join("tls"),
        (None, None) => {
            return Err(ControlError::Config {
                reason: "no TLS certificate: set tls.cert and tls.key, or a state_dir / tls.self_signed_dir where a self-signed one is generated".into(),
            });
        }
    };
    let cert_path = dir.join(CONTROL_CERT_FILE);
    let key_path = dir.join(CONTROL_KEY_FILE);
    if !cert_path.exists() {
        generate_self_signed(&dir, &cfg.names)?;
    }
    check_private_file(&key_path, "TLS key")?;
    let cert_pem = read(&cert_path, "TLS certificate")?;
    let key_pem = Zeroizing::new(read(&key_path, "TLS key")?);
    let fingerprint = fingerprint_pem(&cert_pem)?;
    Ok(TlsMaterial {
        cert_pem,
        key_pem,
        client_ca_pem,
        fingerprint,
        cert_path,
    })
}

fn generate_self_signed(dir: &Path, extra: &[String]) -> Result<(), ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ControlError::io(format!("creating {}", dir.display()), e))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(extra.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| ControlError::Tls {
        reason: format!("generating a self-signed certificate: {e}"),
    })?;
    let key_pem = Zeroizing::new(ck.signing_key.serialize_pem());
    let write = |name: &str, data: &[u8], mode: u32| -> Result<(), ControlError> {
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .map_err(|e| ControlError::io(format!("creating {}", p.display()), e))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(|e| ControlError::io(format!("writing {}", p.display()), e))
    };
    // Key first: a crash in between leaves no certificate, so the next start
    // regenerates (create_new would then fail on the key: remove a stray one).
    let _ = std::fs::remove_file(dir.join(CONTROL_KEY_FILE));
    write(CONTROL_KEY_FILE, key_pem.as_bytes(), 0o600)?;
    write(CONTROL_CERT_FILE, ck.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        dir = %dir.display(),
        fingerprint = %fingerprint_der(ck.cert.der()),
        "generated a self-signed control-channel certificate"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn self_signed_is_generated_once_with_private_key() {
        let d = tempfile::tempdir().unwrap();
        let cfg = TlsConfig::default();
        let a = load_or_generate(&cfg, Some(d.path())).unwrap();
        let key = d.path().join("tls").join(CONTROL_KEY_FILE);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_generate(&cfg, Some(d.path())).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
    }
}
