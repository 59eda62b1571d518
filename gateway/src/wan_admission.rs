//! Admission of WAN connections that have not proved a session secret yet.
//!
//! A PROD gateway's data ports face the WAN: anyone can connect, and each
//! connection costs a TLS handshake and holds a socket until it proves the
//! session secret or its deadline passes. [`Admission`] bounds that work,
//! apart from the authenticated connections (which only then take one of
//! their session's permits), and shares it fairly between sources (an IPv4
//! address, or an IPv6 /64, which one host usually owns whole), so a flood
//! from some sources cannot crowd out the peer gateway:
//!
//! - a source has at most [`AdmissionLimits::per_source_handshakes`]
//!   handshakes in progress and starts at most
//!   [`AdmissionLimits::rate_per_source`] per second (a token bucket holding
//!   one second's worth); its other connections wait in its own queue, so a
//!   peer gateway opening many connections at once is slowed, not refused;
//! - a source has at most [`AdmissionLimits::per_source_queue`] connections
//!   waiting or in handshake; more are reset at once;
//! - the gateway holds at most [`AdmissionLimits::max_unauthenticated`] of
//!   them in all, except that a source with fewer than
//!   [`ALWAYS_ADMITTED`] is always let in (so many busy sources cannot lock
//!   out a quiet one);
//! - nothing waits longer than [`AdmissionLimits::max_wait`].
//!
//! A connection refused is reset at once, before any TLS work, and counted
//! by reason ([`Refusal`]). The per-source table forgets a source once it
//! has nothing queued and a full bucket.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A source with fewer connections than this waiting or in handshake is
/// admitted even when the gateway-wide budget is used up.
pub const ALWAYS_ADMITTED: usize = 16;

/// The limits of unauthenticated WAN connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections waiting or in handshake in the whole gateway.
    pub max_unauthenticated: usize,
    /// Connections waiting or in handshake from one source.
    pub per_source_queue: usize,
    /// Handshakes in progress from one source.
    pub per_source_handshakes: usize,
    /// Handshakes started per second from one source.
    pub rate_per_source: u32,
    /// Longest wait in a source's queue.
    pub max_wait: Duration,
}

impl Default for AdmissionLimits {
    /// Far above what a peer gateway needs and far below what would hurt:
    /// at most a few thousand sockets and a few hundred handshakes a second
    /// per source.
    fn default() -> Self {
        AdmissionLimits {
            max_unauthenticated: 4096,
            per_source_queue: 1024,
            per_source_handshakes: 64,
            rate_per_source: 500,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The gateway-wide budget of unauthenticated connections is used up.
    GatewayBusy,
    /// Its source's queue is full.
    SourceBusy,
    /// It waited in its source's queue for too long.
    QueueTimeout,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 3] = [
        Refusal::GatewayBusy,
        Refusal::SourceBusy,
        Refusal::QueueTimeout,
    ];

    /// A short label (logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::GatewayBusy => "gateway_busy",
            Refusal::SourceBusy => "source_busy",
            Refusal::QueueTimeout => "queue_timeout",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::GatewayBusy => 0,
            Refusal::SourceBusy => 1,
            Refusal::QueueTimeout => 2,
        }
    }
}

/// The key a source is counted under: the IPv4 address, or the /64 of an
/// IPv6 address (IPv4-mapped addresses count as IPv4).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

struct Source {
    /// Waiting or in handshake.
    queued: usize,
    handshakes: Arc<Semaphore>,
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
struct State {
    queued: usize,
    sources: HashMap<IpAddr, Source>,
}

/// The admission control of one gateway; see the [module docs](self).
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
    refused: [AtomicU64; 3],
}

/// An admitted connection waiting for its turn; [`Ticket::start`] waits
/// for a handshake slot. Dropping it (or the [`Pending`] it becomes) frees
/// its place.
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    handshakes: Arc<Semaphore>,
}

/// A connection whose handshake may run now; dropping it frees its slot.
pub struct Pending {
    _ticket: Ticket,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    /// An admission control with `limits`.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State::default()),
            refused: Default::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the counts consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rate(&self) -> f64 {
        f64::from(self.limits.rate_per_source.max(1))
    }

