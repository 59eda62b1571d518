//! The splice(2) data path: per direction, socket -> pipe -> socket inside the
//! kernel, driven by tokio readiness. The pipe is only refilled once empty, so
//! an EAGAIN from the source always means "no data" (never "pipe full") and
//! readiness is never cleared wrongly.
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::watch::both_directions;
use super::{ConnCounters, RelayError};
use crate::sockets::shutdown_write;
use crate::sys::{self, Pipe};

/// Pipe buffer per direction.
const PIPE_SIZE: usize = 1024 * 1024;

pub(super) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    counters: &ConnCounters,
) -> Result<(), RelayError> {
    both_directions(client, server, counters, direction).await
}

async fn direction(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<()> {
    let pipe = Pipe::new(PIPE_SIZE)?;
    let capacity = pipe.capacity()?;
    loop {
        from.readable().await?;
        let mut in_pipe = match from.try_io(Interest::READABLE, || {
            sys::splice(from.as_fd(), pipe.write.as_fd(), capacity)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        while in_pipe > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read.as_fd(), to.as_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
    }
    shutdown_write(to)
}
