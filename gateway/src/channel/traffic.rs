//! TLS 1.3 traffic secrets after the handshake: taking them from rustls, and
//! the part of the key schedule a record layer needs to follow key updates
//! (RFC 8446 sections 7.1–7.3).
//!
//! rustls' `dangerous_extract_secrets` hands over the current key and IV but
//! not the traffic secret they come from, and a KeyUpdate derives the next
//! keys from that secret. So each connection gets its own [`SecretCapture`],
//! a `rustls::KeyLog` that keeps exactly `CLIENT_TRAFFIC_SECRET_0` and
//! `SERVER_TRAFFIC_SECRET_0` of that one connection (no other label is even
//! offered to it), in memory that is wiped on drop. Nothing is ever written
//! or logged. The record layer checks that the captured secret yields the
//! very key and IV rustls extracted before it relies on it.
//!
//! Derivations, all with HKDF-Expand-Label over ring's HKDF and the suite's
//! hash:
//! - next secret = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
//! - key = HKDF-Expand-Label(secret, "key", "", key_length)
//! - iv = HKDF-Expand-Label(secret, "iv", "", 12)
use std::fmt;
use std::sync::Mutex;

use ring::hkdf;
use zeroize::Zeroizing;

/// Deriving a key or secret failed: a length HKDF cannot produce (cannot
/// happen with the suites' lengths). The record layer reports it as
/// `RecordError::KeySchedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("TLS key schedule: a length the key derivation cannot produce")]
pub struct KeyScheduleError;

/// The KeyLog label of the client's first application traffic secret.
const CLIENT_TRAFFIC_SECRET_0: &str = "CLIENT_TRAFFIC_SECRET_0";
/// The KeyLog label of the server's first application traffic secret.
const SERVER_TRAFFIC_SECRET_0: &str = "SERVER_TRAFFIC_SECRET_0";
/// Longest hash output of a TLS 1.3 suite we negotiate (SHA-384).
const MAX_SECRET: usize = 48;
/// AEAD nonce / IV length of every TLS 1.3 suite.
pub const IV_LEN: usize = 12;

/// The hash of a TLS 1.3 cipher suite (the key schedule's HKDF hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficHash {
    Sha256,
    Sha384,
}

impl TrafficHash {
    /// The hash of a negotiated rustls suite; None for TLS 1.2 suites or a
    /// hash no TLS 1.3 suite of ours uses.
    pub fn of_suite(suite: rustls::SupportedCipherSuite) -> Option<Self> {
        use rustls::crypto::hash::HashAlgorithm;
        match suite.tls13()?.common.hash_provider.algorithm() {
            HashAlgorithm::SHA256 => Some(TrafficHash::Sha256),
            HashAlgorithm::SHA384 => Some(TrafficHash::Sha384),
            _ => None,
        }
    }

    /// Hash.length.
    pub fn len(self) -> usize {
        match self {
            TrafficHash::Sha256 => 32,
            TrafficHash::Sha384 => 48,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            TrafficHash::Sha256 => hkdf::HKDF_SHA256,
            TrafficHash::Sha384 => hkdf::HKDF_SHA384,
        }
    }
}

/// One direction's application traffic secret. Wiped on drop; deliberately
/// without `Debug` or `Clone`.
pub struct TrafficSecret {
    hash: TrafficHash,
    bytes: Zeroizing<[u8; MAX_SECRET]>,
}

/// The key and IV derived from a traffic secret. Wiped on drop.
pub struct PacketKeys {
    pub key: Zeroizing<Vec<u8>>,
    pub iv: Zeroizing<[u8; IV_LEN]>,
}

/// A length for `ring::hkdf::Prk::expand`.
struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl TrafficSecret {
    /// A secret of `hash`'s length.
    pub fn new(hash: TrafficHash, secret: &[u8]) -> Result<Self, KeyScheduleError> {
        if secret.len() != hash.len() {
            return Err(KeyScheduleError);
        }
        let mut bytes = Zeroizing::new([0u8; MAX_SECRET]);
        bytes[..secret.len()].copy_from_slice(secret);
        Ok(TrafficSecret { hash, bytes })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.hash.len()]
    }

    /// HKDF-Expand-Label(this secret, `label`, "", out.len()) into `out`.
    fn expand_label(&self, label: &[u8], out: &mut [u8]) -> Result<(), KeyScheduleError> {
        const PREFIX: &[u8] = b"tls13 ";
        let length = u16::try_from(out.len()).map_err(|_| KeyScheduleError)?;
        let label_len = u8::try_from(PREFIX.len() + label.len()).map_err(|_| KeyScheduleError)?;
        // struct HkdfLabel { uint16 length; opaque label<7..255>; opaque context<0..255> }
        let length = length.to_be_bytes();
        let info: [&[u8]; 5] = [&length, &[label_len], PREFIX, label, &[0]];
        let prk = hkdf::Prk::new_less_safe(self.hash.hkdf(), self.as_slice());
        prk.expand(&info, OutLen(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| KeyScheduleError)
    }

    /// The next generation: HKDF-Expand-Label(secret, "traffic upd", "", Hash.length).
    pub fn next(&self) -> Result<TrafficSecret, KeyScheduleError> {
        let mut bytes = Zeroizing::new([0u8; MAX_SECRET]);
        self.expand_label(b"traffic upd", &mut bytes[..self.hash.len()])?;
        Ok(TrafficSecret {
            hash: self.hash,
            bytes,
        })
    }

    /// A second copy, for tests that need two ends with the same keys.
    #[cfg(test)]
    pub fn duplicate(&self) -> TrafficSecret {
        TrafficSecret {
            hash: self.hash,
            bytes: self.bytes.clone(),
        }
    }

    /// The record protection key (`key_len` bytes) and IV of this secret.
    pub fn packet_keys(&self, key_len: usize) -> Result<PacketKeys, KeyScheduleError> {
        let mut key = Zeroizing::new(vec![0u8; key_len]);
        self.expand_label(b"key", &mut key)?;
        let mut iv = Zeroizing::new([0u8; IV_LEN]);
        self.expand_label(b"iv", &mut iv[..])?;
        Ok(PacketKeys { key, iv })
    }
}

