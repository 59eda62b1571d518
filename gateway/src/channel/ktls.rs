//! Kernel TLS: handing a channel's keys to the kernel, and the splice relay
//! over a kernel TLS socket (whether the kernel can is `ktls_probe`'s job).
//!
//! Why our own key hand-over instead of the `ktls` crate or rustls'
//! `dangerous_into_kernel_connection`: the proof needs rustls' TLS exporter,
//! which only the buffered connections offer (the unbuffered ones, the only
//! ones with `dangerous_into_kernel_connection`, have no exporter in rustls
//! 0.23), and the buffered connection's `dangerous_extract_secrets` gives the
//! same keys. The `ktls` crate would consume the keys while configuring the
//! socket, so a kernel that refuses them would leave no way back; here the
//! keys stay in hand, and a socket the kernel refuses (no `tls` module, a
//! cipher it lacks) falls back to the userspace record layer on the same
//! connection. Its CorkStream's job (rustls must not read past the
//! handshake) is done by the handshake driver's record-exact reads.
//!
//! The relay: LAN -> pipe -> kTLS socket with splice (the kernel builds the
//! records), kTLS socket -> pipe -> LAN with splice (the kernel opens them).
//! splice refuses a record that is not application data with EINVAL; that
//! record is then read with recvmsg and TLS_GET_RECORD_TYPE and handled like
//! the userspace path does: close_notify -> half-close, alert -> reset,
//! session ticket -> ignored. A KeyUpdate ends the connection with
//! [`ChannelRelayError::KernelCannotRekey`]: the keys live in the kernel and
//! no new ones are handed to it (TLS_RX/TLS_TX rekeying exists only from
//! Linux 6.13 on and is not used here), so the peer's next records could not
//! be decrypted. close_notify is sent with sendmsg and TLS_SET_RECORD_TYPE
//! before the FIN.
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::error::ChannelRelayError;
use super::reader::{Control, control_record};
use super::record::{Cipher, DirectionKeys, Secrets, Version};
use super::sockets::{first_error, shutdown_write};
use super::userspace::CLOSE_NOTIFY;
use crate::sys::{self, KtlsCipher, KtlsDirection, Pipe};

/// Pipe buffer per direction.
const PIPE_SIZE: usize = 1024 * 1024;

fn cipher_of(keys: &DirectionKeys) -> Option<KtlsCipher<'_>> {
    let iv: &[u8; 12] = &keys.iv;
    Some(match keys.cipher {
        Cipher::Aes128Gcm => KtlsCipher::AesGcm128 {
            key: keys.key.as_slice().try_into().ok()?,
            iv,
        },
        Cipher::Aes256Gcm => KtlsCipher::AesGcm256 {
            key: keys.key.as_slice().try_into().ok()?,
            iv,
        },
        Cipher::Chacha20Poly1305 => KtlsCipher::Chacha20Poly1305 {
            key: keys.key.as_slice().try_into().ok()?,
            iv,
        },
    })
}

/// Whether the socket can still be used in userspace after a failed attempt.
pub(super) enum EnableError {
    /// Nothing irreversible happened: relay in userspace.
    Fallback(io::Error),
    /// TX is in the kernel but RX could not be: the connection is lost.
    Broken(io::Error),
}

/// Hands both directions' keys to the kernel.
pub(super) fn enable(tcp: &TcpStream, secrets: &Secrets) -> Result<(), EnableError> {
    let version = match secrets.version {
        Version::Tls13 => sys::KTLS_VERSION_1_3,
        Version::Tls12 => sys::KTLS_VERSION_1_2,
    };
    let (tx, rx) = match (cipher_of(&secrets.tx), cipher_of(&secrets.rx)) {
        (Some(tx), Some(rx)) => (tx, rx),
        _ => {
            return Err(EnableError::Fallback(io::Error::other(
                "unexpected key length",
            )));
        }
    };
    sys::set_tcp_ulp(tcp.as_fd(), "tls").map_err(EnableError::Fallback)?;
    // A socket with the ULP but no keys still behaves as plain TCP.
    sys::set_ktls_key(tcp.as_fd(), KtlsDirection::Tx, version, tx, secrets.tx.seq)
        .map_err(EnableError::Fallback)?;
    sys::set_ktls_key(tcp.as_fd(), KtlsDirection::Rx, version, rx, secrets.rx.seq)
        .map_err(EnableError::Broken)
}

/// Relays until both directions are closed.
pub(super) async fn relay(
    lan: &TcpStream,
    wan: &TcpStream,
    version: Version,
    to_wan: &AtomicU64,
    to_lan: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let up = lan_to_ktls(lan, wan, to_wan);
    let down = ktls_to_lan(wan, lan, version, to_lan);
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(lan, wan) => Err(err),
    }
}

