//! Whether this kernel can do TLS, found by doing it: the one kernel-TLS
//! probe of the project. The gateway runs [`probe_ktls`] at start-up (and
//! `s2cs check` prints it); `cargo xtask vm-test` runs it and the deeper
//! [`verify_ktls_wire`] in its VMs through the `ktls_selftest` example.
//!
//! Both work on loopback TCP pairs given the same TLS 1.3 AES-GCM-128 keys
//! on both ends (no handshake), through the same socket calls the data path
//! uses (`sys::set_tcp_ulp`, `sys::set_ktls_key`, splice).
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sys::{self, KtlsCipher, KtlsDirection, Pipe};

/// What the kernel offers for TLS.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KtlsSupport {
    /// TCP_ULP "tls" attaches.
    pub ulp: bool,
    /// TLS 1.3 AES-GCM-128 keys are accepted for TX and RX, and a record
    /// went through a kernel TLS pair and out of it with splice.
    pub tls13: bool,
    /// After a KeyUpdate, the kernel accepts the next TLS 1.3 key on a socket
    /// that already has one (Linux 6.14 on; older kernels answer EBUSY), so
    /// kernel TLS could follow key updates.
    pub rekey: bool,
    /// TLS 1.3 ChaCha20-Poly1305 keys are accepted and a record crossed a
    /// pair (kernel TLS has it from Linux 5.11; FIPS kernels may lack it).
    pub chacha20: bool,
    /// What was observed (how it works, or why not).
    pub detail: String,
}

impl KtlsSupport {
    /// The kernel TLS data path can be used.
    pub fn available(&self) -> bool {
        self.ulp && self.tls13
    }

    /// Support that was not probed (tests forcing the userspace path).
    pub fn unavailable(detail: impl Into<String>) -> Self {
        KtlsSupport {
            ulp: false,
            tls13: false,
            rekey: false,
            chacha20: false,
            detail: detail.into(),
        }
    }
}

/// Why a probe step failed, and whether TCP_ULP "tls" had attached by then.
struct ProbeFailure {
    ulp: bool,
    why: String,
}

impl ProbeFailure {
    fn before_ulp(why: impl Into<String>) -> Self {
        ProbeFailure {
            ulp: false,
            why: why.into(),
        }
    }

    fn after_ulp(why: impl Into<String>) -> Self {
        ProbeFailure {
            ulp: true,
            why: why.into(),
        }
    }
}

/// The probe's key material (both ends get the same).
const KEY: [u8; 16] = [0x42; 16];
const IV: [u8; 12] = [0x24; 12];
/// TLS 1.3 application data on the wire: content type 23, legacy version 3.3.
const APPLICATION_DATA_HEADER: [u8; 3] = [0x17, 0x03, 0x03];
/// A TLS 1.3 AES-GCM record carries one content-type byte and a 16-byte tag.
const RECORD_OVERHEAD: usize = 1 + 16;

/// Probes kernel TLS on a loopback pair: TCP_ULP "tls" on both ends, TLS 1.3
/// AES-GCM-128 TX on one and RX on the other, one record through, read back
/// with splice. Blocking; takes a few milliseconds.
pub fn probe_ktls() -> KtlsSupport {
    let ulps = available_ulps();
    match probe_round_trip() {
        Ok(()) => {
            let (rekey, how) = probe_rekey();
            let (chacha20, chacha_how) = match probe_chacha20() {
                Ok(()) => (
                    true,
                    "a ChaCha20-Poly1305 record crossed a pair".to_string(),
                ),
                Err(failure) => (false, failure.why),
            };
            KtlsSupport {
                ulp: true,
                tls13: true,
                rekey,
                chacha20,
                detail: format!(
                    "TLS 1.3 AES-GCM-128 keys set for TX and RX, a record crossed a loopback pair and left by splice \
                     (available ULPs: {ulps}); rekey: {} ({how}); chacha20: {} ({chacha_how})",
                    if rekey { "yes" } else { "no" },
                    if chacha20 { "yes" } else { "no" }
                ),
            }
        }
        Err(failure) => KtlsSupport {
            ulp: failure.ulp,
            tls13: false,
            rekey: false,
            chacha20: false,
            detail: format!("{} (available ULPs: {ulps})", failure.why),
        },
    }
}

