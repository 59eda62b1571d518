//! The kernel data path: both sockets go into the SockHash and the
//! `relay_verdict` program redirects each one's incoming bytes to the other's
//! egress. Userspace only watches for the end of each direction:
//!
//! - FIN is not carried by the redirect. When the source reports end of
//!   stream, bytes may still sit in the kernel's redirect queue, so the
//!   destination is half-closed only once everything the program redirected
//!   has been written into the destination socket (TCP_INFO bytes_acked +
//!   SIOCOUTQ, read in that order so the sum never overestimates).
//! - If the program had to hand bytes to userspace (the peer was not yet in
//!   the SockHash), that direction continues as a userspace copy, in order.
//! - A reset on either side resets the other.
//! - The kernel must never hand on more bytes than TCP received. It can: on
//!   kernels whose `tcp_read_skb` passes a whole queued buffer to the verdict
//!   even when its head overlaps bytes already consumed (a retransmission
//!   coalesced over data already taken), the overlap is redirected twice.
//!   Seen on 6.18 here with both directions busy, about one run in three of
//!   256 MiB each way. Userspace cannot stop the kernel sending those bytes,
//!   but it checks every tick and at end of stream that what the program
//!   redirected is within what the source's TCP received (tcpi_bytes_received
//!   since the socket entered the kernel), and resets both sides at once when
//!   it is not ([`RelayError::KernelDuplicated`]): damaged data never ends in
//!   a clean close.
//! - The verdict program is handed whole queued buffers, including a head
//!   that userspace already read: a socket whose owner read part of what it
//!   received (the tail of a channel handshake sharing a buffer with the
//!   first stream bytes) would see that head sent again. Before such a socket
//!   enters the kernel, the relay hands on everything it holds unread itself
//!   ([`hand_on_unread`]); what arrives later comes in fresh buffers.
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gateway_common::{PASS_TO_USER, RelayEntry};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::watch::first_error;
use super::{ConnCounters, DataPath, RelayError, Side, copy, splice};
use crate::ebpf::{KernelPair, KernelRelay};
use crate::sockets::{shutdown_write, write_all};
use crate::sys;

/// How often an idle direction looks at its counters (the verdict program
/// takes the bytes before they wake a reader, so only polling sees a burst
/// begin): bounds what one burst can queue before the flow gate sees it.
/// While bytes move, the gate looks every [`FLOW_TICK`].
const IDLE_TICK: Duration = Duration::from_millis(20);

pub(super) async fn relay(
    kernel: &Arc<KernelRelay>,
    client: &TcpStream,
    server: &TcpStream,
    counters: &ConnCounters,
) -> Result<DataPath, RelayError> {
    let client_early = hand_on_unread(client, server, Side::Client).await?;
    let server_early = hand_on_unread(server, client, Side::Server).await?;
    counters
        .to_server
        .fetch_add(client_early.bytes, Ordering::Relaxed);
    counters
        .to_client
        .fetch_add(server_early.bytes, Ordering::Relaxed);
    if client_early.ended || server_early.ended {
        // A side closed right after its handshake: nothing worth a kernel
        // pair; finish in userspace (a read after FIN returns 0 again).
        return copy::relay(client, server, counters)
            .await
            .map(|()| DataPath::Copy);
    }
    let client_base = bytes_written(client).map_err(|source| RelayError::Io {
        side: Side::Client,
        source,
    })?;
    let server_base = bytes_written(server).map_err(|source| RelayError::Io {
        side: Side::Server,
        source,
    })?;
    let client_taken = bytes_taken(client).map_err(|source| RelayError::Io {
        side: Side::Client,
        source,
    })?;
    let server_taken = bytes_taken(server).map_err(|source| RelayError::Io {
        side: Side::Server,
        source,
    })?;
    let pair = match kernel.arm(client.as_fd(), server.as_fd()) {
        Ok(pair) => pair,
        Err(err) => {
            // Nothing entered the kernel (e.g. a socket already half-closed):
            // this connection is relayed with splice instead.
            tracing::debug!(error = %err, "kernel relay refused the connection; using splice");
            return splice::relay(client, server, counters)
                .await
                .map(|()| DataPath::Splice);
        }
    };
    if !pair.is_complete() {
        return copy::relay(client, server, counters)
            .await
            .map(|()| DataPath::Copy);
    }
    let up = direction(
        &pair,
        Ends {
            source: Side::Client,
            from: client,
            from_taken: client_taken,
            to: server,
            to_base: server_base,
            already: client_early.bytes,
        },
        &counters.to_server,
    );
    let down = direction(
        &pair,
        Ends {
            source: Side::Server,
            from: server,
            from_taken: server_taken,
            to: client,
            to_base: client_base,
            already: server_early.bytes,
        },
        &counters.to_client,
    );
    let outcome = tokio::select! {
        both = async { tokio::try_join!(up, down) } => both.map(drop),
        err = first_error(client, server) => Err(err),
    };
    // Final counters, then `pair` drops and takes both sockets out of the maps.
    refresh(&pair, counters, [client_early.bytes, server_early.bytes]);
    outcome.map(|()| DataPath::Sockmap)
}

