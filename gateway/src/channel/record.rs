//! The TLS record layer after the handshake, for the userspace data path and
//! shared with kernel TLS: the traffic keys rustls hands over
//! ([`Secrets::from_rustls`]), and [`Sealer`] / [`Opener`], which protect and
//! unprotect records in place in the caller's buffers with ring's AEADs, so a
//! relay can read 256 KiB from a socket straight into record slots, encrypt
//! in place and write once (and the reverse), without rustls' 4 KiB reads and
//! intermediate plaintext buffers.
//!
//! Framing (RFC 8446 section 5.2; RFC 5288 / 7905 for TLS 1.2):
//! - TLS 1.3: header `17 03 03 len`, nonce = iv XOR seq, AAD = header,
//!   ciphertext of `data || content type`, 16-byte tag;
//! - TLS 1.2 AES-GCM: header `type 03 03 len`, 8-byte explicit nonce, nonce =
//!   salt || explicit (we send iv XOR seq, like rustls), AAD = seq || type ||
//!   version || plaintext length;
//! - TLS 1.2 ChaCha20-Poly1305: as TLS 1.3's nonce, TLS 1.2's AAD.
//!
//! Sequence numbers never wrap (an error instead).
//!
//! TLS 1.3 key updates (RFC 8446 sections 4.6.3 and 7.2): each direction
//! keeps its application traffic secret ([`super::traffic`]) next to its key.
//! [`post_handshake`] recognises a KeyUpdate (which must end its record);
//! [`Opener::key_update`] then moves the read side to the next generation
//! (new key and IV, sequence number 0), and [`Sealer::key_update`] seals a
//! KeyUpdate under the current keys and then moves the write side. The relay
//! answers an `update_requested` before its next data record, and starts an
//! update itself when [`Sealer::key_update_due`] says the AES-GCM limit is
//! near. TLS 1.2 has no key update: a KeyUpdate there is refused.
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};
use zeroize::Zeroizing;

use super::traffic::{KeyScheduleError, TrafficSecret, TrafficSecrets};

/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record header length.
pub const HEADER: usize = 5;
const TAG: usize = 16;

/// TLS content types.
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;

/// Handshake message types that may follow the handshake.
pub const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
pub const HANDSHAKE_KEY_UPDATE: u8 = 24;
/// Handshake message header: type (1) and length (3).
const HANDSHAKE_HEADER: usize = 4;

/// Records sealed under one AES-GCM key before we update it (TLS 1.3): the
/// confidentiality limit rustls applies, below RFC 8446 section 5.5's
/// 2^24.5 full-size records.
pub const AES_GCM_RECORD_LIMIT: u64 = 1 << 24;

/// TLS versions the record layer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// AEAD ciphers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Length of the cipher's key in bytes.
    pub fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// Whether the cipher has a practical per-key record limit (AES-GCM,
    /// RFC 8446 section 5.5), so that long streams need key updates.
    pub fn has_record_limit(self) -> bool {
        self.record_limit() != u64::MAX
    }

    /// Records we seal under one key before a key update (TLS 1.3).
    fn record_limit(self) -> u64 {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => AES_GCM_RECORD_LIMIT,
            // No practical limit (RFC 8446 section 5.5).
            Cipher::Chacha20Poly1305 => u64::MAX,
        }
    }
}

/// The key, IV and next sequence number of one direction, and (TLS 1.3) the
/// traffic secret they were derived from. Wiped on drop.
pub struct DirectionKeys {
    pub cipher: Cipher,
    pub key: Zeroizing<Vec<u8>>,
    pub iv: Zeroizing<[u8; 12]>,
    pub seq: u64,
    /// The current application traffic secret (TLS 1.3 only).
    pub secret: Option<TrafficSecret>,
}

/// Both directions' keys, as rustls hands them over after the handshake.
pub struct Secrets {
    pub version: Version,
    pub tx: DirectionKeys,
    pub rx: DirectionKeys,
}

