//! Every raw system call the gateway makes outside aya: socket options the
//! standard library does not expose (SO_COOKIE, TCP_INFO, SO_RCVLOWAT,
//! SO_MAX_PACING_RATE, TCP_ULP), queue ioctls (SIOCINQ/SIOCOUTQ), pipes and
//! splice(2). Each function is a thin, checked wrapper with a SAFETY note, so the
//! rest of the crate stays free of `unsafe`.
#![allow(unsafe_code)]
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Plain data the kernel reads or writes as a socket option: integers and
/// the `repr(C)` structs of this module, every bit pattern a valid value and
/// no padding. Private to this module, so no other type can be passed to
/// the raw helpers below (their SAFETY notes rely on it).
trait PlainData: Sized {}
impl PlainData for libc::c_int {}
impl PlainData for u64 {}
impl PlainData for TcpInfoPrefix {}
impl PlainData for AesGcm128Info {}
impl PlainData for AesGcm256Info {}
impl PlainData for Chacha20Poly1305Info {}

/// Reads a fixed-size socket option.
fn getsockopt<T: PlainData + Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable buffer of `len` bytes that outlives the
    // call; the kernel writes at most `len` bytes and reports how many.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: the buffer was zero-initialised and T is PlainData (an integer
    // or a repr(C) struct of integers), so any prefix the kernel filled is valid.
    Ok(unsafe { value.assume_init() })
}

/// Writes `value` as a socket option.
fn setsockopt<T: PlainData>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points at `size_of::<T>()` readable bytes for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The kernel's unique 64-bit id of a socket (SO_COOKIE), the key under which
/// the eBPF programs know it.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    getsockopt::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// The prefix of the kernel's `struct tcp_info` up to `tcpi_bytes_received`
/// (stable UAPI layout since Linux 4.1).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpInfoPrefix {
    _u8_fields: [u8; 8],
    _u32_fields: [u32; 24],
    _pacing_rate: u64,
    _max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

/// Bytes of this socket's outgoing data the peer has acknowledged.
pub fn tcp_bytes_acked(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(getsockopt::<TcpInfoPrefix>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?.bytes_acked)
}

/// Bytes this socket has received from its peer.
pub fn tcp_bytes_received(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(getsockopt::<TcpInfoPrefix>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?.bytes_received)
}

fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int to the pointer we pass.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value) })?;
    u64::try_from(value).map_err(|_| io::Error::other("negative queue length"))
}

/// Bytes written to the socket that the peer has not acknowledged (SIOCOUTQ).
pub fn send_queue_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// Bytes waiting in the socket's receive queue (SIOCINQ).
pub fn recv_queue_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    ioctl_int(fd, libc::FIONREAD)
}

/// Sets SO_RCVLOWAT. On TCP this also runs the socket's data-ready callback,
/// which makes a freshly attached sk_skb verdict program process bytes that
/// were queued before the socket entered the SockHash.
pub fn set_recv_low_water(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, &bytes)
}

/// Caps the socket's sending rate in bytes per second (SO_MAX_PACING_RATE);
/// enforced by TCP's internal pacing (or the fq qdisc) in every data path.
pub fn set_max_pacing_rate(fd: BorrowedFd<'_>, bytes_per_sec: u64) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_MAX_PACING_RATE,
        &bytes_per_sec,
    )
}

/// Attaches an upper-layer protocol such as "tls" to a connected TCP socket.
pub fn set_tcp_ulp(fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A pipe whose two ends are non-blocking, used as splice's in-kernel buffer.
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl Pipe {
    /// Creates a non-blocking pipe and asks for `capacity` bytes of buffer (the
    /// kernel may round it or cap it at /proc/sys/fs/pipe-max-size; the size it
    /// really has is returned by [`Pipe::capacity`]).
    pub fn new(capacity: usize) -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both fds are open and now owned only here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let pipe = Pipe { read, write };
        let wanted = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory.
        // Failure (EPERM over the unprivileged limit) keeps the default size.
        let _ = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, wanted) };
        Ok(pipe)
    }

    /// The pipe's buffer size in bytes.
    pub fn capacity(&self) -> io::Result<usize> {
        // SAFETY: F_GETPIPE_SZ takes no argument and touches no memory.
        let size = check(unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
        usize::try_from(size).map_err(|_| io::Error::other("negative pipe size"))
    }
}

