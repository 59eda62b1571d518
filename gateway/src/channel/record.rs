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
//! Sequence numbers never wrap (an error instead). Key updates are not
//! supported: no gateway of ours sends one (rustls' key update at the AES-GCM
//! confidentiality limit never runs because rustls no longer encrypts), and a
//! received one ends the connection with a clear error.
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};
use zeroize::Zeroizing;

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
}

/// The key, IV and next sequence number of one direction. Wiped on drop.
pub struct DirectionKeys {
    pub cipher: Cipher,
    pub key: Zeroizing<Vec<u8>>,
    pub iv: Zeroizing<[u8; 12]>,
    pub seq: u64,
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
}

impl RecordError {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordError::BadMac => "decryption failed (bad_record_mac)",
            RecordError::Overflow => "record too long",
            RecordError::Malformed => "malformed record",
            RecordError::SequenceExhausted => "record sequence number exhausted",
        }
    }
}

impl Secrets {
    /// Takes over the traffic keys of a finished rustls connection.
    pub fn from_rustls(
        version: ProtocolVersion,
        extracted: ExtractedSecrets,
    ) -> Result<Self, &'static str> {
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err("unsupported TLS version"),
        };
        let (tx_seq, tx) = extracted.tx;
        let (rx_seq, rx) = extracted.rx;
        Ok(Secrets {
            version,
            tx: direction(tx, tx_seq)?,
            rx: direction(rx, rx_seq)?,
        })
    }
}

fn direction(secrets: ConnectionTrafficSecrets, seq: u64) -> Result<DirectionKeys, &'static str> {
    let (cipher, key, iv) = match &secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Cipher::Chacha20Poly1305, key, iv)
        }
        _ => return Err("unsupported cipher"),
    };
    let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| "unexpected IV length")?;
    Ok(DirectionKeys {
        cipher,
        key: Zeroizing::new(key.as_ref().to_vec()),
        iv: Zeroizing::new(iv),
        seq,
    })
}

struct Protection {
    version: Version,
    cipher: Cipher,
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Protection {
    fn new(version: Version, keys: &DirectionKeys) -> Result<Self, &'static str> {
        let unbound =
            UnboundKey::new(keys.cipher.algorithm(), &keys.key).map_err(|_| "bad key length")?;
        Ok(Protection {
            version,
            cipher: keys.cipher,
            key: LessSafeKey::new(unbound),
            iv: *keys.iv,
            seq: keys.seq,
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
    pub fn new(version: Version, keys: &DirectionKeys) -> Result<Self, &'static str> {
        Protection::new(version, keys).map(Sealer)
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

/// Unprotects incoming records in place.
pub struct Opener(Protection);

impl Opener {
    pub fn new(version: Version, keys: &DirectionKeys) -> Result<Self, &'static str> {
        Protection::new(version, keys).map(Opener)
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

#[cfg(test)]
mod tests {
    //! Cross-checks against rustls itself: records rustls writes after the
    //! handshake open with [`Opener`], and records [`Sealer`] writes are read
    //! by rustls, for every version and suite.
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::{ClientConnection, Connection, ServerConnection, SupportedCipherSuite};

    use super::*;

    fn configs(
        suite: SupportedCipherSuite,
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
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
        (Arc::new(client), Arc::new(server))
    }

    fn transfer(from: &mut Connection, to: &mut Connection) {
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

    fn check_suite(suite: SupportedCipherSuite) {
        let (client_cfg, server_cfg) = configs(suite);
        let mut client = Connection::Client(
            ClientConnection::new(client_cfg, "localhost".try_into().unwrap()).unwrap(),
        );
        let mut server = Connection::Server(ServerConnection::new(server_cfg).unwrap());
        while client.is_handshaking() || server.is_handshaking() {
            transfer(&mut client, &mut server);
            transfer(&mut server, &mut client);
        }
        // Some application data through rustls first, so sequence numbers are not 0.
        server.writer().write_all(b"warm-up").unwrap();
        transfer(&mut server, &mut client);
        let mut got = [0u8; 7];
        client.reader().read_exact(&mut got).unwrap();

        // rustls (server) -> Opener (client keys).
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        server.writer().write_all(&payload).unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let version = client.protocol_version().unwrap();
        let secrets =
            Secrets::from_rustls(version, client.dangerous_extract_secrets().unwrap()).unwrap();
        let mut opener = Opener::new(secrets.version, &secrets.rx).unwrap();
        let mut plain = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let len = record_len(&wire[pos..], secrets.version).unwrap().unwrap();
            let (ct, range) = opener.open(&mut wire[pos..pos + len]).unwrap();
            assert_eq!(ct, CONTENT_APPLICATION_DATA);
            plain.extend_from_slice(&wire[pos + range.start..pos + range.end]);
            pos += len;
        }
        assert_eq!(plain, payload, "{suite:?}: rustls -> Opener");

        // Sealer (client keys) -> rustls (server).
        let mut sealer = Sealer::new(secrets.version, &secrets.tx).unwrap();
        let mut wire = Vec::new();
        for chunk in payload.chunks(MAX_PLAINTEXT) {
            wire.extend(sealer.seal_to_vec(CONTENT_APPLICATION_DATA, chunk).unwrap());
        }
        wire.extend(sealer.seal_to_vec(CONTENT_ALERT, &[1, 0]).unwrap());
        let mut slice = &wire[..];
        let mut got = Vec::new();
        let mut closed = false;
        while !slice.is_empty() {
            server.read_tls(&mut slice).unwrap();
            closed = server.process_new_packets().unwrap().peer_has_closed();
            let mut buf = [0u8; 4096];
            loop {
                match server.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(closed, "{suite:?}: close_notify seen by rustls");
        assert_eq!(got, payload, "{suite:?}: Sealer -> rustls");

        // A flipped bit is refused.
        let mut sealer2 = Sealer::new(secrets.version, &secrets.tx).unwrap();
        let mut opener2 = Opener::new(secrets.version, &secrets.tx).unwrap();
        let mut record = sealer2.seal_to_vec(CONTENT_APPLICATION_DATA, b"x").unwrap();
        let last = record.len() - 1;
        record[last] ^= 1;
        assert_eq!(opener2.open(&mut record), Err(RecordError::BadMac));
    }

    #[test]
    fn records_interoperate_with_rustls_for_every_suite() {
        for suite in [
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            check_suite(suite);
        }
    }
}
