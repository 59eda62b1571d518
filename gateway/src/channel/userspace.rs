//! The userspace TLS data path (the one on kernels without TLS): per
//! direction, one task-free loop with its own buffers and its own half of
//! the keys, so the directions never contend.
//!
//! - LAN -> channel: readv from the LAN socket straight into the plaintext
//!   areas of up to [`SLOTS`] record slots laid out back to back, seal each
//!   record in place, one write of the whole batch. One copy in (the kernel's
//!   read), one pass of AES-GCM in place, one copy out.
//! - channel -> LAN: read up to [`IN_BUFFER`] bytes of records, open every
//!   complete record in place, writev the plaintext ranges to the LAN socket;
//!   a partial record is moved to the front and completed by the next read.
//! - LAN FIN -> close_notify, then FIN on the channel; close_notify from the
//!   peer -> FIN on the LAN after all data; TCP FIN without close_notify is a
//!   truncation (error, reset); a fatal alert or a bad record is an error.
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::error::ChannelRelayError;
use super::record::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HANDSHAKE_KEY_UPDATE,
    HANDSHAKE_NEW_SESSION_TICKET, MAX_PLAINTEXT, Opener, RecordError, Sealer, record_len,
};
use super::sockets::{first_error, shutdown_write, write_all, write_all_vectored};

/// Record slots filled per LAN read (16 x 16 KiB = 256 KiB of plaintext).
pub const SLOTS: usize = 16;
/// Ciphertext read per channel read.
pub const IN_BUFFER: usize = 512 * 1024;

/// The alert payload of close_notify (level warning, description 0).
pub(super) const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Relays until both directions are closed.
pub(super) async fn relay(
    lan: &TcpStream,
    wan: &TcpStream,
    sealer: Sealer,
    opener: Opener,
    to_wan: &AtomicU64,
    to_lan: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let up = seal_direction(lan, wan, sealer, to_wan);
    let down = open_direction(wan, lan, opener, to_lan);
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(lan, wan) => Err(err),
    }
}

/// LAN plaintext -> records on the channel.
async fn seal_direction(
    lan: &TcpStream,
    wan: &TcpStream,
    mut sealer: Sealer,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let prefix = sealer.prefix();
    let suffix = sealer.suffix();
    let stride = prefix + MAX_PLAINTEXT + suffix;
    let mut out = vec![0u8; stride * SLOTS];
    let lan_err = |source| ChannelRelayError::Lan { source };
    let wan_err = |source| ChannelRelayError::Channel { source };
    let record_err = |err: RecordError| ChannelRelayError::Record {
        reason: err.as_str(),
    };
    loop {
        lan.readable().await.map_err(lan_err)?;
        let read = {
            let mut slices: Vec<IoSliceMut<'_>> = out
                .chunks_mut(stride)
                .map(|slot| IoSliceMut::new(&mut slot[prefix..prefix + MAX_PLAINTEXT]))
                .collect();
            lan.try_read_vectored(&mut slices)
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(lan_err(err)),
        };
        // Full slots are complete records back to back; the last one may be short.
        let mut end = 0;
        let mut left = n;
        for slot in out.chunks_mut(stride) {
            if left == 0 {
                break;
            }
            let len = left.min(MAX_PLAINTEXT);
            end += sealer
                .seal(slot, len, CONTENT_APPLICATION_DATA)
                .map_err(record_err)?;
            left -= len;
        }
        write_all(wan, &out[..end]).await.map_err(wan_err)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let alert = sealer
        .seal_to_vec(CONTENT_ALERT, &CLOSE_NOTIFY)
        .map_err(record_err)?;
    write_all(wan, &alert).await.map_err(wan_err)?;
    shutdown_write(wan).map_err(wan_err)
}

/// What a non-data record asks the relay to do.
pub(super) enum Control {
    /// Ignore it (a session ticket).
    Continue,
    /// close_notify: half-close the LAN after the data so far.
    Close,
}

/// Handles a record that is not application data (shared with kernel TLS).
pub(super) fn control_record(
    content_type: u8,
    payload: &[u8],
) -> Result<Control, ChannelRelayError> {
    match content_type {
        CONTENT_ALERT => match payload {
            [_, 0] => Ok(Control::Close),
            [_, description] => Err(ChannelRelayError::Alert {
                description: *description,
            }),
            _ => Err(ChannelRelayError::Record {
                reason: "malformed alert",
            }),
        },
        CONTENT_HANDSHAKE => match payload.first() {
            Some(&HANDSHAKE_NEW_SESSION_TICKET) => Ok(Control::Continue),
            Some(&HANDSHAKE_KEY_UPDATE) => Err(ChannelRelayError::Record {
                reason: "the peer sent a TLS KeyUpdate, which this gateway does not support",
            }),
            _ => Err(ChannelRelayError::Record {
                reason: "unexpected handshake message after the handshake",
            }),
        },
        _ => Err(ChannelRelayError::Record {
            reason: "unexpected record type",
        }),
    }
}

/// Records from the channel -> LAN plaintext.
async fn open_direction(
    wan: &TcpStream,
    lan: &TcpStream,
    mut opener: Opener,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let version = opener.version();
    let mut buf = vec![0u8; IN_BUFFER];
    let mut filled = 0;
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(IN_BUFFER / MAX_PLAINTEXT + 2);
    let lan_err = |source| ChannelRelayError::Lan { source };
    let record_err = |err: RecordError| ChannelRelayError::Record {
        reason: err.as_str(),
    };
    loop {
        wan.readable()
            .await
            .map_err(|source| ChannelRelayError::Channel { source })?;
        match wan.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(ChannelRelayError::Truncated),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(source) => return Err(ChannelRelayError::Channel { source }),
        }
        let mut pos = 0;
        let mut closed = false;
        ranges.clear();
        while let Some(len) = record_len(&buf[pos..filled], version).map_err(record_err)? {
            if pos + len > filled {
                break;
            }
            let (content_type, range) =
                opener.open(&mut buf[pos..pos + len]).map_err(record_err)?;
            let range = pos + range.start..pos + range.end;
            pos += len;
            if content_type == CONTENT_APPLICATION_DATA {
                if !range.is_empty() {
                    ranges.push(range);
                }
                continue;
            }
            match control_record(content_type, &buf[range])? {
                Control::Continue => {}
                Control::Close => {
                    closed = true;
                    break;
                }
            }
        }
        if !ranges.is_empty() {
            let bytes: usize = ranges.iter().map(|r| r.len()).sum();
            let mut slices: Vec<IoSlice<'_>> = ranges
                .iter()
                .map(|r| IoSlice::new(&buf[r.clone()]))
                .collect();
            write_all_vectored(lan, &mut slices)
                .await
                .map_err(lan_err)?;
            counter.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if closed {
            return shutdown_write(lan).map_err(lan_err);
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
}
