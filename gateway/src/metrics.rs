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
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use control::{AuthFailure, CallCode, Observer, SessionCounters};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::channel::{ChannelFailures, KeyUpdates};
use crate::ebpf::KernelRelay;
use crate::xdp::XdpGuard;

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

/// Maps control-server events to the registry.
struct ControlObserver(Arc<Metrics>);

impl Observer for ControlObserver {
    fn call_finished(&self, method: &'static str, code: CallCode, elapsed: Duration) {
        self.0
            .calls
            .with_label_values(&[method, code_name(code)])
            .observe(elapsed.as_secs_f64());
    }

    fn auth_failed(&self, _method: &'static str, reason: AuthFailure) {
        self.0
            .auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

/// A stable snake_case name of a gRPC code (`ok`, `not_found`, ...).
fn code_name(code: CallCode) -> &'static str {
    use CallCode as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

/// The scrape-time collector of live values.
struct Live {
    sources: Arc<Sources>,
    finished: Arc<Finished>,
    descs: Vec<Desc>,
}

/// (name, help, labels) of every live family.
const LIVE: [(&str, &str, &[&str]); 19] = [
    (
        "s2cs_sessions",
        "Sessions in the control server, by state",
        &["state"],
    ),
    (
        "s2cs_session_bytes_total",
        "Bytes relayed by a running session, by direction (to_target: from the listener side to the \
         target; from_target: back)",
        &["session", "role", "direction"],
    ),
    (
        "s2cs_session_connections_active",
        "Open connections of a running session",
        &["session", "role"],
    ),
    (
        "s2cs_connections_active",
        "Open relayed connections, all sessions",
        &[],
    ),
    (
        "s2cs_relayed_bytes_total",
        "Bytes relayed since start, all sessions (stopped ones included), by direction",
        &["direction"],
    ),
    (
        "s2cs_xdp_dropped_packets_total",
        "Packets the XDP guard dropped, by reason (not_allowed: to a data port from a source no \
         live session allows; malformed: truncated headers)",
        &["iface", "reason"],
    ),
    (
        "s2cs_xdp_allowed_packets_total",
        "Packets to a data port the XDP guard let through",
        &["iface"],
    ),
    (
        "s2cs_xdp_allow_entries",
        "Entries in the XDP guard's allow-list",
        &["iface"],
    ),
    (
        "s2cs_xdp_attached",
        "1 while the XDP guard is attached, with its mode (native or generic)",
        &["iface", "mode"],
    ),
    (
        "s2cs_channel_established_total",
        "Data-channel connections whose TLS handshake and mutual proof succeeded",
        &[],
    ),
    (
        "s2cs_channel_refused_total",
        "Data-channel connections refused before any byte was relayed, by reason (timeout, \
         not_tls, handshake, certificate, bad_proof, mode_mismatch, peer_closed, io)",
        &["reason"],
    ),
    (
        "s2cs_connections_refused_total",
        "Connections reset at once because the gateway relays its maximum number of connections \
         (reason relay_limit; --max-relayed-connections)",
        &["reason"],
    ),
    (
        "s2cs_connections_limit",
        "The most connections the gateway relays at once (--max-relayed-connections)",
        &[],
    ),
    (
        "s2cs_kernel_relay_duplications_total",
        "Connections the sockmap relay reset because the kernel handed on more bytes than TCP \
         received (a kernel defect; see docs/ARCHITECTURE.md); only with --data-path sockmap",
        &[],
    ),
    (
        "s2cs_channel_key_updates_total",
        "TLS 1.3 key updates on the data channel: sent (we moved our sending keys on, before the \
         AES-GCM record limit or when asked) and received (we followed the peer's), on both the \
         userspace and the kernel TLS path",
        &["direction"],
    ),
    (
        "s2cs_session_udp_datagrams_total",
        "UDP datagrams relayed by a running session, by direction (as for bytes)",
        &["session", "role", "direction"],
    ),
    (
        "s2cs_session_udp_bytes_total",
        "Payload bytes of the UDP datagrams relayed by a running session, by direction",
        &["session", "role", "direction"],
    ),
    (
        "s2cs_session_udp_dropped_total",
        "UDP datagrams a running session dropped, by reason (oversize: larger than the WAN path \
         carries; rate: over the session's rate cap; backlog: its flow could not keep up or was \
         not set up)",
        &["session", "role", "reason"],
    ),
    (
        "s2cs_session_udp_flows_active",
        "Open UDP flows (one per sender address) of a running session",
        &["session", "role"],
    ),
];

impl Live {
    fn new(sources: Arc<Sources>, finished: Arc<Finished>) -> Result<Self, MetricsError> {
        let descs = LIVE
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .map_err(|source| MetricsError::Register { name, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Live {
            sources,
            finished,
            descs,
        })
    }
}

/// One sample's labels.
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

impl Collector for Live {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<(usize, MetricType, Vec<Metric>)> = Vec::new();
        if let Some(f) = self.sources.sessions_by_state.get() {
            let metrics = f()
                .iter()
                .map(|(state, n)| gauge(&[("state", state)], *n))
                .collect();
            families.push((0, MetricType::GAUGE, metrics));
        }
        let (mut live_to, mut live_from) = (0u64, 0u64);
        if let Some(dp) = self.sources.data_plane.get().and_then(Weak::upgrade) {
            let sessions = dp.metrics_samples();
            let (mut bytes, mut active, mut total_active) = (Vec::new(), Vec::new(), 0u64);
            for s in &sessions {
                let c = &s.counters;
                bytes.push(counter(
                    &[
                        ("session", &s.label),
                        ("role", s.role),
                        ("direction", "to_target"),
                    ],
                    c.bytes_to_target,
                ));
                bytes.push(counter(
                    &[
                        ("session", &s.label),
                        ("role", s.role),
                        ("direction", "from_target"),
                    ],
                    c.bytes_from_target,
                ));
                active.push(gauge(
                    &[("session", &s.label), ("role", s.role)],
                    c.connections_active,
                ));
                total_active += c.connections_active;
                live_to += c.bytes_to_target;
                live_from += c.bytes_from_target;
            }
            families.push((1, MetricType::COUNTER, bytes));
            families.push((2, MetricType::GAUGE, active));
            let udp: Vec<_> = sessions
                .iter()
                .filter(|s| s.counters.udp.flows_total > 0 || s.counters.udp.flows_refused > 0)
                .collect();
            let (mut datagrams, mut udp_bytes, mut dropped, mut flows) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for s in &udp {
                let u = &s.counters.udp;
                let who = |extra: (&'static str, &'static str)| {
                    [("session", s.label.as_str()), ("role", s.role), extra]
                };
                for (direction, n, b) in [
                    ("to_target", u.datagrams_to_target, u.bytes_to_target),
                    ("from_target", u.datagrams_from_target, u.bytes_from_target),
                ] {
                    datagrams.push(counter(&who(("direction", direction)), n));
                    udp_bytes.push(counter(&who(("direction", direction)), b));
                }
                for (reason, n) in [
                    ("oversize", u.dropped_oversize),
                    ("rate", u.dropped_rate),
                    ("backlog", u.dropped_backlog),
                ] {
                    dropped.push(counter(&who(("reason", reason)), n));
                }
                flows.push(gauge(
                    &[("session", &s.label), ("role", s.role)],
                    u.flows_active,
                ));
            }
            families.push((15, MetricType::COUNTER, datagrams));
            families.push((16, MetricType::COUNTER, udp_bytes));
            families.push((17, MetricType::COUNTER, dropped));
            families.push((18, MetricType::GAUGE, flows));
            families.push((3, MetricType::GAUGE, vec![gauge(&[], total_active)]));
            let (refused, max) = dp.relay_limit_counts();
            families.push((
                11,
                MetricType::COUNTER,
                vec![counter(&[("reason", "relay_limit")], refused)],
            ));
            families.push((12, MetricType::GAUGE, vec![gauge(&[], max)]));
        }
        let to = self.finished.to_target.load(Ordering::Relaxed) + live_to;
        let from = self.finished.from_target.load(Ordering::Relaxed) + live_from;
        families.push((
            4,
            MetricType::COUNTER,
            vec![
                counter(&[("direction", "to_target")], to),
                counter(&[("direction", "from_target")], from),
            ],
        ));
        if let Some(guard) = self.sources.xdp.get().and_then(Weak::upgrade) {
            let iface = guard.iface();
            match guard.drop_counters() {
                Ok(c) => {
                    let drops = c
                        .drops()
                        .iter()
                        .map(|(reason, n)| counter(&[("iface", iface), ("reason", reason)], *n))
                        .collect();
                    families.push((5, MetricType::COUNTER, drops));
                    families.push((
                        6,
                        MetricType::COUNTER,
                        vec![counter(&[("iface", iface)], c.allowed)],
                    ));
                }
                Err(err) => {
                    tracing::warn!(error = %crate::error_chain::error_chain(&err), "reading the XDP counters failed")
                }
            }
            families.push((
                7,
                MetricType::GAUGE,
                vec![gauge(&[("iface", iface)], guard.allowed_entries() as u64)],
            ));
            families.push((
                8,
                MetricType::GAUGE,
                vec![gauge(
                    &[("iface", iface), ("mode", guard.mode().as_str())],
                    1,
                )],
            ));
        }
        if let Some(relay) = self.sources.kernel_relay.get().and_then(Weak::upgrade) {
            families.push((
                13,
                MetricType::COUNTER,
                vec![counter(&[], relay.duplications())],
            ));
        }
        if let Some(channel) = self.sources.channel.get() {
            families.push((
                9,
                MetricType::COUNTER,
                vec![counter(&[], channel.established())],
            ));
            let refused = channel
                .snapshot()
                .into_iter()
                .map(|(reason, n)| counter(&[("reason", reason.as_str())], n))
                .collect();
            families.push((10, MetricType::COUNTER, refused));
        }
        if let Some(updates) = self.sources.key_updates.get() {
            families.push((
                14,
                MetricType::COUNTER,
                vec![
                    counter(&[("direction", "sent")], updates.sent()),
                    counter(&[("direction", "received")], updates.received()),
                ],
            ));
        }
        families
            .into_iter()
            .filter(|(_, _, metrics)| !metrics.is_empty())
            .map(|(i, kind, metrics)| {
                let (name, help, _) = LIVE[i];
                let mut family = MetricFamily::default();
                family.set_name(name.to_owned());
                family.set_help(help.to_owned());
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// Serves `GET /metrics` (and `/`) on `listener` until `shutdown` completes.
pub async fn serve_http<F>(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: F,
) -> Result<(), MetricsError>
where
    F: Future<Output = ()> + Send + 'static,
{
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    async fn scrape(
        axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match metrics.render() {
            Ok(text) => (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(err) => {
                tracing::warn!(error = %crate::error_chain::error_chain(&err), "rendering metrics failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
            }
        }
    }

    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

/// Binds the metrics listener (part of validating the configuration).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn channel_counters_are_read_at_scrape_time() {
        let metrics = Metrics::new().expect("metrics");
        let text = metrics.render().expect("render");
        assert!(!text.contains("s2cs_channel_refused_total"), "{text}");
        let failures = Arc::new(ChannelFailures::default());
        metrics.watch_channel(&failures);
        let text = metrics.render().expect("render");
        for line in [
            "s2cs_channel_established_total 0",
            "s2cs_channel_refused_total{reason=\"certificate\"} 0",
            "s2cs_channel_refused_total{reason=\"bad_proof\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        let updates = Arc::new(KeyUpdates::default());
        metrics.watch_key_updates(&updates);
        updates.record_sent();
        updates.record_sent();
        updates.record_received();
        let text = metrics.render().expect("render");
        for line in [
            "s2cs_channel_key_updates_total{direction=\"sent\"} 2",
            "s2cs_channel_key_updates_total{direction=\"received\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn sessions_by_state_come_from_the_control_hook() {
        let metrics = Metrics::new().expect("metrics");
        let _ = metrics.sources.sessions_by_state.set(Box::new(|| {
            vec![("REQUESTED", 1), ("READY", 0), ("ACTIVE", 2)]
        }));
        let text = metrics.render().expect("render");
        assert!(text.contains("s2cs_sessions{state=\"ACTIVE\"} 2"), "{text}");
        assert!(text.contains("s2cs_sessions{state=\"READY\"} 0"), "{text}");
    }

    #[test]
    fn without_sources_only_the_totals_are_live() {
        let metrics = Metrics::new().expect("metrics");
        let text = metrics.render().expect("render");
        assert!(
            text.contains("s2cs_relayed_bytes_total{direction=\"from_target\"} 0"),
            "{text}"
        );
        assert!(!text.contains("s2cs_xdp_"), "{text}");
        assert!(!text.contains("s2cs_session_bytes_total"), "{text}");
    }
}
