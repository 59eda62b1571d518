//! The concurrent session table.
//!
//! Each session is one entry keyed by its uid, holding its own listeners,
//! port leases, hello signal and secret, so sessions cannot see each other's
//! data. The table lock is a plain mutex held only for short, non-async
//! critical sections. A pending `req` waits on its session's own oneshot
//! channel, which `hello` fires; releasing the session drops the sender, so
//! the waiting `req` wakes up with an error instead of hanging.
//!
//! Persistence: [`Registry::sync_persist`] makes a session's file match the
//! table (written when present and past `hello`, removed otherwise). It runs
//! under one of a set of striped async locks, so writes for one uid are
//! ordered and the last write always reflects the latest state.
//!
//! Restore: [`Registry::restore`] brings a persisted session back. One that
//! cannot come back yet (a port is held by another program) stays in the
//! table as RESTORING: it holds its port leases (unbound, so no new session
//! gets them), keeps its file, reports why, and [`Registry::retry_restore`]
//! tries again with backoff until it binds or is released.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::authz::Authz;
use crate::dataplane::{Link, SessionPlan};
use crate::errors::ControlError;
use crate::persist::{SessionRecord, Store};
use crate::ports::{PortAllocator, PortLease};
use crate::rate::RateSource;
use crate::secret::SessionSecret;
use crate::session::{Call, SessionState};
use crate::types::{Identity, Role, SessionId};

const PERSIST_STRIPES: usize = 64;
/// First retry of a session that could not be restored.
const RESTORE_BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between two restore attempts.
const RESTORE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What `hello` tells the waiting `req`: the session is READY, or it could
/// not be made durable and is gone.
pub type HelloOutcome = Result<(), ControlError>;

/// A persisted session waiting to be restored.
struct PendingRestore {
    record: SessionRecord,
    /// Why the last attempt failed.
    reason: String,
    attempts: u32,
    next_attempt: Instant,
}

/// One live session.
pub struct Session {
    uid: SessionId,
    role: Role,
    owner: Identity,
    num_conn: u32,
    /// The cap in force (Mbit/s, 0 none) and where it came from.
    rate: i32,
    rate_source: RateSource,
    state: SessionState,
    leases: Vec<PortLease>,
    /// Bound listeners, held until `update` hands them to the data plane.
    listeners: Vec<TcpListener>,
    advertised: Vec<SocketAddr>,
    prod_listeners: Vec<String>,
    targets: Vec<SocketAddr>,
    secret: Option<SessionSecret>,
    legacy_secret: bool,
    want_secret: bool,
    created_unix: u64,
    state_since: Instant,
    hello_tx: Option<oneshot::Sender<HelloOutcome>>,
    /// Set while RESTORING.
    pending: Option<PendingRestore>,
}

impl Session {
    /// The session id.
    pub fn uid(&self) -> &SessionId {
        &self.uid
    }
    /// The session state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    fn record(&self) -> SessionRecord {
        SessionRecord {
            uid: self.uid.clone(),
            role: self.role,
            owner: self.owner.clone(),
            num_conn: self.num_conn,
            rate: self.rate,
            rate_source: self.rate_source.clone(),
            state: self.state,
            ports: self.leases.iter().map(|l| l.port()).collect(),
            advertised: self.advertised.clone(),
            prod_listeners: self.prod_listeners.clone(),
            targets: self.targets.clone(),
            secret_hex: self.secret.as_ref().map(|s| s.to_hex()),
            legacy_secret: self.legacy_secret,
            want_secret: self.want_secret,
            created_unix: self.created_unix,
        }
    }

    fn view(&self) -> SessionView {
        SessionView {
            uid: self.uid.clone(),
            role: self.role,
            state: self.state,
            owner: self.owner.clone(),
            num_conn: self.num_conn,
            rate: self.rate,
            rate_source: self.rate_source.clone(),
            listeners: self.advertised.clone(),
            prod_listeners: self.prod_listeners.clone(),
            targets: self.targets.clone(),
            created_unix: self.created_unix,
            legacy_secret: self.legacy_secret,
            restore_error: self.pending.as_ref().map(|p| {
                format!(
                    "not restored after {} attempt(s), retrying: {}",
                    p.attempts, p.reason
                )
            }),
        }
    }

    /// A RESTORING placeholder for `record`, holding the port `leases` it
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

