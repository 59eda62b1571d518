//! Data-channel session secrets.
//!
//! [`SessionSecret`] is 32 bytes from the operating system's CSPRNG, has no
//! `Debug`/`Display` that shows it, and is zeroized on drop. The legacy
//! derivation ([`SessionSecret::legacy_from_uid`]) exists only for old
//! clients that know nothing of the secret fields: SciStream keyed its
//! data channel with the uid, so anyone who sees the uid knows the key. The
//! caller logs a warning whenever it is used, and the operator can forbid it.

use std::fmt;

use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::errors::ControlError;
use crate::types::SessionId;

/// Length of a session secret in bytes.
pub const SECRET_LEN: usize = 32;

/// A 32-byte data-channel secret.
#[derive(Clone)]
pub struct SessionSecret([u8; SECRET_LEN]);

impl Drop for SessionSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SessionSecret {
    /// A fresh secret from the OS CSPRNG.
    pub fn generate() -> Result<Self, ControlError> {
        let mut b = [0u8; SECRET_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut b)
            .map_err(|e| ControlError::Config {
                reason: format!("the OS random number generator failed: {e}"),
            })?;
        Ok(SessionSecret(b))
    }

    /// The legacy secret for clients that send none: SHA-256 of a fixed label
    /// and the uid. Weak by design (the uid is not secret); callers warn.
    pub fn legacy_from_uid(uid: &SessionId) -> Self {
        let mut h = Sha256::new();
        h.update(b"scistream-legacy-psk-v1:");
        h.update(uid.as_str().as_bytes());
        SessionSecret(h.finalize().into())
    }

    /// Builds a secret from bytes received on the wire (must be 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ControlError> {
        let arr: [u8; SECRET_LEN] =
            bytes
                .try_into()
                .map_err(|_| ControlError::InvalidArgument {
                    field: "channel_secret",
                    reason: format!("must be {SECRET_LEN} bytes, got {}", bytes.len()),
                })?;
        Ok(SessionSecret(arr))
    }

    /// The raw bytes (for the data plane and the wire; never log them).
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Hex encoding, for the 0600 persistence file only.
    pub(crate) fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex encoding written by [`Self::to_hex`].
    pub(crate) fn from_hex(s: &str) -> Result<Self, ControlError> {
        let mut v = hex::decode(s).map_err(|e| ControlError::InvalidArgument {
            field: "persisted secret",
            reason: e.to_string(),
        })?;
        let r = Self::from_bytes(&v);
        v.zeroize();
        r
    }
}

impl PartialEq for SessionSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SessionSecret {}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_differ_and_are_redacted() {
        let a = SessionSecret::generate().unwrap();
        let b = SessionSecret::generate().unwrap();
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert!(!shown.contains(&hex::encode(a.expose())));
        assert_eq!(shown, "SessionSecret(<redacted>)");
    }

    #[test]
    fn legacy_is_deterministic() {
        let uid = SessionId::parse("abc").unwrap();
        assert_eq!(
            SessionSecret::legacy_from_uid(&uid),
            SessionSecret::legacy_from_uid(&uid)
        );
        let other = SessionId::parse("abd").unwrap();
        assert_ne!(
            SessionSecret::legacy_from_uid(&uid),
            SessionSecret::legacy_from_uid(&other)
        );
    }

    #[test]
    fn wire_and_hex() {
        assert!(SessionSecret::from_bytes(&[1; 31]).is_err());
        let s = SessionSecret::from_bytes(&[7; 32]).unwrap();
        assert_eq!(SessionSecret::from_hex(&s.to_hex()).unwrap(), s);
    }
}
