//! Prometheus metrics of `s2cs serve`: one [`Metrics`] (one
//! [`prometheus::Registry`], no global statics) built in `serve` and passed
//! down to the data plane, the control server's [`control::Observer`] hook and
//! the XDP guard, and [`serve_http`], the HTTP endpoint that renders it.
//!
//! Two kinds of series:
//! - *event* counters and histograms, updated where things happen:
//!   connections started (`s2cs_connections_total{role,path}`), connections
//!   finished by the path really used (`s2cs_connections_finished_total
//!   {path,outcome}`), control-call latency (`s2cs_control_call_duration_seconds
//!   {method,code}`), authentication failures (`s2cs_auth_failures_total
//!   {reason}`);
//! - *live* values read at scrape time from their owners (so a sockmap
//!   relay's in-kernel byte counters are as fresh as the scrape): sessions by
//!   state, bytes per session and direction, open connections, relayed bytes
//!   over the whole life of the process, XDP drops by reason, data-channel
//!   connections established and refused by reason (certificate, bad_proof,
//!   timeout, ...).
//!
//! Labels never carry a secret: the session label is the uid, except for
//! sessions with the legacy uid-derived data secret (where the uid *is* the
//! secret's seed): those are labelled `legacy-` and a hash prefix. The
//! endpoint still reveals uids and addresses of sessions: bind it to a
//! management address.
//!
//! Layout:
//! - `observer`: the [`control::Observer`] hook (call latency by method and
//!   code, auth failures by reason);
//! - `scrape`: the scrape-time collector of live values and the catalogue of
//!   its families;
//! - `http`: [`bind`] and [`serve_http`], the `GET /metrics` endpoint;
//! - this file: [`Metrics`] (the registry, the event series, the live
//!   sources it is told to watch), [`DataPlaneView`] and [`MetricsError`].
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use control::{AuthFailure, Observer, SessionCounters};
use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::channel::{ChannelFailures, KeyUpdates};
use crate::ebpf::KernelRelay;
use crate::xdp::XdpGuard;

mod http;
mod observer;
mod scrape;

pub use http::{bind, serve_http};

use observer::ControlObserver;
use scrape::{LIVE, Live};

/// Why metrics could not be set up or served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Bug: a metric is defined twice or badly.
    #[error("registering metric {name} failed")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    /// Bug: the text encoder failed.
    #[error("encoding the metrics failed")]
    Encode(#[source] prometheus::Error),
    /// Operator: the metrics address is taken or not local.
    #[error("binding the metrics listener {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// System: the HTTP server failed.
    #[error("the metrics HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// What the metrics read from the data plane at scrape time: the narrow
/// view through which they observe sessions (the data plane implements it;
/// this module does not know the session code).
pub trait DataPlaneView: Send + Sync {
    /// One sample per running session.
    fn metrics_samples(&self) -> Vec<SessionSample>;
    /// Connections refused at the gateway-wide relay limit, and the limit.
    fn relay_limit_counts(&self) -> (u64, u64);
}

/// A session as the data plane reports it for metrics.
#[derive(Clone, Debug)]
pub struct SessionSample {
    /// The `session` label (uid, or a hash for legacy-secret sessions).
    pub label: String,
    /// "PROD" or "CONS".
    pub role: &'static str,
    /// Its live counters.
    pub counters: SessionCounters,
}

/// Live sources read at scrape time.
#[derive(Default)]
struct Sources {
    data_plane: OnceLock<Weak<dyn DataPlaneView>>,
    sessions_by_state: OnceLock<SessionsFn>,
    xdp: OnceLock<Weak<XdpGuard>>,
    kernel_relay: OnceLock<Weak<KernelRelay>>,
    channel: OnceLock<Arc<ChannelFailures>>,
    key_updates: OnceLock<Arc<KeyUpdates>>,
}

type SessionsFn = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Bytes of sessions that have stopped (their series are gone).
#[derive(Default)]
struct Finished {
    to_target: AtomicU64,
    from_target: AtomicU64,
}

/// The gateway's metrics. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    connections: IntCounterVec,
    finished: IntCounterVec,
    calls: HistogramVec,
    auth_failures: IntCounterVec,
    sources: Arc<Sources>,
    finished_bytes: Arc<Finished>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    metric: Result<C, prometheus::Error>,
) -> Result<C, MetricsError> {
    let metric = metric.map_err(|source| MetricsError::Register { name, source })?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(metric)
}

