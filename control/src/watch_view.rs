//! How `s2uc watch` shows a session's live counters. On a terminal, one
//! status line redrawn in place (carriage return and an ANSI "erase line");
//! otherwise (a pipe, a file, a log collector) one plain line per event, with
//! no escape sequences and no carriage returns. The throughput is computed
//! from the byte counters of two successive events. An event without
//! counters (the data plane no longer runs the session, e.g. the last event
//! after a release) shows the last totals seen, with no open connection,
//! rather than zeros. A session that carried UDP datagrams gets a second
//! part, `udp:`, with datagrams each way, open/total flows, drops and the
//! datagram throughput.

use crate::proto::{Counters, WatchEvent};

/// ANSI: return to the start of the line and erase it.
const REDRAW: &str = "\r\x1b[2K";

/// Renders watch events for one output.
#[derive(Debug)]
pub struct WatchView {
    terminal: bool,
    /// (unix millis, total TCP bytes, total UDP bytes) of the previous event.
    last: Option<(u64, u64, u64)>,
    /// The last counters an event carried.
    counters: Option<Counters>,
}

impl WatchView {
    /// A view for a terminal (`terminal`) or for plain line output.
    pub fn new(terminal: bool) -> Self {
        WatchView {
            terminal,
            last: None,
            counters: None,
        }
    }

    /// The status text of `ev` (no line ending, no escapes): uid, state,
    /// byte counters, open/total connections and the throughput since the
    /// previous event.
    pub fn line(&mut self, ev: &WatchEvent) -> String {
        let c = match (ev.counters, self.counters) {
            (Some(c), _) => c,
            (None, Some(last)) => Counters {
                connections_active: 0,
                udp_flows_active: 0,
                ..last
            },
            (None, None) => Counters::default(),
        };
        self.counters = Some(c);
        let total = c.bytes_to_target.saturating_add(c.bytes_from_target);
        let udp_total = c
            .udp_bytes_to_target
            .saturating_add(c.udp_bytes_from_target);
        let (mbps, udp_mbps) = match self.last {
            Some((t0, b0, u0)) if ev.unix_millis > t0 => {
                let secs = (ev.unix_millis - t0) as f64 / 1000.0;
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 * 8.0 / secs / 1e6;
                (rate(total, b0), rate(udp_total, u0))
            }
            _ => (0.0, 0.0),
        };
        self.last = Some((ev.unix_millis, total, udp_total));
        let mut line = format!(
            "{} {} to_target={} from_target={} conns={}/{} {:.1} Mbit/s",
            ev.uid,
            ev.state,
            c.bytes_to_target,
            c.bytes_from_target,
            c.connections_active,
            c.connections_total,
            mbps
        );
        if c.udp_flows_total > 0 || c.udp_flows_refused > 0 || c.udp_datagrams_to_target > 0 {
            let dropped = c.udp_dropped_oversize + c.udp_dropped_rate + c.udp_dropped_backlog;
            line.push_str(&format!(
                " | udp: datagrams={}/{} flows={}/{} dropped={} {:.1} Mbit/s",
                c.udp_datagrams_to_target,
                c.udp_datagrams_from_target,
                c.udp_flows_active,
                c.udp_flows_total,
                dropped,
                udp_mbps
            ));
        }
        line
    }

    /// What to write for `ev`: the line redrawn in place on a terminal, a
    /// plain line ending in a newline otherwise.
    pub fn render(&mut self, ev: &WatchEvent) -> String {
        let line = self.line(ev);
        if self.terminal {
            format!("{REDRAW}{line}")
        } else {
            format!("{line}\n")
        }
    }