/// Why a record could not be processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Authentication failed (tampering or wrong keys): bad_record_mac.
    BadMac,
    /// Longer than the protocol allows.
    Overflow,
    /// Malformed (unknown type, empty, wrong version).
    Malformed,
    /// 2^64 records: the sequence number would wrap.
    SequenceExhausted,
    /// A handshake message other than NewSessionTicket or (TLS 1.3)
    /// KeyUpdate after the handshake.
    UnexpectedHandshake,
    /// A handshake message split over records after the handshake.
    FragmentedHandshake,
    /// A KeyUpdate with a bad length or request value.
    BadKeyUpdate,
    /// A KeyUpdate followed by more data in its record (RFC 8446 5.1).
    KeyUpdateNotAligned,
    /// A key update without a traffic secret to derive from (TLS 1.2).
    NoTrafficSecret,
    /// Deriving keys failed (cannot happen with valid lengths).
    KeySchedule,
}

impl From<KeyScheduleError> for RecordError {
    fn from(_: KeyScheduleError) -> Self {
        RecordError::KeySchedule
    }
}

impl RecordError {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordError::BadMac => "decryption failed (bad_record_mac)",
            RecordError::Overflow => "record too long",
            RecordError::Malformed => "malformed record",
            RecordError::SequenceExhausted => "record sequence number exhausted",
            RecordError::UnexpectedHandshake => "unexpected handshake message after the handshake",
            RecordError::FragmentedHandshake => {
                "a handshake message split over records after the handshake (unsupported)"
            }
            RecordError::BadKeyUpdate => "malformed TLS KeyUpdate (illegal_parameter)",
            RecordError::KeyUpdateNotAligned => {
                "TLS KeyUpdate not at the end of its record (unexpected_message)"
            }
            RecordError::NoTrafficSecret => {
                "TLS KeyUpdate without a traffic secret to derive the next keys from (TLS 1.2?)"
            }
            RecordError::KeySchedule => "TLS key schedule derivation failed",
        }
    }
}

impl Secrets {
    /// Takes over the traffic keys of a finished rustls connection. TLS 1.3
    /// needs `traffic`, this end's (tx, rx) application traffic secrets, so
    /// key updates can be followed; they must yield the extracted keys.
    pub fn from_rustls(
        version: ProtocolVersion,
        extracted: ExtractedSecrets,
        traffic: Option<(TrafficSecret, TrafficSecret)>,
    ) -> Result<Self, &'static str> {
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err("unsupported TLS version"),
        };
        let (tx_secret, rx_secret) = match (version, traffic) {
            (Version::Tls13, Some((tx, rx))) => (Some(tx), Some(rx)),
            (Version::Tls13, None) => return Err("TLS 1.3 keys without their traffic secrets"),
            (Version::Tls12, _) => (None, None),
        };
        let (tx_seq, tx) = extracted.tx;
        let (rx_seq, rx) = extracted.rx;
        Ok(Secrets {
            version,
            tx: direction(tx, tx_seq, tx_secret)?,
            rx: direction(rx, rx_seq, rx_secret)?,
        })
    }
}

impl TrafficSecrets {
    /// This end's (tx, rx) secrets: a client sends with the client secret.
    pub fn into_tx_rx(self, we_are_client: bool) -> (TrafficSecret, TrafficSecret) {
        if we_are_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        }
    }
}

fn direction(
    secrets: ConnectionTrafficSecrets,
    seq: u64,
    secret: Option<TrafficSecret>,
) -> Result<DirectionKeys, &'static str> {
    let (cipher, key, iv) = match &secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Cipher::Chacha20Poly1305, key, iv)
        }
        _ => return Err("unsupported cipher"),
    };
    let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| "unexpected IV length")?;
    let keys = DirectionKeys {
        cipher,
        key: Zeroizing::new(key.as_ref().to_vec()),
        iv: Zeroizing::new(iv),
        seq,
        secret,
    };
    check_secret(&keys)?;
    Ok(keys)
}

/// The traffic secret must yield exactly the key and IV rustls extracted
/// (else it belongs to another generation or connection).
fn check_secret(keys: &DirectionKeys) -> Result<(), &'static str> {
    let Some(secret) = &keys.secret else {
        return Ok(());
    };
    let derived = secret
        .packet_keys(keys.key.len())
        .map_err(|err| RecordError::from(err).as_str())?;
    if same(&derived.key, &keys.key) && same(&derived.iv[..], &keys.iv[..]) {
        Ok(())
    } else {
        Err(
            "the captured TLS traffic secret does not yield the extracted keys \
             (were the keys updated before the proof?)",
        )
    }
}

