//! How `s2uc status` and `s2uc list` print a session for a person: one
//! line of its state and counters, then its rate cap and where it came
//! from, and what else needs saying (a pending restore, a pinned peer).
//! The `--json` form is [`crate::cli_json`].

/// "none (why)" or "N Mbit/s (from where)"; an older gateway sends no source.
fn rate_cap_line(rate: i32, source: &str) -> String {
    let cap = if rate > 0 {
        format!("{rate} Mbit/s")
    } else {
        "none".to_owned()
    };
    if source.is_empty() {
        cap
    } else {
        format!("{cap} ({source})")
    }
}

pub fn print_status(s: &crate::proto::SessionStatus) {
    let c = s.counters.unwrap_or_default();
    println!(
        "{} role={} state={} owner={} num_conn={} listeners={} targets={} bytes={}/{} conns={} active={}",
        s.uid,
        s.role,
        s.state,
        s.owner,
        s.num_conn,
        s.listeners.join(","),
        s.targets.join(","),
        c.bytes_to_target,
        c.bytes_from_target,
        c.connections_total,
        c.connections_active
    );
    println!("  rate cap: {}", rate_cap_line(s.rate, &s.rate_source));
    if let Some(line) = udp_line(&c) {
        println!("  udp: {line}");
    }
    if !s.restore_error.is_empty() {
        println!("  restore: {}", s.restore_error);
    }
    if !s.pinned_peer.is_empty() {
        println!(
            "  pinned peer: {} (legacy secret: other sources are refused)",
            s.pinned_peer
        );
    }
}

/// The UDP line of `status`: datagrams and bytes each way, flows, drops by
/// reason, the usable payload; None when the session carried no datagram.
pub fn udp_line(c: &crate::proto::Counters) -> Option<String> {
    if c.udp_flows_total == 0 && c.udp_flows_refused == 0 && c.udp_datagrams_to_target == 0 {
        return None;
    }
    let dropped = c.udp_dropped_oversize + c.udp_dropped_rate + c.udp_dropped_backlog;
    let payload = if c.udp_max_payload > 0 {
        format!(", max payload {} bytes", c.udp_max_payload)
    } else {
        String::new()
    };
    Some(format!(
        "datagrams={}/{} bytes={}/{} flows={} active={} refused={} dropped={} (oversize {}, rate {}, backlog {}){payload}",
        c.udp_datagrams_to_target,
        c.udp_datagrams_from_target,
        c.udp_bytes_to_target,
        c.udp_bytes_from_target,
        c.udp_flows_total,
        c.udp_flows_active,
        c.udp_flows_refused,
        dropped,
        c.udp_dropped_oversize,
        c.udp_dropped_rate,
        c.udp_dropped_backlog,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Counters;

    #[test]
    fn the_udp_line_shows_only_for_sessions_with_datagrams() {
        assert_eq!(udp_line(&Counters::default()), None);
        let c = Counters {
            udp_datagrams_to_target: 10,
            udp_bytes_to_target: 14_000,
            udp_datagrams_from_target: 3,
            udp_bytes_from_target: 300,
            udp_flows_total: 1,
            udp_flows_active: 1,
            udp_dropped_oversize: 2,
            udp_dropped_rate: 1,
            udp_max_payload: 1380,
            ..Counters::default()
        };
        assert_eq!(
            udp_line(&c).as_deref(),
            Some(
                "datagrams=10/3 bytes=14000/300 flows=1 active=1 refused=0 dropped=3 \
                 (oversize 2, rate 1, backlog 0), max payload 1380 bytes"
            )
        );
    }
}
