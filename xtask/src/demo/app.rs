//! The demo's applications: a producer that listens and streams
//! detector-like frames, and a consumer that connects and checks every one.
//!
//! A frame is a 24-byte header (magic, frame index, payload length, FNV-1a
//! 64-bit checksum of the payload; little endian) followed by the payload,
//! pseudo-random bytes derived from the frame index, so the consumer can
//! verify order, length and content of every frame independently.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

const MAGIC: u32 = 0x5353_4652; // "SSFR"
const HEADER: usize = 24;

fn fnv1a(data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash ^= u64::from_le_bytes(word);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn fill_payload(index: u64, payload: &mut [u8]) {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in payload.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Listens on `listen`, accepts one consumer and streams `frames` frames of
/// `frame_size` bytes to it, then closes.
pub fn produce(listen: SocketAddr, frames: u64, frame_size: usize) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("producer: binding {listen}"))?;
    println!(
        "producer: listening on {listen}, {frames} frames of {} KiB",
        frame_size / 1024
    );
    let (mut stream, peer) = listener.accept().context("producer: accept")?;
    println!(
        "producer: consumer connected from {peer} (the CONS-side path ends at the PROD gateway)"
    );
    let mut frame = vec![0u8; HEADER + frame_size];
    for index in 0..frames {
        let (header, payload) = frame.split_at_mut(HEADER);
        fill_payload(index, payload);
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..12].copy_from_slice(&index.to_le_bytes());
        header[12..16].copy_from_slice(&u32::try_from(frame_size)?.to_le_bytes());
        header[16..24].copy_from_slice(&fnv1a(payload).to_le_bytes());
        stream
            .write_all(&frame)
            .with_context(|| format!("producer: sending frame {index}"))?;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("producer: closing")?;
    // Wait for the consumer to close, so every byte was taken.
    let _ = stream.read(&mut [0u8; 1]);
    println!("producer: sent {frames} frames");
    Ok(())
}

/// Connects to `connect`, verifies `frames` frames and prints live
/// throughput; ends with one "consumer: summary ..." line.
pub fn consume(connect: SocketAddr, frames: u64, frame_size: usize) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(connect)
        .with_context(|| format!("consumer: connecting to {connect}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut bytes = 0u64;
    let mut frame = vec![0u8; HEADER + frame_size];
    let mut expected = vec![0u8; frame_size];
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for index in 0..frames {
        stream
            .read_exact(&mut frame)
            .with_context(|| format!("consumer: frame {index} incomplete"))?;
        let (header, payload) = frame.split_at(HEADER);
        let field = |range: std::ops::Range<usize>| header[range].to_vec();
        ensure!(
            field(0..4) == MAGIC.to_le_bytes(),
            "frame {index}: bad magic"
        );
        let got_index = u64::from_le_bytes(
            field(4..12)
                .try_into()
                .map_err(|_| anyhow::anyhow!("header"))?,
        );
        ensure!(
            got_index == index,
            "frame {index}: got frame {got_index} (out of order)"
        );
        ensure!(
            fnv1a(payload).to_le_bytes().as_slice() == &header[16..24],
            "frame {index}: checksum mismatch"
        );
        fill_payload(index, &mut expected);
        ensure!(
            payload == expected.as_slice(),
            "frame {index}: payload differs from what the producer made"
        );
        bytes += frame.len() as u64;
        if last_report.elapsed() >= Duration::from_millis(500) {
            let secs = started.elapsed().as_secs_f64();
            let line = format!(
                "consumer: {:>5}/{frames} frames  {:>7.1} MiB  {:>6.2} Gbit/s",
                index + 1,
                bytes as f64 / (1 << 20) as f64,
                bytes as f64 * 8.0 / secs / 1e9
            );
            if terminal {
                print!("\r{line}");
                std::io::stdout().flush()?;
            } else {
                println!("{line}");
            }
            last_report = Instant::now();
        }
    }
    if stream.read(&mut [0u8; 1])? != 0 {
        bail!("consumer: bytes after the last frame");
    }
    let secs = started.elapsed().as_secs_f64();
    if terminal {
        println!();
    }
    println!(
        "consumer: summary frames={frames} bytes={bytes} seconds={secs:.3} gbit_per_s={:.3} verified=all",
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Tries to reach `addr` directly and says what happened (the demo's
/// isolation proof: from the producer's network this must fail).
pub fn probe(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => format!("CONNECTED to {addr}: the networks are NOT isolated"),
        Err(err) => format!("no route: connecting to {addr} failed ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_per_frame_and_checksums_see_one_flipped_bit() {
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        fill_payload(1, &mut a);
        fill_payload(2, &mut b);
        assert_ne!(a, b);
        let sum = fnv1a(&a);
        a[100] ^= 1;
        assert_ne!(sum, fnv1a(&a));
    }
}
