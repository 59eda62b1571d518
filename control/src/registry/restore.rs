//! Persisted sessions brought back: [`Registry::restore`] at start, and
//! for one that cannot come back yet (a port held by another program) a
//! RESTORING placeholder that holds its port leases, keeps its file, says
//! why, and is tried again with backoff ([`Registry::retry_restore`]) until
//! it binds or is released; an ACTIVE session whose data plane could not
//! start goes back to RESTORING too.

use std::time::{Duration, Instant};

use super::entry::{PendingRestore, Session};
use super::{Registry, rate_to_bytes_per_sec};
use crate::dataplane::{Link, SessionPlan};
use crate::errors::ControlError;
use crate::persist::SessionRecord;
use crate::ports::PortLease;
use crate::secret::SessionSecret;
use crate::session::SessionState;
use crate::types::SessionId;

/// First retry of a session that could not be restored.
const RESTORE_BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between two restore attempts.
const RESTORE_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Session {
    /// could reserve.
    fn restoring(
        record: SessionRecord,
        leases: Vec<PortLease>,
        reason: String,
        attempts: u32,
    ) -> Self {
        let backoff = RESTORE_BACKOFF_FIRST
            .saturating_mul(1 << attempts.saturating_sub(1).min(8))
            .min(RESTORE_BACKOFF_MAX);
        Session {
            uid: record.uid.clone(),
            role: record.role,
            owner: record.owner.clone(),
            num_conn: record.num_conn,
            rate: record.rate,
            rate_source: record.rate_source.clone(),
            state: SessionState::Restoring,
            leases,
            listeners: Vec::new(),
            advertised: record.advertised.clone(),
            prod_listeners: record.prod_listeners.clone(),
            targets: record.targets.clone(),
            secret: None,
            legacy_secret: record.legacy_secret,
            want_secret: record.want_secret,
            created_unix: record.created_unix,
            state_since: Instant::now(),
            hello_tx: None,
            pending: Some(PendingRestore {
                record,
                reason,
                attempts,
                next_attempt: Instant::now() + backoff,
            }),
        }
    }
}

impl Registry {
    /// Uids of the RESTORING sessions whose next attempt is due.
    pub fn restores_due(&self) -> Vec<SessionId> {
        let now = Instant::now();
        self.table()
            .values()
            .filter(|s| s.pending.as_ref().is_some_and(|p| p.next_attempt <= now))
            .map(|s| s.uid.clone())
            .collect()
    }

    /// Brings a persisted session back: leases and binds its ports. Returns
    /// the plan to start when it was ACTIVE. When it cannot come back yet,
    /// the session stays in the table as RESTORING (its file untouched) and
    /// the error says why; [`Registry::retry_restore`] tries again.
    pub fn restore(&self, rec: SessionRecord) -> Result<Option<SessionPlan>, ControlError> {
        if self.table().contains_key(&rec.uid) {
            return Err(ControlError::DuplicateSession {
                uid: rec.uid.to_string(),
            });
        }
        self.attempt_restore(rec, Vec::new(), 1)
    }

    /// Tries a RESTORING session again (see [`Registry::restore`]). The
    /// placeholder stays in the table meanwhile, so `status` and `release`
    /// see it; `Ok(None)` also when it was released during the attempt.
    pub fn retry_restore(&self, uid: &SessionId) -> Result<Option<SessionPlan>, ControlError> {
        let (record, mut held, attempts) = {
            let mut table = self.table();
            let Some(s) = table.get_mut(uid) else {
                return Ok(None);
            };
            let Some(p) = &s.pending else {
                return Ok(None);
            };
            (
                p.record.clone(),
                std::mem::take(&mut s.leases),
                p.attempts + 1,
            )
        };
        let built = self.build_restored(&record, &mut held);
        let mut table = self.table();
        let still_waiting = table.get(uid).is_some_and(|s| s.pending.is_some());
        if !still_waiting {
            // Released meanwhile: whatever was built or held is dropped here.
            return Ok(None);
        }
        match built {
            Ok((session, plan)) => {
                table.insert(uid.clone(), session);
                Ok(plan)
            }
            Err(err) => {
                table.insert(
                    uid.clone(),
                    Session::restoring(record, held, reason_of(&err), attempts),
                );
                Err(err)
            }
        }
    }

