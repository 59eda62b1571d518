//! Test data shared by the gateway's integration tests: a deterministic
//! byte stream, a sender of it and a reader that verifies it in order.
#![allow(dead_code)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deterministic pseudo-random bytes: byte `i` of stream `seed` depends only
/// on (seed, i), so reads and writes of any size line up.
pub struct Pattern {
    seed: u64,
    offset: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern { seed, offset: 0 }
    }
    fn word(&self, index: u64) -> [u8; 8] {
        let mut z = (self.seed << 40 ^ index).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let word = self.word(self.offset / 8);
            let start = (self.offset % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
            self.offset += n as u64;
        }
    }
}

pub async fn send_pattern(
    w: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    send_rest(w, Pattern::new(seed), len).await
}

/// Sends the next `len` bytes of a pattern already partly sent.
pub async fn send_rest(
    w: &mut (impl AsyncWriteExt + Unpin),
    mut pattern: Pattern,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// How a test's consumer reads.
#[derive(Clone, Copy, Debug)]
pub enum Consumer {
    /// As fast as it can.
    Fast,
    /// `chunk` bytes at a time with a `pause` after each read: the gateway's
    /// socket towards it stays full.
    Slow {
        chunk: usize,
        pause: std::time::Duration,
    },
    /// Fast, but stops reading for `pause` once `after` bytes arrived.
    Stalling {
        after: u64,
        pause: std::time::Duration,
    },
}

/// Reads to EOF and checks every byte against the pattern.
pub async fn expect_pattern(
    r: &mut (impl AsyncReadExt + Unpin),
    seed: u64,
    len: u64,
) -> Result<(), String> {
    expect_pattern_as(r, seed, len, Consumer::Fast).await
}

/// [`expect_pattern`], reading the way `consumer` does.
pub async fn expect_pattern_as(
    r: &mut (impl AsyncReadExt + Unpin),
    seed: u64,
    len: u64,
    consumer: Consumer,
) -> Result<(), String> {
    let mut pattern = Pattern::new(seed);
    let mut got = vec![0u8; 256 * 1024];
    let mut want = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    let mut stalled = false;
    loop {
        let cap = match consumer {
            Consumer::Slow { chunk, .. } => chunk.min(got.len()),
            _ => got.len(),
        };
        match consumer {
            Consumer::Slow { pause, .. } if offset > 0 => tokio::time::sleep(pause).await,
            Consumer::Stalling { after, pause } if !stalled && offset >= after => {
                stalled = true;
                tokio::time::sleep(pause).await;
            }
            _ => {}
        }
        let n = r
            .read(&mut got[..cap])
            .await
            .map_err(|e| format!("read at offset {offset}: {e}"))?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > len {
            return Err(format!(
                "{} bytes more than the {len} sent",
                offset + n as u64 - len
            ));
        }
        pattern.fill(&mut want[..n]);
        if got[..n] != want[..n] {
            let i = (0..n).find(|&i| got[i] != want[i]).unwrap_or(0);
            return Err(format!("byte {} differs", offset + i as u64));
        }
        offset += n as u64;
    }
    if offset == len {
        Ok(())
    } else {
        Err(format!("stream ended after {offset} of {len} bytes"))
    }
}
