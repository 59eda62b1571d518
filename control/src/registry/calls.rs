//! The table's side of the control calls: `create` (req) and
//! `abandon_requested`, the req answer, `hello` and `hello_done`,
//! `begin_update`, `release` and `remove`, `status` and `list`, and READY
//! sessions expired when no update came; each checks the caller's rights
//! and the session's state machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::entry::{HelloOutcome, NewSession, ReqAnswer, Session, SessionView};
use super::{Registry, rate_to_bytes_per_sec};
use crate::dataplane::{Link, SessionPlan};
use crate::errors::ControlError;
use crate::secret::SessionSecret;
use crate::session::{Call, SessionState};
use crate::types::{Identity, SessionId};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Registry {
    /// Creates a session in state REQUESTED with `num_conn` bound listeners;
    /// returns the receiver that fires when hello arrives.
    pub fn create(&self, n: NewSession) -> Result<oneshot::Receiver<HelloOutcome>, ControlError> {
        let mut table = self.table();
        if table.contains_key(&n.uid) {
            return Err(ControlError::DuplicateSession {
                uid: n.uid.to_string(),
            });
        }
        if table.len() >= self.max_sessions {
            return Err(ControlError::TooManySessions {
                limit: self.max_sessions,
            });
        }
        let allocated = self.ports.allocate(n.num_conn as usize)?;
        let (tx, rx) = oneshot::channel();
        let mut leases = Vec::with_capacity(allocated.len());
        let mut listeners = Vec::with_capacity(allocated.len());
        let mut advertised = Vec::with_capacity(allocated.len());
        for (lease, l) in allocated {
            advertised.push(SocketAddr::new(self.advertise_ip, lease.port()));
            leases.push(lease);
            listeners.push(l);
        }
        table.insert(
            n.uid.clone(),
            Session {
                uid: n.uid,
                role: n.role,
                owner: n.owner,
                num_conn: n.num_conn,
                rate: n.rate,
                rate_source: n.rate_source,
                state: SessionState::Requested,
                leases,
                listeners,
                advertised,
                prod_listeners: Vec::new(),
                targets: Vec::new(),
                secret: n.secret,
                legacy_secret: n.legacy_secret,
                want_secret: n.want_secret,
                created_unix: now_unix(),
                state_since: Instant::now(),
                hello_tx: Some(tx),
                pending: None,
            },
        );
        Ok(rx)
    }

    /// Removes the session if it is still REQUESTED (hello timeout, or the
    /// req caller went away). Returns it so the caller drops it.
    pub fn abandon_requested(&self, uid: &SessionId) -> Option<Session> {
        let mut table = self.table();
        match table.get(uid) {
            Some(s) if s.state == SessionState::Requested => table.remove(uid),
            _ => None,
        }
    }

    /// The req answer once the session is READY (or later).
    pub fn req_answer(&self, uid: &SessionId) -> Result<ReqAnswer, ControlError> {
        let table = self.table();
        let s = table
            .get(uid)
            .ok_or_else(|| ControlError::ReleasedWhileWaiting {
                uid: uid.to_string(),
            })?;
        Ok(ReqAnswer {
            listeners: s.advertised.clone(),
            prod_listeners: s.prod_listeners.clone(),
            secret: if s.want_secret && !s.legacy_secret {
                s.secret.clone()
            } else {
                None
            },
        })
    }

    /// Records hello: REQUESTED -> READY. Returns the advertised listeners.
    /// The pending req is woken by [`Registry::hello_done`] once the session
    /// is persisted.
    pub fn hello(
        &self,
        uid: &SessionId,
        who: &Identity,
        prod_listeners: Vec<String>,
    ) -> Result<Vec<SocketAddr>, ControlError> {
        let mut table = self.table();
        let s = self.get_checked(&mut table, uid, who, "send hello for")?;
        s.state = transition(s, Call::Hello)?;
        s.state_since = Instant::now();
        s.prod_listeners = prod_listeners;
        Ok(s.advertised.clone())
    }

    /// Ends a hello: on success wakes the pending req; on failure (the
    /// session could not be persisted) removes the session and tells the
    /// req why. Returns the removed session for the caller to drop.
    pub fn hello_done(&self, uid: &SessionId, outcome: HelloOutcome) -> Option<Session> {
        let mut table = self.table();
        let failed = outcome.is_err();
        if let Some(tx) = table.get_mut(uid).and_then(|s| s.hello_tx.take()) {
            // The req may have gone away meanwhile; then nobody waits.
            let _ = tx.send(outcome);
        }
        if failed { table.remove(uid) } else { None }
    }

    /// Update: READY -> ACTIVE. Moves the listeners into a plan for the data
    /// plane (listener i -> target i, targets cycled to num_conn).
    /// `client_secret` is the secret sent in the update (CONS side).
    pub fn begin_update(
        &self,
        uid: &SessionId,
        who: &Identity,
        targets: &[SocketAddr],
        client_secret: Option<SessionSecret>,
        allow_legacy: bool,
    ) -> Result<(SessionPlan, SessionView, Option<SessionSecret>), ControlError> {
        let mut table = self.table();
        let s = self.get_checked(&mut table, uid, who, "update")?;
        let next = transition(s, Call::Update)?;
        if targets.is_empty() {
            return Err(ControlError::InvalidArgument {
                field: "remote_listeners",
                reason: "no target address given".into(),
            });
        }
        let (secret, legacy) = match (&s.secret, client_secret) {
            (Some(own), _) => (own.clone(), s.legacy_secret),
            (None, Some(given)) => (given, false),
            (None, None) => {
                if !allow_legacy {
                    return Err(ControlError::LegacySecretForbidden {
                        uid: uid.to_string(),
                    });
                }
                tracing::warn!(%uid, "client sent no data-channel secret (old client): using the legacy uid-derived secret, which anyone who knows the uid can derive");
                (SessionSecret::legacy_from_uid(uid), true)
            }
        };
        if targets.len() > s.listeners.len() {
            tracing::warn!(%uid, targets = targets.len(), listeners = s.listeners.len(), "more targets than listeners; the extra targets are not used");
        }
        let cycled: Vec<SocketAddr> = (0..s.listeners.len())
            .map(|i| targets[i % targets.len()])
            .collect();
        let listeners = std::mem::take(&mut s.listeners);
        let links = listeners
            .into_iter()
            .zip(cycled.iter().copied())
            .map(|(listener, target)| Link { listener, target })
            .collect();
        s.state = next;
        s.state_since = Instant::now();
        s.targets = cycled;
        s.secret = Some(secret.clone());
        s.legacy_secret = legacy;
        let answer_secret = if s.want_secret && !legacy {
            Some(secret.clone())
        } else {
            None
        };
        let plan = SessionPlan {
            uid: uid.clone(),
            role: s.role,
            links,
            rate_bytes_per_sec: rate_to_bytes_per_sec(s.rate),
            secret,
            legacy_secret: legacy,
        };
        Ok((plan, s.view(), answer_secret))
    }

    /// Whether `uid` is in the table and READY.
    pub fn is_ready(&self, uid: &SessionId) -> bool {
        self.table()
            .get(uid)
            .is_some_and(|s| s.state == SessionState::Ready)
    }

    /// Whether `uid` is in the table and ACTIVE.
    pub fn is_active(&self, uid: &SessionId) -> bool {
        self.table()
            .get(uid)
            .is_some_and(|s| s.state == SessionState::Active)
    }

    /// Removes a session unconditionally (failed start, shutdown).
    pub fn remove(&self, uid: &SessionId) -> Option<Session> {
        self.table().remove(uid)
    }

    /// Release: removes the session after checking ownership. The caller
    /// stops the data plane, then drops the session (freeing its ports).
    pub fn release(&self, uid: &SessionId, who: &Identity) -> Result<Session, ControlError> {
        let mut table = self.table();
        let s = self.get_checked(&mut table, uid, who, "release")?;
        transition(s, Call::Release)?;
        table
            .remove(uid)
            .ok_or_else(|| ControlError::UnknownSession {
                uid: uid.to_string(),
            })
    }

    /// Snapshot of one session.
    pub fn status(&self, uid: &SessionId, who: &Identity) -> Result<SessionView, ControlError> {
        let mut table = self.table();
        let s = self.get_checked(&mut table, uid, who, "query")?;
        Ok(s.view())
    }

    /// Snapshots of the sessions `who` may see, sorted by uid.
    pub fn list(&self, who: &Identity) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .table()
            .values()
            .filter(|s| self.authz.may_access(who, &s.owner))
            .map(Session::view)
            .collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// Removes READY sessions older than `max_age` (no update came).
    pub fn expire_ready(&self, max_age: Duration) -> Vec<Session> {
        let mut table = self.table();
        let now = Instant::now();
        let old: Vec<SessionId> = table
            .values()
            .filter(|s| {
                s.state == SessionState::Ready && now.duration_since(s.state_since) > max_age
            })
            .map(|s| s.uid.clone())
            .collect();
        old.iter().filter_map(|u| table.remove(u)).collect()
    }

    /// Uids of all sessions.
    pub fn uids(&self) -> Vec<SessionId> {
        self.table().keys().cloned().collect()
    }
}

