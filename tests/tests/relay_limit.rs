//! The gateway-wide budget of relayed connections
//! (`--max-relayed-connections`), on each side of a TLS channel: with the
//! budget in use, a new connection is reset at once (its consumer reads no
//! byte, ProdApp never sees it), the refusal is counted in
//! `s2cs_connections_refused_total{reason="relay_limit"}` on the refusing
//! gateway, the connections already relayed go on intact, and once one of
//! them ends a new connection streams again.
//!
//! Needs root (namespaces). Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::io::Read as _;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Link, Node, eventually};
use support::{METRICS_ADDR, PRODUCER_PORT, SECS_30, Setup, accept};

const LIMIT: &str = "2";
const ROOMY: &str = "64";

/// Two connections held open, a third refused by the gateway whose budget
/// is 2, then one closed and a fourth streams.
fn refused_at_the_limit(refusing: Node) {
    let limit = |node: Node| {
        vec![
            "--max-relayed-connections",
            if node == refusing { LIMIT } else { ROOMY },
            "--metrics-listen",
            METRICS_ADDR,
        ]
    };
    let s = Setup::new(false, &limit(Node::Gwa), &limit(Node::Gwb));
    let producer_addr = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = s
        .topo
        .tcp_listen(Node::Prod, producer_addr)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let c = s.connect(&[producer_addr], 0);
    let cons_listener = c.cons_listeners[0];
    let connect = || {
        s.topo
            .tcp_connect(Node::Cons, cons_listener, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"))
    };

    // Two connections relayed end to end and held open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let consumer = connect();
        let producer = accept(&listener, Deadline::after(SECS_30));
        held.push((consumer, producer));
    }
    eventually(SECS_30, || {
        match s.metric(refusing, "s2cs_connections_active", &[]) {
            Some(n) if n >= 2.0 => Ok(()),
            other => Err(format!("active connections: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.metric(refusing, "s2cs_connections_limit", &[]), Some(2.0));

    // The third: reset at once, no byte, nothing reaches ProdApp. The reset
    // can come so fast that the connect call itself reports it.
    match s
        .topo
        .tcp_connect(Node::Cons, cons_listener, Duration::from_secs(5))
    {
        Ok(mut refused) => {
            refused
                .set_read_timeout(Some(SECS_30))
                .expect("read timeout");
            let mut buf = [0u8; 64];
            match refused.read(&mut buf) {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("a connection over the limit read {n} bytes"),
            }
        }
        Err(err) => {
            let reset = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            });
            assert!(
                reset,
                "a connection over the limit failed otherwise than by a reset: {err:#}"
            );
        }
    }
    eventually(SECS_30, || {
        match s.metric(
            refusing,
            "s2cs_connections_refused_total",
            &[("reason", "relay_limit")],
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("refused at the limit: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    listener.set_nonblocking(true).expect("non-blocking");
    assert!(
        listener.accept().is_err(),
        "a connection over the limit reached ProdApp"
    );
    let log = s.gateway(refusing).log();
    assert!(
        log.contains("the gateway relays its maximum number of connections"),
        "{log}"
    );

    // The held connections still carry bytes both ways.
    for (i, (consumer, producer)) in held.iter().enumerate() {
        let spec = StreamSpec::new(200 + i as u64, 1024 * 1024);
        let mut producer = producer.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            stream::send(&mut producer, spec, Deadline::after(SECS_30))
                .unwrap_or_else(|e| panic!("producer {i}: {e}"));
        });
        consumer
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let report = stream::verify_exact(&mut &*consumer, spec, Deadline::after(SECS_30))
            .unwrap_or_else(|e| panic!("consumer {i}: {e}"));
        assert_eq!(report.sha256, spec.sha256());
        sender.join().expect("producer thread");
    }

    // One ends; a new connection is relayed again.
    let (consumer, producer) = held.remove(0);
    consumer.shutdown(Shutdown::Both).expect("shutdown");
    producer.shutdown(Shutdown::Both).expect("shutdown");
    drop((consumer, producer));
    eventually(SECS_30, || {
        match s.metric(refusing, "s2cs_connections_active", &[]) {
            Some(n) if n <= 1.0 => Ok(()),
            other => Err(format!("active connections: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let spec = StreamSpec::new(300, 4 * 1024 * 1024);
    let consumer: TcpStream = connect();
    let producer = accept(&listener, Deadline::after(SECS_30));
    let sender = std::thread::spawn(move || {
        stream::send_tcp(&producer, spec, Deadline::after(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("producer: {e}"));
    });
    let report = stream::verify_tcp(&consumer, spec, Deadline::after(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("the stream after a slot came free: {e}"));
    assert_eq!(report.sha256, spec.sha256());
    sender.join().expect("producer thread");
}

#[test]
fn the_cons_gateway_resets_lan_connections_over_its_limit() {
    refused_at_the_limit(Node::Gwb);
}

#[test]
fn the_prod_gateway_resets_authenticated_connections_over_its_limit() {
    refused_at_the_limit(Node::Gwa);
}