/// The deeper check for a kernel under test (blocking): one record written
/// by kernel TLS and read raw from a plain socket must be TLS 1.3
/// application data of the right length with no plaintext in it, and
/// `stream_bytes` sent through a TX -> RX pair must arrive identical.
/// Returns what it saw, one line per check.
pub fn verify_ktls_wire(stream_bytes: usize) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    let (tx, mut plain) = loopback_pair().map_err(|f| f.why)?;
    enable_ulp(&tx, "tx").map_err(|f| f.why)?;
    set_key(&tx, KtlsDirection::Tx).map_err(|f| f.why)?;
    let message = b"s2cs kernel TLS probe: this text must not appear on the wire";
    (&tx)
        .write_all(message)
        .map_err(|e| format!("send on a kernel TLS socket: {e}"))?;
    let mut record = vec![0u8; 5 + message.len() + RECORD_OVERHEAD];
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    plain
        .read_exact(&mut record)
        .map_err(|e| format!("reading the record from a plain socket: {e}"))?;
    let body_len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    if record[..3] != APPLICATION_DATA_HEADER || body_len != message.len() + RECORD_OVERHEAD {
        return Err(format!(
            "the record header on the wire is {:02x?}, expected {:02x?} and length {}",
            &record[..5],
            APPLICATION_DATA_HEADER,
            message.len() + RECORD_OVERHEAD
        ));
    }
    if record
        .windows(8)
        .any(|w| message.windows(8).any(|m| m == w))
    {
        return Err("plaintext appears on the wire: the kernel did not encrypt".into());
    }
    report.push(format!(
        "wire: one record, header {:02x?}, {} bytes for {} plaintext bytes, no plaintext seen",
        &record[..5],
        record.len(),
        message.len()
    ));

    let (tx, rx) = keyed_pair().map_err(|f| f.why)?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> io::Result<()> {
        let mut tx = tx;
        let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut left = stream_bytes;
        while left > 0 {
            let n = left.min(block.len());
            tx.write_all(&block[..n])?;
            left -= n;
        }
        tx.shutdown(std::net::Shutdown::Write)
    });
    let mut rx = rx;
    rx.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    loop {
        let n = rx
            .read(&mut buf)
            .map_err(|e| format!("receiving through kernel TLS after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            let offset = got + i;
            if *byte != (offset % (64 * 1024) % 251) as u8 {
                return Err(format!("byte {offset} differs after kernel TLS TX -> RX"));
            }
        }
        got += n;
    }
    sender
        .join()
        .map_err(|_| "the sender thread panicked".to_string())?
        .map_err(|e| format!("sending through kernel TLS: {e}"))?;
    if got != stream_bytes {
        return Err(format!(
            "kernel TLS delivered {got} of {stream_bytes} bytes"
        ));
    }
    report.push(format!(
        "stream: {stream_bytes} bytes TX -> RX identical in {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(report)
}

/// The kernel's TCP upper-layer protocols, as it lists them.
pub fn available_ulps() -> String {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    if ulps.trim().is_empty() {
        "none".to_string()
    } else {
        ulps.trim().to_string()
    }
}

/// TLS record type of a handshake message (a KeyUpdate after the handshake).
const RECORD_TYPE_HANDSHAKE: u8 = 22;
/// A KeyUpdate (RFC 8446 4.6.3) with update_not_requested.
const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

/// Whether this kernel accepts the next TX key after a KeyUpdate, as a
/// rekeying sender does it: the KeyUpdate record under the current key, then
/// TLS_TX again with sequence number 0. On a throw-away loopback pair, so a
/// kernel that refuses (EBUSY) or takes the key changes nothing that is used.
fn probe_rekey() -> (bool, String) {
    let (tx, _rx) = match keyed_pair() {
        Ok(pair) => pair,
        Err(failure) => return (false, failure.why),
    };
    if let Err(e) = sys::send_ktls_record(tx.as_fd(), RECORD_TYPE_HANDSHAKE, &KEY_UPDATE) {
        return (false, format!("sending a KeyUpdate record: {e}"));
    }
    let next_key = [0x43u8; 16];
    let next = KtlsCipher::AesGcm128 {
        key: &next_key,
        iv: &IV,
    };
    match sys::set_ktls_key(tx.as_fd(), KtlsDirection::Tx, sys::KTLS_VERSION_1_3, next, 0) {
        Ok(()) => (true, "TLS_TX took the next key after a KeyUpdate".to_string()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => (
            false,
            "TLS_TX refused a second key (EBUSY): this kernel cannot rekey kernel TLS; Linux 6.14 and later can"
                .to_string(),
        ),
        Err(e) => (false, format!("TLS_TX with the next key after a KeyUpdate: {e}")),
    }
}

/// One record through a keyed pair, taken out of the RX socket by splice.
fn probe_round_trip() -> Result<(), ProbeFailure> {
    let (mut tx, rx) = keyed_pair()?;
    tx.write_all(b"s2cs")
        .map_err(|e| ProbeFailure::after_ulp(format!("send on a kernel TLS socket: {e}")))?;
    let pipe = Pipe::new(64 * 1024).map_err(|e| ProbeFailure::after_ulp(format!("pipe: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::splice(rx.as_fd(), pipe.write.as_fd(), 64 * 1024) {
            Ok(4) => break,
            Ok(n) => {
                return Err(ProbeFailure::after_ulp(format!(
                    "splice out of kernel TLS moved {n} bytes, expected 4"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(ProbeFailure::after_ulp(format!(
                    "splice out of a kernel TLS socket: {e}"
                )));
            }
        }
    }
    let mut got = [0u8; 4];
    std::fs::File::from(pipe.read)
        .read_exact(&mut got)
        .map_err(|e| ProbeFailure::after_ulp(format!("reading the pipe: {e}")))?;
    if &got != b"s2cs" {
        return Err(ProbeFailure::after_ulp(format!(
            "kernel TLS round trip returned {got:?}"
        )));
    }
    Ok(())
}

/// A loopback pair with kernel TLS TX on the first socket and RX on the
/// second, both with the probe's keys.
fn keyed_pair() -> Result<(TcpStream, TcpStream), ProbeFailure> {
    let (tx, rx) = loopback_pair()?;
    enable_ulp(&tx, "tx")?;
    enable_ulp(&rx, "rx")?;
    set_key(&tx, KtlsDirection::Tx)?;
    set_key(&rx, KtlsDirection::Rx)?;
    Ok((tx, rx))
}

/// One TLS 1.3 ChaCha20-Poly1305 record through a pair, read back with
/// read(2).
fn probe_chacha20() -> Result<(), ProbeFailure> {
    let key = [0x42u8; 32];
    let (mut tx, mut rx) = loopback_pair()?;
    enable_ulp(&tx, "tx")?;
    enable_ulp(&rx, "rx")?;
    for (socket, direction) in [(&tx, KtlsDirection::Tx), (&rx, KtlsDirection::Rx)] {
        let cipher = KtlsCipher::Chacha20Poly1305 { key: &key, iv: &IV };
        sys::set_ktls_key(socket.as_fd(), direction, sys::KTLS_VERSION_1_3, cipher, 0).map_err(
            |e| {
                ProbeFailure::after_ulp(format!(
                    "{direction:?} with a TLS 1.3 ChaCha20-Poly1305 key: {e}"
                ))
            },
        )?;
    }
    tx.write_all(b"s2cs")
        .map_err(|e| ProbeFailure::after_ulp(format!("send with ChaCha20-Poly1305: {e}")))?;
    rx.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| ProbeFailure::after_ulp(e.to_string()))?;
    let mut got = [0u8; 4];
    rx.read_exact(&mut got)
        .map_err(|e| ProbeFailure::after_ulp(format!("receive with ChaCha20-Poly1305: {e}")))?;
    if &got != b"s2cs" {
        return Err(ProbeFailure::after_ulp(format!(
            "ChaCha20-Poly1305 round trip returned {got:?}"
        )));
    }
    Ok(())
}

/// Two connected loopback sockets (the connecting end first).
fn loopback_pair() -> Result<(TcpStream, TcpStream), ProbeFailure> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ProbeFailure::before_ulp(format!("bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ProbeFailure::before_ulp(e.to_string()))?;
    let connecting =
        TcpStream::connect(addr).map_err(|e| ProbeFailure::before_ulp(format!("connect: {e}")))?;
    let (accepted, _) = listener
        .accept()
        .map_err(|e| ProbeFailure::before_ulp(format!("accept: {e}")))?;
    Ok((connecting, accepted))
}

fn enable_ulp(socket: &TcpStream, name: &str) -> Result<(), ProbeFailure> {
    sys::set_tcp_ulp(socket.as_fd(), "tls").map_err(|e| {
        ProbeFailure::before_ulp(if e.raw_os_error() == Some(libc::ENOENT) {
            "TCP_ULP \"tls\" is unavailable (ENOENT): no kernel TLS (CONFIG_TLS off or the tls module \
             not loaded; try `modprobe tls`)"
                .to_string()
        } else {
            format!("TCP_ULP \"tls\" on the {name} socket: {e}")
        })
    })
}

fn set_key(socket: &TcpStream, direction: KtlsDirection) -> Result<(), ProbeFailure> {
    let cipher = KtlsCipher::AesGcm128 { key: &KEY, iv: &IV };
    sys::set_ktls_key(socket.as_fd(), direction, sys::KTLS_VERSION_1_3, cipher, 0).map_err(|e| {
        ProbeFailure::after_ulp(match direction {
            KtlsDirection::Tx => format!(
                "TLS_TX with a TLS 1.3 AES-GCM-128 key: {e} (ENOENT: the gcm(aes) cipher is missing)"
            ),
            KtlsDirection::Rx => format!("TLS_RX with a TLS 1.3 AES-GCM-128 key: {e}"),
        })
    })
}