async fn lan_to_ktls(
    lan: &TcpStream,
    wan: &TcpStream,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let lan_err = |source| ChannelRelayError::Lan { source };
    let wan_err = |source| ChannelRelayError::Channel { source };
    let pipe = Pipe::new(PIPE_SIZE).map_err(lan_err)?;
    let capacity = pipe.capacity().map_err(lan_err)?;
    loop {
        lan.readable().await.map_err(lan_err)?;
        let mut in_pipe = match lan.try_io(Interest::READABLE, || {
            sys::splice(lan.as_fd(), pipe.write.as_fd(), capacity)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(lan_err(err)),
        };
        while in_pipe > 0 {
            wan.writable().await.map_err(wan_err)?;
            match wan.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read.as_fd(), wan.as_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(wan_err(err)),
            }
        }
    }
    loop {
        wan.writable().await.map_err(wan_err)?;
        match wan.try_io(Interest::WRITABLE, || {
            sys::send_ktls_record(wan.as_fd(), 21, &CLOSE_NOTIFY)
        }) {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(wan_err(err)),
        }
    }
    shutdown_write(wan).map_err(wan_err)
}

/// Handles a non-data record taken out of a kernel TLS socket: true when
/// it was close_notify. A KeyUpdate is an error here (see the module docs).
fn kernel_control(
    version: Version,
    content_type: u8,
    payload: &[u8],
) -> Result<bool, ChannelRelayError> {
    match control_record(version, content_type, payload)? {
        Control::Continue => Ok(false),
        Control::Close => Ok(true),
        Control::KeyUpdate { .. } => Err(ChannelRelayError::KernelCannotRekey),
    }
}

async fn ktls_to_lan(
    wan: &TcpStream,
    lan: &TcpStream,
    version: Version,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let lan_err = |source| ChannelRelayError::Lan { source };
    let wan_err = |source: io::Error| match source.raw_os_error() {
        Some(libc::EBADMSG) => ChannelRelayError::Record {
            reason: "decryption failed (bad_record_mac)",
        },
        Some(libc::EMSGSIZE) => ChannelRelayError::Record {
            reason: "record too long",
        },
        _ => ChannelRelayError::Channel { source },
    };
    let pipe = Pipe::new(PIPE_SIZE).map_err(lan_err)?;
    let capacity = pipe.capacity().map_err(lan_err)?;
    let mut record = vec![0u8; 16 * 1024 + 256];
    loop {
        wan.readable().await.map_err(wan_err)?;
        let mut in_pipe = match wan.try_io(Interest::READABLE, || {
            sys::splice(wan.as_fd(), pipe.write.as_fd(), capacity)
        }) {
            Ok(0) => return Err(ChannelRelayError::Truncated),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                // Not application data: take the record with recvmsg.
                let (n, content_type) = match wan.try_io(Interest::READABLE, || {
                    sys::recv_ktls_record(wan.as_fd(), &mut record)
                }) {
                    Ok(got) => got,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => return Err(wan_err(err)),
                };
                if content_type == 23 {
                    if n == 0 {
                        return Err(ChannelRelayError::Truncated);
                    }
                    // Data after all (splice refused for another reason).
                    super::sockets::write_all(lan, &record[..n])
                        .await
                        .map_err(lan_err)?;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                if kernel_control(version, content_type, &record[..n])? {
                    return shutdown_write(lan).map_err(lan_err);
                }
                continue;
            }
            Err(err) => return Err(wan_err(err)),
        };
        while in_pipe > 0 {
            lan.writable().await.map_err(lan_err)?;
            match lan.try_io(Interest::WRITABLE, || {
                sys::splice(pipe.read.as_fd(), lan.as_fd(), in_pipe)
            }) {
                Ok(n) => {
                    in_pipe -= n;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(lan_err(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::record::{CONTENT_ALERT, CONTENT_HANDSHAKE, HANDSHAKE_KEY_UPDATE};

    #[test]
    fn key_update_on_kernel_tls_ends_the_connection_naming_the_cause() {
        for request in [0, 1] {
            let err = kernel_control(
                Version::Tls13,
                CONTENT_HANDSHAKE,
                &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, request],
            )
            .expect_err("a KeyUpdate cannot be followed in the kernel");
            assert!(matches!(err, ChannelRelayError::KernelCannotRekey));
            let text = err.to_string();
            assert!(
                text.contains("KeyUpdate") && text.contains("kernel TLS"),
                "{text}"
            );
        }
        assert!(matches!(
            kernel_control(Version::Tls13, CONTENT_ALERT, &[1, 0]),
            Ok(true)
        ));
        assert!(matches!(
            kernel_control(Version::Tls13, CONTENT_HANDSHAKE, &[4, 0, 0, 1, 0]),
            Ok(false)
        ));
    }
}
