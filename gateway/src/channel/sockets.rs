//! Socket helpers shared by the channel's data paths: waiting for a reset
//! on either socket while bytes flow, half-closing, resetting, and writing
//! whole buffers (plain or vectored) with tokio readiness.
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::error::ChannelRelayError;
use crate::sys;

/// Resolves with the first error (RST, timeout) reported on either socket.
pub(super) async fn first_error(lan: &TcpStream, wan: &TcpStream) -> ChannelRelayError {
    tokio::select! {
        source = socket_error(lan) => ChannelRelayError::Lan { source },
        source = socket_error(wan) => ChannelRelayError::Channel { source },
    }
}

async fn socket_error(socket: &TcpStream) -> io::Error {
    loop {
        if let Err(err) = socket.ready(Interest::ERROR).await {
            return err;
        }
        match sys::take_socket_error(sys::fd_of(socket)) {
            Ok(Some(err)) | Err(err) => return err,
            // EPOLLERR without a pending error: clear the readiness, wait on.
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
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Makes the coming close send RST instead of FIN.
pub(super) fn reset(socket: &TcpStream) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Writes all of `data`.
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

/// Writes all of `slices` with writev.
pub(super) async fn write_all_vectored(
    to: &TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    // Skip leading empty slices so "all written" is simply "none left".
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        to.writable().await?;
        match to.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
