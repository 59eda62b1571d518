//! UDP through two gateways, as SciStream's Nginx backend relays it: ConsApp
//! sends datagrams to its CONS gateway's listener port, they reach ProdApp's
//! target port, and ProdApp's replies come back to ConsApp's address.
//!
//! ```text
//!   prod ---LAN A--- gwa ====WAN==== gwb ---LAN B--- cons
//!                     ^
//!                     +------ attacker (on the WAN)
//! ```
//!
//! Every datagram carries a stream tag, a sequence number and a SHA-256
//! (`e2e::datagram`): both applications check that none is corrupted and
//! none is a stranger's (another stream, the attacker's), and count loss
//! against what was sent. In the default (encrypted) mode, an attacker on
//! the WAN sends datagrams to the session's live port and runs a QUIC
//! handshake with a wrong secret: nothing reaches ProdApp, and the refusal
//! is counted. Needs root. Every wait is bounded.
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::datagram::{self, Tally};
use e2e::{Deadline, Link, Node, eventually};
use gateway::channel::quic::QuicChannel;
use gateway::channel::{ChannelConfig, ChannelSettings};
use support::{METRICS_ADDR, PRODUCER_PORT, SECS_30, Setup, join};

/// Stream tags: ConsApp to ProdApp, ProdApp's replies, the attacker's.
const UP: u64 = 0x5550;
const DOWN: u64 = 0x444f;
const ATTACK: u64 = 0xbad;
/// Datagrams ConsApp sends.
const COUNT: u64 = 3000;

/// The size of datagram `seq`: 48 to 1,200 bytes (within what a QUIC
/// connection carries before MTU discovery).
fn size(seq: u64) -> usize {
    datagram::OVERHEAD + (seq as usize * 7919) % (1200 - datagram::OVERHEAD + 1)
}

