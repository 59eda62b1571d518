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
use crate::secret::SessionSecret;
use crate::session::{Call, SessionState};
use crate::types::{Identity, Role, SessionId};

const PERSIST_STRIPES: usize = 64;

/// One live session.
pub struct Session {
    uid: SessionId,
    role: Role,
    owner: Identity,
    num_conn: u32,
    rate: i32,
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
    hello_tx: Option<oneshot::Sender<()>>,
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
            listeners: self.advertised.clone(),
            prod_listeners: self.prod_listeners.clone(),
            targets: self.targets.clone(),
            created_unix: self.created_unix,
            legacy_secret: self.legacy_secret,
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
    /// rate (Mbit/s as requested)
    pub rate: i32,
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
    /// requested rate (Mbit/s)
    pub rate: i32,
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

    /// How many sessions are in each live state (REQUESTED, READY, ACTIVE).
    pub fn count_by_state(&self) -> [(SessionState, usize); 3] {
        let mut counts = [
            (SessionState::Requested, 0),
            (SessionState::Ready, 0),
            (SessionState::Active, 0),
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
    pub fn create(&self, n: NewSession) -> Result<oneshot::Receiver<()>, ControlError> {
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

    /// Records hello: REQUESTED -> READY, wakes the pending req. Returns the
    /// advertised listeners.
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
        if let Some(tx) = s.hello_tx.take() {
            // The req may have gone away meanwhile; then nobody waits.
            let _ = tx.send(());
        }
        Ok(s.advertised.clone())
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

    fn stripe(&self, uid: &SessionId) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        &self.stripes[(h.finish() as usize) % PERSIST_STRIPES]
    }

    /// Makes the persisted file of `uid` match the table: written if the
    /// session exists past hello, removed otherwise. Errors are logged (the
    /// session keeps working without restart safety).
    pub async fn sync_persist(&self, uid: &SessionId) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let _g = self.stripe(uid).lock().await;
        let rec = self
            .table()
            .get(uid)
            .filter(|s| matches!(s.state, SessionState::Ready | SessionState::Active))
            .map(Session::record);
        let uid2 = uid.clone();
        let res = tokio::task::spawn_blocking(move || match rec {
            Some(r) => store.save(&r),
            None => store.remove(&uid2),
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%uid, error = %e, "persisting session failed"),
            Err(e) => tracing::error!(%uid, error = %e, "persistence task failed"),
        }
    }

    /// Rebuilds a persisted session: re-binds its ports. Returns the plan to
    /// start when it was ACTIVE.
    pub fn restore(&self, rec: SessionRecord) -> Result<Option<SessionPlan>, ControlError> {
        let mut leases = Vec::new();
        let mut listeners = Vec::new();
        for p in &rec.ports {
            let (lease, l) = self.ports.claim(*p)?;
            leases.push(lease);
            listeners.push(l);
        }
        let secret = match &rec.secret_hex {
            Some(h) => Some(SessionSecret::from_hex(h)?),
            None => None,
        };
        let mut table = self.table();
        if table.contains_key(&rec.uid) {
            return Err(ControlError::DuplicateSession {
                uid: rec.uid.to_string(),
            });
        }
        let plan = match rec.state {
            SessionState::Active => {
                let Some(secret) = secret.clone() else {
                    return Err(ControlError::Config {
                        reason: format!("persisted ACTIVE session {} has no secret", rec.uid),
                    });
                };
                if rec.targets.len() != listeners.len() {
                    return Err(ControlError::Config {
                        reason: format!(
                            "persisted session {} has {} targets for {} ports",
                            rec.uid,
                            rec.targets.len(),
                            listeners.len()
                        ),
                    });
                }
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
            }
            SessionState::Ready => None,
            other => {
                return Err(ControlError::Config {
                    reason: format!("persisted session {} is in state {other}", rec.uid),
                });
            }
        };
        table.insert(
            rec.uid.clone(),
            Session {
                uid: rec.uid,
                role: rec.role,
                owner: rec.owner,
                num_conn: rec.num_conn,
                rate: rec.rate,
                state: rec.state,
                leases,
                listeners,
                advertised: rec.advertised,
                prod_listeners: rec.prod_listeners,
                targets: rec.targets,
                secret,
                legacy_secret: rec.legacy_secret,
                want_secret: rec.want_secret,
                created_unix: rec.created_unix,
                state_since: Instant::now(),
                hello_tx: None,
            },
        );
        Ok(plan)
    }

    /// Drops a persisted file that could not be restored.
    pub fn forget_persisted(&self, uid: &SessionId) {
        if let Some(store) = &self.store
            && let Err(e) = store.remove(uid)
        {
            tracing::error!(%uid, error = %e, "removing the session file failed");
        }
    }

    /// The persistence store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
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
