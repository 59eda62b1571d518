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
//!
//! Layout:
//! - `entry`: one session's entry ([`Session`]) and the values handed in
//!   and out ([`NewSession`], [`SessionView`], [`ReqAnswer`],
//!   [`HelloOutcome`]);
//! - `calls`: the table's side of the control calls (create, hello,
//!   update, release, status, list) and READY expiry;
//! - `persistence`: a session's file kept in step with the table;
//! - `restore`: persisted sessions brought back, RESTORING placeholders and
//!   their retries with backoff;
//! - this file: [`Registry`] itself (the table, its limits, lookups checked
//!   against the caller's rights, counts) and [`rate_to_bytes_per_sec`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use crate::authz::Authz;
use crate::errors::ControlError;
use crate::persist::Store;
use crate::ports::PortAllocator;
use crate::session::SessionState;
use crate::types::{Identity, SessionId};

mod calls;
mod entry;
mod persistence;
mod restore;

pub use entry::{HelloOutcome, NewSession, ReqAnswer, Session, SessionView};

const PERSIST_STRIPES: usize = 64;

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
}

#[cfg(test)]
mod test_support {
    //! What the tests of the submodules share.
    use super::*;
    use crate::persist::SessionRecord;
    use crate::ports::PortRange;
    use crate::rate::RateSource;
    use crate::secret::SessionSecret;
    use crate::types::Role;
    use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};

    /// A registry over a two-port range on loopback, free when the test
    /// starts, and the record of an ACTIVE session on its first port.
    pub(super) fn setup(base: u16) -> (Registry, SessionRecord) {
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

    pub(super) fn free_base() -> u16 {
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
}
