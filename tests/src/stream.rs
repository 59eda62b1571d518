//! Verifiable byte streams: a source that sends `len` pseudo-random bytes made
//! from a seed, and a sink that checks every byte in order against the same
//! generator, both with a running SHA-256 and both bounded in bytes and time.
//!
//! The generator ([`Pattern`]) is xorshift64* filling 64 KiB blocks, several
//! GB/s, so it never limits a test. The sink ([`Verifier`]) reports the offset
//! of the first wrong byte, a stream that ends early, bytes past the end, and
//! (with [`verify`]) a stream that is never closed. Every function takes a
//! [`Deadline`] and fails with [`StreamError::Timeout`] rather than hang; the
//! TCP variants set socket timeouts so a silent peer cannot block past it.
//!
//! Blocking: [`send`] / [`verify`] / [`verify_exact`] on any `Write` / `Read`,
//! [`send_tcp`] / [`verify_tcp`] on a `TcpStream`. Async (tokio):
//! [`send_async`] / [`verify_async`] / [`verify_exact_async`].

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wait::Deadline;

/// Size of the generator's blocks and of the I/O buffers.
pub const BLOCK: usize = 64 * 1024;

/// How long one blocking socket call may wait before the deadline is checked.
const IO_SLICE: Duration = Duration::from_millis(50);

/// What a source sends and a sink expects: `len` bytes generated from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamSpec {
    /// Seed of the generator.
    pub seed: u64,
    /// Number of bytes.
    pub len: u64,
}

impl StreamSpec {
    /// `len` bytes from `seed`.
    pub const fn new(seed: u64, len: u64) -> Self {
        Self { seed, len }
    }

    /// The whole stream in memory (for small streams in tests).
    pub fn to_vec(self) -> Vec<u8> {
        let mut out = vec![0; usize::try_from(self.len).unwrap_or(usize::MAX)];
        Pattern::new(self.seed).fill(&mut out);
        out
    }

    /// The SHA-256 of the stream, computed without any I/O.
    pub fn sha256(self) -> [u8; 32] {
        let mut pattern = Pattern::new(self.seed);
        let mut hasher = Sha256::new();
        let mut left = self.len;
        while left > 0 {
            let chunk = pattern.peek(clamp(left, BLOCK));
            hasher.update(chunk);
            let n = chunk.len();
            pattern.advance(n);
            left -= n as u64;
        }
        hasher.finalize().into()
    }
}

fn clamp(left: u64, max: usize) -> usize {
    usize::try_from(left).map_or(max, |l| l.min(max))
}

/// What a source sent or a sink verified.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Bytes sent or verified.
    pub bytes: u64,
    /// SHA-256 of those bytes.
    pub sha256: [u8; 32],
    /// Time from the first to the last byte (or end of stream).
    pub elapsed: Duration,
}