    /// Admits a new connection from `source` into its queue, or says why
    /// not (and counts the refusal).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refusal> {
        let key = source_key(source);
        let now = Instant::now();
        let rate = self.rate();
        let mut state = self.state();
        if state.sources.len() > 4 * self.limits.max_unauthenticated.max(1024) {
            state.sources.retain(|_, s| !idle(s, now, rate));
        }
        let total = state.queued;
        let entry = state.sources.entry(key).or_insert_with(|| Source {
            queued: 0,
            handshakes: Arc::new(Semaphore::new(self.limits.per_source_handshakes.max(1))),
            tokens: rate,
            refilled: now,
        });
        let refusal = if entry.queued >= self.limits.per_source_queue {
            Some(Refusal::SourceBusy)
        } else if total >= self.limits.max_unauthenticated && entry.queued >= ALWAYS_ADMITTED {
            Some(Refusal::GatewayBusy)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(state);
            self.count(refusal);
            return Err(refusal);
        }
        entry.queued += 1;
        let handshakes = Arc::clone(&entry.handshakes);
        state.queued += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            source: key,
            handshakes,
        })
    }

    /// Counts a refusal (also one decided by the caller, e.g. a wait that
    /// ran out).
    pub fn count(&self, refusal: Refusal) {
        self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections waiting or in handshake now.
    pub fn unauthenticated(&self) -> usize {
        self.state().queued
    }

    /// Connections refused for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Sources the table remembers now (it must stay bounded).
    pub fn sources(&self) -> usize {
        self.state().sources.len()
    }

    /// Takes a rate token of `source`, or says how long until there is one.
    fn take_token(&self, source: IpAddr) -> Option<Duration> {
        let rate = self.rate();
        let now = Instant::now();
        let mut state = self.state();
        let entry = state.sources.get_mut(&source)?;
        entry.tokens =
            (entry.tokens + now.duration_since(entry.refilled).as_secs_f64() * rate).min(rate);
        entry.refilled = now;
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - entry.tokens) / rate))
        }
    }

    fn release(&self, source: IpAddr) {
        let mut state = self.state();
        state.queued = state.queued.saturating_sub(1);
        let (now, rate) = (Instant::now(), self.rate());
        let forget = match state.sources.get_mut(&source) {
            Some(entry) => {
                entry.queued = entry.queued.saturating_sub(1);
                idle(entry, now, rate)
            }
            None => false,
        };
        if forget {
            state.sources.remove(&source);
        }
    }
}

impl Ticket {
    /// Waits for a handshake slot and a rate token of its source.
    pub async fn start(self) -> Pending {
        // The semaphore is never closed.
        let slot = match Arc::clone(&self.handshakes).acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => return std::future::pending().await,
        };
        while let Some(wait) = self.admission.take_token(self.source) {
            tokio::time::sleep(wait).await;
        }
        Pending {
            _ticket: self,
            _slot: slot,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.source);
    }
}

/// Whether a source has nothing queued and would have a full bucket.
fn idle(source: &Source, now: Instant, rate: f64) -> bool {
    source.queued == 0
        && source.tokens + now.duration_since(source.refilled).as_secs_f64() * rate >= rate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_unauthenticated: 1000,
            per_source_queue: 4,
            per_source_handshakes: 2,
            rate_per_source: 1_000_000,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_busy_source_queues_then_is_refused_and_others_are_not_affected() {
        let a = Admission::new(limits());
        let tickets: Vec<Ticket> = (0..4)
            .map(|_| a.admit(ip("192.0.2.66")).expect("queued"))
            .collect();
        assert_eq!(a.admit(ip("192.0.2.66")).err(), Some(Refusal::SourceBusy));
        let mut tickets = tickets.into_iter();
        let first = tickets.next().expect("1").start().await;
        let second = tickets.next().expect("2").start().await;
        // Two handshakes at once: the third waits for a slot.
        let third = tickets.next().expect("3");
        let waiting = tokio::spawn(third.start());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the third waits for a handshake slot"
        );
        // Another source has its own queue and slots.
        let peer = a.admit(ip("192.0.2.7")).expect("another source");
        let _peer = tokio::time::timeout(Duration::from_secs(1), peer.start())
            .await
            .expect("another source does not wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a slot freed")
            .expect("task");
        drop(second);
        assert_eq!(a.refused(Refusal::SourceBusy), 1);
    }

    #[test]
    fn the_gateway_budget_still_lets_a_quiet_source_in() {
        let a = Admission::new(AdmissionLimits {
            max_unauthenticated: 20,
            per_source_queue: 100,
            ..limits()
        });
        let busy: Vec<Ticket> = (0..20)
            .map(|_| a.admit(ip("192.0.2.66")).expect("queued"))
            .collect();
        assert_eq!(a.admit(ip("192.0.2.66")).err(), Some(Refusal::GatewayBusy));
        let quiet: Vec<Ticket> = (0..ALWAYS_ADMITTED)
            .map(|_| a.admit(ip("192.0.2.7")).expect("a quiet source gets in"))
            .collect();
        assert_eq!(a.admit(ip("192.0.2.7")).err(), Some(Refusal::GatewayBusy));
        drop((busy, quiet));
        assert_eq!(a.unauthenticated(), 0);
    }

    #[tokio::test]
    async fn a_source_starts_its_rate_of_handshakes_and_no_more() {
        let a = Admission::new(AdmissionLimits {
            per_source_queue: 10_000,
            per_source_handshakes: 10_000,
            rate_per_source: 20,
            ..limits()
        });
        let started = Instant::now();
        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(a.admit(ip("2001:db8::1")).expect("queued").start().await);
        }
        // 20 at once, the next 10 at 20 a second.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        // Another address of the same /64 is the same source.
        let same = a.admit(ip("2001:db8::2")).expect("queued");
        assert!(
            tokio::time::timeout(Duration::from_millis(10), same.start())
                .await
                .is_err(),
            "the /64's bucket is empty"
        );
        // Another /64 is not.
        let other = a.admit(ip("2001:db8:0:1::1")).expect("queued");
        tokio::time::timeout(Duration::from_millis(100), other.start())
            .await
            .expect("its own bucket");
    }

    #[test]
    fn the_source_table_forgets_idle_sources() {
        let a = Admission::new(AdmissionLimits {
            rate_per_source: 1_000_000,
            ..limits()
        });
        for i in 0..200u8 {
            drop(a.admit(IpAddr::from([10, 9, 0, i])).expect("admitted"));
        }
        assert!(a.sources() <= 1, "{}", a.sources());
    }
}
