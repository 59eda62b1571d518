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
//! is counted. An on-path observer captures a live flow's packets (a tap
//! at gwb, `e2e::wire`) and the attacker replays them, from the flow's own
//! source address and from spoofed ones: ProdApp receives no datagram
//! twice and no new flow opens. On a WAN that drops and reorders
//! (`e2e::impair`: nftables and HTB, as this kernel has no netem) every
//! datagram that arrives is intact and arrives once, and the loss is
//! counted against what was sent. iperf3 -u runs unchanged through the
//! pair both ways. A rate-capped session in the plaintext mode stays off
//! the kernel path, and its cap drops (and counts) what exceeds it. Needs
//! root. Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::datagram::{self, Tally};
use e2e::impair::{Impairment, impair_udp_egress};
use e2e::wire::{self, Capture};
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
fn datagrams_cross_a_lossy_reordering_wan_intact_with_the_loss_counted() {
    let s = Setup::new(false, &[], &[]);
    // Both gateways' outgoing UDP on the WAN: 3% dropped, half the rest
    // queued in a 50 Mbit/s class (late, so overtaken by later packets).
    let how = Impairment {
        loss_percent: 3,
        slow_mbit: 50,
    };
    for node in [Node::Gwa, Node::Gwb] {
        impair_udp_egress(&s.topo, node, Link::Wan, how)
            .unwrap_or_else(|e| panic!("impairing {node}'s WAN: {e:#}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    let c = s.connect(&[producer], 0);
    let (replies, _) = run_cons_app(&s, c.cons_listeners[0]);
    stop.store(true, Ordering::Relaxed);
    let at_prod = join(prod_app);
    let status = s.ask(Node::Gwb, "status", Some(&c.uid));
    eprintln!(
        "gwb: {status}\ngwa: {}",
        s.ask(Node::Gwa, "status", Some(&c.uid))
    );
    for (what, tally, sent) in [
        ("ProdApp", &at_prod, COUNT),
        ("ConsApp", &replies, at_prod.seqs.len() as u64),
    ] {
        let lost = tally.lost(sent);
        eprintln!(
            "{what}: {} of {sent} arrived, {lost} lost, {} late, {} duplicates",
            tally.seqs.len(),
            tally.late,
            tally.duplicates
        );
        assert_eq!(tally.corrupt, 0, "{what}: corrupted datagrams");
        assert_eq!(tally.strangers, 0, "{what}: datagrams of another stream");
        assert_eq!(tally.duplicates, 0, "{what}: datagrams delivered twice");
        assert!(lost * 4 <= sent, "{what}: {lost} of {sent} lost");
    }
    // The WAN did lose and reorder (the test saw what it claims to test).
    assert!(at_prod.lost(COUNT) > 0, "the impaired WAN lost nothing");
    assert!(
        at_prod.late + replies.late > 0,
        "the impaired WAN reordered nothing"
    );
    // ConsApp's LAN is not impaired: the CONS gateway counts what it took,
    // and ProdApp got no more than that.
    let taken = number_after(&status, "udp: datagrams=");
    assert!(taken >= COUNT * 9 / 10, "{status}");
    assert!(at_prod.seqs.len() as u64 <= taken, "{status}");
}

#[test]
fn replayed_and_spoofed_packets_of_a_captured_flow_deliver_nothing_twice() {
    let s = Setup::new(true, &[], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    let c = s.connect(&[producer], 0);
    let target = match c.prod_listeners[0] {
        SocketAddr::V4(v4) => v4,
        other => panic!("an IPv4 session port, not {other}"),
    };
    let gwb_wan = match s.topo.addr(Node::Gwb, Link::Wan) {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("gwb's WAN address is IPv4, not {other}"),
    };

    // A tap at gwb records the flow's packets as they leave for gwa.
    let capture = s
        .topo
        .run_in(Node::Gwb, move || Capture::start(gwb_wan, target))
        .expect("entering gwb")
        .unwrap_or_else(|e| panic!("opening the capture at gwb: {e}"));
    let (replies, _) = run_cons_app(&s, c.cons_listeners[0]);
    assert_delivery("replies at ConsApp", &replies, COUNT);
    let seen = capture.stop().unwrap_or_else(|e| panic!("capture: {e}"));
    let captured = seen.datagrams;
    // Every datagram crossed in some packet: the capture saw the flow.
    assert!(
        captured.len() as u64 >= COUNT / 4,
        "the tap saw {} packets of the flow in {} frames",
        captured.len(),
        seen.frames
    );
    let initial = captured
        .iter()
        .find(|d| d.payload.first().is_some_and(|b| b & 0xc0 == 0xc0))
        .cloned()
        .expect("the capture holds the flow's QUIC Initial");
    let flows_before = number_after(&s.ask(Node::Gwa, "status", Some(&c.uid)), "flows=");

    // The attacker replays it all: from the flow's own address and port
    // (while its connection lives), and the handshake's first packet from
    // spoofed sources on the WAN.
    let mut attack = captured.clone();
    for host in 70..80u8 {
        let mut spoofed = initial.clone();
        spoofed.from = SocketAddrV4::new(Ipv4Addr::new(10, 2, 0, host), 40_000 + u16::from(host));
        attack.push(spoofed);
    }
    // A second tap, at gwa, proves the replayed packets reached it.
    let at_gwa = s
        .topo
        .run_in(Node::Gwa, move || Capture::start(gwb_wan, target))
        .expect("entering gwa")
        .unwrap_or_else(|e| panic!("opening the capture at gwa: {e}"));
    let sent = s
        .topo
        .run_in(Node::Attacker, move || wire::send_spoofed(&attack))
        .expect("entering the attacker")
        .unwrap_or_else(|e| panic!("the attacker's raw socket: {e}"));
    assert!(sent >= captured.len(), "the attacker sent {sent} packets");

    // What arrives at ProdApp within a while: nothing twice, nothing new.
    std::thread::sleep(Duration::from_secs(2));
    let replayed = at_gwa
        .stop()
        .unwrap_or_else(|e| panic!("capture at gwa: {e}"))
        .datagrams
        .len();
    eprintln!(
        "captured {} packets of the flow; the attacker sent {sent}; {replayed} of the flow's reached gwa",
        captured.len()
    );
    assert!(
        replayed >= captured.len(),
        "only {replayed} replayed packets reached gwa"
    );
    stop.store(true, Ordering::Relaxed);
    let at_prod = join(prod_app);
    assert_delivery("datagrams at ProdApp", &at_prod, COUNT);
    assert_eq!(
        at_prod.duplicates, 0,
        "replayed datagrams were delivered again"
    );
    assert!(
        at_prod.seqs.iter().all(|&seq| seq < COUNT),
        "a datagram ConsApp never sent arrived"
    );
    let status = s.ask(Node::Gwa, "status", Some(&c.uid));
    assert_eq!(
        number_after(&status, "flows="),
        flows_before,
        "a replayed or spoofed handshake opened a flow: {status}"
    );
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

/// One `iperf3 -c -u` run from ConsApp's namespace to `to` (`reverse`:
/// ProdApp's iperf3 sends, as with `-R`), 3 s at 50 Mbit/s of 1,200-byte
/// datagrams; its JSON report.
fn iperf3_udp(s: &Setup, to: SocketAddr, reverse: bool) -> Result<serde_json::Value, String> {
    let mut cmd = std::process::Command::new("iperf3");
    cmd.args(["-c", &to.ip().to_string(), "-p", &to.port().to_string()])
        .args(["-u", "-b", "50M", "-l", "1200", "-t", "3", "-J"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = s
        .topo
        .output(Node::Cons, cmd, Duration::from_secs(60))
        .map_err(|e| format!("iperf3 -c: {e:#}"))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 -c printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    match report.get("error") {
        Some(err) => Err(format!("iperf3 -c: {err}")),
        None => Ok(report),
    }
}

#[test]
fn iperf3_udp_runs_unchanged_through_the_gateways_both_ways() {
    let s = Setup::new(false, &[], &[]);
    let producer = s.topo.sockaddr(Node::Prod, Link::LanA, PRODUCER_PORT);
    let mut server = std::process::Command::new("iperf3");
    server.args(["-s", "-B", &producer.ip().to_string()]);
    server.args(["-p", &producer.port().to_string()]);
    server.stdout(std::process::Stdio::null());
    let _server = s
        .topo
        .spawn(Node::Prod, server)
        .unwrap_or_else(|e| panic!("starting iperf3 -s in prod: {e:#}"));
    let c = s.connect(&[producer], 0);
    let cons_port = c.cons_listeners[0];
    for reverse in [false, true] {
        // The first run may find iperf3 -s still starting: retried.
        let report = eventually(SECS_30, || iperf3_udp(&s, cons_port, reverse))
            .unwrap_or_else(|e| panic!("iperf3 -u (reverse: {reverse}) through the pair: {e:#}"));
        let sum = &report["end"]["sum"];
        let packets = sum["packets"].as_u64().unwrap_or(0);
        let lost = sum["lost_packets"].as_u64().unwrap_or(u64::MAX);
        eprintln!("iperf3 -u (reverse: {reverse}): {packets} datagrams, {lost} lost");
        // 3 s at 50 Mbit/s of 1,200 B is about 15,600 datagrams.
        assert!(
            packets >= 5_000,
            "iperf3 counted {packets} datagrams: {sum}"
        );
        assert!(
            lost * 10 <= packets,
            "iperf3 lost {lost} of {packets}: {sum}"
        );
    }
    let status = s.ask(Node::Gwb, "status", Some(&c.uid));
    assert!(
        number_after(&status, "udp: datagrams=") >= 10_000,
        "{status}"
    );
}

#[test]
fn a_rate_capped_session_keeps_its_datagrams_off_the_kernel_path_under_its_cap() {
    let topo = e2e::Topology::builder()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
    let flags = || vec!["--channel".to_owned(), "plaintext-after-auth".to_owned()];
    let s = Setup::start_logging(topo, "info,gateway::udp=debug", flags(), flags());
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, prod_app) = start_prod_app(&s, Arc::clone(&stop));
    // 1 Mbit/s: ConsApp's burst (about 1.9 MB at once) is far over it.
    let c = s.connect(&[producer], 1);
    let (replies, _) = run_cons_app(&s, c.cons_listeners[0]);
    stop.store(true, Ordering::Relaxed);
    let at_prod = join(prod_app);
    for (what, tally) in [("ProdApp", &at_prod), ("ConsApp", &replies)] {
        assert_eq!(tally.corrupt, 0, "{what}: corrupted datagrams");
        assert_eq!(tally.strangers, 0, "{what}: datagrams of another stream");
    }
    // What the cap let through arrived; the rest was dropped and counted.
    assert!(!at_prod.seqs.is_empty(), "nothing reached ProdApp");
    assert!(
        (at_prod.seqs.len() as u64) < COUNT / 2,
        "{} of {COUNT} datagrams passed a 1 Mbit/s cap in a burst",
        at_prod.seqs.len()
    );
    let status = s.ask(Node::Gwb, "status", Some(&c.uid));
    let udp = status
        .split("udp:")
        .nth(1)
        .unwrap_or_else(|| panic!("no udp line: {status}"));
    assert!(number_after(udp, "rate ") > 0, "{status}");
    for gateway in [&s.gwa, &s.gwb] {
        let log = gateway.log();
        assert!(
            !log.contains("forwarded by the kernel"),
            "a capped flow went to the kernel path on {:?}:\n{log}",
            gateway.node
        );
        assert!(
            log.contains("rate cap keeps its datagrams in QUIC"),
            "{:?} does not say why the kernel path is not used:\n{log}",
            gateway.node
        );
    }
}
