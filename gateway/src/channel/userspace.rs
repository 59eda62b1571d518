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
//! - TLS 1.3 KeyUpdate from the peer: the opening direction switches to the
//!   peer's next keys at once (the records after it in the same read already
//!   use them). With update_requested it raises a flag that the sealing
//!   direction checks before each batch: it then sends its own KeyUpdate
//!   (update_not_requested) and switches its keys before the next data
//!   record, as RFC 8446 section 4.6.3 asks (several requests while idle get
//!   one answer). The sealing direction also updates its keys on its own
//!   before AES-GCM's record limit ([`Sealer::key_update_due`]).
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::error::ChannelRelayError;
use super::error::first_error;
use super::key_updates::KeyUpdates;
use super::reader::{RecordReader, record_err};
use super::record::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, MAX_PLAINTEXT, Opener, Sealer};
use crate::sockets::{shutdown_write, write_all, write_all_vectored};

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
    key_updates: &KeyUpdates,
    to_wan: &AtomicU64,
    to_lan: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    // Set by the opening direction when the peer asks us to update our keys.
    let update_requested = AtomicBool::new(false);
    let up = seal_direction(lan, wan, sealer, &update_requested, key_updates, to_wan);
    let down = open_direction(wan, lan, opener, &update_requested, key_updates, to_lan);
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(lan, wan) => Err(err),
    }
}

/// Sends a KeyUpdate and switches to our next keys when the peer asked for
/// it or our keys near their limit; called before sealing `records` records.
async fn update_keys_if_due(
    wan: &TcpStream,
    sealer: &mut Sealer,
    update_requested: &AtomicBool,
    key_updates: &KeyUpdates,
    records: u64,
) -> Result<(), ChannelRelayError> {
    let requested = update_requested.swap(false, Ordering::AcqRel);
    let due = sealer.key_update_due(records);
    if !(requested || due) {
        return Ok(());
    }
    let record = sealer.key_update(false).map_err(record_err)?;
    write_all(wan, &record)
        .await
        .map_err(|source| ChannelRelayError::Channel { source })?;
    key_updates.record_sent();
    tracing::debug!(requested, due, "channel: updated our TLS sending keys");
    Ok(())
}

