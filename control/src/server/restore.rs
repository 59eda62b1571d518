//! Sessions across a restart: the persisted ones brought back when the
//! server starts (an ACTIVE one started in the data plane), the RESTORING
//! ones retried with backoff, and every session stopped at shutdown (their
//! files kept).

use std::sync::Arc;

use super::Core;
use crate::dataplane::SessionPlan;
use crate::errors::ControlError;
use crate::types::SessionId;

impl Core {
    /// Stops every session in the data plane, all at once (persisted files
    /// stay).
    pub(super) async fn stop_all(&self) {
        let mut stopping = tokio::task::JoinSet::new();
        for uid in self.registry.uids() {
            if let Some(session) = self.registry.remove(&uid) {
                let data_plane = Arc::clone(&self.data_plane);
                stopping.spawn(async move {
                    data_plane.stop_session(&uid).await;
                    // The ports go back only once the listeners are closed.
                    drop(session);
                });
            }
        }
        let count = stopping.len();
        while stopping.join_next().await.is_some() {}
        if count > 0 {
            tracing::info!(
                sessions = count,
                "every session stopped (their files are kept)"
            );
        }
    }

    /// Restores persisted sessions. One that cannot come back now stays
    /// RESTORING (file kept) and is retried by [`Core::retry_restores`].
    pub(super) async fn restore(&self) -> Result<(), ControlError> {
        let Some(store) = self.registry.store() else {
            return Ok(());
        };
        let records = store.load_all()?;
        for rec in records {
            let uid = rec.uid.clone();
            match self.registry.restore(rec) {
                Ok(None) => tracing::info!(%uid, "restored READY session"),
                Ok(Some(plan)) => self.start_restored(&uid, plan, 1).await,
                Err(ControlError::DuplicateSession { .. }) => {
                    tracing::error!(%uid, "two session files hold the same uid; restored once")
                }
                Err(e) => tracing::error!(
                    %uid,
                    error = %e,
                    "persisted session could not be restored; its file is kept and it is retried until it binds or is released"
                ),
            }
        }
        Ok(())
    }

    /// Starts a restored ACTIVE session; if the data plane refuses, the
    /// session goes back to RESTORING.
    async fn start_restored(&self, uid: &SessionId, plan: SessionPlan, attempts: u32) {
        match self.data_plane.start_session(plan).await {
            Ok(()) if attempts > 1 => {
                tracing::info!(%uid, attempts, "restored ACTIVE session (after waiting)")
            }
            Ok(()) => tracing::info!(%uid, "restored ACTIVE session"),
            Err(e) => {
                if attempts == 1 {
                    tracing::error!(%uid, error = %e, "restored session could not start; its file is kept and it is retried");
                }
                self.registry.demote_to_restoring(
                    uid,
                    format!("the data plane could not start: {e}"),
                    attempts,
                );
            }
        }
    }

    /// One pass over the RESTORING sessions whose next attempt is due.
    pub(super) async fn retry_restores(&self) {
        for uid in self.registry.restores_due() {
            let attempts = self.registry.restore_attempts(&uid) + 1;
            match self.registry.retry_restore(&uid) {
                Ok(Some(plan)) => self.start_restored(&uid, plan, attempts).await,
                Ok(None) => {
                    if self.registry.is_ready(&uid) {
                        tracing::info!(%uid, attempts, "restored READY session (after waiting)");
                    }
                }
                Err(e) => tracing::debug!(%uid, attempts, error = %e, "session still not restored"),
            }
        }
    }
}