/// Equality without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One direction's record protection state.
struct Protection {
    version: Version,
    cipher: Cipher,
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// The secret `key` and `iv` come from (TLS 1.3): the base of the next
    /// generation.
    secret: Option<TrafficSecret>,
    /// Records to seal under one key before updating it.
    limit: u64,
}

impl Protection {
    fn new(version: Version, keys: DirectionKeys) -> Result<Self, &'static str> {
        let unbound =
            UnboundKey::new(keys.cipher.algorithm(), &keys.key).map_err(|_| "bad key length")?;
        Ok(Protection {
            version,
            cipher: keys.cipher,
            key: LessSafeKey::new(unbound),
            iv: *keys.iv,
            seq: keys.seq,
            limit: keys.cipher.record_limit(),
            secret: keys.secret,
        })
    }

    /// iv XOR seq (TLS 1.3, TLS 1.2 ChaCha20, and our TLS 1.2 GCM sender).
    fn xor_nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn explicit_nonce(&self) -> bool {
        self.version == Version::Tls12 && self.cipher != Cipher::Chacha20Poly1305
    }

    fn next_seq(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(())
    }

    /// Moves to the next generation of keys (RFC 8446 section 7.2): the next
    /// traffic secret, its key and IV, sequence number 0.
    fn update(&mut self) -> Result<(), RecordError> {
        let next = self
            .secret
            .as_ref()
            .ok_or(RecordError::NoTrafficSecret)?
            .next()?;
        let algorithm = self.cipher.algorithm();
        let keys = next.packet_keys(algorithm.key_len())?;
        let unbound =
            UnboundKey::new(algorithm, &keys.key).map_err(|_| RecordError::KeySchedule)?;
        self.key = LessSafeKey::new(unbound);
        self.iv = *keys.iv;
        self.seq = 0;
        self.secret = Some(next);
        Ok(())
    }
}

fn tls12_aad(seq: u64, content_type: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Protects outgoing records in place.
pub struct Sealer(Protection);

impl Sealer {
    pub fn new(version: Version, keys: DirectionKeys) -> Result<Self, &'static str> {
        Protection::new(version, keys).map(Sealer)
    }

    /// Whether the keys should be updated before sealing `records` more
    /// (TLS 1.3 with an AES-GCM suite, near [`AES_GCM_RECORD_LIMIT`]).
    pub fn key_update_due(&self, records: u64) -> bool {
        let p = &self.0;
        p.secret.is_some() && p.seq.saturating_add(records) > p.limit
    }

    /// A KeyUpdate record (sealed under the current keys), after which this
    /// sealer uses the next generation of keys. `update_requested` asks the
    /// peer to update its own sending keys in turn.
    pub fn key_update(&mut self, update_requested: bool) -> Result<Vec<u8>, RecordError> {
        if self.0.secret.is_none() {
            // Never announce an update we could not follow.
            return Err(RecordError::NoTrafficSecret);
        }
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(update_requested)];
        let record = self.seal_to_vec(CONTENT_HANDSHAKE, &message)?;
        self.0.update()?;
        Ok(record)
    }

    /// Updates the keys after `records` records instead of the AEAD's limit
    /// (the channel's test-only lowered limit; `u64::MAX`: never).
    pub fn set_key_update_limit(&mut self, records: u64) {
        self.0.limit = records;
    }

    /// Bytes before the plaintext in a record slot (header, explicit nonce).
    pub fn prefix(&self) -> usize {
        if self.0.explicit_nonce() {
            HEADER + 8
        } else {
            HEADER
        }
    }

    /// Bytes after the plaintext (inner content type in TLS 1.3, tag).
    pub fn suffix(&self) -> usize {
        match self.0.version {
            Version::Tls13 => 1 + TAG,
            Version::Tls12 => TAG,
        }
    }

    /// Turns `slot[prefix .. prefix + len]` (the plaintext, already in place)
    /// into one complete record of `content_type` starting at `slot[0]`;
    /// returns the record's length. `slot` must hold prefix + len + suffix.
    pub fn seal(
        &mut self,
        slot: &mut [u8],
        len: usize,
        content_type: u8,
    ) -> Result<usize, RecordError> {
        if len > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        let prefix = self.prefix();
        let total = prefix + len + self.suffix();
        let p = &mut self.0;
        let (outer_type, body_len) = match p.version {
            Version::Tls13 => (CONTENT_APPLICATION_DATA, total - HEADER),
            Version::Tls12 => (content_type, total - HEADER),
        };
        slot[0] = outer_type;
        slot[1] = 3;
        slot[2] = 3;
        slot[3..5].copy_from_slice(&(body_len as u16).to_be_bytes());
        let nonce = p.xor_nonce();
        let tag = match p.version {
            Version::Tls13 => {
                slot[prefix + len] = content_type;
                let (header, rest) = slot.split_at_mut(HEADER);
                p.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&header[..]),
                        &mut rest[..len + 1],
                    )
                    .map_err(|_| RecordError::Overflow)?
            }
            Version::Tls12 => {
                if p.explicit_nonce() {
                    slot[HEADER..HEADER + 8].copy_from_slice(&nonce[4..]);
                }
                let aad = tls12_aad(p.seq, content_type, len);
                p.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut slot[prefix..prefix + len],
                    )
                    .map_err(|_| RecordError::Overflow)?
            }
        };
        slot[total - TAG..total].copy_from_slice(tag.as_ref());
        p.next_seq()?;
        Ok(total)
    }

    /// One record carrying `payload` (at most [`MAX_PLAINTEXT`]), e.g. an alert.
    pub fn seal_to_vec(
        &mut self,
        content_type: u8,
        payload: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let prefix = self.prefix();
        let mut slot = vec![0u8; prefix + payload.len() + self.suffix()];
        slot[prefix..prefix + payload.len()].copy_from_slice(payload);
        let len = self.seal(&mut slot, payload.len(), content_type)?;
        slot.truncate(len);
        Ok(slot)
    }
}

