//! Admission of WAN connections that have not proved a session secret yet.
//!
//! A PROD gateway's data ports face the WAN: anyone can connect, and each
//! connection costs a TLS handshake and holds a socket until it proves the
//! session secret or its deadline passes. [`Admission`] bounds that work,
//! apart from the authenticated connections (which only then take one of
//! their session's permits), so a flood cannot crowd out the peer gateway:
//!
//! - at most [`AdmissionLimits::max_pending`] unauthenticated connections in
//!   the whole gateway;
//! - at most [`AdmissionLimits::per_source`] of them from one source (an
//!   IPv4 address, or an IPv6 /64, which one host usually owns whole);
//! - at most [`AdmissionLimits::rate_per_source`] new ones per second from
//!   one source (a token bucket holding one second's worth).
//!
//! A connection over a limit is reset at once, before any TLS work, and
//! counted by reason ([`Refusal`]). The per-source table forgets a source
//! once it has nothing pending and a full bucket, so it stays as small as
//! the set of sources seen in the last second or so.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The limits of unauthenticated WAN connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Unauthenticated connections in the whole gateway.
    pub max_pending: usize,
    /// Unauthenticated connections from one source.
    pub per_source: usize,
    /// New connections per second from one source (burst: as many).
    pub rate_per_source: u32,
}

impl Default for AdmissionLimits {
    /// Far above what a peer gateway needs (its connections prove the
    /// secret within a few round trips) and far below what would hurt.
    fn default() -> Self {
        AdmissionLimits {
            max_pending: 1024,
            per_source: 64,
            rate_per_source: 200,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The gateway-wide budget of unauthenticated connections is used up.
    GatewayBusy,
    /// Its source has too many unauthenticated connections open.
    SourceBusy,
    /// Its source opens connections faster than allowed.
    SourceRate,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 3] = [
        Refusal::GatewayBusy,
        Refusal::SourceBusy,
        Refusal::SourceRate,
    ];

    /// A short label (logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::GatewayBusy => "gateway_busy",
            Refusal::SourceBusy => "source_busy",
            Refusal::SourceRate => "source_rate",
        }
    }

    fn index(self) -> usize {
        match self {
            Refusal::GatewayBusy => 0,
            Refusal::SourceBusy => 1,
            Refusal::SourceRate => 2,
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
    pending: usize,
    tokens: f64,
    refilled: Instant,
}

#[derive(Default)]
struct State {
    pending: usize,
    sources: HashMap<IpAddr, Source>,
}

/// The admission control of one gateway; see the [module docs](self).
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
    refused: [AtomicU64; 3],
}

/// One admitted, not yet authenticated connection; dropping it frees its
/// place (authenticated, refused or gone).
pub struct Pending {
    admission: Arc<Admission>,
    source: IpAddr,
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

    /// Admits a new connection from `source`, or says why not (and counts
    /// the refusal).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Pending, Refusal> {
        let key = source_key(source);
        let now = Instant::now();
        let rate = f64::from(self.limits.rate_per_source.max(1));
        let mut state = self.state();
        if state.sources.len() > 4 * self.limits.max_pending.max(1024) {
            forget_idle(&mut state.sources, now, rate);
        }
        let refusal = if state.pending >= self.limits.max_pending {
            Some(Refusal::GatewayBusy)
        } else {
            let entry = state.sources.entry(key).or_insert(Source {
                pending: 0,
                tokens: rate,
                refilled: now,
            });
            entry.tokens =
                (entry.tokens + now.duration_since(entry.refilled).as_secs_f64() * rate).min(rate);
            entry.refilled = now;
            if entry.pending >= self.limits.per_source {
                Some(Refusal::SourceBusy)
            } else if entry.tokens < 1.0 {
                Some(Refusal::SourceRate)
            } else {
                entry.tokens -= 1.0;
                entry.pending += 1;
                None
            }
        };
        match refusal {
            Some(refusal) => {
                drop(state);
                self.refused[refusal.index()].fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
            None => {
                state.pending += 1;
                Ok(Pending {
                    admission: Arc::clone(self),
                    source: key,
                })
            }
        }
    }

