//! The splice(2) data path: per direction, socket -> pipe -> socket inside the
//! kernel, driven by tokio readiness. The pipe is only refilled once empty, so
//! an EAGAIN from the source always means "no data" (never "pipe full") and
//! readiness is never cleared wrongly.
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::watch::{first_error, shutdown_write};
use super::{ConnCounters, RelayError, Side};
use crate::sys::{self, Pipe};

/// Pipe buffer per direction.
const PIPE_SIZE: usize = 1024 * 1024;

pub(super) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    counters: &ConnCounters,
) -> Result<(), RelayError> {
    let up = async {
        direction(client, server, &counters.to_server)
            .await
            .map_err(|source| RelayError::Io {
                side: Side::Server,
                source,
            })
    };
    let down = async {
        direction(server, client, &counters.to_client)
            .await
            .map_err(|source| RelayError::Io {
                side: Side::Client,
                source,
            })
    };
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(client, server) => Err(err),
    }
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