/// Length of the record starting at `buf[0]` (header included), once its
/// header is there; checked against the protocol's maximum.
pub fn record_len(buf: &[u8], version: Version) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let body = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let max = match version {
        Version::Tls13 => MAX_PLAINTEXT + 256,
        Version::Tls12 => MAX_PLAINTEXT + 2048,
    };
    if body > max {
        return Err(RecordError::Overflow);
    }
    Ok(Some(HEADER + body))
}

/// What the handshake messages of a record received after the handshake ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostHandshake {
    /// Nothing (session tickets, which are never used).
    Ignore,
    /// A TLS 1.3 KeyUpdate: the peer's next records use its next keys.
    KeyUpdate { update_requested: bool },
}

/// Parses the plaintext of a handshake record received after the handshake
/// (RFC 8446 section 4.6): NewSessionTicket is ignored, KeyUpdate (TLS 1.3
/// only) must be the record's last message and hold one byte, 0
/// (update_not_requested) or 1 (update_requested). Anything else, and
/// messages split over records, are refused.
pub fn post_handshake(version: Version, payload: &[u8]) -> Result<PostHandshake, RecordError> {
    if payload.is_empty() {
        return Err(RecordError::Malformed);
    }
    let mut rest = payload;
    let mut outcome = PostHandshake::Ignore;
    while !rest.is_empty() {
        let Some((&[kind, l0, l1, l2], after)) = rest.split_first_chunk::<HANDSHAKE_HEADER>()
        else {
            return Err(RecordError::FragmentedHandshake);
        };
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        if after.len() < len {
            return Err(RecordError::FragmentedHandshake);
        }
        let (body, after) = after.split_at(len);
        rest = after;
        outcome = match (version, kind) {
            (_, HANDSHAKE_NEW_SESSION_TICKET) => PostHandshake::Ignore,
            (Version::Tls13, HANDSHAKE_KEY_UPDATE) if !rest.is_empty() => {
                return Err(RecordError::KeyUpdateNotAligned);
            }
            (Version::Tls13, HANDSHAKE_KEY_UPDATE) => match body {
                [0] => PostHandshake::KeyUpdate {
                    update_requested: false,
                },
                [1] => PostHandshake::KeyUpdate {
                    update_requested: true,
                },
                _ => return Err(RecordError::BadKeyUpdate),
            },
            _ => return Err(RecordError::UnexpectedHandshake),
        };
    }
    Ok(outcome)
}

/// Unprotects incoming records in place.
pub struct Opener(Protection);

