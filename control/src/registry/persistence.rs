//! A session's file kept in step with the table: [`Registry::sync_persist`]
//! under striped async locks (writes for one uid are ordered, the last one
//! reflects the latest state), and the probe that the state directory can
//! take a new file.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::{PERSIST_STRIPES, Registry};
use crate::errors::ControlError;
use crate::persist::Store;
use crate::session::SessionState;
use crate::types::SessionId;

impl Registry {
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

    /// The persistence store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }
}
