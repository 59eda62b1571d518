//! `s2cs serve --metrics-listen`, end to end: both gateways serve their
//! Prometheus metrics inside their namespace; while a paced stream flows
//! from ProdApp to ConsApp through them, the per-session byte counters move,
//! and once it ends they equal the bytes sent, on both gateways; sessions by
//! state, connections, and control-call latency are there too; released
//! sessions leave their bytes in the process totals.
//!
//! Needs root and the built binaries (`cargo build -p gateway -p control`).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::time::Duration;

use e2e::Node;
use e2e::eventually;
use e2e::stream::StreamSpec;
use support::{METRICS_ADDR, SECS_30, Setup, join, metric, start_consumer, start_producer};

fn bytes(text: &str, uid: &str, direction: &str) -> Option<f64> {
    metric(
        text,
        "s2cs_session_bytes_total",
        &[("session", uid), ("direction", direction)],
    )
}

#[test]
fn byte_counters_move_during_a_stream_and_match_it_after() {
    let flags = ["--metrics-listen", METRICS_ADDR];
    let s = Setup::new(false, &flags, &flags);
    // 8 MB at 16 Mbit/s: about 4 s, long enough to scrape mid-stream.
    let spec = StreamSpec::new(31, 8_000_000);
    let (producer_addr, producer) = start_producer(&s.topo, spec);
    let c = s.connect(&[producer_addr], 16);
    let consumer = start_consumer(&s.topo, c.cons_listeners[0], spec);

    // Mid-stream: the CONS gateway's counter moves with the paced stream.
    // (The PROD gateway's may jump: with the sockmap path it counts bytes as
    // the kernel hands them to the paced WAN socket's queue, which can take
    // the whole stream at once; it must be non-zero before the end.)
    let mut seen = Vec::new();
    eventually(SECS_30, || {
        let text = s.scrape(Node::Gwb);
        let now = bytes(&text, &c.uid, "from_target").ok_or("no series yet")?;
        seen.push(now);
        match seen.as_slice() {
            [.., a, b] if *a > 0.0 && b > a && *b < spec.len as f64 => Ok(()),
            _ => Err("not moving yet"),
        }
    })
    .unwrap_or_else(|e| panic!("gwb: bytes do not move mid-stream ({seen:?}): {e:#}"));
    let prod_mid = bytes(&s.scrape(Node::Gwa), &c.uid, "from_target");
    assert!(
        !consumer.is_finished(),
        "the stream ended before the mid-stream checks; slow it down"
    );
    eprintln!("mid-stream from_target: gwb samples {seen:?}; gwa {prod_mid:?}");
    assert!(
        prod_mid.is_some_and(|v| v > 0.0),
        "gwa: {prod_mid:?} mid-stream"
    );

    join(consumer);
    join(producer);
    // After the stream: exactly the bytes sent, on both gateways.
    for node in [Node::Gwa, Node::Gwb] {
        let text = eventually(Duration::from_secs(10), || {
            let text = s.scrape(node);
            match bytes(&text, &c.uid, "from_target") {
                Some(v) if v == spec.len as f64 => Ok(text),
                other => Err(format!("from_target = {other:?}")),
            }
        })
        .unwrap_or_else(|e| {
            panic!(
                "{node}: byte counter != {} after the stream: {e:#}",
                spec.len
            )
        });
        assert_eq!(bytes(&text, &c.uid, "to_target"), Some(0.0), "{node}");
        assert_eq!(
            metric(&text, "s2cs_sessions", &[("state", "ACTIVE")]),
            Some(1.0),
            "{node}:\n{text}"
        );
        let conns = metric(&text, "s2cs_connections_total", &[]).unwrap_or(0.0);
        assert!(conns >= 1.0, "{node}: no connection counted:\n{text}");
        let updates = metric(
            &text,
            "s2cs_control_call_duration_seconds_count",
            &[("method", "update"), ("code", "ok")],
        );
        assert_eq!(
            updates,
            Some(1.0),
            "{node}: update latency not recorded:\n{text}"
        );
        assert_eq!(
            metric(
                &text,
                "s2cs_auth_failures_total",
                &[("reason", "unauthenticated")]
            ),
            Some(0.0),
            "{node}"
        );
    }

    // Released: the session's series go, its bytes stay in the totals.
    s.release(&s.gwa, &c.uid);
    s.release(&s.gwb, &c.uid);
    for node in [Node::Gwa, Node::Gwb] {
        let text = s.scrape(node);
        assert_eq!(bytes(&text, &c.uid, "from_target"), None, "{node}");
        assert_eq!(
            metric(
                &text,
                "s2cs_relayed_bytes_total",
                &[("direction", "from_target")]
            ),
            Some(spec.len as f64),
            "{node}:\n{text}"
        );
        assert_eq!(
            metric(&text, "s2cs_sessions", &[("state", "ACTIVE")]),
            Some(0.0),
            "{node}"
        );
    }
}