impl Report {
    /// The digest in lowercase hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a stream did not arrive (or could not be sent) intact and in time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A byte differs from the pattern: corruption, reordering or a mixed-up
    /// stream (the relay is at fault).
    #[error("byte at offset {offset} differs: expected {expected:#04x}, got {got:#04x}")]
    Mismatch {
        /// Offset of the first wrong byte from the start of the stream.
        offset: u64,
        /// What the pattern has there.
        expected: u8,
        /// What arrived.
        got: u8,
    },
    /// The stream ended (EOF) before all bytes arrived.
    #[error("stream ended after {received} of {expected} bytes")]
    Short {
        /// Bytes received (all of them correct).
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// More bytes arrived than the stream has.
    #[error("at least {extra} bytes arrived after the expected {expected}")]
    Extra {
        /// Bytes expected.
        expected: u64,
        /// Extra bytes seen (in the read that went past the end).
        extra: u64,
    },
    /// All bytes arrived but the stream was not closed before the deadline.
    #[error("all {expected} bytes arrived but the stream was not closed before the deadline")]
    NoEof {
        /// Bytes expected (and received).
        expected: u64,
    },
    /// The deadline passed before the stream was complete.
    #[error("deadline passed after {done} of {total} bytes")]
    Timeout {
        /// Bytes sent or verified by then.
        done: u64,
        /// Bytes in the stream.
        total: u64,
    },
    /// Reading or writing failed (e.g. connection reset).
    #[error("I/O error after {done} bytes: {source}")]
    Io {
        /// Bytes sent or verified before the error.
        done: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The seeded byte generator: xorshift64* words, little-endian, in 64 KiB
/// blocks. The same seed always gives the same bytes.
#[derive(Clone)]
pub struct Pattern {
    state: u64,
    block: Box<[u8]>,
    /// Next unread byte of `block`; always `< BLOCK`.
    pos: usize,
}

impl Pattern {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads any seed (0, 1, 2, ...) over the state space.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let state = if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z };
        let mut pattern = Self {
            state,
            block: vec![0; BLOCK].into_boxed_slice(),
            pos: 0,
        };
        pattern.refill();
        pattern
    }

    fn refill(&mut self) {
        let mut x = self.state;
        for word in self.block.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        self.state = x;
        self.pos = 0;
    }

    /// The next bytes, at most `max` (fewer at a block boundary); does not
    /// consume them (see [`Pattern::advance`]).
    pub fn peek(&self, max: usize) -> &[u8] {
        let end = self.pos + max.min(BLOCK - self.pos);
        &self.block[self.pos..end]
    }

    /// Consumes `n` bytes, at most as many as the last [`Pattern::peek`] gave.
    pub fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(BLOCK);
        if self.pos == BLOCK {
            self.refill();
        }
    }

    /// Fills `out` with the next bytes.
    pub fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            let chunk = self.peek(out.len());
            let n = chunk.len();
            out[..n].copy_from_slice(chunk);
            self.advance(n);
            out = &mut out[n..];
        }
    }
}

/// The sink's state: feed it what arrives, in order, with
/// [`Verifier::update`]; [`Verifier::finish`] at end of stream.
pub struct Verifier {
    spec: StreamSpec,
    pattern: Pattern,
    hasher: Sha256,
    received: u64,
    start: Instant,
}

impl Verifier {
    /// A verifier expecting `spec`.
    pub fn new(spec: StreamSpec) -> Self {
        Self {
            spec,
            pattern: Pattern::new(spec.seed),
            hasher: Sha256::new(),
            received: 0,
            start: Instant::now(),
        }
    }

    /// Bytes verified so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.spec.len - self.received
    }

    /// Checks the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) -> Result<(), StreamError> {
        let expected_part = clamp(self.remaining(), data.len());
        let (mut rest, extra) = data.split_at(expected_part);
        while !rest.is_empty() {
            let want = self.pattern.peek(rest.len());
            let n = want.len();
            let got = &rest[..n];
            if want != got {
                // Invariant: slices differ and have equal length, so some
                // index differs; fall back to 0 rather than panic.
                let i = want.iter().zip(got).position(|(w, g)| w != g).unwrap_or(0);
                return Err(StreamError::Mismatch {
                    offset: self.received + i as u64,
                    expected: want[i],
                    got: got[i],
                });
            }
            self.hasher.update(got);
            self.pattern.advance(n);
            self.received += n as u64;
            rest = &rest[n..];
        }
        if !extra.is_empty() {
            return Err(StreamError::Extra {
                expected: self.spec.len,
                extra: extra.len() as u64,
            });
        }
        Ok(())
    }

    /// Ends the stream: fails if bytes are missing.
    pub fn finish(self) -> Result<Report, StreamError> {
        if self.received < self.spec.len {
            return Err(StreamError::Short {
                received: self.received,
                expected: self.spec.len,
            });
        }
        Ok(Report {
            bytes: self.received,
            sha256: self.hasher.finalize().into(),
            elapsed: self.start.elapsed(),
        })
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
    )
}

