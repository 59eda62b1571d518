//! What each call does to the session table and the data plane: `req`
//! (create, then wait for `hello`), `hello`, `update` (start the data
//! plane), `release`, `status` and `list`; persisting the session before a
//! state-changing call answers, and undoing it when that fails.

use std::sync::Arc;

use tonic::metadata::MetadataMap;

use super::Core;
use super::convert::view_to_status;
use crate::errors::ControlError;
use crate::proto;
use crate::registry::{NewSession, Registry};
use crate::secret::SessionSecret;
use crate::session::SessionState;
use crate::types::{Role, SessionId, parse_addr_list};

/// Removes a REQUESTED session if the req future is dropped (the client
/// went away) before hello arrived.
struct AbandonGuard {
    registry: Arc<Registry>,
    uid: Option<SessionId>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(uid) = self.uid.take()
            && let Some(s) = self.registry.abandon_requested(&uid)
        {
            tracing::info!(%uid, "req abandoned before hello; session released");
            drop(s);
        }
    }
}

impl Core {
    /// `call` is this call's slot: it is given back while the req waits
    /// for its hello (which needs a slot of its own).
    pub(super) async fn req(
        &self,
        md: &MetadataMap,
        r: proto::Request,
        call: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let role = Role::parse(&r.role)?;
        let max = self.cfg.max_num_conn;
        let num_conn = u32::try_from(r.num_conn)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ControlError::InvalidArgument {
                field: "num_conn",
                reason: format!("{} is not in 1..={max}", r.num_conn),
            })?;
        let (secret, legacy) = match role {
            Role::Prod if r.want_channel_secret => (Some(SessionSecret::generate()?), false),
            Role::Prod if self.cfg.allow_legacy_secret => {
                tracing::warn!(%uid, "client did not ask for a data-channel secret (old client): using the legacy uid-derived secret, which anyone who knows the uid can derive");
                (Some(SessionSecret::legacy_from_uid(&uid)), true)
            }
            Role::Prod => {
                return Err(ControlError::LegacySecretForbidden {
                    uid: uid.to_string(),
                });
            }
            Role::Cons => (None, false),
        };
        // A session that could not survive a restart is refused now, with
        // the directory named, rather than after hello.
        self.registry.check_store_writable().await?;
        let rate = self
            .live
            .current()
            .rates
            .decide(r.rate, r.want_channel_secret, &who);
        let rx = self.registry.create(NewSession {
            uid: uid.clone(),
            role,
            owner: who.clone(),
            num_conn,
            rate: rate.mbps,
            rate_source: rate.source.clone(),
            secret,
            legacy_secret: legacy,
            want_secret: r.want_channel_secret,
        })?;
        tracing::info!(%uid, %role, num_conn, owner = %who, rate_mbps = rate.mbps, rate_source = %rate.source, "req: session created, waiting for hello");
        let mut guard = AbandonGuard {
            registry: self.registry.clone(),
            uid: Some(uid.clone()),
        };
        let timeout = self.cfg.hello_timeout();
        let mut shutdown = self.shutdown.subscribe();
        drop(call);
        tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => {
                    // hello could not persist the session; it is gone.
                    guard.uid = None;
                    return Err(err);
                }
                Ok(Err(_)) => {
                    guard.uid = None;
                    return Err(ControlError::ReleasedWhileWaiting { uid: uid.to_string() });
                }
                Err(_) => {
                    guard.uid = None;
                    if let Some(s) = self.registry.abandon_requested(&uid) {
                        drop(s);
                        tracing::warn!(%uid, ?timeout, "no hello in time; session released");
                        return Err(ControlError::HelloTimeout { uid: uid.to_string(), timeout });
                    }
                    // hello won the race against the timer: answer normally.
                }
            },
            _ = shutdown.wait_for(|v| *v) => {
                return Err(ControlError::ShuttingDown);
            }
        }
        guard.uid = None;
        let ans = self.registry.req_answer(&uid)?;
        Ok(proto::Response {
            listeners: ans.listeners.iter().map(ToString::to_string).collect(),
            prod_listeners: ans.prod_listeners,
            channel_secret: ans
                .secret
                .as_ref()
                .map(|s| s.expose().to_vec())
                .unwrap_or_default(),
            state: SessionState::Ready.as_str().to_owned(),
        })
    }

    pub(super) async fn hello(
        &self,
        md: &MetadataMap,
        h: proto::Hello,
    ) -> Result<proto::AppResponse, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&h.uid)?;
        let announced: Vec<String> = parse_addr_list(&h.prod_listeners)?
            .iter()
            .map(ToString::to_string)
            .collect();
        let listeners = self.registry.hello(&uid, &who, announced)?;
        if let Err(err) = self.registry.sync_persist(&uid).await {
            // Not durable: the session goes, and the waiting req says why.
            drop(self.registry.hello_done(&uid, Err(copy_unwritable(&err))));
            let _ = self.registry.sync_persist(&uid).await;
            tracing::warn!(%uid, "hello: the session could not be persisted; released");
            return Err(err);
        }
        drop(self.registry.hello_done(&uid, Ok(())));
        tracing::info!(%uid, role = %h.role, "hello received");
        Ok(proto::AppResponse {
            message: format!("hello received for session {uid}"),
            listeners: listeners.iter().map(ToString::to_string).collect(),
        })
    }

    pub(super) async fn update(
        &self,
        md: &MetadataMap,
        u: proto::UpdateTargets,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&u.uid)?;
        let targets = parse_addr_list(&u.remote_listeners)?;
        self.live.current().allow.check_all(&targets)?;
        let client_secret = if u.channel_secret.is_empty() {
            None
        } else {
            Some(SessionSecret::from_bytes(&u.channel_secret)?)
        };
        let (plan, view, answer_secret) = self.registry.begin_update(
            &uid,
            &who,
            &targets,
            client_secret,
            self.cfg.allow_legacy_secret,
        )?;
        if !u.role.is_empty() && Role::parse(&u.role).ok() != Some(view.role) {
            tracing::warn!(%uid, role = %u.role, session_role = %view.role, "update role differs from the session's role; using the session's");
        }
        if let Err(e) = self.data_plane.start_session(plan).await {
            if let Some(s) = self.registry.remove(&uid) {
                drop(s);
            }
            let _ = self.registry.sync_persist(&uid).await;
            return Err(ControlError::DataPlane {
                uid: uid.to_string(),
                source: e,
            });
        }
        if !self.registry.is_active(&uid) {
            // Released while the data plane was starting.
            self.data_plane.stop_session(&uid).await;
            return Err(ControlError::UnknownSession {
                uid: uid.to_string(),
            });
        }
        if let Err(err) = self.registry.sync_persist(&uid).await {
            // Not durable: undo the whole session rather than run one that
            // a restart would bring back in another state.
            self.data_plane.stop_session(&uid).await;
            drop(self.registry.remove(&uid));
            let _ = self.registry.sync_persist(&uid).await;
            tracing::warn!(%uid, "update: the session could not be persisted; released");
            return Err(err);
        }
        tracing::info!(%uid, role = %view.role, targets = ?view.targets, "update: session active");
        Ok(proto::Response {
            listeners: view.listeners.iter().map(ToString::to_string).collect(),
            prod_listeners: view.targets.iter().map(ToString::to_string).collect(),
            channel_secret: answer_secret
                .as_ref()
                .map(|s| s.expose().to_vec())
                .unwrap_or_default(),
            state: SessionState::Active.as_str().to_owned(),
        })
    }

    pub(super) async fn release(
        &self,
        md: &MetadataMap,
        r: proto::Release,
    ) -> Result<proto::Response, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let session = self.registry.release(&uid, &who)?;
        // Stop relaying (closing the listeners) before the ports go back.
        self.data_plane.stop_session(&uid).await;
        drop(session);
        // A failure is logged there; the session is released all the same.
        let _ = self.registry.sync_persist(&uid).await;
        tracing::info!(%uid, "session released");
        Ok(proto::Response {
            state: SessionState::Released.as_str().to_owned(),
            ..Default::default()
        })
    }

    pub(super) async fn status(
        &self,
        md: &MetadataMap,
        r: proto::StatusRequest,
    ) -> Result<proto::SessionStatus, ControlError> {
        let who = self.who(md).await?;
        let uid = SessionId::parse(&r.uid)?;
        let v = self.registry.status(&uid, &who)?;
        let c = self.data_plane.counters(&uid);
        Ok(view_to_status(v, c))
    }

    pub(super) async fn list(&self, md: &MetadataMap) -> Result<proto::SessionList, ControlError> {
        let who = self.who(md).await?;
        let sessions = self
            .registry
            .list(&who)
            .into_iter()
            .map(|v| {
                let c = self.data_plane.counters(&v.uid);
                view_to_status(v, c)
            })
            .collect();
        Ok(proto::SessionList { sessions })
    }
}

/// A second copy of a persistence error (one for the waiting req, one for
/// the hello that failed).
fn copy_unwritable(err: &ControlError) -> ControlError {
    match err {
        ControlError::StateDirUnwritable { dir, reason } => ControlError::StateDirUnwritable {
            dir: dir.clone(),
            reason: reason.clone(),
        },
        other => ControlError::Config {
            reason: other.to_string(),
        },
    }
}
