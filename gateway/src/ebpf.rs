//! Loads the gateway's eBPF object (built by build.rs, embedded in the binary)
//! and owns the kernel relay: the `SOCKS` SockHash with the `relay_verdict`
//! program attached, and the `RELAY` map of per-socket peers and counters.
//!
//! [`KernelRelay::arm`] puts the two sockets of a connection into the maps and
//! returns a [`KernelPair`] guard whose Drop removes every entry again, so a
//! connection that ends in any way (including a panic) leaves nothing behind.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya::maps::{HashMap, MapData, RingBuf, SockHash};
use aya::programs::SkSkb;
use gateway_common::{EVENTS_MAP, RELAY_MAP, RelayEntry, SOCKS_MAP, VERDICT_PROG};
use tokio::sync::Notify;

use crate::privileges::{self, MissingCaps};
use crate::sys;

/// The eBPF object produced by `gateway-ebpf`.
pub static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-programs"));

/// Why the kernel relay could not be set up or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// System: the kernel refused the object; `missing` names the
    /// capabilities this process lacks for it (empty when it holds them).
    #[error("loading the eBPF object into the kernel failed{missing}")]
    Load {
        missing: MissingCaps,
        #[source]
        source: aya::EbpfError,
    },
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("program {name}: {action} failed{missing}")]
    Program {
        name: &'static str,
        action: &'static str,
        /// The capabilities this process lacks for it ("" if none, or if
        /// they cannot be the cause).
        missing: MissingCaps,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {action} failed")]
    Map {
        name: &'static str,
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("socket: {action} failed")]
    Socket {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The loaded verdict program and its maps. One per gateway process.
pub struct KernelRelay {
    socks: Mutex<SockHash<MapData, u64>>,
    relay: Mutex<HashMap<MapData, u64, RelayEntry>>,
    /// The program's wake-ups (socket cookies), until the reader task takes it.
    events: Mutex<Option<RingBuf<MapData>>>,
    /// Per-socket wake-up, registered while a pair is armed.
    waiters: Mutex<std::collections::HashMap<u64, Arc<Notify>>>,
    /// Directions that the program handed to userspace (see PASS_TO_USER).
    handed_to_userspace: AtomicU64,
    /// Connections reset because the kernel handed on more bytes than TCP
    /// received (see `relay/sockmap.rs`).
    duplications: AtomicU64,
    /// Test hook: pause between the two SockHash inserts of a pair (µs).
    insert_pause_micros: AtomicU64,
    /// Keeps the program loaded and attached for as long as the relay lives.
    _ebpf: Ebpf,
}

impl KernelRelay {
    /// Loads the embedded object, verifies and attaches `relay_verdict`.
    pub fn load() -> Result<Self, EbpfError> {
        let mut ebpf = Ebpf::load(PROGRAMS).map_err(|source| EbpfError::Load {
            missing: MissingCaps::of(&privileges::SOCKMAP),
            source,
        })?;
        let socks = ebpf.take_map(SOCKS_MAP).ok_or(EbpfError::Missing {
            kind: "map",
            name: SOCKS_MAP,
        })?;
        let socks: SockHash<MapData, u64> =
            SockHash::try_from(socks).map_err(|source| EbpfError::Map {
                name: SOCKS_MAP,
                action: "open",
                source,
            })?;
        let relay = ebpf.take_map(RELAY_MAP).ok_or(EbpfError::Missing {
            kind: "map",
            name: RELAY_MAP,
        })?;
        let relay: HashMap<MapData, u64, RelayEntry> =
            HashMap::try_from(relay).map_err(|source| EbpfError::Map {
                name: RELAY_MAP,
                action: "open",
                source,
            })?;
        let events = ebpf.take_map(EVENTS_MAP).ok_or(EbpfError::Missing {
            kind: "map",
            name: EVENTS_MAP,
        })?;
        let events = RingBuf::try_from(events).map_err(|source| EbpfError::Map {
            name: EVENTS_MAP,
            action: "open",
            source,
        })?;
        let program: &mut SkSkb = ebpf
            .program_mut(VERDICT_PROG)
            .ok_or(EbpfError::Missing {
                kind: "program",
                name: VERDICT_PROG,
            })?
            .try_into()
            .map_err(|source| EbpfError::Program {
                name: VERDICT_PROG,
                action: "type check",
                missing: MissingCaps::none(),
                source,
            })?;
        program.load().map_err(|source| EbpfError::Program {
            name: VERDICT_PROG,
            action: "load (verifier)",
            missing: MissingCaps::of(&privileges::SOCKMAP),
            source,
        })?;
        program
            .attach(socks.fd())
            .map_err(|source| EbpfError::Program {
                name: VERDICT_PROG,
                action: "attach",
                missing: MissingCaps::of(&privileges::SOCKMAP),
                source,
            })?;
        Ok(KernelRelay {
            socks: Mutex::new(socks),
            relay: Mutex::new(relay),
            events: Mutex::new(Some(events)),
            waiters: Mutex::new(std::collections::HashMap::new()),
            handed_to_userspace: AtomicU64::new(0),
            duplications: AtomicU64::new(0),
            insert_pause_micros: AtomicU64::new(0),
            _ebpf: ebpf,
        })
    }

    /// Puts `a` and `b` into the maps so that each one's incoming bytes go out
    /// of the other. Bytes already queued on either socket are processed too
    /// (the data-ready callback is kicked once both are in).
    pub fn arm(
        self: &Arc<Self>,
        a: BorrowedFd<'_>,
        b: BorrowedFd<'_>,
    ) -> Result<KernelPair, EbpfError> {
        let cookie = |fd| {
            sys::socket_cookie(fd).map_err(|source| EbpfError::Socket {
                action: "read SO_COOKIE",
                source,
            })
        };
        let (a_cookie, b_cookie) = (cookie(a)?, cookie(b)?);
        // The guard exists before the first insert so every error path cleans up.
        let pair = KernelPair {
            relay: Arc::clone(self),
            cookies: [a_cookie, b_cookie],
            wakeups: [Arc::new(Notify::new()), Arc::new(Notify::new())],
            complete: true,
        };
        {
            let mut relay = self
                .relay
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (me, peer) in [(a_cookie, b_cookie), (b_cookie, a_cookie)] {
                let entry = RelayEntry {
                    peer,
                    ..RelayEntry::default()
                };
                relay
                    .insert(me, entry, 0)
                    .map_err(|source| EbpfError::Map {
                        name: RELAY_MAP,
                        action: "insert",
                        source,
                    })?;
            }
        }
        let mut pair = pair;
        self.start_event_reader();
        {
            let mut waiters = self
                .waiters
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (cookie, wakeup) in pair.cookies.iter().zip(&pair.wakeups) {
                waiters.insert(*cookie, Arc::clone(wakeup));
            }
        }
        {
            let mut socks = self
                .socks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // Only established sockets may enter a SockHash. If the first one
            // cannot (it already received FIN, say), nothing is in the kernel
            // and the caller relays in userspace.
            socks
                .insert(b_cookie, b.as_raw_fd(), 0)
                .map_err(|source| EbpfError::Map {
                    name: SOCKS_MAP,
                    action: "insert socket",
                    source,
                })?;
            let pause = self.insert_pause_micros.load(Ordering::Relaxed);
            if pause > 0 {
                std::thread::sleep(std::time::Duration::from_micros(pause));
            }
            // If the second one cannot, the first stays in the map until the
            // connection ends: any byte it received was passed to its own
            // queue (PASS_TO_USER) and must be read from there, in order.
            if let Err(err) = socks.insert(a_cookie, a.as_raw_fd(), 0) {
                tracing::debug!(error = %err, "second socket refused by the SockHash; relaying in userspace");
                pair.complete = false;
            }
        }
        for fd in [a, b] {
            sys::set_recv_low_water(fd, 1).map_err(|source| EbpfError::Socket {
                action: "kick data-ready (SO_RCVLOWAT)",
                source,
            })?;
        }
        Ok(pair)
    }

    /// Widens the window between the two inserts of every pair, so tests can
    /// prove that bytes arriving in it are neither lost nor reordered.
    #[doc(hidden)]
    pub fn pause_between_inserts(&self, pause: std::time::Duration) {
        let micros = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        self.insert_pause_micros.store(micros, Ordering::Relaxed);
    }

    /// How many relay directions the program has handed to userspace.
    pub fn handed_to_userspace(&self) -> u64 {
        self.handed_to_userspace.load(Ordering::Relaxed)
    }

    pub(crate) fn note_handed_to_userspace(&self) {
        self.handed_to_userspace.fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections were reset because the kernel duplicated bytes.
    pub fn duplications(&self) -> u64 {
        self.duplications.load(Ordering::Relaxed)
    }

    pub(crate) fn note_duplication(&self) {
        self.duplications.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of one socket, by cookie.
    pub fn entry(&self, cookie: u64) -> Option<RelayEntry> {
        let relay = self
            .relay
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        relay.get(&cookie, 0).ok()
    }

    /// How many sockets are in the SockHash and how many relay entries exist
    /// (both zero when no connection is being relayed in the kernel).
    pub fn occupancy(&self) -> (usize, usize) {
        let socks = self
            .socks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .count();
        let relay = self
            .relay
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .count();
        (socks, relay)
    }

    /// Starts, once, the task that turns the program's ring-buffer records
    /// into wake-ups of the connections they name. Outside a tokio runtime
    /// (e.g. `s2cs check`) there is no reader and flow control polls.
    fn start_event_reader(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(ring) = self
            .events
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
        else {
            return;
        };
        let relay = Arc::downgrade(self);
        runtime.spawn(async move {
            // SAFETY: the RingBuf owns its map descriptor (MapData holds an
            // OwnedFd) and is moved into the AsyncFd, so the descriptor stays
            // open and the same for the AsyncFd's whole life.
            #[allow(unsafe_code)]
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
            };
            let mut ring = match registered {
                Ok(ring) => ring,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot poll the eBPF event ring; flow control will poll");
                    return;
                }
            };
            loop {
                let Ok(mut guard) = ring.readable_mut().await else { return };
                let Some(relay) = relay.upgrade() else { return };
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    let Ok(bytes) = <[u8; 8]>::try_from(&record[..]) else { continue };
                    let cookie = u64::from_ne_bytes(bytes);
                    let waiters = relay.waiters.lock().unwrap_or_else(|poison| poison.into_inner());
                    if let Some(wakeup) = waiters.get(&cookie) {
                        wakeup.notify_one();
                    }
                }
                guard.clear_ready();
            }
        });
    }

    fn disarm(&self, cookies: [u64; 2]) {
        {
            let mut waiters = self
                .waiters
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for cookie in cookies {
                waiters.remove(&cookie);
            }
        }
        {
            let mut socks = self
                .socks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for cookie in cookies {
                // Closing a socket removes it by itself; NotFound is expected then.
                let _ = socks.remove(&cookie);
            }
        }
        let mut relay = self
            .relay
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for cookie in cookies {
            let _ = relay.remove(&cookie);
        }
    }
}

/// Two sockets relayed in the kernel; dropping it takes them out of the maps.
pub struct KernelPair {
    relay: Arc<KernelRelay>,
    cookies: [u64; 2],
    /// Woken when the program has redirected another NOTIFY_EVERY bytes
    /// from the first / second socket.
    wakeups: [Arc<Notify>; 2],
    complete: bool,
}

impl KernelPair {
    pub(crate) fn relay(&self) -> &KernelRelay {
        &self.relay
    }

    /// The wake-up of the first (`a`) or second (`b`) socket's direction.
    pub(crate) fn wakeup(&self, second: bool) -> &Notify {
        &self.wakeups[usize::from(second)]
    }

    /// False when only the second socket could enter the SockHash: then both
    /// directions must be relayed in userspace (while the pair is held).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Counters of the first (`a`) and second (`b`) socket given to `arm`.
    pub fn entries(&self) -> (RelayEntry, RelayEntry) {
        let get = |cookie| self.relay.entry(cookie).unwrap_or_default();
        (get(self.cookies[0]), get(self.cookies[1]))
    }
}

impl Drop for KernelPair {
    fn drop(&mut self) {
        self.relay.disarm(self.cookies);
    }
}

/// For callers holding a socket type: its descriptor.
pub fn fd<T: AsFd>(socket: &T) -> BorrowedFd<'_> {
    socket.as_fd()
}
