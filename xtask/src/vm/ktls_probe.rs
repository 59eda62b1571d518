//! ktls_probe: a standalone, dependency-free program (NOT a module of xtask) that checks kernel TLS
//! on the running kernel. xtask compiles it with plain rustc into a static binary for the VM:
//! `rustc --edition 2021 -O -C target-feature=+crt-static ktls_probe.rs -o ktls_probe`.
//!
//! On a loopback TCP pair it sets TCP_ULP "tls" on both ends, TLS_TX (TLS 1.3, AES-GCM-128) on
//! one and TLS_RX with the same key material on the other (no handshake: both ends are simply
//! given the same keys), then:
//! 1. checks that the kernel really encrypts: one record read from a third, plain socket has a
//!    TLS 1.3 application-data header (0x17 0x03 0x03), the right length, and no plaintext;
//! 2. sends 1 MiB (or the byte count given as the first argument) through TX -> RX and compares
//!    it byte for byte.
//!
//! Exit status 0 and a final "PASS" line when everything holds; 1 with the reason otherwise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::time::Instant;

const SOL_TCP: i32 = 6;
const TCP_ULP: i32 = 31;
const SOL_TLS: i32 = 282;
const TLS_TX: i32 = 1;
const TLS_RX: i32 = 2;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;

/// struct tls12_crypto_info_aes_gcm_128 from <linux/tls.h> (40 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct CryptoInfoAesGcm128 {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

unsafe extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
}

fn set(fd: i32, level: i32, name: i32, value: &[u8], what: &str) -> Result<(), String> {
    let rc = unsafe { setsockopt(fd, level, name, value.as_ptr(), value.len() as u32) };
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn crypto_info() -> CryptoInfoAesGcm128 {
    CryptoInfoAesGcm128 {
        version: TLS_1_3_VERSION,
        cipher_type: TLS_CIPHER_AES_GCM_128,
        iv: [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17],
        key: *b"0123456789abcdef",
        salt: [0xa0, 0xa1, 0xa2, 0xa3],
        rec_seq: [0; 8],
    }
}

fn as_bytes(ci: &CryptoInfoAesGcm128) -> &[u8] {
    unsafe {
        std::slice::from_raw_parts(
            ci as *const _ as *const u8,
            std::mem::size_of::<CryptoInfoAesGcm128>(),
        )
    }
}

fn enable(sock: &TcpStream, dir: i32, side: &str) -> Result<(), String> {
    let fd = sock.as_raw_fd();
    set(
        fd,
        SOL_TCP,
        TCP_ULP,
        b"tls",
        &format!("{side}: setsockopt(TCP_ULP, \"tls\")"),
    )?;
    let name = if dir == TLS_TX { "TLS_TX" } else { "TLS_RX" };
    set(
        fd,
        SOL_TLS,
        dir,
        as_bytes(&crypto_info()),
        &format!("{side}: setsockopt(SOL_TLS, {name})"),
    )
}

fn pair() -> Result<(TcpStream, TcpStream), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    Ok((c, s))
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn wire_check() -> Result<(), String> {
    let (mut tx, mut raw) = pair()?;
    enable(&tx, TLS_TX, "tx")?;
    let msg = b"kernel TLS wire check: this text must not appear on the wire";
    tx.write_all(msg)
        .map_err(|e| format!("send on kTLS socket: {e}"))?;
    let mut hdr = [0u8; 5];
    raw.read_exact(&mut hdr)
        .map_err(|e| format!("read record header: {e}"))?;
    let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
    let mut body = vec![0u8; len];
    raw.read_exact(&mut body)
        .map_err(|e| format!("read record body: {e}"))?;
    // TLS 1.3: opaque type application_data, legacy version 1.2, inner type byte + 16-byte tag.
    if hdr[..3] != [0x17, 0x03, 0x03] || len != msg.len() + 1 + 16 {
        return Err(format!(
            "unexpected record header {hdr:02x?} (len {len}, want {})",
            msg.len() + 17
        ));
    }
    if body.windows(8).any(|w| msg.windows(8).any(|m| m == w)) {
        return Err("plaintext visible on the wire".into());
    }
    println!("wire: one record, header {hdr:02x?}, {len} bytes for {} plaintext bytes, no plaintext seen", msg.len());
    Ok(())
}

fn stream_check(total: usize) -> Result<(), String> {
    let (mut tx, mut rx) = pair()?;
    enable(&tx, TLS_TX, "tx")?;
    enable(&rx, TLS_RX, "rx")?;
    let data = pattern(total);
    let expect = data.clone();
    let started = Instant::now();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        for chunk in data.chunks(64 * 1024) {
            tx.write_all(chunk).map_err(|e| format!("send: {e}"))?;
        }
        tx.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok(())
    });
    let mut got = Vec::with_capacity(total);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "recv on kTLS RX socket after {} bytes: {e}",
                    got.len()
                ))
            }
        }
        if got.len() > total {
            break;
        }
    }
    writer.join().map_err(|_| "writer panicked".to_string())??;
    if got != expect {
        let first = got.iter().zip(&expect).position(|(a, b)| a != b);
        return Err(format!(
            "received {} bytes, first difference at {first:?} (want {total} identical)",
            got.len()
        ));
    }
    println!(
        "stream: {total} bytes TX -> RX identical in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ulp = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    println!(
        "kernel {} ; tcp_available_ulp: {}",
        release.trim(),
        ulp.trim()
    );
    let total = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 20);
    let result = wire_check().and_then(|_| stream_check(total));
    match result {
        Ok(()) => println!("PASS: kernel TLS 1.3 AES-GCM-128 TX and RX work"),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}
