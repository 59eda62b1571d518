//! The userspace data path: each direction reads into a large buffer and
//! writes it out, half-closing the destination when the source sends FIN.
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::watch::both_directions;
use super::{ConnCounters, RelayError};
use crate::sockets::{shutdown_write, write_all};

/// Read buffer per direction: large enough for 100 Gbit/s-class batching.
const BUFFER: usize = 256 * 1024;

pub(super) async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    counters: &ConnCounters,
) -> Result<(), RelayError> {
    both_directions(client, server, counters, direction).await
}

/// Copies `from` -> `to` until FIN, then half-closes `to`.
pub(super) async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
) -> io::Result<()> {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        from.readable().await?;
        match from.try_read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                write_all(to, &buffer[..n]).await?;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    shutdown_write(to)
}