impl Metrics {
    /// A registry with every metric defined (and no live source yet).
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let connections = register(
            &registry,
            "s2cs_connections_total",
            IntCounterVec::new(
                Opts::new(
                    "s2cs_connections_total",
                    "Connections accepted on session listeners, by session role and planned data path",
                ),
                &["role", "path"],
            ),
        )?;
        let finished = register(
            &registry,
            "s2cs_connections_finished_total",
            IntCounterVec::new(
                Opts::new(
                    "s2cs_connections_finished_total",
                    "Relayed connections that ended, by the data path really used (sockmap, splice, copy; \
                     none if relaying never started) and outcome (ok, error)",
                ),
                &["path", "outcome"],
            ),
        )?;
        let calls = register(
            &registry,
            "s2cs_control_call_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "s2cs_control_call_duration_seconds",
                    "Duration of control (gRPC) calls, by method and status code (req includes the wait for hello)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["method", "code"],
            ),
        )?;
        let auth_failures = register(
            &registry,
            "s2cs_auth_failures_total",
            IntCounterVec::new(
                Opts::new(
                    "s2cs_auth_failures_total",
                    "Control calls refused by authentication or authorization, by reason",
                ),
                &["reason"],
            ),
        )?;
        // Every reason exists from the start, so a rate() over it works at once.
        for reason in [
            AuthFailure::Unauthenticated,
            AuthFailure::BackendUnavailable,
            AuthFailure::PermissionDenied,
        ] {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        let sources = Arc::new(Sources::default());
        let finished_bytes = Arc::new(Finished::default());
        let live = Live::new(Arc::clone(&sources), Arc::clone(&finished_bytes))?;
        registry
            .register(Box::new(live))
            .map_err(|source| MetricsError::Register {
                name: "live",
                source,
            })?;
        Ok(Arc::new(Metrics {
            registry,
            connections,
            finished,
            calls,
            auth_failures,
            sources,
            finished_bytes,
        }))
    }

    /// The name of every metric family this gateway can export (a family
    /// appears in a scrape once it has a value), so dashboards and alert
    /// rules can be checked against what really exists.
    pub fn family_names(&self) -> Vec<String> {
        let registered = [
            self.connections.desc(),
            self.finished.desc(),
            self.calls.desc(),
            self.auth_failures.desc(),
        ];
        registered
            .iter()
            .flatten()
            .map(|desc| desc.fq_name.clone())
            .chain(LIVE.iter().map(|(name, _, _)| (*name).to_owned()))
            .collect()
    }

    /// The registry (e.g. to add process metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reads sessions, bytes and connections from `data_plane` at scrape
    /// time (held weakly). Only the first call counts.
    pub fn watch_data_plane<D: DataPlaneView + 'static>(&self, data_plane: &Arc<D>) {
        let weak: Weak<dyn DataPlaneView> = Arc::downgrade(data_plane) as Weak<dyn DataPlaneView>;
        let _ = self.sources.data_plane.set(weak);
    }

    /// Reads the sessions by state from the control server at scrape time.
    pub fn watch_control(&self, handle: control::ServerHandle) {
        let _ = self.sources.sessions_by_state.set(Box::new(move || {
            handle
                .sessions_by_state()
                .iter()
                .map(|(state, n)| (state.as_str(), *n as u64))
                .collect()
        }));
    }

    /// Reads the XDP guard's counters at scrape time (held weakly).
    pub fn watch_xdp(&self, guard: &Arc<XdpGuard>) {
        let _ = self.sources.xdp.set(Arc::downgrade(guard));
    }

    /// Reads the kernel relay's counters at scrape time (held weakly).
    pub fn watch_kernel_relay(&self, relay: &Arc<KernelRelay>) {
        let _ = self.sources.kernel_relay.set(Arc::downgrade(relay));
    }

    /// Reads the data channel's established and refused connections at
    /// scrape time. Only the first call counts.
    pub fn watch_channel(&self, failures: &Arc<ChannelFailures>) {
        let _ = self.sources.channel.set(Arc::clone(failures));
    }

    /// Reports the data channel's key update counters at scrape time. Only
    /// the first call counts.
    pub fn watch_key_updates(&self, key_updates: &Arc<KeyUpdates>) {
        let _ = self.sources.key_updates.set(Arc::clone(key_updates));
    }

    /// The hook the control server reports calls and auth failures to.
    pub fn control_observer(self: &Arc<Self>) -> Arc<dyn Observer> {
        Arc::new(ControlObserver(Arc::clone(self)))
    }

    /// A connection was accepted by a `role` session planned on `path`.
    pub fn connection_started(&self, role: &str, path: &str) {
        self.connections.with_label_values(&[role, path]).inc();
    }

    /// A connection ended; `path` is the one really used ("none" if the
    /// relay never started).
    pub fn connection_finished(&self, path: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.finished.with_label_values(&[path, outcome]).inc();
    }

    /// A session stopped with these final counters: they move from the live
    /// per-session series into the process totals.
    pub fn session_finished(&self, counters: &SessionCounters) {
        self.finished_bytes
            .to_target
            .fetch_add(counters.bytes_to_target, Ordering::Relaxed);
        self.finished_bytes
            .from_target
            .fetch_add(counters.bytes_from_target, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let families = self.registry.gather();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_event_and_live_metrics() {
        let metrics = Metrics::new().expect("metrics");
        metrics.connection_started("PROD", "sockmap");
        metrics.connection_finished("splice", true);
        metrics.session_finished(&SessionCounters {
            bytes_to_target: 5,
            bytes_from_target: 7,
            connections_total: 1,
            connections_active: 0,
            pinned_peer: None,
            udp: control::UdpCounters::default(),
        });
        let observer = metrics.control_observer();
        observer.call_finished("req", control::CallCode::Ok, Duration::from_millis(3));
        observer.auth_failed("req", AuthFailure::Unauthenticated);
        let text = metrics.render().expect("render");
        for line in [
            "s2cs_connections_total{path=\"sockmap\",role=\"PROD\"} 1",
            "s2cs_connections_finished_total{outcome=\"ok\",path=\"splice\"} 1",
            "s2cs_relayed_bytes_total{direction=\"to_target\"} 5",
            "s2cs_relayed_bytes_total{direction=\"from_target\"} 7",
            "s2cs_control_call_duration_seconds_count{code=\"ok\",method=\"req\"} 1",
            "s2cs_auth_failures_total{reason=\"unauthenticated\"} 1",
            "s2cs_auth_failures_total{reason=\"permission_denied\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