/// Writes the stream to `w` (does not close it). Blocking writes are only
/// interrupted by the deadline if `w` has a write timeout (see [`send_tcp`]).
pub fn send<W: Write>(
    w: &mut W,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    let deadline = deadline.into();
    let start = Instant::now();
    let mut pattern = Pattern::new(spec.seed);
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    while sent < spec.len {
        if deadline.expired() {
            return Err(StreamError::Timeout {
                done: sent,
                total: spec.len,
            });
        }
        let chunk = pattern.peek(clamp(spec.len - sent, BLOCK));
        match w.write(chunk) {
            Ok(0) => {
                return Err(StreamError::Io {
                    done: sent,
                    source: ErrorKind::WriteZero.into(),
                });
            }
            Ok(n) => {
                hasher.update(&chunk[..n]);
                pattern.advance(n);
                sent += n as u64;
            }
            Err(e) if retryable(&e) => {}
            Err(e) => {
                return Err(StreamError::Io {
                    done: sent,
                    source: e,
                });
            }
        }
    }
    w.flush()
        .map_err(|source| StreamError::Io { done: sent, source })?;
    Ok(Report {
        bytes: sent,
        sha256: hasher.finalize().into(),
        elapsed: start.elapsed(),
    })
}

/// Reads and verifies the stream from `r`, then requires end of stream (a
/// relay must pass the close on). Blocking reads are only interrupted by the
/// deadline if `r` has a read timeout (see [`verify_tcp`]).
pub fn verify<R: Read>(
    r: &mut R,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    verify_inner(r, spec, deadline.into(), true)
}

/// Like [`verify`], but returns once all bytes arrived, without waiting for
/// end of stream (so the connection can be used further).
pub fn verify_exact<R: Read>(
    r: &mut R,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    verify_inner(r, spec, deadline.into(), false)
}

fn verify_inner<R: Read>(
    r: &mut R,
    spec: StreamSpec,
    deadline: Deadline,
    want_eof: bool,
) -> Result<Report, StreamError> {
    let mut v = Verifier::new(spec);
    let mut buf = vec![0u8; BLOCK];
    loop {
        if v.remaining() == 0 && !want_eof {
            return v.finish();
        }
        if deadline.expired() {
            return Err(timeout(&v, spec));
        }
        // Past the end, read a whole block to see what (if anything) follows.
        let want = if v.remaining() > 0 {
            clamp(v.remaining(), BLOCK)
        } else {
            BLOCK
        };
        match r.read(&mut buf[..want]) {
            Ok(0) => return v.finish(),
            Ok(n) => v.update(&buf[..n])?,
            Err(e) if retryable(&e) => {}
            Err(e) => {
                return Err(StreamError::Io {
                    done: v.received(),
                    source: e,
                });
            }
        }
    }
}

fn timeout(v: &Verifier, spec: StreamSpec) -> StreamError {
    if v.remaining() == 0 {
        StreamError::NoEof { expected: spec.len }
    } else {
        StreamError::Timeout {
            done: v.received(),
            total: spec.len,
        }
    }
}

/// Sends the stream on a TCP connection, then shuts down its write side. Sets
/// a short write timeout so the deadline is honoured even if the peer stalls.
pub fn send_tcp(
    s: &TcpStream,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    send_then_close(s, &mut &*s, spec, deadline)
}

/// Sends the stream through `w` (which writes to `s`) with a short write
/// timeout on `s`, then shuts down `s`'s write side.
fn send_then_close<W: Write>(
    s: &TcpStream,
    w: &mut W,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    s.set_write_timeout(Some(IO_SLICE))
        .map_err(|source| StreamError::Io { done: 0, source })?;
    let report = send(w, spec, deadline)?;
    s.shutdown(Shutdown::Write)
        .map_err(|source| StreamError::Io {
            done: report.bytes,
            source,
        })?;
    Ok(report)
}

/// A writer that keeps to `rate` bytes per second on a TCP connection.
pub struct Paced<'a> {
    conn: &'a TcpStream,
    rate: u64,
    started: Instant,
    sent: u64,
}

impl<'a> Paced<'a> {
    /// Paces writes to `conn` at `rate` bytes per second from now.
    pub fn new(conn: &'a TcpStream, rate: u64) -> Self {
        Paced {
            conn,
            rate: rate.max(1),
            started: Instant::now(),
            sent: 0,
        }
    }
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = (&mut &*self.conn).write(&buf[..buf.len().min(BLOCK)])?;
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&mut &*self.conn).flush()
    }
}

/// Like [`send_tcp`], at `rate` bytes per second.
pub fn send_paced_tcp(
    s: &TcpStream,
    spec: StreamSpec,
    rate: u64,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    send_then_close(s, &mut Paced::new(s, rate), spec, deadline)
}