/// ProdApp: answers every intact datagram of stream UP with the datagram
/// of the same sequence number in stream DOWN, until `stop`; returns what
/// it received.
fn start_prod_app(
    s: &Setup,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, std::thread::JoinHandle<Tally>) {
    let addr = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let socket = s
        .topo
        .run_in(Node::Prod, move || UdpSocket::bind(addr))
        .expect("entering prod")
        .unwrap_or_else(|e| panic!("binding UDP {addr} in prod: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    datagram::big_buffers(&socket).expect("ProdApp's buffers");
    let handle = std::thread::spawn(move || {
        let mut tally = Tally::default();
        let mut buf = vec![0u8; 65_536];
        let until = Deadline::after(Duration::from_secs(240));
        while !stop.load(Ordering::Relaxed) && !until.expired() {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if let Some(seq) = tally.add(UP, &buf[..n]) {
                let _ = socket.send_to(&datagram::encode(DOWN, seq, size(seq)), from);
            }
        }
        tally
    });
    (addr, handle)
}

/// ConsApp: sends COUNT datagrams of stream UP to `to`, paced, and tallies
/// the replies; returns them and who they came from.
fn run_cons_app(s: &Setup, to: SocketAddr) -> (Tally, std::collections::BTreeSet<SocketAddr>) {
    run_cons_app_from(s, to, 0)
}

/// [`run_cons_app`] from UDP port `port` of ConsApp (0: any).
fn run_cons_app_from(
    s: &Setup,
    to: SocketAddr,
    port: u16,
) -> (Tally, std::collections::BTreeSet<SocketAddr>) {
    let from = SocketAddr::new(s.topo.addr(Node::Cons, Link::LanB), port);
    let socket = s
        .topo
        .run_in(Node::Cons, move || UdpSocket::bind(from))
        .expect("entering cons")
        .unwrap_or_else(|e| panic!("binding UDP in cons: {e}"));
    datagram::big_buffers(&socket).expect("ConsApp's buffers");
    let sender = socket.try_clone().expect("clone");
    let send = std::thread::spawn(move || {
        for seq in 0..COUNT {
            sender
                .send_to(&datagram::encode(UP, seq, size(seq)), to)
                .unwrap_or_else(|e| panic!("ConsApp send {seq}: {e}"));
            if seq % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let replies = datagram::receive(
        &socket,
        DOWN,
        COUNT,
        Duration::from_secs(5),
        Deadline::after(Duration::from_secs(90)),
    );
    join(send);
    replies
}

/// Loss within what an unimpaired veth WAN may lose under load (UDP
/// promises nothing; a healthy relay loses next to none).
fn assert_delivery(what: &str, tally: &Tally, sent: u64) {
    let lost = tally.lost(sent);
    eprintln!(
        "{what}: {} of {sent} arrived, {lost} lost, {} duplicates",
        tally.seqs.len(),
        tally.duplicates
    );
    assert_eq!(tally.corrupt, 0, "{what}: corrupted datagrams");
    assert_eq!(tally.strangers, 0, "{what}: datagrams of another stream");
    assert!(lost * 10 <= sent, "{what}: {lost} of {sent} lost");
}

/// The number after `key` in a status line ("dropped=3 (oversize 2, ...").
fn number_after(text: &str, key: &str) -> u64 {
    text.split(key)
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
}

#[test]
fn datagrams_cross_the_encrypted_channel_both_ways_and_no_stranger_reaches_prodapp() {
    let s = Setup::new(true, &["--metrics-listen", METRICS_ADDR], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    let c = s.connect(&[producer], 0);
    let (target, cons_port) = (c.prod_listeners[0], c.cons_listeners[0]);

    let (replies, repliers) = run_cons_app(&s, cons_port);
    assert_delivery("replies at ConsApp", &replies, COUNT);
    assert_eq!(
        repliers.into_iter().collect::<Vec<_>>(),
        vec![cons_port],
        "replies come from the port ConsApp sent to"
    );

    // An oversize datagram is dropped and counted, not truncated.
    let big = datagram::encode(UP, COUNT + 1, 20_000);
    let from = SocketAddr::new(s.topo.addr(Node::Cons, Link::LanB), 0);
    s.topo
        .run_in(Node::Cons, move || {
            let socket = UdpSocket::bind(from)?;
            socket.send_to(&big, cons_port)
        })
        .expect("entering cons")
        .expect("sending an oversize datagram");

    // The attacker: datagrams to the live WAN port, then a QUIC handshake
    // that cannot prove the secret.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let tls = ChannelConfig::new(ChannelSettings::self_signed(dir.path())).expect("TLS config");
    let quic = QuicChannel::new(&tls).expect("QUIC config");
    let attacker_from = SocketAddr::new(s.topo.addr(Node::Attacker, Link::Wan), 0);
    let proved = s
        .topo
        .block_on_in(Node::Attacker, move || async move {
            let raw = tokio::net::UdpSocket::bind(attacker_from)
                .await
                .expect("bind");
            for seq in 0..200 {
                let _ = raw
                    .send_to(&datagram::encode(ATTACK, seq, 1000), target)
                    .await;
            }
            let endpoint = quic
                .client_endpoint(attacker_from)
                .expect("attacker's endpoint");
            let name = target.ip().to_string();
            let outcome = quic
                .connect(&endpoint, target, &name, &[0x42; 32], None)
                .await;
            if let Ok((channel, _)) = &outcome {
                for seq in 0..50u64 {
                    let d = datagram::encode(ATTACK, seq, 500);
                    let _ = channel.conn.send_datagram(d.into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcome.is_ok()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!proved, "a wrong secret must not pass the proof");
    let refused = eventually(SECS_30, || {
        match s.metric(
            Node::Gwa,
            "s2cs_channel_refused_total",
            &[("reason", "bad_proof")],
        ) {
            Some(n) if n >= 1.0 => Ok(n),
            other => Err(format!("bad_proof refusals: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("the refused QUIC proof is counted: {e:#}"));
    eprintln!("bad_proof refusals at gwa: {refused}");

    // The counters say what happened, on both gateways.
    let status = eventually(SECS_30, || {
        let status = s.ask(Node::Gwb, "status", Some(&c.uid));
        if status.contains("oversize 1") {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .unwrap_or_else(|e| panic!("the CONS gateway counts the oversize datagram: {e:#}"));
    eprintln!("{status}");
    assert!(
        number_after(&status, "datagrams=") >= COUNT * 9 / 10,
        "{status}"
    );
    assert!(number_after(&status, "max payload ") >= 1200, "{status}");
    let prod_status = s.ask(Node::Gwa, "status", Some(&c.uid));
    assert!(number_after(&prod_status, "refused=") >= 1, "{prod_status}");
    let relayed = s
        .metric(
            Node::Gwa,
            "s2cs_session_udp_datagrams_total",
            &[("direction", "to_target")],
        )
        .unwrap_or_else(|| panic!("no UDP datagram metric:\n{}", s.scrape(Node::Gwa)));
    assert!(relayed >= (COUNT * 9 / 10) as f64, "{relayed}");

    stop.store(true, Ordering::Relaxed);
    let at_prod = join(prod_app);
    assert_delivery("datagrams at ProdApp", &at_prod, COUNT);
    assert!(
        !at_prod.seqs.contains(&(COUNT + 1)),
        "the oversize datagram was dropped, not delivered"
    );

    // After release both ports are closed for UDP too: nothing is relayed.
    s.release(&s.gwb, &c.uid);
    s.release(&s.gwa, &c.uid);
    let gone = s.ask(Node::Gwb, "status", Some(&c.uid));
    assert!(!gone.contains("udp:"), "{gone}");
}

#[test]
fn datagrams_cross_a_plain_channel_both_ways() {
    let s = Setup::new(false, &["--channel", "plain"], &["--channel", "plain"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    let c = s.connect(&[producer], 0);
    let (replies, repliers) = run_cons_app(&s, c.cons_listeners[0]);
    assert_delivery("replies at ConsApp", &replies, COUNT);
    assert_eq!(repliers.len(), 1, "{repliers:?}");
    stop.store(true, Ordering::Relaxed);
    assert_delivery("datagrams at ProdApp", &join(prod_app), COUNT);
    let status = s.ask(Node::Gwa, "status", Some(&c.uid));
    assert!(
        number_after(&status, "datagrams=") >= COUNT * 9 / 10,
        "{status}"
    );
}

#[test]
fn after_the_proof_plaintext_datagrams_are_forwarded_by_the_kernel_for_the_pinned_peer_only() {
    let topo = e2e::Topology::builder()
        .attacker(true)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
    let flags = |metrics: bool| {
        let mut flags = vec!["--channel".to_owned(), "plaintext-after-auth".to_owned()];
        if metrics {
            flags.extend(["--metrics-listen".to_owned(), METRICS_ADDR.to_owned()]);
        }
        flags
    };
    let s = Setup::start_logging(topo, "info,gateway::udp=debug", flags(true), flags(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    let c = s.connect(&[producer], 0);
    let target = c.prod_listeners[0];

    const CONS_PORT: u16 = 40_000;
    let (replies, repliers) = run_cons_app_from(&s, c.cons_listeners[0], CONS_PORT);
    assert_delivery("replies at ConsApp", &replies, COUNT);
    assert_eq!(
        repliers.into_iter().collect::<Vec<_>>(),
        vec![c.cons_listeners[0]],
        "replies come from the port ConsApp sent to"
    );
    for gateway in [&s.gwa, &s.gwb] {
        let log = gateway.log();
        assert!(
            log.contains("forwarded by the kernel"),
            "the flow is forwarded by the kernel on {:?}:\n{log}",
            gateway.node
        );
    }

    // The attacker sends plain datagrams of the stream's own format to the
    // live port: they come from an address that proved nothing.
    let attacker_from = SocketAddr::new(s.topo.addr(Node::Attacker, Link::Wan), 0);
    s.topo
        .run_in(Node::Attacker, move || -> std::io::Result<()> {
            let socket = UdpSocket::bind(attacker_from)?;
            for seq in 0..200 {
                socket.send_to(&datagram::encode(ATTACK, seq, 800), target)?;
            }
            Ok(())
        })
        .expect("entering the attacker")
        .expect("the attacker sends");

    // The kernel's counters reach status (read every half second).
    let status = eventually(SECS_30, || {
        let status = s.ask(Node::Gwa, "status", Some(&c.uid));
        if status.contains("udp: datagrams=")
            && number_after(&status, "udp: datagrams=") >= COUNT * 9 / 10
        {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .unwrap_or_else(|e| panic!("the PROD gateway counts the kernel's datagrams: {e:#}"));
    eprintln!("{status}");

    stop.store(true, Ordering::Relaxed);
    let at_prod = join(prod_app);
    assert_delivery("datagrams at ProdApp", &at_prod, COUNT);

    // After release the kernel forwards nothing more for the flow: the
    // same sender, to the same port, reaches no one.
    s.release(&s.gwb, &c.uid);
    s.release(&s.gwa, &c.uid);
    let prod = s
        .topo
        .run_in(Node::Prod, move || UdpSocket::bind(producer))
        .expect("entering prod")
        .expect("ProdApp binds again");
    let cons_port = c.cons_listeners[0];
    let from = SocketAddr::new(s.topo.addr(Node::Cons, Link::LanB), CONS_PORT);
    s.topo
        .run_in(Node::Cons, move || -> std::io::Result<()> {
            let socket = UdpSocket::bind(from)?;
            for seq in 0..100 {
                // ICMP port unreachable may fail later sends: ignored.
                let _ = socket.send_to(&datagram::encode(UP, seq, 500), cons_port);
            }
            Ok(())
        })
        .expect("entering cons")
        .expect("ConsApp sends after release");
    let (after, _) = datagram::receive(
        &prod,
        UP,
        1,
        Duration::from_secs(1),
        Deadline::after(Duration::from_secs(3)),
    );
    assert!(
        after.seqs.is_empty() && after.strangers == 0,
        "datagrams reached ProdApp after release: {after:?}"
    );
}