impl Opener {
    pub fn new(version: Version, keys: DirectionKeys) -> Result<Self, &'static str> {
        Protection::new(version, keys).map(Opener)
    }

    /// The peer sent a KeyUpdate: its next records use the next generation.
    pub fn key_update(&mut self) -> Result<(), RecordError> {
        self.0.update()
    }

    /// The TLS version (for [`record_len`]).
    pub fn version(&self) -> Version {
        self.0.version
    }

    /// Decrypts the complete record in `record` (header included) in place;
    /// returns its content type and where its plaintext now lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), RecordError> {
        if record.len() < HEADER || record[1] != 3 || record[2] != 3 {
            return Err(RecordError::Malformed);
        }
        let p = &mut self.0;
        let result = match p.version {
            Version::Tls13 => {
                if record[0] == CONTENT_CHANGE_CIPHER_SPEC {
                    return Err(RecordError::Malformed);
                }
                if record[0] != CONTENT_APPLICATION_DATA || record.len() < HEADER + TAG + 1 {
                    return Err(RecordError::Malformed);
                }
                let nonce = p.xor_nonce();
                let (header, body) = record.split_at_mut(HEADER);
                let plain = p
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&header[..]),
                        body,
                    )
                    .map_err(|_| RecordError::BadMac)?;
                // Strip the zero padding; the last non-zero byte is the type.
                let end = plain
                    .iter()
                    .rposition(|b| *b != 0)
                    .ok_or(RecordError::Malformed)?;
                if end > MAX_PLAINTEXT {
                    return Err(RecordError::Overflow);
                }
                (plain[end], HEADER..HEADER + end)
            }
            Version::Tls12 => {
                let content_type = record[0];
                let explicit = if p.explicit_nonce() { 8 } else { 0 };
                if record.len() < HEADER + explicit + TAG {
                    return Err(RecordError::Malformed);
                }
                let len = record.len() - HEADER - explicit - TAG;
                if len > MAX_PLAINTEXT {
                    return Err(RecordError::Overflow);
                }
                let nonce = if explicit > 0 {
                    let mut nonce = [0u8; 12];
                    nonce[..4].copy_from_slice(&p.iv[..4]);
                    nonce[4..].copy_from_slice(&record[HEADER..HEADER + 8]);
                    nonce
                } else {
                    p.xor_nonce()
                };
                let aad = tls12_aad(p.seq, content_type, len);
                let start = HEADER + explicit;
                p.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut record[start..],
                    )
                    .map_err(|_| RecordError::BadMac)?;
                (content_type, start..start + len)
            }
        };
        p.next_seq()?;
        Ok(result)
    }
}

/// Helpers for the record layer's tests and the userspace relay's: a rustls
/// client and server after an in-memory handshake, and our keys for the client.
#[cfg(test)]
pub(super) mod test_support {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::{ClientConnection, Connection, ServerConnection, SupportedCipherSuite};

    use super::*;
    use crate::channel::traffic::{SecretCapture, TrafficHash};

    /// A client and a server that completed their handshake in memory (and
    /// exchanged a little data), with the client's traffic secrets captured.
    pub struct Handshaken {
        pub client: Connection,
        pub server: Connection,
        pub suite: SupportedCipherSuite,
        capture: Arc<SecretCapture>,
    }