/// LAN plaintext -> records on the channel.
async fn seal_direction(
    lan: &TcpStream,
    wan: &TcpStream,
    mut sealer: Sealer,
    update_requested: &AtomicBool,
    key_updates: &KeyUpdates,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let prefix = sealer.prefix();
    let suffix = sealer.suffix();
    let stride = prefix + MAX_PLAINTEXT + suffix;
    let mut out = vec![0u8; stride * SLOTS];
    let lan_err = |source| ChannelRelayError::Lan { source };
    let wan_err = |source| ChannelRelayError::Channel { source };
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
        update_keys_if_due(
            wan,
            &mut sealer,
            update_requested,
            key_updates,
            n.div_ceil(MAX_PLAINTEXT) as u64,
        )
        .await?;
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

/// Records from the channel -> LAN plaintext.
async fn open_direction(
    wan: &TcpStream,
    lan: &TcpStream,
    opener: Opener,
    update_requested: &AtomicBool,
    key_updates: &KeyUpdates,
    counter: &AtomicU64,
) -> Result<(), ChannelRelayError> {
    let mut reader = RecordReader::new(opener, IN_BUFFER);
    let lan_err = |source| ChannelRelayError::Lan { source };
    loop {
        wan.readable()
            .await
            .map_err(|source| ChannelRelayError::Channel { source })?;
        match wan.try_read(reader.space()) {
            Ok(0) => return Err(ChannelRelayError::Truncated),
            Ok(n) => reader.filled(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(source) => return Err(ChannelRelayError::Channel { source }),
        }
        let batch = reader.process()?;
        for _ in 0..batch.key_updates {
            key_updates.record_received();
        }
        if batch.update_requested {
            update_requested.store(true, Ordering::Release);
        }
        if reader.plaintext().len() > 0 {
            let mut slices: Vec<IoSlice<'_>> = reader.plaintext().map(IoSlice::new).collect();
            let bytes: usize = slices.iter().map(|s| s.len()).sum();
            write_all_vectored(lan, &mut slices)
                .await
                .map_err(lan_err)?;
            counter.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        if batch.closed {
            return shutdown_write(lan).map_err(lan_err);
        }
        reader.compact();
    }
}

#[cfg(test)]
mod tests {
    //! The relay against a rustls peer over real sockets: our keys updated
    //! at a lowered record limit (rustls must follow), and the peer's
    //! requested updates followed (and answered) mid-stream.
    use std::io::{Read, Write};

    use rustls::Connection;
    use rustls::crypto::ring::cipher_suite as cs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::channel::record::test_support::handshake;
    use crate::channel::record::{HEADER, Secrets};

    /// Plaintext + type + tag of a KeyUpdate record (the message is 5 bytes).
    const KEY_UPDATE_BODY: usize = 5 + 1 + 16;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8 ^ seed)
            .collect()
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// What the rustls peer saw.
    struct PeerView {
        plain: Vec<u8>,
        closed: bool,
        /// Records with a KeyUpdate's length.
        short_records: usize,
    }

    /// The rustls peer: sends `parts` with a KeyUpdate (update_requested)
    /// between them, then close_notify; then reads everything we send.
    fn run_peer(mut conn: Connection, mut tcp: std::net::TcpStream, parts: &[Vec<u8>]) -> PeerView {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                conn.refresh_traffic_keys().unwrap();
            }
            // In record-sized pieces: rustls buffers 64 KiB at most.
            for piece in part.chunks(MAX_PLAINTEXT) {
                conn.writer().write_all(piece).unwrap();
                while conn.wants_write() {
                    conn.write_tls(&mut tcp).unwrap();
                }
            }
        }
        conn.send_close_notify();
        while conn.wants_write() {
            conn.write_tls(&mut tcp).unwrap();
        }
        let mut view = PeerView {
            plain: Vec::new(),
            closed: false,
            short_records: 0,
        };
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !view.closed {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "the relay closed without close_notify");
            pending.extend_from_slice(&buf[..n]);
            // Count whole records by length, then hand them to rustls.
            let mut pos = 0;
            while pending.len() >= pos + HEADER {
                let body = usize::from(u16::from_be_bytes([pending[pos + 3], pending[pos + 4]]));
                if pending.len() < pos + HEADER + body {
                    break;
                }
                view.short_records += usize::from(body == KEY_UPDATE_BODY);
                pos += HEADER + body;
            }
            let mut records = &pending[..pos];
            while !records.is_empty() {
                conn.read_tls(&mut records).unwrap();
                view.closed = conn.process_new_packets().unwrap().peer_has_closed();
                drain_plaintext(&mut conn, &mut view.plain);
            }
            pending.drain(..pos);
        }
        view
    }

    fn drain_plaintext(conn: &mut Connection, into: &mut Vec<u8>) {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => into.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_updates_its_keys_at_the_limit_and_follows_the_peers_updates() {
        let (secrets, peer_conn) = handshake(cs::TLS13_AES_128_GCM_SHA256).client_secrets(false);
        let Secrets { version, tx, rx } = secrets.unwrap();
        let mut sealer = Sealer::new(version, tx).unwrap();
        sealer.set_key_update_limit(32);
        let opener = Opener::new(version, rx).unwrap();
        let (mut lan_app, lan) = tcp_pair().await;
        let (wan, peer) = tcp_pair().await;
        let peer = peer.into_std().unwrap();
        peer.set_nonblocking(false).unwrap();

        let up = data(4 << 20, 1);
        let parts = vec![data(300_000, 2), data(200_000, 3), data(100_000, 4)];
        let down: Vec<u8> = parts.concat();
        let peer_thread = std::thread::spawn(move || run_peer(peer_conn, peer, &parts));
        let key_updates = std::sync::Arc::new(KeyUpdates::default());
        let counted = std::sync::Arc::clone(&key_updates);
        let relay_task = tokio::spawn(async move {
            let (to_wan, to_lan) = (AtomicU64::new(0), AtomicU64::new(0));
            let result = relay(&lan, &wan, sealer, opener, &counted, &to_wan, &to_lan).await;
            (result, to_wan.into_inner(), to_lan.into_inner())
        });
        let (mut app_r, mut app_w) = lan_app.split();
        let (_, got) = tokio::join!(
            async {
                app_w.write_all(&up).await.unwrap();
                app_w.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                app_r.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        assert!(
            got == down,
            "peer -> LAN intact across the peer's key updates"
        );
        let (result, to_wan, to_lan) = relay_task.await.unwrap();
        result.expect("relay ends cleanly");
        assert_eq!((to_wan, to_lan), (up.len() as u64, down.len() as u64));
        let view = tokio::task::spawn_blocking(move || peer_thread.join().unwrap())
            .await
            .unwrap();
        assert!(view.closed, "close_notify reached the peer");
        assert!(
            view.plain == up,
            "LAN -> peer intact across our key updates"
        );
        // 4 MiB is at least 256 records, at most 32 under one key.
        assert!(
            view.short_records >= 7,
            "only {} KeyUpdate-sized records",
            view.short_records
        );
        assert!(
            key_updates.sent() >= 7,
            "the counter saw {} of our key updates",
            key_updates.sent()
        );
        assert!(
            key_updates.received() >= 1,
            "the counter saw none of the peer's key updates"
        );
    }
}
