//! One log line a second summing up the WAN connections the gateway
//! refused, instead of one line per connection: a flood must not become a
//! log flood. The counts come from [`ChannelFailures`] (channel refusals
//! and admission refusals, by reason); the line also names the last
//! refused peer and why, which is what an operator chasing a misconfigured
//! peer gateway needs.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use crate::channel::{ChannelFailures, FailureReason};
use crate::wan_admission::Admission;

/// How often the summary is written (when something was refused).
pub const PERIOD: Duration = Duration::from_secs(1);

/// The summary of what changed between two snapshots, or `None` when
/// nothing was refused.
pub fn summary(
    before: &[(FailureReason, u64)],
    now: &[(FailureReason, u64)],
) -> Option<(u64, String)> {
    let mut total = 0;
    let mut parts = Vec::new();
    for ((reason, was), (_, is)) in before.iter().zip(now) {
        let delta = is.saturating_sub(*was);
        if delta > 0 {
            total += delta;
            parts.push(format!("{reason}={delta}"));
        }
    }
    (total > 0).then(|| (total, parts.join(" ")))
}

/// Writes the summary every [`PERIOD`] while something is refused; runs
/// until the task is dropped.
pub async fn run(failures: Arc<ChannelFailures>, admission: Arc<Admission>) {
    let mut before = failures.snapshot();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = failures.snapshot();
        if let Some((total, by_reason)) = summary(&before, &now) {
            let last = failures.last_refusal().unwrap_or_default();
            tracing::warn!(
                refused = total,
                unauthenticated_now = admission.unauthenticated(),
                "channel: connection refused {total} time(s) in the last {PERIOD:?}: {by_reason} (last: {last})"
            );
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_what_changed() {
        let before = vec![(FailureReason::NotTls, 5), (FailureReason::BadProof, 1)];
        let now = vec![(FailureReason::NotTls, 9), (FailureReason::BadProof, 1)];
        assert_eq!(summary(&before, &now), Some((4, "not_tls=4".to_owned())));
        assert_eq!(summary(&now, &now), None);
    }
}
