//! The receive side of the userspace TLS relay without its sockets: bytes
//! read from the channel go into a [`RecordReader`], which opens every
//! complete record in place and hands back the plaintext ranges, following
//! the peer's alerts, session tickets and key updates ([`control_record`],
//! shared with kernel TLS). The relay and the fuzz target drive this same
//! code, so what is fuzzed is what faces the WAN.
use std::ops::Range;

use super::error::ChannelRelayError;
use super::record::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, Opener, PostHandshake, RecordError,
    Version, post_handshake, record_len,
};

/// What a non-data record asks the relay to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Ignore it (a session ticket).
    Continue,
    /// close_notify: half-close the LAN after the data so far.
    Close,
    /// TLS 1.3 KeyUpdate: the peer's next records use its next keys.
    KeyUpdate { update_requested: bool },
}

pub(super) fn record_err(err: RecordError) -> ChannelRelayError {
    ChannelRelayError::Record {
        reason: err.as_str(),
    }
}

/// Handles a record that is not application data (shared with kernel TLS).
pub fn control_record(
    version: Version,
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
        CONTENT_HANDSHAKE => match post_handshake(version, payload).map_err(record_err)? {
            PostHandshake::Ignore => Ok(Control::Continue),
            PostHandshake::KeyUpdate { update_requested } => {
                Ok(Control::KeyUpdate { update_requested })
            }
        },
        _ => Err(ChannelRelayError::Record {
            reason: "unexpected record type",
        }),
    }
}

/// What one [`RecordReader::process`] found besides data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The peer sent close_notify: no data follows (the bytes after it are
    /// ignored).
    pub closed: bool,
    /// The peer updated its keys and asked us to update ours.
    pub update_requested: bool,
    /// KeyUpdates followed in this batch.
    pub key_updates: u32,
}

/// A buffer of received channel bytes and the keys to open them.
pub struct RecordReader {
    opener: Opener,
    buf: Vec<u8>,
    filled: usize,
    /// Where the last `process` left plaintext in `buf`.
    ranges: Vec<Range<usize>>,
    /// Bytes of `buf` consumed by the last `process`.
    consumed: usize,
}

impl RecordReader {
    /// A reader holding up to `capacity` bytes of records; it must exceed
    /// the longest record [`record_len`] accepts, so a partial record always
    /// leaves room to complete it.
    pub fn new(opener: Opener, capacity: usize) -> Self {
        RecordReader {
            opener,
            buf: vec![0u8; capacity],
            filled: 0,
            ranges: Vec::new(),
            consumed: 0,
        }
    }

    /// Where the next read from the channel goes.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// `n` more bytes were read into [`RecordReader::space`].
    pub fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Opens every complete record received so far (in place). The
    /// plaintext is then in [`RecordReader::plaintext`] until
    /// [`RecordReader::compact`]. An error is fatal for the connection.
    pub fn process(&mut self) -> Result<Batch, ChannelRelayError> {
        let version = self.opener.version();
        let mut batch = Batch::default();
        let mut pos = 0;
        self.ranges.clear();
        while let Some(len) =
            record_len(&self.buf[pos..self.filled], version).map_err(record_err)?
        {
            if pos + len > self.filled {
                break;
            }
            let (content_type, range) = self
                .opener
                .open(&mut self.buf[pos..pos + len])
                .map_err(record_err)?;
            let range = pos + range.start..pos + range.end;
            pos += len;
            if content_type == CONTENT_APPLICATION_DATA {
                if !range.is_empty() {
                    self.ranges.push(range);
                }
                continue;
            }
            match control_record(version, content_type, &self.buf[range])? {
                Control::Continue => {}
                Control::Close => {
                    batch.closed = true;
                    break;
                }
                Control::KeyUpdate { update_requested } => {
                    // The records after this one are under the peer's next keys.
                    self.opener.key_update().map_err(record_err)?;
                    batch.update_requested |= update_requested;
                    batch.key_updates += 1;
                    tracing::debug!(update_requested, "channel: the peer updated its TLS keys");
                }
            }
        }
        self.consumed = pos;
        Ok(batch)
    }

    /// The plaintext the last [`RecordReader::process`] opened, in order.
    pub fn plaintext(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.ranges.iter().map(|r| &self.buf[r.clone()])
    }

    /// Forgets the processed records, moving a partial one to the front.
    pub fn compact(&mut self) {
        self.buf.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        self.ranges.clear();
    }
}
