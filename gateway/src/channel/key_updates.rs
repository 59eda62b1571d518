//! Counters of TLS 1.3 key updates on the data channel, per gateway, on
//! both data paths (userspace record layer and kernel TLS): how often this
//! gateway moved its sending keys on, and how often it followed a peer's.
//! Exported as `s2cs_channel_key_updates_total{direction}`.
use std::sync::atomic::{AtomicU64, Ordering};

/// Key updates sent and followed since start.
#[derive(Debug, Default)]
pub struct KeyUpdates {
    sent: AtomicU64,
    received: AtomicU64,
}

impl KeyUpdates {
    /// We sent a KeyUpdate and moved to our next sending keys.
    pub fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The peer sent a KeyUpdate and we moved to its next keys.
    pub fn record_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// KeyUpdates sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// KeyUpdates received and followed.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}