    /// Puts an ACTIVE session whose data plane could not start back into
    /// RESTORING (its ports stay leased, unbound), to be retried.
    pub fn demote_to_restoring(&self, uid: &SessionId, reason: String, attempts: u32) {
        let mut table = self.table();
        let Some(mut s) = table.remove(uid) else {
            return;
        };
        let record = s.record();
        let leases = std::mem::take(&mut s.leases);
        drop(s); // closes any listener still held
        table.insert(
            uid.clone(),
            Session::restoring(record, leases, reason, attempts),
        );
    }

    /// How many restore attempts a RESTORING session has had (0 if none).
    pub fn restore_attempts(&self, uid: &SessionId) -> u32 {
        self.table()
            .get(uid)
            .and_then(|s| s.pending.as_ref())
            .map_or(0, |p| p.attempts)
    }

    /// The first restore attempt; on failure the RESTORING placeholder
    /// (holding whatever ports could be reserved) goes into the table.
    fn attempt_restore(
        &self,
        rec: SessionRecord,
        mut held: Vec<PortLease>,
        attempts: u32,
    ) -> Result<Option<SessionPlan>, ControlError> {
        let built = self.build_restored(&rec, &mut held);
        let mut table = self.table();
        if table.contains_key(&rec.uid) {
            return Err(ControlError::DuplicateSession {
                uid: rec.uid.to_string(),
            });
        }
        match built {
            Ok((session, plan)) => {
                table.insert(rec.uid.clone(), session);
                Ok(plan)
            }
            Err(err) => {
                let reason = reason_of(&err);
                table.insert(
                    rec.uid.clone(),
                    Session::restoring(rec, held, reason, attempts),
                );
                Err(err)
            }
        }
    }

    /// Leases (or reuses from `held`) and binds every port of `rec`, and
    /// builds its session. On error `held` keeps every lease obtained.
    fn build_restored(
        &self,
        rec: &SessionRecord,
        held: &mut Vec<PortLease>,
    ) -> Result<(Session, Option<SessionPlan>), ControlError> {
        let secret = match &rec.secret_hex {
            Some(h) => Some(SessionSecret::from_hex(h)?),
            None => None,
        };
        if rec.state == SessionState::Active && secret.is_none() {
            return Err(ControlError::Config {
                reason: format!("persisted ACTIVE session {} has no secret", rec.uid),
            });
        }
        if rec.state == SessionState::Active && rec.targets.len() != rec.ports.len() {
            return Err(ControlError::Config {
                reason: format!(
                    "persisted session {} has {} targets for {} ports",
                    rec.uid,
                    rec.targets.len(),
                    rec.ports.len()
                ),
            });
        }
        if !matches!(rec.state, SessionState::Active | SessionState::Ready) {
            return Err(ControlError::Config {
                reason: format!("persisted session {} is in state {}", rec.uid, rec.state),
            });
        }
        for &port in &rec.ports {
            if !held.iter().any(|l| l.port() == port) {
                held.push(self.ports.reserve(port)?);
            }
        }
        let mut listeners = Vec::with_capacity(rec.ports.len());
        for &port in &rec.ports {
            let lease =
                held.iter()
                    .find(|l| l.port() == port)
                    .ok_or_else(|| ControlError::Config {
                        reason: format!("port {port} of session {} is not leased", rec.uid),
                    })?;
            listeners.push(self.ports.listen(lease)?);
        }
        // Leases in the record's port order.
        let mut leases = Vec::with_capacity(rec.ports.len());
        for &port in &rec.ports {
            if let Some(i) = held.iter().position(|l| l.port() == port) {
                leases.push(held.swap_remove(i));
            }
        }
        let plan = if rec.state == SessionState::Active {
            let secret = secret.clone().ok_or_else(|| ControlError::Config {
                reason: format!("persisted ACTIVE session {} has no secret", rec.uid),
            })?;
            let links = std::mem::take(&mut listeners)
                .into_iter()
                .zip(rec.targets.iter().copied())
                .map(|(listener, target)| Link { listener, target })
                .collect();
            Some(SessionPlan {
                uid: rec.uid.clone(),
                role: rec.role,
                links,
                rate_bytes_per_sec: rate_to_bytes_per_sec(rec.rate),
                secret,
                legacy_secret: rec.legacy_secret,
            })
        } else {
            None
        };
        let session = Session {
            uid: rec.uid.clone(),
            role: rec.role,
            owner: rec.owner.clone(),
            num_conn: rec.num_conn,
            rate: rec.rate,
            rate_source: rec.rate_source.clone(),
            state: rec.state,
            leases,
            listeners,
            advertised: rec.advertised.clone(),
            prod_listeners: rec.prod_listeners.clone(),
            targets: rec.targets.clone(),
            secret,
            legacy_secret: rec.legacy_secret,
            want_secret: rec.want_secret,
            created_unix: rec.created_unix,
            state_since: Instant::now(),
            hello_tx: None,
            pending: None,
        };
        Ok((session, plan))
    }
}

