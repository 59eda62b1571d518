//! A UDP relay's live counters ([`UdpStats`]): datagrams and bytes per
//! direction, flows, drops by reason and the usable payload size, read as a
//! [`control::UdpCounters`] snapshot by `status` and the metrics scrape.
use std::sync::atomic::{AtomicU64, Ordering};

use control::UdpCounters;

/// Which way a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the listener side to the target.
    ToTarget,
    /// From the target back to the listener side.
    FromTarget,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than the path carries.
    Oversize,
    /// Over the session's rate cap.
    Rate,
    /// Its flow could not keep up, or was not (yet) set up.
    Backlog,
}

/// The counters of one session's UDP relay.
#[derive(Debug, Default)]
pub struct UdpStats {
    datagrams_to_target: AtomicU64,
    bytes_to_target: AtomicU64,
    datagrams_from_target: AtomicU64,
    bytes_from_target: AtomicU64,
    flows_total: AtomicU64,
    flows_active: AtomicU64,
    flows_refused: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_rate: AtomicU64,
    dropped_backlog: AtomicU64,
    max_payload: AtomicU64,
}

impl UdpStats {
    /// One datagram of `bytes` relayed in `direction`.
    pub fn relayed(&self, direction: Direction, bytes: usize) {
        let (datagrams, total) = match direction {
            Direction::ToTarget => (&self.datagrams_to_target, &self.bytes_to_target),
            Direction::FromTarget => (&self.datagrams_from_target, &self.bytes_from_target),
        };
        datagrams.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `datagrams` of `bytes` in all relayed in `direction` (by the kernel).
    pub fn relayed_many(&self, direction: Direction, datagrams: u64, bytes: u64) {
        let (count, total) = match direction {
            Direction::ToTarget => (&self.datagrams_to_target, &self.bytes_to_target),
            Direction::FromTarget => (&self.datagrams_from_target, &self.bytes_from_target),
        };
        count.fetch_add(datagrams, Ordering::Relaxed);
        total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One datagram dropped.
    pub fn dropped(&self, why: DropReason) {
        let counter = match why {
            DropReason::Oversize => &self.dropped_oversize,
            DropReason::Rate => &self.dropped_rate,
            DropReason::Backlog => &self.dropped_backlog,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A flow was set up; [`UdpStats::flow_closed`] when it ends.
    pub fn flow_opened(&self) {
        self.flows_total.fetch_add(1, Ordering::Relaxed);
        self.flows_active.fetch_add(1, Ordering::Relaxed);
    }

    /// A flow opened with [`UdpStats::flow_opened`] ended.
    pub fn flow_closed(&self) {
        self.flows_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A flow was refused (failed channel set-up, flow limit).
    pub fn flow_refused(&self) {
        self.flows_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The WAN path of a flow carries datagram payloads up to `bytes`.
    pub fn path_payload(&self, bytes: usize) {
        self.max_payload.store(bytes as u64, Ordering::Relaxed);
    }

    /// Open flows.
    pub fn flows_active(&self) -> u64 {
        self.flows_active.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> UdpCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let flows_active = get(&self.flows_active);
        UdpCounters {
            datagrams_to_target: get(&self.datagrams_to_target),
            bytes_to_target: get(&self.bytes_to_target),
            datagrams_from_target: get(&self.datagrams_from_target),
            bytes_from_target: get(&self.bytes_from_target),
            flows_total: get(&self.flows_total),
            flows_active,
            flows_refused: get(&self.flows_refused),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_rate: get(&self.dropped_rate),
            dropped_backlog: get(&self.dropped_backlog),
            max_payload: if flows_active == 0 {
                0
            } else {
                get(&self.max_payload)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_direction_reason_and_flow() {
        let stats = UdpStats::default();
        stats.relayed(Direction::ToTarget, 100);
        stats.relayed(Direction::ToTarget, 50);
        stats.relayed(Direction::FromTarget, 7);
        stats.dropped(DropReason::Oversize);
        stats.dropped(DropReason::Rate);
        stats.dropped(DropReason::Rate);
        stats.flow_opened();
        stats.flow_refused();
        stats.path_payload(1350);
        let c = stats.snapshot();
        assert_eq!((c.datagrams_to_target, c.bytes_to_target), (2, 150));
        assert_eq!((c.datagrams_from_target, c.bytes_from_target), (1, 7));
        assert_eq!(
            (c.dropped_oversize, c.dropped_rate, c.dropped_backlog),
            (1, 2, 0)
        );
        assert_eq!(c.dropped(), 3);
        assert_eq!((c.flows_total, c.flows_active, c.flows_refused), (1, 1, 1));
        assert_eq!(c.max_payload, 1350);
        stats.flow_closed();
        let c = stats.snapshot();
        assert_eq!((c.flows_active, c.max_payload), (0, 0));
    }
}