    fn configs(suite: SupportedCipherSuite) -> (rustls::ClientConfig, rustls::ServerConfig) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .unwrap();
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..rustls::crypto::ring::default_provider()
        });
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        (client, server)
    }

    /// Moves everything `from` wants to write into `to`.
    pub fn transfer(from: &mut Connection, to: &mut Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut slice = &wire[..];
        while !slice.is_empty() {
            to.read_tls(&mut slice).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// What `conn` wants to send, as bytes.
    pub fn drain(conn: &mut Connection) -> Vec<u8> {
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Feeds `wire` to `conn`; returns the plaintext it yields and whether
    /// close_notify came.
    pub fn feed(conn: &mut Connection, wire: &[u8]) -> (Vec<u8>, bool) {
        let mut slice = wire;
        let mut got = Vec::new();
        let mut closed = false;
        while !slice.is_empty() {
            conn.read_tls(&mut slice).unwrap();
            closed = conn.process_new_packets().unwrap().peer_has_closed();
            let mut buf = [0u8; 4096];
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        (got, closed)
    }

    /// Opens every record in `wire` (our side), following key updates;
    /// returns the application data and the post-handshake events seen.
    pub fn open_all(opener: &mut Opener, wire: &mut [u8]) -> (Vec<u8>, Vec<PostHandshake>) {
        let mut plain = Vec::new();
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let len = record_len(&wire[pos..], opener.version()).unwrap().unwrap();
            let (ct, range) = opener.open(&mut wire[pos..pos + len]).unwrap();
            let body = &wire[pos + range.start..pos + range.end];
            match ct {
                CONTENT_APPLICATION_DATA => plain.extend_from_slice(body),
                CONTENT_HANDSHAKE => {
                    let event = post_handshake(opener.version(), body).unwrap();
                    if let PostHandshake::KeyUpdate { .. } = event {
                        opener.key_update().unwrap();
                    }
                    events.push(event);
                }
                other => panic!("unexpected content type {other}"),
            }
            pos += len;
        }
        (plain, events)
    }

    /// A handshake between a rustls client and server with only `suite`.
    pub fn handshake(suite: SupportedCipherSuite) -> Handshaken {
        let (mut client_cfg, server_cfg) = configs(suite);
        let capture = Arc::new(SecretCapture::default());
        client_cfg.key_log = capture.clone();
        let mut client = Connection::Client(
            ClientConnection::new(Arc::new(client_cfg), "localhost".try_into().unwrap()).unwrap(),
        );
        let mut server = Connection::Server(ServerConnection::new(Arc::new(server_cfg)).unwrap());
        while client.is_handshaking() || server.is_handshaking() {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
        // Some application data through rustls first, so sequence numbers are not 0.
        server.writer().write_all(b"warm-up").unwrap();
        transfer(&mut server, &mut client);
        let mut got = [0u8; 7];
        client.reader().read_exact(&mut got).unwrap();
        Handshaken {
            client,
            server,
            suite,
            capture,
        }
    }

    impl Handshaken {
        /// Takes the client's keys out of rustls (the client is consumed;
        /// the server goes on); `swap` hands over the wrong secrets.
        pub fn client_secrets(self, swap: bool) -> (Result<Secrets, &'static str>, Connection) {
            let version = self.client.protocol_version().unwrap();
            let traffic = TrafficHash::of_suite(self.suite)
                .map(|hash| self.capture.take(hash).unwrap().into_tx_rx(!swap));
            let extracted = match self.client {
                Connection::Client(client) => client.dangerous_extract_secrets().unwrap(),
                Connection::Server(_) => unreachable!("the client"),
            };
            (
                Secrets::from_rustls(version, extracted, traffic),
                self.server,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    //! Cross-checks against rustls itself: records rustls writes after the
    //! handshake open with [`Opener`], records [`Sealer`] writes are read by
    //! rustls, for every version and suite; key updates both ways, requested
    //! or not, initiated by either side; the KeyUpdate parser's refusals.
    use std::io::Write;

    use rustls::SupportedCipherSuite;
    use rustls::crypto::ring::cipher_suite as cs;

    use super::test_support::{drain, feed, handshake, open_all};
    use super::*;

    const TLS13: [SupportedCipherSuite; 3] = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    fn payload(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(7) ^ seed) as u8)
            .collect()
    }

    fn seal_all(sealer: &mut Sealer, data: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in data.chunks(MAX_PLAINTEXT) {
            wire.extend(sealer.seal_to_vec(CONTENT_APPLICATION_DATA, chunk).unwrap());
        }
        wire
    }

    /// A second copy of one direction's keys (for an opener of our own records).
    fn duplicate(keys: &DirectionKeys) -> DirectionKeys {
        DirectionKeys {
            cipher: keys.cipher,
            key: keys.key.clone(),
            iv: keys.iv.clone(),
            seq: keys.seq,
            secret: keys.secret.as_ref().map(TrafficSecret::duplicate),
        }
    }

    fn check_suite(suite: SupportedCipherSuite) {
        let (secrets, mut server) = handshake(suite).client_secrets(false);
        let secrets = secrets.unwrap();

        // rustls (server) -> Opener (client keys).
        let payload = payload(40_000, 0);
        server.writer().write_all(&payload).unwrap();
        let mut wire = drain(&mut server);
        let Secrets { version, tx, rx } = secrets;
        let mut opener = Opener::new(version, rx).unwrap();
        let (plain, events) = open_all(&mut opener, &mut wire);
        assert!(events.is_empty());
        assert_eq!(plain, payload, "{suite:?}: rustls -> Opener");

        // Sealer (client keys) -> rustls (server).
        let copy = duplicate(&tx);
        let mut sealer = Sealer::new(version, tx).unwrap();
        let mut wire = seal_all(&mut sealer, &payload);
        wire.extend(sealer.seal_to_vec(CONTENT_ALERT, &[1, 0]).unwrap());
        let (got, closed) = feed(&mut server, &wire);
        assert!(closed, "{suite:?}: close_notify seen by rustls");
        assert_eq!(got, payload, "{suite:?}: Sealer -> rustls");

        // A flipped bit is refused.
        let mut sealer2 = Sealer::new(version, duplicate(&copy)).unwrap();
        let mut opener2 = Opener::new(version, copy).unwrap();
        let mut record = sealer2.seal_to_vec(CONTENT_APPLICATION_DATA, b"x").unwrap();
        let last = record.len() - 1;
        record[last] ^= 1;
        assert_eq!(opener2.open(&mut record), Err(RecordError::BadMac));
    }

    #[test]
    fn records_interoperate_with_rustls_for_every_suite() {
        for suite in TLS13.into_iter().chain([
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]) {
            check_suite(suite);
        }
    }

    /// rustls updates (update_requested), we follow and answer; we update
    /// with and without a request, rustls follows (and answers).
    fn check_key_updates(suite: SupportedCipherSuite) {
        let (secrets, mut server) = handshake(suite).client_secrets(false);
        let Secrets { version, tx, rx } = secrets.unwrap();
        let mut opener = Opener::new(version, rx).unwrap();
        let mut sealer = Sealer::new(version, tx).unwrap();

        // 1. rustls: data, KeyUpdate(update_requested), data, all in one flight.
        let (a, b) = (payload(20_000, 1), payload(30_000, 2));
        server.writer().write_all(&a).unwrap();
        server.refresh_traffic_keys().unwrap();
        server.writer().write_all(&b).unwrap();
        let (plain, events) = open_all(&mut opener, &mut drain(&mut server));
        let requested = PostHandshake::KeyUpdate {
            update_requested: true,
        };
        assert_eq!(events, [requested], "{suite:?}");
        assert_eq!(plain, [a, b].concat(), "{suite:?}: across rustls' update");

        // 2. We answer (update_not_requested) before our next data.
        let c = payload(50_000, 3);
        let mut wire = sealer.key_update(false).unwrap();
        wire.extend(seal_all(&mut sealer, &c));
        assert_eq!(feed(&mut server, &wire).0, c, "{suite:?}: after our answer");

        // 3. Two updates from rustls in a row, then data.
        let d = payload(10_000, 4);
        server.refresh_traffic_keys().unwrap();
        server.refresh_traffic_keys().unwrap();
        server.writer().write_all(&d).unwrap();
        let (plain, events) = open_all(&mut opener, &mut drain(&mut server));
        assert_eq!(events, [requested, requested], "{suite:?}");
        assert_eq!(plain, d, "{suite:?}: two generations on");

        // 4. We request an update; rustls answers (update_not_requested)
        //    before its next data.
        let e = payload(5_000, 5);
        let mut wire = sealer.key_update(true).unwrap();
        wire.extend(seal_all(&mut sealer, &e));
        assert_eq!(
            feed(&mut server, &wire).0,
            e,
            "{suite:?}: after our request"
        );
        let f = payload(25_000, 6);
        server.writer().write_all(&f).unwrap();
        let (plain, events) = open_all(&mut opener, &mut drain(&mut server));
        let answer = PostHandshake::KeyUpdate {
            update_requested: false,
        };
        assert_eq!(events, [answer], "{suite:?}: rustls answered");
        assert_eq!(plain, f, "{suite:?}: after rustls' answer");

        // 5. We update on our own at a (lowered) record limit.
        sealer.set_key_update_limit(3);
        let g = payload(10 * MAX_PLAINTEXT, 7);
        let mut wire = Vec::new();
        let mut updates = 0;
        for chunk in g.chunks(MAX_PLAINTEXT) {
            if sealer.key_update_due(1) {
                wire.extend(sealer.key_update(false).unwrap());
                updates += 1;
            }
            wire.extend(sealer.seal_to_vec(CONTENT_APPLICATION_DATA, chunk).unwrap());
        }
        assert!(updates >= 3, "{suite:?}: {updates} updates");
        assert_eq!(feed(&mut server, &wire).0, g, "{suite:?}: limit updates");
    }

    #[test]
    fn key_updates_interoperate_with_rustls_for_every_tls13_suite() {
        for suite in TLS13 {
            check_key_updates(suite);
        }
    }

    #[test]
    fn updates_are_due_only_near_the_aes_gcm_limit() {
        for (suite, limited) in [
            (cs::TLS13_AES_128_GCM_SHA256, true),
            (cs::TLS13_CHACHA20_POLY1305_SHA256, false),
        ] {
            let (secrets, _) = handshake(suite).client_secrets(false);
            let Secrets { version, tx, .. } = secrets.unwrap();
            let sealer = Sealer::new(version, tx).unwrap();
            assert!(!sealer.key_update_due(16));
            assert!(!sealer.key_update_due(AES_GCM_RECORD_LIMIT));
            assert_eq!(sealer.key_update_due(AES_GCM_RECORD_LIMIT + 1), limited);
        }
    }

    #[test]
    fn tls12_refuses_key_updates() {
        let (secrets, _) =
            handshake(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).client_secrets(false);
        let Secrets { version, tx, rx } = secrets.unwrap();
        assert_eq!(version, Version::Tls12);
        let mut sealer = Sealer::new(version, tx).unwrap();
        assert!(!sealer.key_update_due(u64::MAX));
        assert_eq!(sealer.key_update(false), Err(RecordError::NoTrafficSecret));
        let mut opener = Opener::new(version, rx).unwrap();
        assert_eq!(opener.key_update(), Err(RecordError::NoTrafficSecret));
        assert_eq!(
            post_handshake(Version::Tls12, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]),
            Err(RecordError::UnexpectedHandshake)
        );
    }

    #[test]
    fn secrets_that_do_not_yield_the_keys_are_refused() {
        let (secrets, _) = handshake(cs::TLS13_AES_128_GCM_SHA256).client_secrets(true);
        let err = secrets.err().expect("swapped secrets refused");
        assert!(err.contains("traffic secret"), "{err}");
    }

    #[test]
    fn post_handshake_messages_are_parsed_strictly() {
        let tls13 = |payload: &[u8]| post_handshake(Version::Tls13, payload);
        let ticket = [HANDSHAKE_NEW_SESSION_TICKET, 0, 0, 2, 9, 9];
        let update = |value: u8| [HANDSHAKE_KEY_UPDATE, 0, 0, 1, value];
        assert_eq!(tls13(&ticket), Ok(PostHandshake::Ignore));
        assert_eq!(
            tls13(&update(0)),
            Ok(PostHandshake::KeyUpdate {
                update_requested: false
            })
        );
        assert_eq!(
            tls13(&update(1)),
            Ok(PostHandshake::KeyUpdate {
                update_requested: true
            })
        );
        assert_eq!(
            tls13(&[&ticket[..], &update(1)].concat()),
            Ok(PostHandshake::KeyUpdate {
                update_requested: true
            })
        );
        assert_eq!(tls13(&update(2)), Err(RecordError::BadKeyUpdate));
        assert_eq!(
            tls13(&[HANDSHAKE_KEY_UPDATE, 0, 0, 2, 0, 0]),
            Err(RecordError::BadKeyUpdate)
        );
        assert_eq!(
            tls13(&[&update(0)[..], &ticket].concat()),
            Err(RecordError::KeyUpdateNotAligned)
        );
        assert_eq!(
            tls13(&update(0)[..4]),
            Err(RecordError::FragmentedHandshake)
        );
        assert_eq!(
            tls13(&[HANDSHAKE_KEY_UPDATE, 0]),
            Err(RecordError::FragmentedHandshake)
        );
        assert_eq!(tls13(&[13, 0, 0, 0]), Err(RecordError::UnexpectedHandshake));
        assert_eq!(tls13(&[]), Err(RecordError::Malformed));
    }
}