    /// Unauthenticated connections now.
    pub fn pending(&self) -> usize {
        self.state().pending
    }

    /// Connections refused for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Sources the table remembers now (for tests: it must stay bounded).
    pub fn sources(&self) -> usize {
        self.state().sources.len()
    }

    fn release(&self, source: IpAddr) {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(1);
        let rate = f64::from(self.limits.rate_per_source.max(1));
        let now = Instant::now();
        if let Some(entry) = state.sources.get_mut(&source) {
            entry.pending = entry.pending.saturating_sub(1);
        }
        forget_one_if_idle(&mut state.sources, source, now, rate);
    }
}

/// Whether a source has nothing pending and would have a full bucket.
fn idle(source: &Source, now: Instant, rate: f64) -> bool {
    source.pending == 0
        && source.tokens + now.duration_since(source.refilled).as_secs_f64() * rate >= rate
}

fn forget_one_if_idle(sources: &mut HashMap<IpAddr, Source>, key: IpAddr, now: Instant, rate: f64) {
    if sources.get(&key).is_some_and(|s| idle(s, now, rate)) {
        sources.remove(&key);
    }
}

fn forget_idle(sources: &mut HashMap<IpAddr, Source>, now: Instant, rate: f64) {
    sources.retain(|_, s| !idle(s, now, rate));
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.release(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn one_busy_source_does_not_take_the_places_of_others() {
        let a = Admission::new(AdmissionLimits {
            max_pending: 100,
            per_source: 3,
            rate_per_source: 1000,
        });
        let attacker: Vec<Pending> = (0..3)
            .map(|_| a.admit(ip("192.0.2.66")).expect("admitted"))
            .collect();
        assert_eq!(a.admit(ip("192.0.2.66")).err(), Some(Refusal::SourceBusy));
        let peer = a
            .admit(ip("192.0.2.7"))
            .expect("another source is admitted");
        assert_eq!(a.pending(), 4);
        drop(attacker);
        drop(peer);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.refused(Refusal::SourceBusy), 1);
    }

    #[test]
    fn the_gateway_wide_budget_holds_across_sources() {
        let a = Admission::new(AdmissionLimits {
            max_pending: 2,
            per_source: 10,
            rate_per_source: 1000,
        });
        let _one = a.admit(ip("192.0.2.1")).expect("1");
        let _two = a.admit(ip("192.0.2.2")).expect("2");
        assert_eq!(a.admit(ip("192.0.2.3")).err(), Some(Refusal::GatewayBusy));
    }

    #[test]
    fn a_source_gets_its_rate_and_no_more() {
        let a = Admission::new(AdmissionLimits {
            max_pending: 10_000,
            per_source: 10_000,
            rate_per_source: 50,
        });
        let mut admitted = 0;
        for _ in 0..500 {
            if a.admit(ip("2001:db8::1")).is_ok() {
                admitted += 1;
            }
        }
        // A full bucket (50) plus what refills while the loop runs.
        assert!((50..100).contains(&admitted), "{admitted}");
        assert!(a.refused(Refusal::SourceRate) >= 400);
        // Another address of the same /64 is the same source.
        assert_eq!(a.admit(ip("2001:db8::2")).err(), Some(Refusal::SourceRate));
        // Another /64 is not.
        assert!(a.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn the_source_table_forgets_idle_sources() {
        let a = Admission::new(AdmissionLimits {
            max_pending: 10,
            per_source: 10,
            rate_per_source: 1_000_000,
        });
        for i in 0..200u8 {
            drop(a.admit(IpAddr::from([10, 9, 0, i])).expect("admitted"));
        }
        // With such a rate a bucket refills at once: nothing is kept.
        assert!(a.sources() <= 1, "{}", a.sources());
    }
}