/// Both first application traffic secrets of one connection.
pub struct TrafficSecrets {
    pub client: TrafficSecret,
    pub server: TrafficSecret,
}

/// A secret as rustls logged it, before the suite's hash is known.
struct RawSecret {
    len: usize,
    bytes: Zeroizing<[u8; MAX_SECRET]>,
}

#[derive(Default)]
struct Captured {
    client: Option<RawSecret>,
    server: Option<RawSecret>,
}

/// A per-connection `rustls::KeyLog` that keeps the two application traffic
/// secrets of its one connection, and nothing else. Install it as the
/// `key_log` of a configuration used for exactly one connection.
#[derive(Default)]
pub struct SecretCapture {
    captured: Mutex<Captured>,
}

impl fmt::Debug for SecretCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("SecretCapture").finish_non_exhaustive()
    }
}

impl rustls::KeyLog for SecretCapture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET_0 || label == SERVER_TRAFFIC_SECRET_0
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if secret.len() > MAX_SECRET {
            return;
        }
        let mut bytes = Zeroizing::new([0u8; MAX_SECRET]);
        bytes[..secret.len()].copy_from_slice(secret);
        let raw = RawSecret {
            len: secret.len(),
            bytes,
        };
        let mut captured = self
            .captured
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match label {
            CLIENT_TRAFFIC_SECRET_0 => captured.client = Some(raw),
            SERVER_TRAFFIC_SECRET_0 => captured.server = Some(raw),
            _ => {}
        }
    }
}

impl SecretCapture {
    /// Takes both secrets out (leaving none behind), as secrets of `hash`.
    pub fn take(&self, hash: TrafficHash) -> Result<TrafficSecrets, &'static str> {
        let mut captured = self
            .captured
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (client, server) = match (captured.client.take(), captured.server.take()) {
            (Some(client), Some(server)) => (client, server),
            _ => return Err("rustls did not hand over the TLS 1.3 application traffic secrets"),
        };
        let convert = |raw: RawSecret| {
            TrafficSecret::new(hash, &raw.bytes[..raw.len])
                .map_err(|_| "a TLS 1.3 traffic secret does not have the suite's hash length")
        };
        Ok(TrafficSecrets {
            client: convert(client)?,
            server: convert(server)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use rustls::KeyLog;

    use super::*;

    #[test]
    fn capture_keeps_only_the_two_application_secrets() {
        let capture = SecretCapture::default();
        for label in [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "EXPORTER_SECRET",
            "CLIENT_RANDOM",
        ] {
            assert!(!capture.will_log(label), "{label} must not be captured");
        }
        assert!(capture.will_log(CLIENT_TRAFFIC_SECRET_0));
        assert!(capture.will_log(SERVER_TRAFFIC_SECRET_0));
        assert!(capture.take(TrafficHash::Sha256).is_err(), "nothing yet");
        capture.log(CLIENT_TRAFFIC_SECRET_0, &[0; 32], &[1; 32]);
        capture.log(SERVER_TRAFFIC_SECRET_0, &[0; 32], &[2; 32]);
        assert!(
            capture.take(TrafficHash::Sha384).is_err(),
            "length mismatch"
        );
        capture.log(CLIENT_TRAFFIC_SECRET_0, &[0; 32], &[1; 32]);
        capture.log(SERVER_TRAFFIC_SECRET_0, &[0; 32], &[2; 32]);
        let secrets = capture.take(TrafficHash::Sha256).unwrap();
        assert_eq!(secrets.client.as_slice(), &[1; 32]);
        assert_eq!(secrets.server.as_slice(), &[2; 32]);
        assert!(capture.take(TrafficHash::Sha256).is_err(), "taken once");
        assert!(!format!("{capture:?}").contains('1'));
    }

    #[test]
    fn generations_differ_and_are_deterministic() {
        for hash in [TrafficHash::Sha256, TrafficHash::Sha384] {
            let secret = TrafficSecret::new(hash, &vec![7u8; hash.len()]).unwrap();
            let next = secret.next().unwrap();
            assert_ne!(next.as_slice(), secret.as_slice());
            assert_eq!(next.as_slice(), secret.next().unwrap().as_slice());
            assert_eq!(next.as_slice().len(), hash.len());
            let keys = next.packet_keys(16).unwrap();
            assert_eq!(keys.key.len(), 16);
            assert_ne!(&keys.key[..], &secret.packet_keys(16).unwrap().key[..]);
        }
        assert!(TrafficSecret::new(TrafficHash::Sha256, &[0; 48]).is_err());
    }
}
