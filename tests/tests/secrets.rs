//! No secret in logs or metrics, at the most verbose log level: two
//! gateways logging at `debug`, a session with a random data-channel secret
//! and one of an old client (its secret derived from the uid), a stream
//! through each, a refused connection with a wrong secret, `status`/`list`
//! from the client. Every gateway log and client output is scanned when it
//! ends (see `e2e::leaks`, which does so for every e2e suite); this test
//! adds the debug level and the metrics endpoint, and checks here that the
//! secrets the gateways hold are none of what they printed or serve.
//!
//! Needs root. Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::time::Duration;

use control::{SessionId, SessionSecret};
use e2e::leaks::{Secret, scan, secrets_in};
use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Link, Node, Topology};
use support::{METRICS_ADDR, PRODUCER_PORT, SECS_30, Setup, accept};

#[test]
fn no_secret_appears_in_debug_logs_or_metrics() {
    let topo = Topology::builder()
        .attacker(true)
        .build()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let metrics = vec!["--metrics-listen".to_owned(), METRICS_ADDR.to_owned()];
    let s = Setup::start_logging(topo, "debug", metrics.clone(), metrics);
    let producer_addr = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = s
        .topo
        .tcp_listen(Node::Prod, producer_addr)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let fresh = s.connect(&[producer_addr], 0);
    let old = s.connect_as_old_client(&[producer_addr]);
    for (i, c) in [&fresh, &old].into_iter().enumerate() {
        let spec = StreamSpec::new(500 + i as u64, 2 * 1024 * 1024);
        let consumer = s
            .topo
            .tcp_connect(Node::Cons, c.cons_listeners[0], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let producer = accept(&listener, Deadline::after(SECS_30));
        let sender = std::thread::spawn(move || {
            stream::send_tcp(&producer, spec, Deadline::after(SECS_30))
                .unwrap_or_else(|e| panic!("producer: {e}"));
        });
        let report = stream::verify_tcp(&consumer, spec, Deadline::after(SECS_30))
            .unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(report.sha256, spec.sha256());
        sender.join().expect("producer thread");
        s.ask(Node::Gwb, "status", Some(&c.uid));
    }
    s.ask(Node::Gwa, "list", None);
    // A stranger with the wrong secret: refused (and logged at debug).
    let target = old.prod_listeners[0];
    let _ = s.topo.run_in(Node::Attacker, move || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).map(|mut c| {
            use std::io::Write as _;
            let _ = c.write_all(b"\x16\x03\x01\x00\x05hello");
            std::thread::sleep(Duration::from_millis(300));
        })
    });

    // What the gateways hold: keys, persisted session secrets, and the
    // old client's derived secret.
    let mut known = secrets_in(&s.gwa.state);
    known.extend(secrets_in(&s.gwb.state));
    let uid = SessionId::parse(&old.uid).expect("uid");
    known.push(Secret::bytes(
        "the old client's derived session secret",
        SessionSecret::legacy_from_uid(&uid).expose(),
    ));
    assert!(
        known.len() >= 6,
        "two keys per gateway and the session secrets: found {}",
        known.len()
    );
    for node in [Node::Gwa, Node::Gwb] {
        let gateway = s.gateway(node);
        let log = format!("{}{}", gateway.stdout(), gateway.log());
        assert!(log.contains("DEBUG"), "{node} logs at debug level:\n{log}");
        let found = scan(&log, &known);
        assert!(found.is_empty(), "secrets in the {node} log: {found:?}");
        let exposed = s.scrape(node);
        let found = scan(&exposed, &known);
        assert!(found.is_empty(), "secrets in the {node} metrics: {found:?}");
    }
}
