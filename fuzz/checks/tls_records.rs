//! The receive side of the userspace TLS relay (`RecordReader`: record
//! framing, AEAD open, alerts, post-handshake messages, TLS 1.3 KeyUpdate)
//! fed a byte stream mixing records our sealer made under the shared key
//! (application data, alerts, arbitrary handshake messages, key updates),
//! tampered records and raw bytes, delivered in arbitrary read sizes.
//!
//! Checked on every input: nothing panics; the reader never stalls with a
//! full buffer; the plaintext delivered is always a prefix of the
//! application data actually sealed (nothing forged, tampered, replayed or
//! reordered gets through); and a stream of only well-formed data records
//! and key updates is delivered completely without error.

use arbitrary::Arbitrary;
use gateway::channel::reader::RecordReader;
use gateway::channel::record::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, Cipher, DirectionKeys, HEADER, MAX_PLAINTEXT, Opener,
    Sealer, Version,
};
use gateway::channel::traffic::{TrafficHash, TrafficSecret};
use zeroize::Zeroizing;

/// The longest record `record_len` accepts (TLS 1.2's bound), plus one: the
/// smallest buffer the reader's contract allows.
const CAPACITY: usize = HEADER + MAX_PLAINTEXT + 2048 + 1;

#[derive(Arbitrary, Debug)]
enum Chunk {
    /// Application data, sealed.
    Data(Vec<u8>),
    /// A record of any type with any payload, sealed (TLS 1.3 inner type 0
    /// becomes 1: a real sender cannot seal type 0).
    Record { content_type: u8, payload: Vec<u8> },
    /// A sealed record with one byte changed afterwards.
    Tampered {
        payload: Vec<u8>,
        at: u16,
        xor: std::num::NonZeroU8,
    },
    /// The last sealed record again (a replay).
    Replay,
    /// A TLS 1.3 KeyUpdate, after which the sender uses its next keys.
    KeyUpdate { requested: bool },
    /// An alert (description 0 is close_notify).
    Alert { description: u8 },
    /// Raw bytes on the wire.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    tls13: bool,
    cipher: u8,
    chunks: Vec<Chunk>,
    /// Sizes of successive reads from the channel (cycled; empty: read all).
    reads: Vec<u16>,
}

fn keys(version: Version, cipher: Cipher) -> (DirectionKeys, DirectionKeys) {
    let key_len = match cipher {
        Cipher::Aes128Gcm => 16,
        Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
    };
    match version {
        Version::Tls13 => {
            let hash = match cipher {
                Cipher::Aes256Gcm => TrafficHash::Sha384,
                _ => TrafficHash::Sha256,
            };
            let one = || {
                let secret = TrafficSecret::new(hash, &[0x5a; 48][..hash.len()]).expect("secret");
                let packet = secret.packet_keys(key_len).expect("packet keys");
                DirectionKeys {
                    cipher,
                    key: packet.key,
                    iv: packet.iv,
                    seq: 0,
                    secret: Some(secret),
                }
            };
            (one(), one())
        }
        Version::Tls12 => {
            let one = || DirectionKeys {
                cipher,
                key: Zeroizing::new(vec![0x3c; key_len]),
                iv: Zeroizing::new([0x17; 12]),
                seq: 0,
                secret: None,
            };
            (one(), one())
        }
    }
}

fn capped(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_PLAINTEXT)]
}