/// Verifies the stream from a TCP connection, including its close (see
/// [`verify`]). Sets a short read timeout so a silent peer cannot block past
/// the deadline.
pub fn verify_tcp(
    s: &TcpStream,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    s.set_read_timeout(Some(IO_SLICE))
        .map_err(|source| StreamError::Io { done: 0, source })?;
    verify(&mut &*s, spec, deadline)
}

fn tokio_deadline(deadline: Deadline) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline.instant())
}

/// Writes the stream to `w` and flushes it (does not shut it down: call
/// `shutdown().await` to close a TCP stream's write side).
pub async fn send_async<W: AsyncWrite + Unpin>(
    w: &mut W,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    let at = tokio_deadline(deadline.into());
    let start = Instant::now();
    let mut pattern = Pattern::new(spec.seed);
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let timed_out = |sent| StreamError::Timeout {
        done: sent,
        total: spec.len,
    };
    while sent < spec.len {
        let chunk = pattern.peek(clamp(spec.len - sent, BLOCK));
        match tokio::time::timeout_at(at, w.write(chunk)).await {
            Err(_) => return Err(timed_out(sent)),
            Ok(Ok(0)) => {
                return Err(StreamError::Io {
                    done: sent,
                    source: ErrorKind::WriteZero.into(),
                });
            }
            Ok(Ok(n)) => {
                hasher.update(&chunk[..n]);
                pattern.advance(n);
                sent += n as u64;
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                return Err(StreamError::Io {
                    done: sent,
                    source: e,
                });
            }
        }
    }
    match tokio::time::timeout_at(at, w.flush()).await {
        Err(_) => return Err(timed_out(sent)),
        Ok(Err(source)) => return Err(StreamError::Io { done: sent, source }),
        Ok(Ok(())) => {}
    }
    Ok(Report {
        bytes: sent,
        sha256: hasher.finalize().into(),
        elapsed: start.elapsed(),
    })
}

/// Async [`verify`]: verifies the stream, then requires end of stream.
pub async fn verify_async<R: AsyncRead + Unpin>(
    r: &mut R,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    verify_async_inner(r, spec, deadline.into(), true).await
}

/// Async [`verify_exact`]: returns once all bytes arrived.
pub async fn verify_exact_async<R: AsyncRead + Unpin>(
    r: &mut R,
    spec: StreamSpec,
    deadline: impl Into<Deadline>,
) -> Result<Report, StreamError> {
    verify_async_inner(r, spec, deadline.into(), false).await
}

async fn verify_async_inner<R: AsyncRead + Unpin>(
    r: &mut R,
    spec: StreamSpec,
    deadline: Deadline,
    want_eof: bool,
) -> Result<Report, StreamError> {
    let at = tokio_deadline(deadline);
    let mut v = Verifier::new(spec);
    let mut buf = vec![0u8; BLOCK];
    loop {
        if v.remaining() == 0 && !want_eof {
            return v.finish();
        }
        let want = if v.remaining() > 0 {
            clamp(v.remaining(), BLOCK)
        } else {
            BLOCK
        };
        match tokio::time::timeout_at(at, r.read(&mut buf[..want])).await {
            Err(_) => return Err(timeout(&v, spec)),
            Ok(Ok(0)) => return v.finish(),
            Ok(Ok(n)) => v.update(&buf[..n])?,
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(e)) => {
                return Err(StreamError::Io {
                    done: v.received(),
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_across_chunkings() {
        let a = StreamSpec::new(7, 200_000).to_vec();
        let mut b = vec![0u8; 200_000];
        let mut p = Pattern::new(7);
        for chunk in b.chunks_mut(999) {
            p.fill(chunk);
        }
        assert_eq!(a, b);
        assert_ne!(a, StreamSpec::new(8, 200_000).to_vec());
    }

    #[test]
    fn verify_in_memory() {
        let spec = StreamSpec::new(1, 300_001);
        let data = spec.to_vec();
        let report = verify(&mut &data[..], spec, Duration::from_secs(5)).expect("intact");
        assert_eq!(report.bytes, spec.len);
        assert_eq!(report.sha256, spec.sha256());
    }
}
