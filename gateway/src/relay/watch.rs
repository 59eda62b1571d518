//! Helpers shared by the data paths: waiting for a socket error (a reset)
//! while the paths move bytes, half-closing, and resetting.
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::AtomicU64;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{ConnCounters, RelayError, Side};
use crate::sys;

/// Runs `direction` client -> server and server -> client at once until both
/// ended, or until either socket reports an error.
pub(super) async fn both_directions<'a, F, Fut>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    counters: &'a ConnCounters,
    direction: F,
) -> Result<(), RelayError>
where
    F: Fn(&'a TcpStream, &'a TcpStream, &'a AtomicU64) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
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

/// Resolves with the first error (RST, timeout) reported on either socket.
pub(super) async fn first_error(client: &TcpStream, server: &TcpStream) -> RelayError {
    tokio::select! {
        err = socket_error(client) => RelayError::Io { side: Side::Client, source: err },
        err = socket_error(server) => RelayError::Io { side: Side::Server, source: err },
    }
}

async fn socket_error(socket: &TcpStream) -> io::Error {
    loop {
        if let Err(err) = socket.ready(Interest::ERROR).await {
            return err;
        }
        match sys::take_socket_error(sys::fd_of(socket)) {
            Ok(Some(err)) => return err,
            Err(err) => return err,
            // EPOLLERR without a pending error: clear the readiness and wait on.
            Ok(None) => {
                let _ = socket.try_io(Interest::ERROR, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
        }
    }
}

/// Sends FIN after everything written so far.
pub(super) fn shutdown_write(socket: &TcpStream) -> io::Result<()> {
    match SockRef::from(socket).shutdown(Shutdown::Write) {
        // The peer is already gone: nothing left to tell it.
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Makes the coming close send RST instead of FIN.
pub(super) fn reset(socket: &TcpStream) {
    let _ = SockRef::from(socket).set_linger(Some(std::time::Duration::ZERO));
}

/// Writes all of `data`, waiting for room as needed.
pub(super) async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