    /// What to write when the stream ends: a terminal's status line still
    /// needs its newline.
    pub fn finish(&self) -> &'static str {
        if self.terminal && self.last.is_some() {
            "\n"
        } else {
            ""
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(millis: u64, to: u64, from: u64, active: u64, total: u64) -> WatchEvent {
        WatchEvent {
            uid: "u-1".into(),
            state: "ACTIVE".into(),
            counters: Some(Counters {
                bytes_to_target: to,
                bytes_from_target: from,
                connections_total: total,
                connections_active: active,
                ..Counters::default()
            }),
            unix_millis: millis,
        }
    }

    #[test]
    fn plain_lines_have_no_escapes_and_one_newline_each() {
        let mut v = WatchView::new(false);
        let a = v.render(&event(1_000, 0, 0, 0, 0));
        let b = v.render(&event(2_000, 500_000, 500_000, 1, 2));
        assert_eq!(
            a,
            "u-1 ACTIVE to_target=0 from_target=0 conns=0/0 0.0 Mbit/s\n"
        );
        // 1 MB in 1 s is 8 Mbit/s.
        assert_eq!(
            b,
            "u-1 ACTIVE to_target=500000 from_target=500000 conns=1/2 8.0 Mbit/s\n"
        );
        for s in [&a, &b] {
            assert!(!s.contains('\x1b') && !s.contains('\r'), "{s:?}");
            assert_eq!(s.matches('\n').count(), 1, "{s:?}");
        }
        assert_eq!(v.finish(), "");
    }

    #[test]
    fn terminal_redraws_one_line_in_place() {
        let mut v = WatchView::new(true);
        assert_eq!(v.finish(), "", "nothing drawn, nothing to end");
        let a = v.render(&event(1_000, 10, 20, 1, 1));
        assert_eq!(
            a,
            "\r\x1b[2Ku-1 ACTIVE to_target=10 from_target=20 conns=1/1 0.0 Mbit/s"
        );
        let b = v.render(&event(1_500, 10, 250_020, 1, 1));
        assert!(b.starts_with(REDRAW) && !b.contains('\n'), "{b:?}");
        // 250 kB in 0.5 s is 4 Mbit/s.
        assert!(b.ends_with(" 4.0 Mbit/s"), "{b:?}");
        assert_eq!(v.finish(), "\n");
    }

    #[test]
    fn an_event_without_counters_keeps_the_last_totals() {
        let mut v = WatchView::new(false);
        v.line(&event(1_000, 100, 0, 0, 1));
        // Same timestamp: no division by zero, no rate.
        assert!(v.line(&event(1_000, 200, 0, 0, 1)).ends_with(" 0.0 Mbit/s"));
        let none = WatchEvent {
            uid: "u-1".into(),
            state: "RELEASED".into(),
            counters: None,
            unix_millis: 3_000,
        };
        assert_eq!(
            v.line(&none),
            "u-1 RELEASED to_target=200 from_target=0 conns=0/1 0.0 Mbit/s"
        );
        assert_eq!(
            WatchView::new(false).line(&none),
            "u-1 RELEASED to_target=0 from_target=0 conns=0/0 0.0 Mbit/s"
        );
    }

    #[test]
    fn a_session_with_datagrams_shows_its_udp_part_and_rate() {
        let mut v = WatchView::new(false);
        let udp = |millis: u64, datagrams: u64, bytes: u64, active: u64| WatchEvent {
            uid: "u-1".into(),
            state: "ACTIVE".into(),
            counters: Some(Counters {
                udp_datagrams_to_target: datagrams,
                udp_datagrams_from_target: datagrams / 2,
                udp_bytes_to_target: bytes,
                udp_flows_total: 1,
                udp_flows_active: active,
                udp_dropped_oversize: 2,
                udp_dropped_rate: 1,
                ..Counters::default()
            }),
            unix_millis: millis,
        };
        v.line(&udp(1_000, 10, 1_000, 1));
        // 2 MB of datagrams in 2 s is 8 Mbit/s; TCP moved nothing.
        assert_eq!(
            v.line(&udp(3_000, 2_010, 2_001_000, 1)),
            "u-1 ACTIVE to_target=0 from_target=0 conns=0/0 0.0 Mbit/s \
             | udp: datagrams=2010/1005 flows=1/1 dropped=3 8.0 Mbit/s"
        );
        // After the session ends no flow is open any more.
        let none = WatchEvent {
            uid: "u-1".into(),
            state: "RELEASED".into(),
            counters: None,
            unix_millis: 4_000,
        };
        assert!(
            v.line(&none)
                .ends_with("| udp: datagrams=2010/1005 flows=0/1 dropped=3 0.0 Mbit/s"),
        );
        // A TCP-only session shows no UDP part.
        assert!(
            !WatchView::new(false)
                .line(&event(1, 1, 1, 1, 1))
                .contains("udp")
        );
    }
}
