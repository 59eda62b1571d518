//! How fast this CPU seals and opens channel records with the record layer
//! the userspace TLS path uses ([`super::record`]): full 16 KiB TLS 1.3
//! records sealed and opened in place in a 256 KiB batch, as the relay does,
//! on one core. `s2cs check` reports it (what one core's AEAD costs where the
//! kernel has no TLS), and `cargo xtask bench tls` adds it to the no-crypto
//! ceiling's CPU to bound what any userspace record layer could reach.
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use zeroize::Zeroizing;

use super::record::{
    CONTENT_APPLICATION_DATA, Cipher, DirectionKeys, MAX_PLAINTEXT, Opener, Sealer, Version,
};
use super::userspace::SLOTS;

/// The suites `s2cs check` measures: the channel's default, and the one
/// without a per-key record limit.
pub(crate) const MEASURED: [Cipher; 2] = [Cipher::Aes128Gcm, Cipher::Chacha20Poly1305];

/// One suite's speed on one core.
#[derive(Clone, Debug, Serialize)]
pub struct RecordSpeed {
    /// The TLS 1.3 suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub suite: &'static str,
    /// Plaintext sealed per second, in GB (10^9 bytes).
    pub seal_gb_per_s: f64,
    /// Plaintext opened per second, in GB.
    pub open_gb_per_s: f64,
}

/// Why the measurement could not run.
#[derive(Debug, thiserror::Error)]
pub enum RecordSpeedError {
    #[error("no random key: the system's random source failed")]
    Random,
    #[error("the record layer refused the probe's keys: {0}")]
    Keys(&'static str),
    #[error("the probe's own record failed: {0}")]
    Record(&'static str),
}

/// The TLS 1.3 name of a suite, as the handshake names a negotiated one.
pub(crate) fn suite_name(cipher: Cipher) -> &'static str {
    use rustls::CipherSuite as C;
    super::handshake::suite_name(match cipher {
        Cipher::Aes128Gcm => C::TLS13_AES_128_GCM_SHA256,
        Cipher::Aes256Gcm => C::TLS13_AES_256_GCM_SHA384,
        Cipher::Chacha20Poly1305 => C::TLS13_CHACHA20_POLY1305_SHA256,
    })
}

/// Rounds a measurement is split into; the fastest round of each side is
/// reported, so that a moment of preemption on a busy host does not count
/// (the figure is what the CPU can do, for a bound).
const ROUNDS: usize = 8;

/// Seals and opens `bytes` of plaintext (rounded up to whole batches) with
/// fresh random keys in [`ROUNDS`] rounds, timing each side; every opened
/// record is checked against what was sealed.
pub(crate) fn measure(cipher: Cipher, bytes: usize) -> Result<RecordSpeed, RecordSpeedError> {
    let random = SystemRandom::new();
    let mut key = Zeroizing::new(vec![0u8; cipher.key_len()]);
    let mut iv = Zeroizing::new([0u8; 12]);
    random
        .fill(&mut key)
        .map_err(|_| RecordSpeedError::Random)?;
    random
        .fill(&mut iv[..])
        .map_err(|_| RecordSpeedError::Random)?;
    let keys = || DirectionKeys {
        cipher,
        key: key.clone(),
        iv: iv.clone(),
        seq: 0,
        secret: None,
    };
    let mut sealer = Sealer::new(Version::Tls13, keys()).map_err(RecordSpeedError::Keys)?;
    let mut opener = Opener::new(Version::Tls13, keys()).map_err(RecordSpeedError::Keys)?;
    let prefix = sealer.prefix();
    let stride = prefix + MAX_PLAINTEXT + sealer.suffix();
    let mut batch = vec![0u8; stride * SLOTS];
    let plaintext: Vec<u8> = (0..MAX_PLAINTEXT).map(|i| (i % 251) as u8).collect();
    let mut plaintexts = vec![0..0; SLOTS];
    let batches_per_round = bytes
        .div_ceil(MAX_PLAINTEXT * SLOTS)
        .div_ceil(ROUNDS)
        .max(1);
    let round_bytes = batches_per_round * MAX_PLAINTEXT * SLOTS;
    let (mut best_seal, mut best_open) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..batches_per_round {
            for slot in batch.chunks_mut(stride) {
                slot[prefix..prefix + MAX_PLAINTEXT].copy_from_slice(&plaintext);
            }
            let start = Instant::now();
            for slot in batch.chunks_mut(stride) {
                sealer
                    .seal(slot, MAX_PLAINTEXT, CONTENT_APPLICATION_DATA)
                    .map_err(|e| RecordSpeedError::Record(e.as_str()))?;
            }
            sealing += start.elapsed();
            let start = Instant::now();
            for (slot, opened) in batch.chunks_mut(stride).zip(plaintexts.iter_mut()) {
                *opened = opener
                    .open(slot)
                    .map_err(|e| RecordSpeedError::Record(e.as_str()))?
                    .1;
            }
            opening += start.elapsed();
            for (slot, opened) in batch.chunks(stride).zip(&plaintexts) {
                if slot[opened.clone()] != plaintext[..] {
                    return Err(RecordSpeedError::Record(
                        "a record opened to other bytes than were sealed",
                    ));
                }
            }
        }
        let rate = |spent: Duration| round_bytes as f64 / spent.as_secs_f64().max(1e-9) / 1e9;
        best_seal = best_seal.max(rate(sealing));
        best_open = best_open.max(rate(opening));
    }
    Ok(RecordSpeed {
        suite: suite_name(cipher),
        seal_gb_per_s: best_seal,
        open_gb_per_s: best_open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_reported_suite_and_checks_what_it_opened() {
        for cipher in MEASURED {
            let speed = measure(cipher, 4 << 20).expect("measure");
            assert_eq!(speed.suite, suite_name(cipher));
            assert!(speed.seal_gb_per_s > 0.0 && speed.seal_gb_per_s.is_finite());
            assert!(speed.open_gb_per_s > 0.0 && speed.open_gb_per_s.is_finite());
        }
    }
}
