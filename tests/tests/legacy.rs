//! Sessions of old clients: SciStream's own client asks for no data-channel
//! secret, so the gateways derive it from the session uid, and anyone who
//! knows the uid can compute it. The PROD gateway pins such a session to
//! the first peer gateway that proves the secret and refuses every other
//! source, even one that proves it.
//!
//! ```text
//!   prod ---LAN A--- gwa ====WAN==== gwb ---LAN B--- cons
//!                     ^
//!                     +------ attacker (on the WAN, knows the uid)
//! ```
//!
//! Needs root. Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use control::{SessionId, SessionSecret};
use e2e::stream::{self, StreamSpec};
use e2e::{Deadline, Link, Node, eventually};
use gateway::channel::{self, ChannelConfig, ChannelSettings};
use support::{METRICS_ADDR, PRODUCER_PORT, SECS_30, Setup, join};

#[test]
fn a_legacy_secret_session_is_pinned_to_the_first_peer_gateway_that_proves_it() {
    let s = Setup::new(true, &["--metrics-listen", METRICS_ADDR], &[]);
    let spec = StreamSpec::new(101, 8 * 1024 * 1024);
    // ProdApp: one stream to the first connection, and counts any other.
    let producer_addr = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let listener = s
        .topo
        .tcp_listen(Node::Prod, producer_addr)
        .unwrap_or_else(|e| panic!("{e:#}"));
    listener.set_nonblocking(true).expect("non-blocking");
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let producer = std::thread::spawn(move || {
        let conn = eventually(Duration::from_secs(60), || {
            listener.accept().map(|(c, _)| c)
        })
        .unwrap_or_else(|e| panic!("nobody connected to the producer: {e:#}"));
        count.fetch_add(1, Ordering::Relaxed);
        conn.set_nonblocking(false).expect("blocking");
        stream::send_tcp(&conn, spec, Deadline::after(Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("producer: {e}"));
        // Anyone else who reaches ProdApp in the next seconds is counted.
        let until = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < until {
            if listener.accept().is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let c = s.connect_as_old_client(&[producer_addr]);

    // The peer gateway proves the (derived) secret first: the stream flows.
    let conn = s
        .topo
        .tcp_connect(Node::Cons, c.cons_listeners[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let report = stream::verify_tcp(&conn, spec, Deadline::after(Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("the legitimate stream: {e}"));
    assert_eq!(report.sha256, spec.sha256());
    let gwb_wan = s.topo.addr(Node::Gwb, Link::Wan).to_string();
    let status = s.ask(Node::Gwa, "status", Some(&c.uid));
    assert!(
        status.contains(&format!("pinned peer: {gwb_wan}")),
        "status shows the pinned peer gateway: {status}"
    );

    // The attacker knows the uid, so it knows the secret, and proves it.
    let uid = SessionId::parse(&c.uid).expect("uid");
    let secret = *SessionSecret::legacy_from_uid(&uid).expose();
    let target = c.prod_listeners[0];
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let tls = ChannelConfig::new(ChannelSettings::self_signed(dir.path())).expect("TLS client");
    let proved = s
        .topo
        .block_on_in(Node::Attacker, move || async move {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            channel::connect(tcp, &tls, &target.ip().to_string(), &secret)
                .await
                .map(|channel| {
                    // Hold it a moment: the gateway must not dial ProdApp.
                    std::thread::sleep(Duration::from_secs(2));
                    drop(channel);
                })
                .is_ok()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("attacker: the TLS handshake and the proof exchange completed: {proved}");
    let refused = eventually(SECS_30, || {
        match s.metric(
            Node::Gwa,
            "s2cs_channel_refused_total",
            &[("reason", "not_pinned_peer")],
        ) {
            Some(n) if n >= 1.0 => Ok(n),
            other => Err(format!("not_pinned_peer refusals: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("the refusal is counted: {e:#}"));
    eprintln!("not_pinned_peer refusals: {refused}");
    join(producer);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "only the pinned peer's connection reached ProdApp"
    );
    // The pinned peer still gets through after the attempt.
    let status = s.ask(Node::Gwa, "status", Some(&c.uid));
    assert!(
        status.contains(&format!("pinned peer: {gwb_wan}")),
        "{status}"
    );
}
