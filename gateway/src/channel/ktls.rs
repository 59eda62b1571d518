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
//! session ticket -> ignored. close_notify is sent with sendmsg and
//! TLS_SET_RECORD_TYPE before the FIN. A splice may move less than asked or
//! nothing (EAGAIN) when a socket's buffer is full: what stays in the pipe is
//! spliced again once the socket is writable, never dropped or re-read.
//!
//! Key updates (TLS 1.3; the kernel takes new keys from Linux 6.14 on, see
//! `ktls_probe`): each direction keeps its traffic secret ([`KeyChain`])
//! after its keys went to the kernel.
//! - Sending: before each splice into the socket, when the cipher has a
//!   record limit (AES-GCM), the kernel's record count (getsockopt TLS_TX)
//!   plus the most records one splice can close ([`splice_max_records`]) is
//!   compared with the limit; when due, or when the peer asked for it, a
//!   KeyUpdate goes out under the current key (sendmsg, type 22) and then
//!   TLS_TX gets the next key with sequence number 0, both from this task,
//!   with nothing written in between.
//! - Receiving: the kernel stops at a KeyUpdate (splice: EINVAL; recvmsg
//!   returns it; reads fail with EKEYEXPIRED until TLS_RX has the next key):
//!   TLS_RX gets the peer's next key at once and splicing goes on.
//!   A kernel that refuses the new key (EBUSY: older than 6.14) ends the
//!   connection with [`ChannelRelayError::KernelCannotRekey`]; the channel's
//!   per-connection policy (`relay_channel`) keeps AES-GCM off kernel TLS on
//!   such kernels, so with our own peers this does not happen.
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::error::ChannelRelayError;
use super::error::first_error;
use super::key_updates::KeyUpdates;
use super::reader::{Control, control_record};
use super::record::{Cipher, DirectionKeys, HANDSHAKE_KEY_UPDATE, Secrets, Version};
use super::traffic::TrafficSecret;
use super::userspace::CLOSE_NOTIFY;
use crate::sockets::shutdown_write;
use crate::sys::{self, KtlsCipher, KtlsDirection, KtlsSuite, Pipe};

/// Pipe buffer per direction.
const PIPE_SIZE: usize = 1024 * 1024;
/// Pipe buffers (slots) a pipe of [`PIPE_SIZE`] has: one page each.
const PIPE_SLOTS: u64 = (PIPE_SIZE / 4096) as u64;
/// Largest plaintext of one TLS record.
const MAX_RECORD: u64 = 16 * 1024;

/// The most records one splice of `bytes` into a kernel TLS socket can
/// close: those that fill up (`bytes` / 16 KiB, plus the one left open by
/// the previous splice), those closed early at a pipe buffer boundary (at
/// most one per buffer; a buffer may hold more than a page), and the one
/// closed at the end of the call.
fn splice_max_records(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(MAX_RECORD) + 1 + PIPE_SLOTS + 1
}
/// TLS record content type of handshake messages (a KeyUpdate).
const RECORD_TYPE_HANDSHAKE: u8 = 22;

fn cipher_of<'a>(cipher: Cipher, key: &'a [u8], iv: &'a [u8; 12]) -> Option<KtlsCipher<'a>> {
    Some(match cipher {
        Cipher::Aes128Gcm => KtlsCipher::AesGcm128 {
            key: key.try_into().ok()?,
            iv,
        },
        Cipher::Aes256Gcm => KtlsCipher::AesGcm256 {
            key: key.try_into().ok()?,
            iv,
        },
        Cipher::Chacha20Poly1305 => KtlsCipher::Chacha20Poly1305 {
            key: key.try_into().ok()?,
            iv,
        },
    })
}

fn suite_of(cipher: Cipher) -> KtlsSuite {
    match cipher {
        Cipher::Aes128Gcm => KtlsSuite::AesGcm128,
        Cipher::Aes256Gcm => KtlsSuite::AesGcm256,
        Cipher::Chacha20Poly1305 => KtlsSuite::Chacha20Poly1305,
    }
}

fn key_of(keys: &DirectionKeys) -> Option<KtlsCipher<'_>> {
    cipher_of(keys.cipher, &keys.key, &keys.iv)
}

/// Whether the socket can still be used in userspace after a failed attempt.
pub(super) enum EnableError {
    /// Nothing irreversible happened: relay in userspace.
    Fallback(io::Error),
    /// TX is in the kernel but RX could not be: the connection is lost.
    Broken(io::Error),
}

fn kernel_version(version: Version) -> u16 {
    match version {
        Version::Tls13 => sys::KTLS_VERSION_1_3,
        Version::Tls12 => sys::KTLS_VERSION_1_2,
    }
}

