//! A session's rate cap for datagrams ([`RateCap`]): a token bucket per
//! direction. A datagram over the cap is dropped (UDP has no back-pressure
//! to apply), with a burst allowance of 50 ms at the cap (at least 64 KiB)
//! so that a sender just under the cap is not clipped by its own jitter.
use std::sync::Mutex;
use std::time::Instant;

const MIN_BURST: f64 = 64.0 * 1024.0;

/// A token bucket in bytes.
#[derive(Debug)]
pub struct RateCap {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateCap {
    /// A cap of `bytes_per_sec`; `None` when 0 (no cap).
    pub fn new(bytes_per_sec: u64) -> Option<Self> {
        if bytes_per_sec == 0 {
            return None;
        }
        let rate = bytes_per_sec as f64;
        let burst = (rate / 20.0).max(MIN_BURST);
        Some(RateCap {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        })
    }

    /// Takes `bytes` from the bucket at `now`; false (and nothing taken)
    /// when there are not enough.
    pub fn admit(&self, bytes: usize, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now.max(b.last);
        let need = bytes as f64;
        if b.tokens >= need {
            b.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_cap_at_zero() {
        assert!(RateCap::new(0).is_none());
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        // 1 MB/s: burst 64 KiB (more than 50 ms of 1 MB).
        let cap = RateCap::new(1_000_000).expect("cap");
        let t0 = Instant::now();
        let mut admitted = 0;
        while cap.admit(1000, t0) {
            admitted += 1000;
        }
        assert_eq!(admitted, 65_000);
        // 100 ms later: 100 kB more at 1 MB/s, capped by the burst.
        let t1 = t0 + Duration::from_millis(100);
        let mut later = 0;
        while cap.admit(1000, t1) {
            later += 1000;
        }
        assert!((65_000..=66_000).contains(&later), "{later}");
    }
}
