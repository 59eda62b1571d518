//! [`Service`]: the tonic services (`Control` and `ControlExt`). Each
//! method admits the call, runs it within its bounds, reports it, and maps
//! the outcome to a gRPC status; `watch` streams a session's state and
//! counters from a task of its own; `version` announces the capabilities.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::counters_to_proto;
use super::{CAPABILITIES, Core};
use crate::proto;
use crate::session::SessionState;
use crate::types::SessionId;

/// The tonic service (both `Control` and `ControlExt`).
#[derive(Clone)]
pub struct Service {
    pub(super) core: Arc<Core>,
}

type TonicResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl proto::control_server::Control for Service {
    async fn req(&self, request: Request<proto::Request>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(call) => self.core.req(&md, r, call).await,
            Err(e) => Err(e),
        };
        self.core.observe("req", started, &r);
        Ok(Response::new(r?))
    }

    async fn hello(&self, request: Request<proto::Hello>) -> TonicResult<proto::AppResponse> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("hello", async move {
                let _call = core.admit(&r).await?;
                core.hello(&md, r).await
            })
            .await;
        self.core.observe("hello", started, &r);
        Ok(Response::new(r?))
    }

    async fn update(&self, request: Request<proto::UpdateTargets>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("update", async move {
                let _call = core.admit(&r).await?;
                core.update(&md, r).await
            })
            .await;
        self.core.observe("update", started, &r);
        Ok(Response::new(r?))
    }

    async fn release(&self, request: Request<proto::Release>) -> TonicResult<proto::Response> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let core = Arc::clone(&self.core);
        let r = self
            .core
            .bounded("release", async move {
                let _call = core.admit(&r).await?;
                core.release(&md, r).await
            })
            .await;
        self.core.observe("release", started, &r);
        Ok(Response::new(r?))
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl proto::control_ext_server::ControlExt for Service {
    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> TonicResult<proto::SessionStatus> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(_call) => {
                self.core
                    .bounded_read("status", self.core.status(&md, r))
                    .await
            }
            Err(e) => Err(e),
        };
        self.core.observe("status", started, &r);
        Ok(Response::new(r?))
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> TonicResult<proto::SessionList> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let r = match self.core.admit(&r).await {
            Ok(_call) => self.core.bounded_read("list", self.core.list(&md)).await,
            Err(e) => Err(e),
        };
        self.core.observe("list", started, &r);
        Ok(Response::new(r?))
    }

    type watchStream = WatchStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> TonicResult<WatchStream> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let checked = async {
            let _call = self.core.admit(&r).await?;
            let who = self.core.who(&md).await?;
            let uid = SessionId::parse(&r.uid)?;
            // Fails now (NOT_FOUND / PERMISSION_DENIED) rather than in the stream.
            self.core.registry.status(&uid, &who)?;
            let slot = self.core.open_watch(&who)?;
            Ok((who, uid, slot))
        }
        .await;
        self.core.observe("watch", started, &checked);
        let (who, uid, slot) = checked?;
        let interval = Duration::from_millis(match r.interval_ms {
            0 => 1000,
            n => u64::from(n.max(50)),
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let core = self.core.clone();
        let mut shutdown = core.shutdown.subscribe();
        tokio::spawn(async move {
            // Counted as open until the stream ends.
            let _slot = slot;
            let mut tick = tokio::time::interval(interval);
            // After a stall, carry on one interval later instead of sending
            // a burst of events with (almost) the same counters.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|v| *v) => break,
                }
                let state = core
                    .registry
                    .status(&uid, &who)
                    .map(|v| v.state)
                    .unwrap_or(SessionState::Released);
                let ev = proto::WatchEvent {
                    uid: uid.to_string(),
                    state: state.as_str().to_owned(),
                    counters: core.data_plane.counters(&uid).map(counters_to_proto),
                    unix_millis: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                        .unwrap_or(0),
                };
                if tx.send(Ok(ev)).await.is_err() || state == SessionState::Released {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> TonicResult<proto::VersionInfo> {
        let (md, _, r) = request.into_parts();
        let started = Instant::now();
        let who = match self.core.admit(&r).await {
            Ok(_call) => self.core.who(&md).await,
            Err(e) => Err(e),
        };
        self.core.observe("version", started, &who);
        let who = who?;
        Ok(Response::new(proto::VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: CAPABILITIES.iter().map(|s| (*s).to_owned()).collect(),
            identity: who.0,
        }))
    }
}