fn entry_of(pair: &KernelPair, source: Side) -> RelayEntry {
    let (client, server) = pair.entries();
    match source {
        Side::Client => client,
        Side::Server => server,
    }
}

/// Final counters: `early` is what each side's direction forwarded in
/// userspace before entering the kernel (client's, server's).
fn refresh(pair: &KernelPair, counters: &ConnCounters, early: [u64; 2]) {
    let (client, server) = pair.entries();
    counters
        .to_server
        .fetch_max(early[0] + client.redirected_bytes, Ordering::Relaxed);
    counters
        .to_client
        .fetch_max(early[1] + server.redirected_bytes, Ordering::Relaxed);
}

/// One direction of a kernel-relayed connection.
struct Ends<'a> {
    /// Which side the bytes come from.
    source: Side,
    from: &'a TcpStream,
    /// Bytes `from` had received and userspace had taken before the socket
    /// entered the kernel (see [`bytes_taken`]).
    from_taken: u64,
    to: &'a TcpStream,
    /// [`bytes_written`] of `to` before the socket entered the kernel.
    to_base: u64,
    /// Bytes of this direction forwarded in userspace before that
    /// ([`hand_on_unread`]).
    already: u64,
}

/// Watches one direction (`from`'s incoming bytes, sent out of `to`).
async fn direction(
    pair: &KernelPair,
    ends: Ends<'_>,
    counter: &AtomicU64,
) -> Result<(), RelayError> {
    let source = ends.source;
    let to_side = source.other();
    let io = |source| RelayError::Io {
        side: to_side,
        source,
    };
    let Ends {
        from,
        from_taken,
        to,
        to_base,
        already,
        ..
    } = ends;
    let mut gate = FlowGate::default();
    let mut backlog = 0;
    // None until the first look: a connection starts on the fast tick, as a
    // sender can push hundreds of MiB through loopback in one slow tick.
    let mut last_redirected = None;
    loop {
        let redirected_now = entry_of(pair, source).redirected_bytes;
        let moving = last_redirected != Some(redirected_now);
        last_redirected = Some(redirected_now);
        let tick = if gate.is_closed() || backlog > BACKLOG_LOW || moving {
            FLOW_TICK
        } else {
            IDLE_TICK
        };
        let ready = tokio::select! {
            ready = from.readable() => Some(ready.map_err(io)?),
            () = pair.wakeup(source == Side::Server).notified() => None,
            () = tokio::time::sleep(tick) => None,
        };
        let redirected = entry_of(pair, source).redirected_bytes;
        check_not_duplicated(pair, source, from, from_taken, redirected)?;
        let delivered = bytes_written(to)
            .map_err(io)?
            .saturating_sub(to_base)
            .min(redirected);
        counter.fetch_max(already + delivered, Ordering::Relaxed);
        backlog = redirected - delivered;
        tracing::trace!(%source, redirected, delivered, backlog, "tick");
        gate.update(from, backlog).map_err(io)?;
        if ready.is_none() {
            continue;
        }
        match from.try_io(Interest::READABLE, || sys::peek_nonblocking(from.as_fd())) {
            // End of stream. TCP wakes us when it records the FIN, which can
            // be before the verdict program has consumed (and counted) the
            // last buffers: wait until the receive queue is empty first.
            Ok(0) => {
                wait_consumed(from).await.map_err(io)?;
                break;
            }
            // Bytes for userspace: either the program passed them to us
            // (PASS_TO_USER), or they are not processed yet (retry shortly).
            Ok(_) if entry_of(pair, source).flags & PASS_TO_USER == 0 => {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // The program passed bytes to userspace: continue this direction
            // in userspace, after what was already redirected has left.
            Ok(_) => {
                gate.open(from).map_err(io)?;
                let redirected = entry_of(pair, source).redirected_bytes;
                check_not_duplicated(pair, source, from, from_taken, redirected)?;
                wait_drained(to, to_base, redirected).await.map_err(io)?;
                counter.store(already + redirected, Ordering::Relaxed);
                tracing::debug!(%source, redirected, "peer missing from the SockHash; continuing in userspace");
                pair.relay().note_handed_to_userspace();
                return copy::direction(from, to, counter).await.map_err(io);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(io(err)),
        }
    }
    gate.open(from).map_err(io)?;
    let redirected = entry_of(pair, source).redirected_bytes;
    check_not_duplicated(pair, source, from, from_taken, redirected)?;
    wait_drained(to, to_base, redirected).await.map_err(io)?;
    counter.fetch_max(already + redirected, Ordering::Relaxed);
    shutdown_write(to).map_err(io)
}

/// What [`hand_on_unread`] forwarded before the socket entered the kernel.
struct Early {
    bytes: u64,
    /// The source's FIN came too.
    ended: bool,
}

/// Most bytes [`hand_on_unread`] reads at a time.
const EARLY_CHUNK: usize = 64 * 1024;

/// If userspace already read some of `from`'s bytes, forwards everything
/// `from` holds unread to `to` and empties its receive queue, so that no
/// partly read buffer is left for the verdict program (which would send it
/// again from its start). Bytes arriving after the queue ran empty start
/// fresh buffers and are the kernel's.
async fn hand_on_unread(
    from: &TcpStream,
    to: &TcpStream,
    source: Side,
) -> Result<Early, RelayError> {
    let read_err = |err| RelayError::Io {
        side: source,
        source: err,
    };
    let mut early = Early {
        bytes: 0,
        ended: false,
    };
    if bytes_taken(from).map_err(read_err)? == 0 {
        return Ok(early);
    }
    let mut buffer = vec![0u8; EARLY_CHUNK];
    loop {
        match from.try_read(&mut buffer) {
            Ok(0) => {
                early.ended = true;
                break;
            }
            Ok(n) => {
                write_all(to, &buffer[..n])
                    .await
                    .map_err(|err| RelayError::Io {
                        side: source.other(),
                        source: err,
                    })?;
                early.bytes += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(read_err(err)),
        }
    }
    if early.bytes > 0 {
        tracing::debug!(%source, bytes = early.bytes, "bytes queued behind a handshake forwarded before the kernel relay");
    }
    Ok(early)
}

/// Bytes `socket` received that are no longer in its receive queue: taken
/// by userspace. tcpi_bytes_received is read first, so bytes arriving in
/// between can only make the result low (a looser bound, never a false alarm).
fn bytes_taken(socket: &TcpStream) -> io::Result<u64> {
    let received = sys::tcp_bytes_received(socket.as_fd())?;
    let queued = sys::recv_queue_len(socket.as_fd())?;
    Ok(received.saturating_sub(queued))
}

/// Fails if the verdict program redirected more of `from`'s bytes than its
/// TCP received since it entered the kernel. `redirected` must be read before
/// this call: TCP counted every redirected byte before the program saw it,
/// and its count only grows, so a correct kernel never trips this.
fn check_not_duplicated(
    pair: &KernelPair,
    source: Side,
    from: &TcpStream,
    from_taken: u64,
    redirected: u64,
) -> Result<(), RelayError> {
    let received = sys::tcp_bytes_received(from.as_fd())
        .map_err(|err| RelayError::Io {
            side: source,
            source: err,
        })?
        .saturating_sub(from_taken);
    if redirected > received {
        let excess = redirected - received;
        tracing::error!(
            %source,
            redirected,
            received,
            excess,
            "the kernel relay duplicated bytes (kernel sockmap defect); resetting the connection"
        );
        pair.relay().note_duplication();
        return Err(RelayError::KernelDuplicated {
            side: source,
            excess,
        });
    }
    Ok(())
}

/// Flow control for the kernel path. A redirect releases the buffer from the
/// source socket's receive accounting at once, so TCP alone would let a fast
/// sender fill the gateway's memory when the destination is slower (a slower
/// WAN, a paced session, a slow consumer). While more than [`BACKLOG_HIGH`]
/// bytes wait in the kernel between the two sockets, the source's advertised
/// window is clamped to the minimum, and reopened below [`BACKLOG_LOW`].
///
/// The kernel's receive-buffer autotuning raises the clamp whenever it grows
/// the buffer ("make the window clamp follow along" in
/// `tcp_rcv_space_adjust`), and the verdict program consumes bytes as fast as
/// they come, so it does grow it. A closed gate therefore checks its clamp on
/// every tick and lowers it again, keeping the kernel's raise for when it
/// reopens.
#[derive(Default)]
struct FlowGate {
    /// The clamp the kernel applied when we closed the gate (our request of 1
    /// raised to its minimum); `None` while the gate is open.
    closed_clamp: Option<u32>,
    /// The clamp to restore on reopening: the socket's before we closed the
    /// gate, or the kernel's autotuning raise while it was closed.
    saved: u32,
}

/// Bytes waiting in the kernel between the sockets that close the gate.
pub const BACKLOG_HIGH: u64 = 8 << 20;
/// ... and that reopen it.
const BACKLOG_LOW: u64 = 2 << 20;
/// Poll interval while bytes are moving or the gate is closed.
const FLOW_TICK: Duration = Duration::from_millis(2);

impl FlowGate {
    fn is_closed(&self) -> bool {
        self.closed_clamp.is_some()
    }

    fn update(&mut self, from: &TcpStream, backlog: u64) -> io::Result<()> {
        match self.closed_clamp {
            None if backlog > BACKLOG_HIGH => {
                self.saved = sys::tcp_window_clamp(from.as_fd())?;
                self.closed_clamp = Some(clamp_to_minimum(from)?);
                tracing::debug!(backlog, saved = self.saved, "flow gate closed");
            }
            Some(_) if backlog < BACKLOG_LOW => {
                tracing::debug!(backlog, "flow gate opened");
                self.open(from)?;
            }
            Some(closed) => {
                let now = sys::tcp_window_clamp(from.as_fd())?;
                if now > closed {
                    self.saved = self.saved.max(now);
                    self.closed_clamp = Some(clamp_to_minimum(from)?);
                    tracing::debug!(
                        backlog,
                        raised = now,
                        "flow gate closed again after autotuning"
                    );
                }
            }
            None => {}
        }
        Ok(())
    }

    fn open(&mut self, from: &TcpStream) -> io::Result<()> {
        if self.closed_clamp.take().is_some() {
            sys::set_tcp_window_clamp(from.as_fd(), self.saved.max(1))?;
        }
        Ok(())
    }
}

/// Clamps the socket's window to the kernel's minimum and returns the clamp
/// the kernel applied.
fn clamp_to_minimum(socket: &TcpStream) -> io::Result<u32> {
    // The kernel raises 1 to its minimum window (SOCK_MIN_RCVBUF / 2).
    sys::set_tcp_window_clamp(socket.as_fd(), 1)?;
    sys::tcp_window_clamp(socket.as_fd())
}

/// Total bytes ever written into `socket`: acknowledged plus still queued.
/// bytes_acked is read first, so a concurrent ACK can only make the sum low.
fn bytes_written(socket: &TcpStream) -> io::Result<u64> {
    let acked = sys::tcp_bytes_acked(socket.as_fd())?;
    let queued = sys::send_queue_len(socket.as_fd())?;
    Ok(acked + queued)
}

/// Waits until the verdict program has consumed everything TCP queued on
/// `from` (SIOCINQ is zero), so its counters are final.
async fn wait_consumed(from: &TcpStream) -> io::Result<()> {
    let mut pause = Duration::from_micros(50);
    while sys::recv_queue_len(from.as_fd())? > 0 {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    Ok(())
}

/// Waits until `redirected` bytes beyond `base` were written into `to`.
async fn wait_drained(to: &TcpStream, base: u64, redirected: u64) -> io::Result<()> {
    let mut pause = Duration::from_micros(200);
    loop {
        if bytes_written(to)?.saturating_sub(base) >= redirected {
            return Ok(());
        }
        if let Some(err) = sys::take_socket_error(to.as_fd())? {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
