//! What every call goes through before and after its work: a call slot
//! (`max_concurrent_calls`) and the message size limit, the caller's
//! identity, the request timeout (state-changing calls run as tasks of their
//! own), the `watch` stream limits ([`WatchSlot`]), and the call reported to
//! the observer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use super::Core;
use crate::errors::ControlError;
use crate::observe::AuthFailure;
use crate::types::Identity;

/// How long a call waits for a slot when `max_concurrent_calls` are being
/// served, before it is refused.
const CALL_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// One open `watch` stream, counted until dropped.
pub(super) struct WatchSlot {
    core: Arc<Core>,
    who: Identity,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.core.watches();
        watches.0 = watches.0.saturating_sub(1);
        if let Some(n) = watches.1.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                watches.1.remove(&self.who);
            }
        }
    }
}

impl Core {
    /// Takes a call slot (waiting up to [`CALL_QUEUE_WAIT`] for one, so a
    /// burst is served in turn) and checks the request's size; the slot is
    /// free again when the permit drops.
    pub(super) async fn admit<M: prost::Message>(
        &self,
        message: &M,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ControlError> {
        let size = message.encoded_len();
        if size > self.cfg.max_message_bytes {
            return Err(ControlError::LimitReached {
                what: format!("the request message of {size} bytes is too large"),
                limit: self.cfg.max_message_bytes,
                setting: "max_message_bytes, --max-message-bytes",
            });
        }
        match tokio::time::timeout(CALL_QUEUE_WAIT, Arc::clone(&self.calls).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ControlError::LimitReached {
                what: "too many control calls at once".into(),
                limit: self.cfg.max_concurrent_calls,
                setting: "max_concurrent_calls, --max-concurrent-calls",
            }),
        }
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<Identity, usize>)> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new `watch` stream of `who`, within the limits.
    pub(super) fn open_watch(self: &Arc<Self>, who: &Identity) -> Result<WatchSlot, ControlError> {
        let mut watches = self.watches();
        if watches.0 >= self.cfg.max_watch_total {
            return Err(ControlError::LimitReached {
                what: "too many watch streams open".into(),
                limit: self.cfg.max_watch_total,
                setting: "max_watch_total, --max-watch",
            });
        }
        let mine = watches.1.get(who).copied().unwrap_or(0);
        if mine >= self.cfg.max_watch_per_identity {
            return Err(ControlError::LimitReached {
                what: format!("too many watch streams open for {who}"),
                limit: self.cfg.max_watch_per_identity,
                setting: "max_watch_per_identity, --max-watch-per-identity",
            });
        }
        watches.0 += 1;
        *watches.1.entry(who.clone()).or_insert(0) += 1;
        Ok(WatchSlot {
            core: Arc::clone(self),
            who: who.clone(),
        })
    }

    /// The caller, within the request timeout (the identity provider may
    /// be slow or down).
    pub(super) async fn who(&self, md: &MetadataMap) -> Result<Identity, ControlError> {
        let timeout = self.cfg.request_timeout();
        let live = self.live.current();
        tokio::time::timeout(timeout, live.auth.authenticate(md))
            .await
            .map_err(|_| ControlError::CallTimedOut {
                method: "authentication",
                timeout_secs: timeout.as_secs_f64(),
            })?
    }

    /// Runs a state-changing call (`hello`, `update`, `release`) as a task
    /// of its own, so it completes even when the caller stops waiting (or
    /// goes away): nothing is left half done. The caller waits at most the
    /// request timeout.
    pub(super) async fn bounded<T, F>(
        &self,
        method: &'static str,
        work: F,
    ) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ControlError>> + Send + 'static,
    {
        let timeout = self.cfg.request_timeout();
        match tokio::time::timeout(timeout, tokio::spawn(work)).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ControlError::Internal {
                reason: format!("the {method} call failed: {join}"),
            }),
            Err(_) => {
                tracing::warn!(
                    method,
                    ?timeout,
                    "a call outlived the request timeout; it completes in the background"
                );
                Err(ControlError::CallTimedOut {
                    method,
                    timeout_secs: timeout.as_secs_f64(),
                })
            }
        }
    }

    /// Bounds a read-only call by the request timeout (dropping it then
    /// changes nothing).
    pub(super) async fn bounded_read<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T, ControlError>>,
    ) -> Result<T, ControlError> {
        let timeout = self.cfg.request_timeout();
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ControlError::CallTimedOut {
                method,
                timeout_secs: timeout.as_secs_f64(),
            })?
    }

    /// Reports a finished call (and an auth failure) to the observer.
    pub(super) fn observe<T>(
        &self,
        method: &'static str,
        started: Instant,
        r: &Result<T, ControlError>,
    ) {
        let code = match r {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        let failure = match r {
            Err(ControlError::Unauthenticated { .. }) => Some(AuthFailure::Unauthenticated),
            Err(ControlError::AuthBackend { .. }) => Some(AuthFailure::BackendUnavailable),
            Err(ControlError::PermissionDenied { .. } | ControlError::TargetNotAllowed { .. }) => {
                Some(AuthFailure::PermissionDenied)
            }
            _ => None,
        };
        if let Some(failure) = failure {
            self.observer.auth_failed(method, failure);
        }
        self.observer.call_finished(method, code, started.elapsed());
    }
}
