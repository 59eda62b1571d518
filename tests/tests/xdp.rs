//! The XDP guard of the data ports, end to end.
//!
//! ```text
//!   prod --LAN A-- gwa ==WAN bridge== gwb --LAN B-- cons
//!                  10.2.0.1   |       10.2.0.2
//!                  s2cs PROD  |       s2cs CONS
//!                  --xdp-iface wan
//!                  --xdp-peer 10.2.0.2
//!                          attacker 10.2.0.66
//! ```
//!
//! gwa's `s2cs serve` attaches the guard to its WAN interface and allows
//! only the peer gateway (gwb) on live data ports. While a session streams,
//! gwb's connection to the PROD listener works; the attacker's TCP connect to
//! the same live port gets no answer at all (it times out: no SYN-ACK, no
//! RST), while it reaches the control port and gets a normal RST from an
//! unrelated closed port; the guard's drop counter (scraped from gwa's
//! metrics) moves. After release, the port drops gwb too.
//!
//! Needs root and the built binaries (`cargo build -p gateway -p control`).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use e2e::stream::StreamSpec;
use e2e::{Link, Node, Topology};
use support::{METRICS_ADDR, Setup, join, metric, start_consumer, start_producer};

/// What a TCP connect from `from` to `to` does within `timeout`.
fn connect_outcome(
    topo: &Topology,
    from: Node,
    to: SocketAddr,
    timeout: Duration,
) -> Result<(), ErrorKind> {
    topo.run_in(from, || TcpStream::connect_timeout(&to, timeout))
        .expect("entering the namespace")
        .map(drop)
        .map_err(|e| e.kind())
}

fn dropped(setup: &Setup) -> f64 {
    let text = setup.scrape(Node::Gwa);
    metric(
        &text,
        "s2cs_xdp_dropped_packets_total",
        &[("iface", "wan"), ("reason", "not_allowed")],
    )
    .unwrap_or_else(|| panic!("no XDP drop counter in gwa's metrics:\n{text}"))
}

#[test]
fn guard_drops_strangers_on_live_data_ports_and_everyone_after_release() {
    let gwb_wan = {
        // The address plan is fixed (see e2e::netns): gwb is .2 on the WAN.
        "10.2.0.2"
    };
    let s = Setup::new(
        true,
        &[
            "--xdp-iface",
            "wan",
            "--xdp-peer",
            gwb_wan,
            "--metrics-listen",
            METRICS_ADDR,
        ],
        &[],
    );
    assert_eq!(
        s.topo.addr(Node::Gwb, Link::Wan).to_string(),
        gwb_wan,
        "address plan changed"
    );
    let mode_line = s
        .gwa
        .stdout()
        .lines()
        .find(|l| l.contains("XDP guard on"))
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!("gwa: {mode_line}");
    assert!(
        mode_line.contains("native") || mode_line.contains("generic"),
        "{mode_line}"
    );
    let before = dropped(&s);

    // A live session with a paced stream (8 MB at 16 Mbit/s: ~4 s), so the
    // data port is in use while the attacker knocks.
    let spec = StreamSpec::new(21, 8_000_000);
    let (producer_addr, producer) = start_producer(&s.topo, spec);
    let c = s.connect(&[producer_addr], 16);
    let data_port = c.prod_listeners[0];
    eprintln!("session {}: PROD data port {data_port}", c.uid);
    let consumer = start_consumer(&s.topo, c.cons_listeners[0], spec);

    // The attacker: no answer at all from the live data port...
    let attacker = connect_outcome(&s.topo, Node::Attacker, data_port, Duration::from_secs(2));
    assert_eq!(
        attacker,
        Err(ErrorKind::TimedOut),
        "the attacker's connect to the live data port {data_port} must time out (dropped by XDP), got {attacker:?}"
    );
    // ...nor from a data port without a session...
    let idle_port = SocketAddr::new(data_port.ip(), 5199);
    assert_eq!(
        connect_outcome(&s.topo, Node::Attacker, idle_port, Duration::from_secs(1)),
        Err(ErrorKind::TimedOut),
        "an unused data port must drop too"
    );
    // ...but the control port answers, and a closed port outside the range
    // resets as usual.
    assert_eq!(
        connect_outcome(
            &s.topo,
            Node::Attacker,
            s.gwa.control,
            Duration::from_secs(2)
        ),
        Ok(()),
        "the control port must stay reachable"
    );
    let unrelated = SocketAddr::new(data_port.ip(), 6000);
    assert_eq!(
        connect_outcome(&s.topo, Node::Attacker, unrelated, Duration::from_secs(2)),
        Err(ErrorKind::ConnectionRefused),
        "a closed port outside the range must answer with RST"
    );
    let after = dropped(&s);
    eprintln!("XDP not_allowed drops: {before} before, {after} after the attacker");
    assert!(
        after >= before + 2.0,
        "drop counter did not move: {before} -> {after}"
    );

    // The peer gateway's stream went through in full.
    join(consumer);
    join(producer);
    let text = s.scrape(Node::Gwa);
    let allowed = metric(&text, "s2cs_xdp_allowed_packets_total", &[("iface", "wan")])
        .unwrap_or_else(|| panic!("no allowed counter:\n{text}"));
    assert!(
        allowed > 0.0,
        "the peer's packets were not counted as allowed"
    );
    assert_eq!(
        metric(&text, "s2cs_xdp_allow_entries", &[("iface", "wan")]),
        Some(1.0),
        "one allow entry (port, peer) while the session lives:\n{text}"
    );

    // After release the port drops everyone, the peer gateway included.
    s.release(&s.gwa, &c.uid);
    s.release(&s.gwb, &c.uid);
    let text = s.scrape(Node::Gwa);
    assert_eq!(
        metric(&text, "s2cs_xdp_allow_entries", &[("iface", "wan")]),
        Some(0.0),
        "allow entries left after release:\n{text}"
    );
    let peer = connect_outcome(&s.topo, Node::Gwb, data_port, Duration::from_secs(2));
    assert_eq!(
        peer,
        Err(ErrorKind::TimedOut),
        "after release the peer gateway must be dropped too (no RST), got {peer:?}"
    );
    assert!(
        dropped(&s) > after,
        "the peer's SYNs after release were not counted"
    );
}