/// A read-only snapshot of a session (for status and list).
#[derive(Clone, Debug)]
pub struct SessionView {
    /// uid
    pub uid: SessionId,
    /// role
    pub role: Role,
    /// state
    pub state: SessionState,
    /// owner
    pub owner: Identity,
    /// num_conn
    pub num_conn: u32,
    /// The rate cap in force (Mbit/s, 0 none).
    pub rate: i32,
    /// Where that cap came from.
    pub rate_source: RateSource,
    /// advertised listeners
    pub listeners: Vec<SocketAddr>,
    /// what hello announced
    pub prod_listeners: Vec<String>,
    /// update targets
    pub targets: Vec<SocketAddr>,
    /// creation time
    pub created_unix: u64,
    /// legacy secret in use
    pub legacy_secret: bool,
    /// Why a RESTORING session is not back yet.
    pub restore_error: Option<String>,
}

/// What `req` answers once hello arrived.
pub struct ReqAnswer {
    /// Advertised listeners.
    pub listeners: Vec<SocketAddr>,
    /// What hello announced.
    pub prod_listeners: Vec<String>,
    /// The secret, when the client asked for it.
    pub secret: Option<SessionSecret>,
}

/// Parameters of a new session.
pub struct NewSession {
    /// uid
    pub uid: SessionId,
    /// role
    pub role: Role,
    /// creator
    pub owner: Identity,
    /// listeners to allocate
    pub num_conn: u32,
    /// The rate cap in force (Mbit/s, 0 none; see [`crate::rate`]).
    pub rate: i32,
    /// Where that cap came from.
    pub rate_source: RateSource,
    /// secret known at req time (PROD)
    pub secret: Option<SessionSecret>,
    /// whether that secret is the legacy one
    pub legacy_secret: bool,
    /// whether the client reads `channel_secret`
    pub want_secret: bool,
}

/// The session table.
pub struct Registry {
    table: Mutex<HashMap<SessionId, Session>>,
    ports: PortAllocator,
    advertise_ip: IpAddr,
    max_sessions: usize,
    authz: Authz,
    store: Option<Store>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Converts the wire rate (Mbit/s, <= 0 unlimited) to bytes per second.
pub fn rate_to_bytes_per_sec(rate_mbps: i32) -> u64 {
    if rate_mbps <= 0 {
        0
    } else {
        u64::from(rate_mbps.unsigned_abs()) * 1_000_000 / 8
    }
}

impl Registry {
    /// An empty table.
    pub fn new(
        ports: PortAllocator,
        advertise_ip: IpAddr,
        max_sessions: usize,
        authz: Authz,
        store: Option<Store>,
    ) -> Self {
        Registry {
            table: Mutex::new(HashMap::new()),
            ports,
            advertise_ip,
            max_sessions,
            authz,
            store,
            stripes: (0..PERSIST_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        // Critical sections never leave the table half-updated.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The port allocator.
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// The authorization policy.
    pub fn authz(&self) -> &Authz {
        &self.authz
    }

    /// Number of sessions in the table.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// How many sessions are in each live state (REQUESTED, READY, ACTIVE,
    /// RESTORING).
    pub fn count_by_state(&self) -> [(SessionState, usize); 4] {
        let mut counts = [
            (SessionState::Requested, 0),
            (SessionState::Ready, 0),
            (SessionState::Active, 0),
            (SessionState::Restoring, 0),
        ];
        for session in self.table().values() {
            if let Some(slot) = counts.iter_mut().find(|(state, _)| *state == session.state) {
                slot.1 += 1;
            }
        }
        counts
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_checked<'a>(
        &self,
        table: &'a mut HashMap<SessionId, Session>,
        uid: &SessionId,
        who: &Identity,
        action: &str,
    ) -> Result<&'a mut Session, ControlError> {
        let s = table
            .get_mut(uid)
            .ok_or_else(|| ControlError::UnknownSession {
                uid: uid.to_string(),
            })?;
        self.authz.check(who, &s.owner, uid, action)?;
        Ok(s)
    }

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

    /// Uids of the RESTORING sessions whose next attempt is due.
    pub fn restores_due(&self) -> Vec<SessionId> {
        let now = Instant::now();
        self.table()
            .values()
            .filter(|s| s.pending.as_ref().is_some_and(|p| p.next_attempt <= now))
            .map(|s| s.uid.clone())
            .collect()
    }

    fn stripe(&self, uid: &SessionId) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        &self.stripes[(h.finish() as usize) % PERSIST_STRIPES]
    }

    /// Makes the persisted file of `uid` match the table: written if the
    /// session exists past hello, removed otherwise; a RESTORING session's
    /// file is left as it is. A failure is returned as
    /// [`ControlError::StateDirUnwritable`] (and logged) for the caller to
    /// decide.
    pub async fn sync_persist(&self, uid: &SessionId) -> Result<(), ControlError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let _g = self.stripe(uid).lock().await;
        let rec = match self.table().get(uid) {
            Some(s) if s.state == SessionState::Restoring => return Ok(()),
            Some(s) if matches!(s.state, SessionState::Ready | SessionState::Active) => {
                Some(s.record())
            }
            _ => None,
        };
        let uid2 = uid.clone();
        let dir = store.dir().to_path_buf();
        let res = tokio::task::spawn_blocking(move || match rec {
            Some(r) => store.save(&r),
            None => store.remove(&uid2),
        })
        .await;
        let reason = match res {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(ControlError::Io { context, source })) => format!("{context}: {source}"),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("persistence task failed: {e}"),
        };
        tracing::error!(%uid, dir = %dir.display(), error = %reason, "persisting the session failed");
        Err(ControlError::StateDirUnwritable { dir, reason })
    }