/// splice(2) between two descriptors without offsets (one side must be a
/// pipe), non-blocking on the pipe. Ok(0) means end of input.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: no offsets are passed; the kernel moves data between two fds we
    // borrow for the duration of the call.
    let moved = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if moved < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(moved as usize)
    }
}

/// Peeks one byte: Ok(0) means the peer sent FIN and nothing is queued.
pub fn peek_nonblocking(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`.
    let got = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(got as usize)
    }
}

/// The pending socket error (SO_ERROR), if any, clearing it.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let code = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((code != 0).then(|| io::Error::from_raw_os_error(code)))
}

/// Borrow helper so callers can pass anything that owns a descriptor.
pub fn fd_of<T: AsFd>(owner: &T) -> BorrowedFd<'_> {
    owner.as_fd()
}

// ---------------------------------------------------------------------------
// Kernel TLS (the gateway-to-gateway channel, `crate::channel`)
// ---------------------------------------------------------------------------

/// `SOL_TLS` socket option level and its options / cmsg types (linux/tls.h).
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// `version` values of `struct tls_crypto_info`.
pub const KTLS_VERSION_1_2: u16 = 0x0303;
/// TLS 1.3.
pub const KTLS_VERSION_1_3: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Which half of a kernel TLS socket a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KtlsDirection {
    /// Records the socket sends (TLS_TX).
    Tx,
    /// Records the socket receives (TLS_RX).
    Rx,
}

/// `struct tls12_crypto_info_aes_gcm_128` (40 bytes).
#[repr(C)]
struct AesGcm128Info {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_aes_gcm_256` (56 bytes).
#[repr(C)]
struct AesGcm256Info {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 32],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_chacha20_poly1305` (56 bytes; no salt).
#[repr(C)]
struct Chacha20Poly1305Info {
    version: u16,
    cipher_type: u16,
    iv: [u8; 12],
    key: [u8; 32],
    rec_seq: [u8; 8],
}

/// Key material for one direction of a kernel TLS socket, as the kernel
/// wants it. `iv` is the full 12-byte TLS IV / nonce base as rustls reports
/// it; the split into the kernel's salt and iv fields happens here.
pub enum KtlsCipher<'a> {
    AesGcm128 { key: &'a [u8; 16], iv: &'a [u8; 12] },
    AesGcm256 { key: &'a [u8; 32], iv: &'a [u8; 12] },
    Chacha20Poly1305 { key: &'a [u8; 32], iv: &'a [u8; 12] },
}

/// Zeroes a key-carrying struct in place (best effort: volatile writes so the
/// compiler cannot drop them).
fn wipe<T: PlainData>(value: &mut T) {
    let ptr = (value as *mut T).cast::<u8>();
    for i in 0..size_of::<T>() {
        // SAFETY: `ptr + i` stays inside `*value`, which we hold mutably; the
        // structs wiped here are plain bytes and u16s, valid when all zero.
        unsafe { std::ptr::write_volatile(ptr.add(i), 0) };
    }
}

/// Hands one direction's key to a socket that already has the "tls" upper
/// layer protocol ([`set_tcp_ulp`]). `version` is [`KTLS_VERSION_1_2`] or
/// [`KTLS_VERSION_1_3`]; `seq` is the next record sequence number. The
/// kernel copies the key; the stack copy made here is wiped afterwards.
pub fn set_ktls_key(
    fd: BorrowedFd<'_>,
    direction: KtlsDirection,
    version: u16,
    cipher: KtlsCipher<'_>,
    seq: u64,
) -> io::Result<()> {
    let name = match direction {
        KtlsDirection::Tx => TLS_TX,
        KtlsDirection::Rx => TLS_RX,
    };
    let rec_seq = seq.to_be_bytes();
    let split = |iv: &[u8; 12]| {
        let mut salt = [0u8; 4];
        let mut rest = [0u8; 8];
        salt.copy_from_slice(&iv[..4]);
        rest.copy_from_slice(&iv[4..]);
        (salt, rest)
    };
    match cipher {
        KtlsCipher::AesGcm128 { key, iv } => {
            let (salt, iv) = split(iv);
            let mut info = AesGcm128Info {
                version,
                cipher_type: TLS_CIPHER_AES_GCM_128,
                iv,
                key: *key,
                salt,
                rec_seq,
            };
            let result = setsockopt(fd, SOL_TLS, name, &info);
            wipe(&mut info);
            result
        }
        KtlsCipher::AesGcm256 { key, iv } => {
            let (salt, iv) = split(iv);
            let mut info = AesGcm256Info {
                version,
                cipher_type: TLS_CIPHER_AES_GCM_256,
                iv,
                key: *key,
                salt,
                rec_seq,
            };
            let result = setsockopt(fd, SOL_TLS, name, &info);
            wipe(&mut info);
            result
        }
        KtlsCipher::Chacha20Poly1305 { key, iv } => {
            let mut info = Chacha20Poly1305Info {
                version,
                cipher_type: TLS_CIPHER_CHACHA20_POLY1305,
                iv: *iv,
                key: *key,
                rec_seq,
            };
            let result = setsockopt(fd, SOL_TLS, name, &info);
            wipe(&mut info);
            result
        }
    }
}

/// A kernel TLS cipher, for reading a socket's state back
/// ([`ktls_tx_record_seq`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KtlsSuite {
    AesGcm128,
    AesGcm256,
    Chacha20Poly1305,
}

impl KtlsSuite {
    /// The size of the cipher's `tls12_crypto_info_*` struct and the offset
    /// of its `rec_seq` field (its last 8 bytes).
    fn info_layout(self) -> (usize, usize) {
        let size = match self {
            KtlsSuite::AesGcm128 => size_of::<AesGcm128Info>(),
            KtlsSuite::AesGcm256 => size_of::<AesGcm256Info>(),
            KtlsSuite::Chacha20Poly1305 => size_of::<Chacha20Poly1305Info>(),
        };
        (size, size - 8)
    }
}

/// The sequence number of the next record a kernel TLS socket will send
/// under its current TX key: how many records it sealed since the key was
/// set with sequence number 0 (getsockopt `TLS_TX`). The kernel also returns
/// the key; the buffer is wiped before returning.
pub fn ktls_tx_record_seq(fd: BorrowedFd<'_>, suite: KtlsSuite) -> io::Result<u64> {
    let (size, seq_at) = suite.info_layout();
    let mut info = [0u8; 64];
    let mut len = size as libc::socklen_t;
    // SAFETY: `info` is a writable 64-byte buffer, larger than `len`, alive
    // for the call; the kernel writes at most `len` bytes.
    let result = check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_TLS,
            TLS_TX,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    });
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&info[seq_at..seq_at + 8]);
    for byte in info.iter_mut() {
        // SAFETY: a volatile write to a byte of our own stack buffer, so the
        // key the kernel copied into it does not outlive this call.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    result?;
    if len as usize != size {
        return Err(io::Error::other(format!(
            "getsockopt(TLS_TX) returned {len} bytes, expected {size}"
        )));
    }
    Ok(u64::from_be_bytes(seq))
}

/// Control buffer for one cmsg carrying one byte, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgSpace([u8; 64]);

/// Receives one TLS record's plaintext from a kernel TLS RX socket with
/// recvmsg and a control buffer, non-blocking. Returns the byte count and the
/// record's content type (23 application data, 21 alert, 22 handshake). Used
/// when splice refuses a record that is not application data (EINVAL).
pub fn recv_ktls_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = CmsgSpace([0; 64]);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` points at one iovec over `buf` and at `control`, both
    // writable and alive for the call; the kernel writes within their lengths.
    let got = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "TLS record type control message truncated",
        ));
    }
    let mut record_type = 23u8;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen, which the kernel set to what it wrote.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                record_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((got as usize, record_type))
}

/// Sends `data` as one TLS record of content type `record_type` (e.g. 21, an
/// alert) on a kernel TLS TX socket, non-blocking.
pub fn send_ktls_record(fd: BorrowedFd<'_>, record_type: u8, data: &[u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = CmsgSpace([0; 64]);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(1) } as usize;
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer (64 bytes, 8-aligned) holds CMSG_SPACE(1);
    // CMSG_FIRSTHDR is non-null for a non-empty buffer and CMSG_DATA points
    // inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
    }
    // SAFETY: `msg` points at one iovec over `data` (only read by the
    // kernel) and at the control buffer, both alive for the call.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// The socket's current bound on its advertised receive window.
pub fn tcp_window_clamp(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let clamp = getsockopt::<libc::c_int>(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP)?;
    u32::try_from(clamp).map_err(|_| io::Error::other("negative window clamp"))
}

/// Bounds the socket's advertised receive window (TCP_WINDOW_CLAMP; the
/// kernel raises tiny values to its minimum). The sockmap path uses it to
/// make a sender wait while the kernel's redirect queue is long.
pub fn set_tcp_window_clamp(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, &value)
}