/// Hands both directions' keys to the kernel.
pub(super) fn enable(tcp: &TcpStream, secrets: &Secrets) -> Result<(), EnableError> {
    let version = kernel_version(secrets.version);
    let (tx, rx) = match (key_of(&secrets.tx), key_of(&secrets.rx)) {
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

/// One direction's key schedule, kept after its keys went to the kernel so
/// that kernel TLS can move to the next generation (TLS 1.3).
pub(super) struct KeyChain {
    version: Version,
    cipher: Cipher,
    /// The current traffic secret (None for TLS 1.2: no key updates).
    secret: Option<TrafficSecret>,
}

impl KeyChain {
    /// The schedule of `keys` (whose key and IV the kernel already has).
    pub(super) fn new(version: Version, keys: DirectionKeys) -> Self {
        KeyChain {
            version,
            cipher: keys.cipher,
            secret: keys.secret,
        }
    }

    /// Derives the next generation (RFC 8446 section 7.2) and hands its key
    /// to the kernel for `direction`, with sequence number 0. The secret
    /// moves on only once the kernel took the key.
    fn install_next(
        &mut self,
        socket: &TcpStream,
        direction: KtlsDirection,
    ) -> Result<(), ChannelRelayError> {
        let no_schedule = ChannelRelayError::Record {
            reason: "key update without a TLS 1.3 traffic secret",
        };
        let next = self
            .secret
            .as_ref()
            .ok_or(no_schedule)?
            .next()
            .map_err(|_| ChannelRelayError::Record {
                reason: "key schedule failed",
            })?;
        let keys =
            next.packet_keys(self.cipher.key_len())
                .map_err(|_| ChannelRelayError::Record {
                    reason: "key schedule failed",
                })?;
        let cipher =
            cipher_of(self.cipher, &keys.key, &keys.iv).ok_or(ChannelRelayError::Record {
                reason: "unexpected key length",
            })?;
        match sys::set_ktls_key(
            socket.as_fd(),
            direction,
            kernel_version(self.version),
            cipher,
            0,
        ) {
            Ok(()) => {
                self.secret = Some(next);
                Ok(())
            }
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                Err(ChannelRelayError::KernelCannotRekey)
            }
            Err(source) => Err(ChannelRelayError::Channel { source }),
        }
    }
}

/// What the kernel TLS relay needs to update keys.
pub(super) struct Rekeying<'a> {
    pub tx: KeyChain,
    pub rx: KeyChain,
    /// Records we seal under one key before updating it (u64::MAX: never).
    pub tx_record_limit: u64,
    pub counters: &'a KeyUpdates,
}

/// Relays until both directions are closed.
pub(super) async fn relay(
    lan: &TcpStream,
    wan: &TcpStream,
    rekeying: Rekeying<'_>,
    to_wan: &AtomicU64,
    to_lan: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let Rekeying {
        tx,
        rx,
        tx_record_limit,
        counters,
    } = rekeying;
    // Set by the receiving direction when the peer asks us to update.
    let update_requested = AtomicBool::new(false);
    let sender = TxKeys {
        chain: tx,
        record_limit: tx_record_limit,
        update_requested: &update_requested,
        counters,
    };
    let up = lan_to_ktls(lan, wan, sender, to_wan);
    let down = ktls_to_lan(wan, lan, rx, &update_requested, counters, to_lan);
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(lan, wan) => Err(err),
    }
}

/// The sending direction's keys and when to update them.
struct TxKeys<'a> {
    chain: KeyChain,
    record_limit: u64,
    update_requested: &'a AtomicBool,
    counters: &'a KeyUpdates,
}

impl TxKeys<'_> {
    /// Whether a key update must go out before the next splice (of at most
    /// `bytes`): the peer asked for one, or that splice could take the
    /// current key past its record limit.
    fn due(&self, wan: &TcpStream, bytes: usize) -> Result<bool, ChannelRelayError> {
        if self.chain.secret.is_none() {
            return Ok(false);
        }
        if self.update_requested.load(Ordering::Acquire) {
            return Ok(true);
        }
        if self.record_limit == u64::MAX {
            return Ok(false);
        }
        let sealed = sys::ktls_tx_record_seq(wan.as_fd(), suite_of(self.chain.cipher))
            .map_err(|source| ChannelRelayError::Channel { source })?;
        Ok(sealed > 0 && sealed.saturating_add(splice_max_records(bytes)) > self.record_limit)
    }

    /// Sends a KeyUpdate (update_not_requested) under the current key, then
    /// gives the kernel the next one.
    async fn update(&mut self, wan: &TcpStream) -> Result<(), ChannelRelayError> {
        let wan_err = |source| ChannelRelayError::Channel { source };
        let requested = self.update_requested.swap(false, Ordering::AcqRel);
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
        send_control_record(wan, RECORD_TYPE_HANDSHAKE, &message).await?;
        self.chain
            .install_next(wan, KtlsDirection::Tx)
            .map_err(|err| match err {
                // The peer already expects the next key: nothing can go on.
                ChannelRelayError::KernelCannotRekey => wan_err(io::Error::other(
                    "the kernel refused our next TX key after our KeyUpdate went out",
                )),
                other => other,
            })?;
        self.counters.record_sent();
        tracing::debug!(requested, "channel: updated our kernel TLS sending keys");
        Ok(())
    }
}