    /// Checks that the state directory can take a new session file now.
    pub async fn check_store_writable(&self) -> Result<(), ControlError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let dir = store.dir().to_path_buf();
        tokio::task::spawn_blocking(move || store.check_writable())
            .await
            .unwrap_or_else(|e| {
                Err(ControlError::StateDirUnwritable {
                    dir,
                    reason: format!("probe task failed: {e}"),
                })
            })
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

    /// The persistence store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }
}

/// An error as one line for `status` (I/O errors with their context).
fn reason_of(err: &ControlError) -> String {
    match err {
        ControlError::Io { context, source } => format!("{context}: {source}"),
        other => other.to_string(),
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
    use crate::ports::PortRange;
    use std::net::{Ipv4Addr, TcpListener as StdListener};

    /// A registry over a two-port range on loopback, free when the test
    /// starts, and the record of an ACTIVE session on its first port.
    fn setup(base: u16) -> (Registry, SessionRecord) {
        let range = PortRange {
            first: base,
            last: base + 1,
        };
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let registry = Registry::new(
            PortAllocator::new(range, ip),
            ip,
            16,
            Authz::new(Vec::new()),
            None,
        );
        let uid = SessionId::parse("restore-1").expect("uid");
        let record = SessionRecord {
            uid,
            role: Role::Prod,
            owner: Identity::anonymous(),
            num_conn: 1,
            rate: 0,
            rate_source: RateSource::Unlimited,
            state: SessionState::Active,
            ports: vec![base],
            advertised: vec![SocketAddr::new(ip, base)],
            prod_listeners: Vec::new(),
            targets: vec![SocketAddr::new(ip, 9)],
            secret_hex: Some(SessionSecret::generate().expect("secret").to_hex()),
            legacy_secret: false,
            want_secret: true,
            created_unix: 1,
        };
        (registry, record)
    }

    fn free_base() -> u16 {
        // Two neighbouring free ports (the kernel's choice and the next).
        loop {
            let l = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("port");
            let base = l.local_addr().expect("addr").port();
            drop(l);
            if base < u16::MAX && StdListener::bind((Ipv4Addr::LOCALHOST, base + 1)).is_ok() {
                return base;
            }
        }
    }

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
