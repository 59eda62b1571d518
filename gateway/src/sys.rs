//! Every raw system call the gateway makes outside aya: socket options the
//! standard library does not expose (SO_COOKIE, TCP_INFO, SO_RCVLOWAT,
//! SO_MAX_PACING_RATE, TCP_ULP), queue ioctls (SIOCINQ/SIOCOUTQ), pipes and
//! splice(2). Each function is a thin, checked wrapper with a SAFETY note, so the
//! rest of the crate stays free of `unsafe`.
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

/// Reads a fixed-size socket option.
fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
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
    // SAFETY: the buffer was zero-initialised and T is plain old data (u64 or
    // a repr(C) struct of integers), so any prefix the kernel filled is valid.
    Ok(unsafe { value.assume_init() })
}

fn setsockopt<T: Copy>(
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
