//! Verifiable UDP datagrams for the UDP suites: every datagram carries a
//! stream tag (which test stream, which direction), a sequence number and a
//! SHA-256 of everything before it, so a receiver can tell intact ones from
//! corrupted ones, and ones of its stream from strangers (another session,
//! an attacker), and count loss and duplicates against what was sent.
//!
//! Layout: `tag (8) | seq (8) | payload (seeded bytes) | sha256 (32)`.
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::wait::Deadline;

/// Bytes of a datagram that are not payload.
pub const OVERHEAD: usize = 8 + 8 + 32;

/// Builds datagram `seq` of stream `tag`, `len` bytes long in all
/// (at least [`OVERHEAD`]).
pub fn encode(tag: u64, seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(OVERHEAD);
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&tag.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    let mut x = tag ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    while d.len() < len - 32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push(x as u8);
    }
    let digest = Sha256::digest(&d);
    d.extend_from_slice(&digest);
    d
}

/// What a received datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Intact, of stream `tag`, with this sequence number.
    Ok { tag: u64, seq: u64 },
    /// Its hash does not match (corrupted, truncated, or not ours at all).
    Corrupt,
}

/// Checks one received datagram.
pub fn decode(d: &[u8]) -> Received {
    if d.len() < OVERHEAD {
        return Received::Corrupt;
    }
    let (body, digest) = d.split_at(d.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Received::Corrupt;
    }
    let tag = u64::from_be_bytes(body[..8].try_into().unwrap_or_default());
    let seq = u64::from_be_bytes(body[8..16].try_into().unwrap_or_default());
    Received::Ok { tag, seq }
}

/// What a receiver saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Distinct sequence numbers of the expected stream.
    pub seqs: BTreeSet<u64>,
    /// Datagrams of the expected stream seen again.
    pub duplicates: u64,
    /// Datagrams whose hash did not verify.
    pub corrupt: u64,
    /// Intact datagrams of another stream (tag).
    pub strangers: u64,
    /// Datagrams that arrived after one with a higher sequence number.
    pub late: u64,
    /// The highest sequence number seen so far.
    highest: Option<u64>,
}

impl Tally {
    /// Counts one datagram, expecting stream `tag`.
    pub fn add(&mut self, tag: u64, d: &[u8]) -> Option<u64> {
        match decode(d) {
            Received::Ok { tag: t, seq } if t == tag => {
                if !self.seqs.insert(seq) {
                    self.duplicates += 1;
                }
                if self.highest.is_some_and(|highest| seq < highest) {
                    self.late += 1;
                }
                self.highest = self.highest.max(Some(seq));
                Some(seq)
            }
            Received::Ok { .. } => {
                self.strangers += 1;
                None
            }
            Received::Corrupt => {
                self.corrupt += 1;
                None
            }
        }
    }

    /// Datagrams of `sent` never received.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.seqs.len() as u64)
    }
}

/// Gives a test application's socket 8 MiB of receive buffer (forced past
/// `net.core.rmem_max`; tests run as root), so that an application slower
/// than the kernel path does not lose what it has not read yet.
pub fn big_buffers(socket: &UdpSocket) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::RcvBufForce, &(8 << 20)).map_err(std::io::Error::from)?;
    setsockopt(socket, sockopt::SndBufForce, &(8 << 20)).map_err(std::io::Error::from)
}

/// Receives on `socket` until `want` distinct datagrams of stream `tag`
/// arrived, or nothing came for `quiet` after the first one, or `until`;
/// tallies everything and returns the senders seen too.
pub fn receive(
    socket: &UdpSocket,
    tag: u64,
    want: u64,
    quiet: Duration,
    until: Deadline,
) -> (Tally, BTreeSet<SocketAddr>) {
    let mut tally = Tally::default();
    let mut senders = BTreeSet::new();
    let mut buf = vec![0u8; 65_536];
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut last: Option<std::time::Instant> = None;
    while (tally.seqs.len() as u64) < want && !until.expired() {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                senders.insert(from);
                tally.add(tag, &buf[..n]);
                last = Some(std::time::Instant::now());
            }
            Err(_) if last.is_some_and(|t| t.elapsed() >= quiet) => break,
            Err(_) => {}
        }
    }
    (tally, senders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intact_corrupt_and_strange_datagrams_are_told_apart() {
        let d = encode(7, 42, 1200);
        assert_eq!(d.len(), 1200);
        assert_eq!(decode(&d), Received::Ok { tag: 7, seq: 42 });
        let mut flipped = d.clone();
        flipped[100] ^= 1;
        assert_eq!(decode(&flipped), Received::Corrupt);
        assert_eq!(decode(&d[..d.len() - 1]), Received::Corrupt);
        let mut t = Tally::default();
        assert_eq!(t.add(7, &d), Some(42));
        assert_eq!(t.add(7, &d), Some(42));
        assert_eq!(t.add(7, &encode(8, 1, 100)), None);
        assert_eq!(t.add(7, &flipped), None);
        assert_eq!(
            (t.seqs.len(), t.duplicates, t.strangers, t.corrupt),
            (1, 1, 1, 1)
        );
        assert_eq!(t.lost(10), 9);
    }

    #[test]
    fn datagrams_overtaken_by_later_ones_are_counted_late() {
        let mut t = Tally::default();
        for seq in [0, 1, 3, 2, 4, 0, 5] {
            t.add(7, &encode(7, seq, 64));
        }
        // 2 after 3, and 0 (a duplicate) after 4.
        assert_eq!((t.late, t.duplicates, t.seqs.len()), (2, 1, 6));
    }
}
