//! Session persistence for restart safety.
//!
//! Each live session past `hello` is one JSON file `<uid>.json` in the state
//! directory (mode 0700), written atomically (temp file, fsync, rename) with
//! mode 0600, because it holds the data-channel secret. Released sessions'
//! files are removed. On start, [`Store::load_all`] returns the records; the
//! registry re-binds their listeners.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::errors::ControlError;
use crate::rate::RateSource;
use crate::session::SessionState;
use crate::types::{Identity, Role, SessionId};

/// What is persisted of one session.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub uid: SessionId,
    /// Role.
    pub role: Role,
    /// Owner identity.
    pub owner: Identity,
    /// Listeners requested.
    pub num_conn: u32,
    /// The rate cap in force (Mbit/s, <= 0 unlimited).
    pub rate: i32,
    /// Where that cap came from (records written before it was kept held
    /// the client's request).
    #[serde(default = "client_rate_source")]
    pub rate_source: RateSource,
    /// READY or ACTIVE.
    pub state: SessionState,
    /// Leased listener ports, in order.
    pub ports: Vec<u16>,
    /// Advertised listener addresses, in order.
    pub advertised: Vec<SocketAddr>,
    /// What hello announced.
    pub prod_listeners: Vec<String>,
    /// Update targets (ACTIVE only).
    pub targets: Vec<SocketAddr>,
    /// Hex of the data-channel secret, when known.
    pub secret_hex: Option<String>,
    /// Whether the secret is the legacy uid-derived one.
    pub legacy_secret: bool,
    /// Whether the client asked for the secret in responses.
    pub want_secret: bool,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
}

fn client_rate_source() -> RateSource {
    RateSource::Client
}

/// Bytes written by [`Store::check_writable`]: more than a session record.
const PROBE_BYTES: usize = 8192;

/// Creates `path` (mode 0600), writes `data` and syncs it.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), ControlError> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ControlError::io(ctx("creating"), e))?;
    // The mode only applies on creation; enforce it for a stale temp file.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ControlError::io(ctx("chmod"), e))?;
    f.write_all(data)
        .map_err(|e| ControlError::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| ControlError::io(ctx("fsync"), e))
}

/// The persistence directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating with mode 0700 if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Self, ControlError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ControlError::io(format!("creating state dir {}", dir.display()), e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, uid: &SessionId) -> PathBuf {
        // SessionId only admits [A-Za-z0-9._-] without a leading '.'.
        self.dir.join(format!("{uid}.json"))
    }

    /// Writes a record atomically (mode 0600). On failure nothing
    /// half-written is left: the temporary file is removed and the previous
    /// record, if any, stays as it was.
    pub fn save(&self, rec: &SessionRecord) -> Result<(), ControlError> {
        let path = self.path(&rec.uid);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.uid));
        let data = serde_json::to_vec_pretty(rec).map_err(|e| ControlError::Config {
            reason: format!("serializing session {}: {e}", rec.uid),
        })?;
        let written = write_synced(&tmp, &data).and_then(|()| {
            std::fs::rename(&tmp, &path)
                .map_err(|e| ControlError::io(format!("renaming to {}", path.display()), e))
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Checks that a session file could be written now: writes, syncs and
    /// removes a probe of a record's size. Catches a full or read-only
    /// directory before a new session depends on it.
    pub fn check_writable(&self) -> Result<(), ControlError> {
        let probe = self
            .dir
            .join(format!(".probe-{}.tmp", rand::random::<u64>()));
        let written = write_synced(&probe, &[b'.'; PROBE_BYTES]);
        let _ = std::fs::remove_file(&probe);
        written.map_err(|err| ControlError::StateDirUnwritable {
            dir: self.dir.clone(),
            reason: match err {
                ControlError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })
    }

    /// Removes a session's record (absent is fine).
    pub fn remove(&self, uid: &SessionId) -> Result<(), ControlError> {
        match std::fs::remove_file(self.path(uid)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ControlError::io(
                format!("removing session file of {uid}"),
                e,
            )),
        }
    }

    /// Loads every record; unreadable files are logged and skipped.
    pub fn load_all(&self) -> Result<Vec<SessionRecord>, ControlError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| {
            ControlError::io(format!("reading state dir {}", self.dir.display()), e)
        })?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let p = ent.path();
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let parsed = std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<SessionRecord>(&b).map_err(|e| e.to_string())
            });
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(file = %p.display(), error = %e, "skipping unreadable session file")
                }
            }
        }
        Ok(out)
    }
}
