//! A session's view and counters as the proto messages `status`, `list`
//! and `watch` answer with.

use crate::dataplane::SessionCounters;
use crate::proto;
use crate::registry::SessionView;

pub(super) fn view_to_status(v: SessionView, c: Option<SessionCounters>) -> proto::SessionStatus {
    proto::SessionStatus {
        uid: v.uid.to_string(),
        role: v.role.as_str().to_owned(),
        state: v.state.as_str().to_owned(),
        owner: v.owner.0,
        num_conn: i32::try_from(v.num_conn).unwrap_or(i32::MAX),
        rate: v.rate,
        rate_source: v.rate_source.to_string(),
        listeners: v.listeners.iter().map(ToString::to_string).collect(),
        prod_listeners: v.prod_listeners,
        targets: v.targets.iter().map(ToString::to_string).collect(),
        created_unix: v.created_unix,
        counters: c.map(counters_to_proto),
        legacy_secret: v.legacy_secret,
        restore_error: v.restore_error.unwrap_or_default(),
        pinned_peer: c
            .and_then(|c| c.pinned_peer)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    }
}

pub(super) fn counters_to_proto(c: SessionCounters) -> proto::Counters {
    proto::Counters {
        bytes_to_target: c.bytes_to_target,
        bytes_from_target: c.bytes_from_target,
        connections_total: c.connections_total,
        connections_active: c.connections_active,
        udp_datagrams_to_target: c.udp.datagrams_to_target,
        udp_bytes_to_target: c.udp.bytes_to_target,
        udp_datagrams_from_target: c.udp.datagrams_from_target,
        udp_bytes_from_target: c.udp.bytes_from_target,
        udp_flows_total: c.udp.flows_total,
        udp_flows_active: c.udp.flows_active,
        udp_flows_refused: c.udp.flows_refused,
        udp_dropped_oversize: c.udp.dropped_oversize,
        udp_dropped_rate: c.udp.dropped_rate,
        udp_dropped_backlog: c.udp.dropped_backlog,
        udp_max_payload: c.udp.max_payload,
    }
}
