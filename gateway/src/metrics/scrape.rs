//! The scrape-time collector of live values ([`Live`]): the catalogue of
//! its families ([`LIVE`]: name, help, labels) and the samples read from
//! their owners at each scrape (sessions by state, per-session bytes,
//! connections and UDP counters, relayed totals, XDP guard, kernel relay,
//! data channel, key updates).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use super::{Finished, MetricsError, Sources};

/// The scrape-time collector of live values.
pub(super) struct Live {
    sources: Arc<Sources>,
    finished: Arc<Finished>,
    descs: Vec<Desc>,
}

/// (name, help, labels) of every live family.
pub(super) const LIVE: [(&str, &str, &[&str]); 19] = [
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
    pub(super) fn new(
        sources: Arc<Sources>,
        finished: Arc<Finished>,
    ) -> Result<Self, MetricsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelFailures, KeyUpdates};
    use crate::metrics::Metrics;

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
