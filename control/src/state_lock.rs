//! The lock that makes a state directory belong to one running gateway.
//!
//! Two `s2cs serve` processes on one state directory would each restore the
//! same sessions, fight over their ports and overwrite each other's session
//! files. [`StateLock::acquire`] takes an exclusive `flock` on
//! `<state_dir>/s2cs.lock` (mode 0600) and writes the holder's pid into it;
//! a second process gets [`ControlError::StateDirLocked`] naming that pid.
//! The kernel drops the lock when the holder exits, however it exits
//! (`kill -9` included), so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::errors::ControlError;

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "s2cs.lock";

/// An exclusive lock on a state directory, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    /// Holding the open file holds the lock.
    _file: File,
    dir: PathBuf,
}

impl StateLock {
    /// Creates `dir` (mode 0700) if needed and locks it for this process.
    pub fn acquire(dir: &Path) -> Result<StateLock, ControlError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ControlError::io(format!("creating state dir {}", dir.display()), e))?;
        owner_only(dir)?;
        let path = dir.join(LOCK_FILE);
        let open_err = |e| ControlError::io(format!("opening the lock file {}", path.display()), e);
        // Created if missing, then held open read-only: flock does not need
        // write access, and a lock file open for writing would keep the file
        // system from being remounted read-only under a running gateway.
        drop(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(open_err)?,
        );
        let mut file = File::open(&path).map_err(open_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(ControlError::StateDirLocked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process (pid unknown)".to_owned()
                    } else {
                        format!("another s2cs, pid {holder}")
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(ControlError::io(
                    format!("locking the state dir {}", dir.display()),
                    e,
                ));
            }
        }
        // Ours now: record who holds it, for the next one to name.
        let record = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut w| writeln!(w, "{}", std::process::id()));
        if let Err(e) = record {
            // The lock holds anyway; only the pid a second process would
            // print is missing (e.g. the disk is full).
            tracing::warn!(file = %path.display(), error = %e, "could not write this process's pid into the state dir lock");
        }
        Ok(StateLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Makes an existing state directory the owner's alone (mode 0700): a
/// directory made beforehand with the usual 0755 would show every session's
/// uid (its file names) to every local user. Says so when it changes it.
fn owner_only(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir)
        .map_err(|e| {
            ControlError::io(
                format!("reading the mode of state dir {}", dir.display()),
                e,
            )
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            ControlError::io(
                format!(
                    "state dir {} is open to others (mode {:o}) and could not be made 0700",
                    dir.display(),
                    mode & 0o7777
                ),
                e,
            )
        })?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:o}", mode & 0o7777),
            "the state directory was open to other users (it names every session); its mode is now 0700"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_open_to_others_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lock = StateLock::acquire(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "mode {mode:o}");
        drop(lock);
        // A new one is made 0700 too.
        let fresh = base.path().join("fresh");
        let _lock = StateLock::acquire(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "mode {mode:o}");
    }

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).expect("first lock");
        // flock is per open file description: a second open in this very
        // process conflicts exactly as another process would.
        let err = StateLock::acquire(&state).expect_err("already locked");
        let text = err.to_string();
        assert!(
            text.contains(&state.display().to_string()),
            "names the directory: {text}"
        );
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "names the holder: {text}"
        );
        drop(first);
        let again = StateLock::acquire(&state).expect("free again after drop");
        assert_eq!(again.dir(), state);
    }
}
