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
