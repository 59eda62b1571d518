//! How a listener's connections end when it stops, one design for every
//! accept loop (a session's listeners and `s2cs relay`): each connection task
//! holds an [`InFlight`] token; stopping waits for every token to drop for a
//! grace period, then asks the connections still open to reset, and waits a
//! little more ([`Drain::finish`]).
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The connections of one listener (or one session's listeners).
pub struct Drain {
    tokens: mpsc::Sender<()>,
    all_dropped: mpsc::Receiver<()>,
    reset: watch::Sender<bool>,
}

/// Held by one connection task for as long as it runs.
#[derive(Clone)]
pub struct InFlight {
    _token: mpsc::Sender<()>,
    reset: watch::Receiver<bool>,
}

/// How stopping went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection ended within the grace period.
    Finished,
    /// Some were still open after the grace period and were reset.
    Reset,
    /// Some were still running even after the reset wait.
    Stuck,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (tokens, all_dropped) = mpsc::channel(1);
        let (reset, _) = watch::channel(false);
        Drain {
            tokens,
            all_dropped,
            reset,
        }
    }

    /// A token for a new connection task.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            _token: self.tokens.clone(),
            reset: self.reset.subscribe(),
        }
    }

    /// Asks every connection to reset now, without waiting (for a data plane
    /// that is dropped).
    pub fn reset_now(&self) {
        self.reset.send_replace(true);
    }

    /// Waits up to `grace` for every connection to end; then asks the rest
    /// to reset and waits up to `reset_wait` for them.
    pub async fn finish(self, grace: Duration, reset_wait: Duration) -> DrainOutcome {
        let Drain {
            tokens,
            mut all_dropped,
            reset,
        } = self;
        drop(tokens);
        // recv() yields None once every token is dropped (nothing is sent).
        if tokio::time::timeout(grace, all_dropped.recv())
            .await
            .is_ok()
        {
            return DrainOutcome::Finished;
        }
        reset.send_replace(true);
        if tokio::time::timeout(reset_wait, all_dropped.recv())
            .await
            .is_ok()
        {
            DrainOutcome::Reset
        } else {
            DrainOutcome::Stuck
        }
    }
}

impl InFlight {
    /// Completes once the connection is asked to reset (or the drain is gone).
    pub async fn reset_requested(&mut self) {
        let _ = self.reset.wait_for(|reset| *reset).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finishes_when_every_connection_ends_in_the_grace_period() {
        let drain = Drain::new();
        let token = drain.in_flight();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(token);
        });
        let outcome = drain
            .finish(Duration::from_secs(30), Duration::from_secs(30))
            .await;
        assert_eq!(outcome, DrainOutcome::Finished);
    }

    #[tokio::test]
    async fn resets_what_outlives_the_grace_period() {
        let drain = Drain::new();
        let mut token = drain.in_flight();
        let task = tokio::spawn(async move {
            token.reset_requested().await;
        });
        let outcome = drain
            .finish(Duration::from_millis(10), Duration::from_secs(30))
            .await;
        assert_eq!(outcome, DrainOutcome::Reset);
        task.await
            .expect("the connection task saw the reset and ended");
    }

    #[tokio::test]
    async fn reports_connections_that_ignore_the_reset() {
        let drain = Drain::new();
        let token = drain.in_flight();
        let outcome = drain
            .finish(Duration::from_millis(10), Duration::from_millis(10))
            .await;
        assert_eq!(outcome, DrainOutcome::Stuck);
        drop(token);
    }
}
