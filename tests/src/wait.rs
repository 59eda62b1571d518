//! Waiting without hanging: a [`Deadline`] type that every bounded operation in
//! this crate takes, [`eventually`] to poll a condition, and [`wait_for_port`].

use std::fmt::Display;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

/// A point in time after which an operation gives up. Built from a
/// [`Duration`] (from now) or an [`Instant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    /// The deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// When the deadline falls.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn expired(self) -> bool {
        Instant::now() >= self.0
    }
}

impl From<Duration> for Deadline {
    fn from(timeout: Duration) -> Self {
        Self::after(timeout)
    }
}

impl From<Instant> for Deadline {
    fn from(instant: Instant) -> Self {
        Self::at(instant)
    }
}

/// Calls `f` until it returns `Ok`, backing off from 1 ms to 50 ms between
/// tries; after the deadline, fails with the last error. `f` is always called
/// at least once.
pub fn eventually<T, E: Display>(
    deadline: impl Into<Deadline>,
    mut f: impl FnMut() -> Result<T, E>,
) -> anyhow::Result<T> {
    let deadline = deadline.into();
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut tries = 0u32;
    loop {
        tries += 1;
        match f() {
            Ok(value) => return Ok(value),
            Err(e) if deadline.expired() => bail!(
                "condition not met after {tries} tries in {:?}; last error: {e}",
                start.elapsed()
            ),
            Err(_) => {
                std::thread::sleep(pause.min(deadline.remaining()));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Polls until a TCP connection to `addr` succeeds (then closes it), from the
/// calling thread's network namespace. Use [`crate::Topology::wait_for_port`]
/// to poll from inside a topology's namespace.
pub fn wait_for_port(addr: SocketAddr, deadline: impl Into<Deadline>) -> anyhow::Result<()> {
    let deadline = deadline.into();
    eventually(deadline, || {
        let timeout = deadline
            .remaining()
            .clamp(Duration::from_millis(1), Duration::from_millis(200));
        TcpStream::connect_timeout(&addr, timeout).map(drop)
    })
    .map_err(|e| e.context(format!("waiting for {addr} to accept connections")))
}