/// An error as one line for `status` (I/O errors with their context).
fn reason_of(err: &ControlError) -> String {
    match err {
        ControlError::Io { context, source } => format!("{context}: {source}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::{free_base, setup};
    use crate::types::Identity;
    use std::net::{Ipv4Addr, TcpListener as StdListener};

    #[test]
    fn a_session_whose_port_is_taken_waits_as_restoring_and_comes_back() {
        let base = free_base();
        let (registry, record) = setup(base);
        let uid = record.uid.clone();
        let who = Identity::anonymous();
        let squatter = StdListener::bind((Ipv4Addr::LOCALHOST, base)).expect("take the port");

        let err = registry.restore(record).expect_err("the port is taken");
        assert!(err.to_string().contains(&format!("port {base}")), "{err}");
        let view = registry.status(&uid, &who).expect("still in the table");
        assert_eq!(view.state, SessionState::Restoring);
        let why = view.restore_error.expect("a reason");
        assert!(
            why.contains("1 attempt") && why.contains(&format!("port {base}")),
            "{why}"
        );
        // Its port stays reserved: a new session gets the other one.
        let other = registry.ports().allocate(1).expect("the other port");
        assert_eq!(other[0].0.port(), base + 1);
        drop(other);
        // Calls other than release are refused with a hint.
        let err = registry
            .hello(&uid, &who, Vec::new())
            .expect_err("out of order");
        assert!(err.to_string().contains("restored"), "{err}");

        assert!(registry.retry_restore(&uid).is_err(), "still taken");
        assert_eq!(registry.restore_attempts(&uid), 2);

        drop(squatter);
        let plan = registry
            .retry_restore(&uid)
            .expect("binds now")
            .expect("an ACTIVE session has a plan");
        let bound = plan.links[0].listener.local_addr().expect("addr");
        assert_eq!(bound.port(), base, "the same port");
        assert!(registry.is_active(&uid));
        assert!(
            registry
                .status(&uid, &who)
                .expect("view")
                .restore_error
                .is_none()
        );
    }

    #[test]
    fn a_restoring_session_can_be_released_and_frees_its_ports() {
        let base = free_base();
        let (registry, record) = setup(base);
        let uid = record.uid.clone();
        let squatter = StdListener::bind((Ipv4Addr::LOCALHOST, base)).expect("take the port");
        assert!(registry.restore(record).is_err());
        assert_eq!(registry.ports().in_use(), 1, "reserved while restoring");
        let s = registry
            .release(&uid, &Identity::anonymous())
            .expect("release is allowed");
        drop(s);
        assert_eq!(registry.ports().in_use(), 0);
        assert!(
            registry
                .retry_restore(&uid)
                .expect("nothing to do")
                .is_none()
        );
        drop(squatter);
    }
}