/// Sends one whole control record (a KeyUpdate, close_notify) on the kernel
/// TLS socket, waiting while its send buffer is full.
async fn send_control_record(
    wan: &TcpStream,
    record_type: u8,
    payload: &[u8],
) -> Result<(), ChannelRelayError> {
    let wan_err = |source| ChannelRelayError::Channel { source };
    loop {
        wan.writable().await.map_err(wan_err)?;
        match wan.try_io(Interest::WRITABLE, || {
            sys::send_ktls_record(wan.as_fd(), record_type, payload)
        }) {
            Ok(n) if n == payload.len() => return Ok(()),
            Ok(n) => {
                return Err(wan_err(io::Error::other(format!(
                    "kernel TLS took {n} of the {} bytes of a control record",
                    payload.len()
                ))));
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(wan_err(err)),
        }
    }
}

async fn lan_to_ktls(
    lan: &TcpStream,
    wan: &TcpStream,
    mut keys: TxKeys<'_>,
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
            if keys.due(wan, in_pipe)? {
                keys.update(wan).await?;
            }
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
    send_control_record(wan, 21, &CLOSE_NOTIFY).await?;
    shutdown_write(wan).map_err(wan_err)
}

/// What a non-data record taken out of a kernel TLS socket asks for.
#[derive(Debug, PartialEq, Eq)]
enum KernelControl {
    /// Nothing (a session ticket).
    Continue,
    /// close_notify: half-close the LAN.
    Close,
    /// The peer moved to its next keys.
    KeyUpdate { update_requested: bool },
}

/// Classifies a non-data record taken out of a kernel TLS socket.
fn kernel_control(
    version: Version,
    content_type: u8,
    payload: &[u8],
) -> Result<KernelControl, ChannelRelayError> {
    Ok(match control_record(version, content_type, payload)? {
        Control::Continue => KernelControl::Continue,
        Control::Close => KernelControl::Close,
        Control::KeyUpdate { update_requested } => KernelControl::KeyUpdate { update_requested },
    })
}

async fn ktls_to_lan(
    wan: &TcpStream,
    lan: &TcpStream,
    mut keys: KeyChain,
    update_requested: &AtomicBool,
    counters: &KeyUpdates,
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
                    crate::sockets::write_all(lan, &record[..n])
                        .await
                        .map_err(lan_err)?;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                match kernel_control(keys.version, content_type, &record[..n])? {
                    KernelControl::Continue => {}
                    KernelControl::Close => return shutdown_write(lan).map_err(lan_err),
                    KernelControl::KeyUpdate {
                        update_requested: requested,
                    } => {
                        // The kernel holds the next records until TLS_RX
                        // has the peer's next key (reads: EKEYEXPIRED).
                        keys.install_next(wan, KtlsDirection::Rx)?;
                        counters.record_received();
                        if requested {
                            update_requested.store(true, Ordering::Release);
                        }
                        tracing::debug!(
                            requested,
                            "channel: followed the peer's key update in kernel TLS"
                        );
                    }
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
    use crate::channel::record::{CONTENT_ALERT, CONTENT_HANDSHAKE};

    #[test]
    fn control_records_from_kernel_tls_are_classified() {
        for request in [0, 1] {
            assert_eq!(
                kernel_control(
                    Version::Tls13,
                    CONTENT_HANDSHAKE,
                    &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, request],
                )
                .expect("a KeyUpdate is followed"),
                KernelControl::KeyUpdate {
                    update_requested: request == 1
                }
            );
        }
        assert!(matches!(
            kernel_control(Version::Tls13, CONTENT_ALERT, &[1, 0]),
            Ok(KernelControl::Close)
        ));
        assert!(matches!(
            kernel_control(Version::Tls13, CONTENT_HANDSHAKE, &[4, 0, 0, 1, 0]),
            Ok(KernelControl::Continue)
        ));
        assert!(
            kernel_control(Version::Tls12, CONTENT_HANDSHAKE, &[24, 0, 0, 1, 0]).is_err(),
            "TLS 1.2 has no KeyUpdate"
        );
    }
}
