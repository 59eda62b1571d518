//! The gateway-wide budget of relayed connections.
//!
//! Each relayed connection holds two sockets (more with a TLS channel's
//! duplicated descriptors), kernel buffers and, on the sockmap path, two
//! SockHash entries. Sessions bound their own connections (`num_conn`), but
//! many sessions together must not exhaust the gateway: [`RelayLimit`]
//! holds one slot per relayed connection, across every session. A
//! connection that finds no slot (a CONS connection from the LAN when it is
//! accepted, a PROD connection from the peer gateway once it proved the
//! session secret) is reset at once, counted
//! (`s2cs_connections_refused_total{reason="relay_limit"}`), and a warning
//! summing up such refusals is logged at most once a second.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of `--max-relayed-connections`: half of what the sockmap path's
/// SockHash holds (two sockets a connection).
pub const DEFAULT_MAX_RELAYED: usize = gateway_common::MAX_RELAYED_SOCKETS as usize / 2;

/// How often a warning about refusals at the limit may be written.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// The budget; see the module documentation.
pub struct RelayLimit {
    max: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
    /// When the last warning was written, and refusals since.
    warned: Mutex<(Option<Instant>, u64)>,
}

/// One relayed connection's slot; given back on drop.
pub struct RelaySlot {
    _permit: OwnedSemaphorePermit,
}

impl RelayLimit {
    /// A budget of `max` connections (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(RelayLimit {
            max,
            slots: Arc::new(Semaphore::new(max)),
            refused: AtomicU64::new(0),
            warned: Mutex::new((None, 0)),
        })
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Connections refused at the limit so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, or `None` at the limit (counted, and
    /// warned about at most once a second).
    pub fn try_take(&self) -> Option<RelaySlot> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(RelaySlot { _permit: permit });
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        warned.1 += 1;
        if warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                max = self.max,
                refused = warned.1,
                "connections refused: the gateway relays its maximum number of connections \
                 (--max-relayed-connections)"
            );
            *warned = (Some(Instant::now()), 0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_refused_at_the_limit_and_given_back() {
        let limit = RelayLimit::new(2);
        let a = limit.try_take().expect("first");
        let _b = limit.try_take().expect("second");
        assert_eq!(limit.in_use(), 2);
        assert!(limit.try_take().is_none());
        assert!(limit.try_take().is_none());
        assert_eq!(limit.refused(), 2);
        drop(a);
        assert_eq!(limit.in_use(), 1);
        assert!(limit.try_take().is_some());
    }

    #[test]
    fn a_zero_limit_still_relays_one() {
        let limit = RelayLimit::new(0);
        assert_eq!(limit.max(), 1);
        assert!(limit.try_take().is_some());
    }
}