/// Checks one input (the fuzz target's body); false when the bytes do not
/// decode into an input, which libFuzzer then leaves out of the corpus.
pub fn check_input(data: &[u8]) -> bool {
    let Ok(input) =
        <Input as arbitrary::Arbitrary>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    else {
        return false;
    };
    let version = if input.tls13 {
        Version::Tls13
    } else {
        Version::Tls12
    };
    let cipher = match input.cipher % 3 {
        0 => Cipher::Aes128Gcm,
        1 => Cipher::Aes256Gcm,
        _ => Cipher::Chacha20Poly1305,
    };
    let (tx, rx) = keys(version, cipher);
    let mut sealer = Sealer::new(version, tx).expect("sealer");
    let opener = Opener::new(version, rx).expect("opener");

    // The wire, and the application data a correct reader may deliver.
    let mut wire = Vec::new();
    let mut sealed_data = Vec::new();
    let mut clean = true;
    let mut last_record: Vec<u8> = Vec::new();
    for chunk in &input.chunks {
        let record = match chunk {
            Chunk::Data(data) => {
                let data = capped(data);
                sealed_data.extend_from_slice(data);
                sealer.seal_to_vec(CONTENT_APPLICATION_DATA, data)
            }
            Chunk::Record {
                content_type,
                payload,
            } => {
                clean = false;
                let content_type = match (version, *content_type) {
                    (Version::Tls13, 0) => 1,
                    (_, t) => t,
                };
                if content_type == CONTENT_APPLICATION_DATA {
                    sealed_data.extend_from_slice(capped(payload));
                }
                sealer.seal_to_vec(content_type, capped(payload))
            }
            Chunk::Tampered { payload, at, xor } => {
                clean = false;
                sealer
                    .seal_to_vec(CONTENT_APPLICATION_DATA, capped(payload))
                    .map(|mut record| {
                        let at = usize::from(*at) % record.len();
                        record[at] ^= xor.get();
                        record
                    })
            }
            Chunk::Replay => {
                clean = false;
                Ok(last_record.clone())
            }
            Chunk::KeyUpdate { requested } => {
                if version == Version::Tls12 {
                    // TLS 1.2 has no key update; our sealer refuses to send one.
                    assert!(sealer.key_update(*requested).is_err());
                    continue;
                }
                sealer.key_update(*requested)
            }
            Chunk::Alert { description } => {
                clean &= *description == 0;
                let record = sealer.seal_to_vec(CONTENT_ALERT, &[2, *description]);
                if *description == 0 {
                    // Nothing after close_notify counts.
                    if let Ok(record) = record {
                        wire.extend_from_slice(&record);
                    }
                    break;
                }
                record
            }
            Chunk::Raw(bytes) => {
                clean = false;
                Ok(bytes.clone())
            }
        };
        let Ok(record) = record else {
            clean = false;
            continue;
        };
        wire.extend_from_slice(&record);
        last_record = record;
    }

    // Deliver the wire in the given read sizes, as the relay's loop does.
    let mut reader = RecordReader::new(opener, CAPACITY);
    let mut delivered = Vec::new();
    let mut sent = 0;
    let mut reads = input.reads.iter().cycle();
    let mut outcome = Ok(false);
    while sent < wire.len() {
        let space = reader.space();
        assert!(
            !space.is_empty(),
            "the reader stalled with a full buffer ({CAPACITY} bytes)"
        );
        let want = reads.next().map_or(usize::MAX, |n| usize::from(*n).max(1));
        let n = want.min(space.len()).min(wire.len() - sent);
        space[..n].copy_from_slice(&wire[sent..sent + n]);
        sent += n;
        reader.filled(n);
        match reader.process() {
            Ok(batch) => {
                for piece in reader.plaintext() {
                    delivered.extend_from_slice(piece);
                }
                if batch.closed {
                    outcome = Ok(true);
                    break;
                }
                reader.compact();
            }
            Err(err) => {
                outcome = Err(err);
                break;
            }
        }
    }
    assert!(
        sealed_data.starts_with(&delivered),
        "delivered {} bytes that were not sealed in this order",
        delivered.len()
    );
    if clean {
        if let Err(err) = &outcome {
            panic!("a well-formed stream was refused: {err}");
        }
        assert_eq!(
            delivered.len(),
            sealed_data.len(),
            "a well-formed stream was not delivered completely"
        );
    }
    true
}
