//! TCP socket helpers every data path and accept loop shares: waiting for
//! the first error (a reset, a timeout) on either of two sockets while
//! bytes flow, half-closing, making a close send RST, and writing whole
//! buffers (plain or vectored) with tokio readiness. Written once here;
//! the relay's and the channel's paths map [`Reported`] to their own errors.
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::sys;

/// Which of two sockets reported an error first, and the error.
#[derive(Debug)]
pub(crate) enum Reported {
    First(io::Error),
    Second(io::Error),
}

/// Resolves with the first error (RST, timeout) reported on either socket.
pub(crate) async fn first_error(first: &TcpStream, second: &TcpStream) -> Reported {
    tokio::select! {
        err = socket_error(first) => Reported::First(err),
        err = socket_error(second) => Reported::Second(err),
    }
}

/// Resolves with the error `socket` reports (SO_ERROR), once it has one.
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
pub(crate) fn shutdown_write(socket: &TcpStream) -> io::Result<()> {
    match SockRef::from(socket).shutdown(Shutdown::Write) {
        // The peer is already gone: nothing left to tell it.
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Makes the coming close of `socket` send RST instead of FIN: nothing of
/// ours stays in TIME_WAIT, and the peer learns at once. Best effort: a
/// socket that cannot take the option closes with FIN.
pub(crate) fn reset_on_close(socket: &impl AsFd) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Writes all of `data`, waiting for room as needed.
pub(crate) async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
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
pub(crate) async fn write_all_vectored(
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