fn transition(s: &Session, call: Call) -> Result<SessionState, ControlError> {
    s.state.next(call).map_err(|hint| ControlError::OutOfOrder {
        uid: s.uid.to_string(),
        call: call.name(),
        state: s.state.as_str(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateSource;
    use crate::registry::test_support::{free_base, setup};
    use crate::types::Role;

    #[test]
    fn a_failed_hello_removes_the_session_and_tells_the_waiting_req() {
        let base = free_base();
        let (registry, _) = setup(base);
        let uid = SessionId::parse("hello-fails").expect("uid");
        let who = Identity::anonymous();
        let mut rx = registry
            .create(NewSession {
                uid: uid.clone(),
                role: Role::Cons,
                owner: who.clone(),
                num_conn: 1,
                rate: 0,
                rate_source: RateSource::Unlimited,
                secret: None,
                legacy_secret: false,
                want_secret: true,
            })
            .expect("created");
        registry.hello(&uid, &who, Vec::new()).expect("hello");
        let removed = registry.hello_done(
            &uid,
            Err(ControlError::StateDirUnwritable {
                dir: "/state/sessions".into(),
                reason: "No space left on device".into(),
            }),
        );
        assert!(removed.is_some(), "the session goes");
        drop(removed);
        assert_eq!(registry.ports().in_use(), 0);
        match rx.try_recv() {
            Ok(Err(ControlError::StateDirUnwritable { dir, .. })) => {
                assert_eq!(dir, std::path::PathBuf::from("/state/sessions"));
            }
            other => panic!("the req must learn why: {other:?}"),
        }
    }
}
