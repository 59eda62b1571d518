//! The soak: two gateways in the namespace topology under a seeded random
//! mix of work and faults, every byte of every stream verified.
//!
//! The run is split into rounds, one per gateway configuration (channel
//! mode and data path: TLS on the automatic path and on copy; plaintext
//! after authentication on splice, sockmap and copy). In each round, every
//! few hundred milliseconds the driver does one of: create a session (`s2uc
//! connect`, its own ProdApp listener), start a stream on an idle session,
//! release a session, `kill -9` a gateway and restart it, stop one with
//! SIGTERM and restart it, or cut the WAN for a few seconds. ProdApp sends
//! each connection a 16-byte header (seed, length) and then that many
//! pattern bytes, of a random length from 0 to 64 MiB; ConsApp verifies
//! every byte against the header.
//!
//! Rules: a stream that no fault touched must arrive complete and intact; a
//! stream a fault touched may end early, but cleanly (EOF or reset, every
//! byte right); a wrong or extra byte fails the soak anywhere. At the end of
//! each round every session is released and the gateways' descriptors are
//! compared with freshly restarted ones (a leak fails the soak). Memory,
//! descriptors, sessions and stream counts are sampled every second.
//!
//! `cargo xtask soak --minutes N [--seed S]` runs [`soak`] (ignored here)
//! and draws the samples; `soak_smoke` is a short run in the test suite.
//! Environment: `SOAK_SECONDS` (length), `SOAK_SEED`, `SOAK_OUT` (the JSON
//! report; default `target/tmp/soak.json`).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::procfs::{open_fds as fds, rss_kib};
use e2e::stream::{self, StreamError, StreamSpec};
use e2e::{Deadline, Link, Node, Topology};
use support::{PRODUCER_PORT, Setup};

const MIB: u64 = 1024 * 1024;
/// Most sessions alive at once.
const MAX_SESSIONS: usize = 8;
/// At most one fault in this long.
const FAULT_SPACING: Duration = Duration::from_secs(8);
/// How long a stream may take (64 MiB paced, on a loaded 2-core machine).
const STREAM_DEADLINE: Duration = Duration::from_secs(120);
/// Pace of the slow streams: 64 MiB take 8 s.
const SLOW_PACE: u64 = 8 * MIB;

/// A small seeded generator (SplitMix64): the same seed, the same run.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// 0, or a length spread evenly over the powers of two up to 64 MiB.
    fn stream_len(&mut self) -> u64 {
        if self.chance(5) {
            return 0;
        }
        let bits = self.below(27); // up to 64 MiB
        (1 << bits) + self.below(1 << bits)
    }
}

/// One gateway configuration of a round.
#[derive(Clone, Copy, Debug)]
struct Config {
    channel: &'static str,
    path: &'static str,
}

const CONFIGS: [Config; 5] = [
    Config {
        channel: "tls",
        path: "auto",
    },
    Config {
        channel: "plaintext-after-auth",
        path: "sockmap",
    },
    Config {
        channel: "tls",
        path: "copy",
    },
    Config {
        channel: "plaintext-after-auth",
        path: "splice",
    },
    Config {
        channel: "plaintext-after-auth",
        path: "copy",
    },
];

/// What the run counted.
#[derive(Default)]
struct Tally {
    sessions_created: AtomicU64,
    sessions_released: AtomicU64,
    streams_verified: AtomicU64,
    streams_cut: AtomicU64,
    bytes_verified: AtomicU64,
    kills: AtomicU64,
    graceful_restarts: AtomicU64,
    partitions: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        eprintln!("soak FAILURE: {what}");
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// When the soak recorded a failure since `seen`, prints the gateways'
/// warnings and errors so far (connection errors are logged at INFO) (the run's only record of why); returns the
/// new count.
fn dump_logs_on_new_failure(s: &Setup, tally: &Tally, seen: usize) -> usize {
    let now = tally.failures().len();
    if now > seen {
        for (name, gateway) in [("gwa", &s.gwa), ("gwb", &s.gwb)] {
            let log = gateway.log();
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("error"))
                .collect();
            let tail = &notable[notable.len().saturating_sub(40)..];
            eprintln!("soak: {name}'s last warnings and errors:");
            for line in tail {
                eprintln!("  {line}");
            }
        }
    }
    now
}

/// ProdApp of one session: its own listener, a header and a seeded stream
/// for every connection.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn start_producer(topo: &Topology, port: u16, seed: u64) -> (SocketAddr, Producer) {
    let addr = topo.sockaddr(Node::Prod, Link::LanA, port);
    let listener = topo
        .tcp_listen(Node::Prod, addr)
        .unwrap_or_else(|e| panic!("producer listener {addr}: {e:#}"));
    listener.set_nonblocking(true).expect("non-blocking");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::spawn(move || serve_streams(&listener, seed, &stopped));
    (addr, Producer { stop, thread })
}

fn serve_streams(listener: &TcpListener, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng(seed);
    let mut senders = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let spec = StreamSpec::new(rng.next(), rng.stream_len());
                // A quarter of the streams are slow, so faults find some
                // in flight.
                let pace = rng.chance(25).then_some(SLOW_PACE);
                senders.push(std::thread::spawn(move || {
                    // A cut stream fails here; the consumer judges it.
                    let _ = send_with_header(&conn, spec, pace);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for sender in senders {
        let _ = sender.join();
    }
}

fn send_with_header(conn: &TcpStream, spec: StreamSpec, pace: Option<u64>) -> Result<(), String> {
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&spec.seed.to_le_bytes());
    header[8..].copy_from_slice(&spec.len.to_le_bytes());
    let deadline = Deadline::after(STREAM_DEADLINE);
    write_all_until(conn, &header, deadline)?;
    match pace {
        None => stream::send_tcp(conn, spec, deadline).map(drop),
        Some(rate) => stream::send_paced_tcp(conn, spec, rate, deadline).map(drop),
    }
    .map_err(|e| e.to_string())
}

fn write_all_until(conn: &TcpStream, mut data: &[u8], deadline: Deadline) -> Result<(), String> {
    while !data.is_empty() {
        if deadline.expired() {
            return Err("deadline".into());
        }
        match (&mut &*conn).write(data) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => data = &data[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// How one stream ended.
enum Outcome {
    /// Every byte arrived, verified, then EOF.
    Verified(u64),
    /// It ended early, cleanly (EOF or reset, every byte right).
    Cut(String),
    /// A wrong byte, extra bytes, or a hang.
    Broken(String),
}

/// ConsApp: reads the header from `conn` and verifies the stream.
fn consume(conn: &TcpStream) -> Outcome {
    let deadline = Deadline::after(STREAM_DEADLINE);
    if let Err(e) = conn.set_read_timeout(Some(Duration::from_millis(50))) {
        return Outcome::Cut(e.to_string());
    }
    let mut header = [0u8; 16];
    let mut got = 0;
    while got < header.len() {
        if deadline.expired() {
            return Outcome::Broken("no header before the deadline".into());
        }
        match (&mut &*conn).read(&mut header[got..]) {
            Ok(0) => return Outcome::Cut(format!("EOF after {got} header bytes")),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Outcome::Cut(format!("reading the header: {e}")),
        }
    }
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[range]);
        u64::from_le_bytes(bytes)
    };
    let (seed, len) = (word(0..8), word(8..16));
    if len > 64 * MIB * 2 {
        return Outcome::Broken(format!("a header announcing {len} bytes: corrupted"));
    }
    let spec = StreamSpec::new(seed, len);
    match stream::verify(&mut &*conn, spec, deadline) {
        Ok(report) if report.sha256 == spec.sha256() => Outcome::Verified(len),
        Ok(_) => Outcome::Broken("digest differs".into()),
        Err(e @ (StreamError::Mismatch { .. } | StreamError::Extra { .. })) => {
            Outcome::Broken(e.to_string())
        }
        Err(e @ (StreamError::Timeout { .. } | StreamError::NoEof { .. })) => {
            Outcome::Broken(e.to_string())
        }
        Err(e) => Outcome::Cut(e.to_string()),
    }
}

/// A stream in flight and whether a fault touched it.
struct Running {
    thread: JoinHandle<Outcome>,
    faulted: bool,
    started: Instant,
}

/// A live session of the round.
struct Live {
    uid: String,
    cons: SocketAddr,
    producer: Producer,
    stream: Option<Running>,
}

/// One sample of the gateways and the counters.
#[derive(Clone, Debug)]
struct Sample {
    secs: f64,
    round: usize,
    gwa_rss_kib: u64,
    gwa_fds: u64,
    gwb_rss_kib: u64,
    gwb_fds: u64,
    sessions: u64,
    streams_verified: u64,
    streams_cut: u64,
    bytes_verified: u64,
}

/// The gateways' current pids, for the sampler.
#[derive(Default)]
struct Pids {
    gwa: AtomicU32,
    gwb: AtomicU32,
}

impl Pids {
    fn set(&self, s: &Setup) {
        self.gwa.store(s.gwa.pid(), Ordering::Relaxed);
        self.gwb.store(s.gwb.pid(), Ordering::Relaxed);
    }
}

/// The gateways at the end of a round, with no session left: descriptors
/// (then, and of freshly restarted gateways) and memory.
struct RoundEnd {
    fds: [(u64, u64); 2],
    rss_end_kib: [u64; 2],
}

struct Driver<'a> {
    tally: &'a Tally,
    rng: Rng,
    next_port: u16,
    last_fault: Instant,
}

impl Driver<'_> {
    /// Runs one round of `length` in a fresh topology with `config`;
    /// returns (descriptors at the end, descriptors of fresh gateways) for
    /// gwa and gwb.
    fn round(
        &mut self,
        config: Config,
        length: Duration,
        pids: &Pids,
        sessions: &AtomicU64,
    ) -> RoundEnd {
        let flags: Vec<String> = [
            "--channel",
            config.channel,
            "--data-path",
            config.path,
            "--wan-keepalive",
            "1",
            "--wan-user-timeout",
            "3",
            "--release-grace",
            "0.5",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let topo = Topology::new().unwrap_or_else(|e| panic!("{e:#}"));
        let mut s = Setup::start(topo, flags.clone(), flags);
        pids.set(&s);
        let mut live: Vec<Live> = Vec::new();
        let ends = Instant::now() + length;
        let mut failures_seen = self.tally.failures().len();
        while Instant::now() < ends {
            self.reap(&mut live);
            failures_seen = dump_logs_on_new_failure(&s, self.tally, failures_seen);
            self.step(&mut s, &mut live, pids);
            sessions.store(live.len() as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100 + self.rng.below(400)));
        }
        // Wind down: let streams end, release everything.
        for l in &mut live {
            if let Some(run) = l.stream.take() {
                self.judge(run);
            }
        }
        dump_logs_on_new_failure(&s, self.tally, failures_seen);
        for l in live.drain(..) {
            self.release(&s, l);
        }
        sessions.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        let end = [fds(s.gwa.pid()), fds(s.gwb.pid())];
        let rss_end = [rss_kib(s.gwa.pid()), rss_kib(s.gwb.pid())];
        for node in [Node::Gwa, Node::Gwb] {
            s.gateway_mut(node)
                .terminate()
                .unwrap_or_else(|e| panic!("{e:#}"));
            s.restart(node);
        }
        pids.set(&s);
        std::thread::sleep(Duration::from_secs(1));
        let fresh = [fds(s.gwa.pid()), fds(s.gwb.pid())];
        RoundEnd {
            fds: [(end[0], fresh[0]), (end[1], fresh[1])],
            rss_end_kib: rss_end,
        }
    }

    fn reap(&mut self, live: &mut [Live]) {
        for l in live.iter_mut() {
            if l.stream.as_ref().is_some_and(|r| r.thread.is_finished())
                && let Some(run) = l.stream.take()
            {
                self.judge(run);
            }
        }
    }

    fn judge(&self, run: Running) {
        let outcome = run
            .thread
            .join()
            .unwrap_or_else(|_| Outcome::Broken("the consumer panicked".into()));
        match outcome {
            Outcome::Verified(bytes) => {
                self.tally.streams_verified.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .bytes_verified
                    .fetch_add(bytes, Ordering::Relaxed);
            }
            Outcome::Cut(why) if run.faulted => {
                eprintln!("soak: a stream cut by a fault ended cleanly: {why}");
                self.tally.streams_cut.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Cut(why) => self.tally.fail(format!(
                "a stream no fault touched ended early after {:?}: {why}",
                run.started.elapsed()
            )),
            Outcome::Broken(why) => self.tally.fail(format!("a stream arrived broken: {why}")),
        }
    }

    fn step(&mut self, s: &mut Setup, live: &mut Vec<Live>, pids: &Pids) {
        // Faults hit while something streams.
        let fault_ok = self.last_fault.elapsed() >= FAULT_SPACING
            && live
                .iter()
                .any(|l| l.stream.as_ref().is_some_and(|r| !r.thread.is_finished()));
        let roll = self.rng.below(100);
        if live.len() < 2 || (roll < 15 && live.len() < MAX_SESSIONS) {
            self.create(s, live);
        } else if roll < 60 {
            let idle: Vec<usize> = (0..live.len())
                .filter(|&i| live[i].stream.is_none())
                .collect();
            if !idle.is_empty() {
                let i = idle[self.rng.below(idle.len() as u64) as usize];
                let connected =
                    s.topo
                        .tcp_connect(Node::Cons, live[i].cons, Duration::from_secs(5));
                let thread = std::thread::spawn(move || match connected {
                    Ok(conn) => consume(&conn),
                    Err(e) => Outcome::Cut(format!("connecting: {e:#}")),
                });
                live[i].stream = Some(Running {
                    thread,
                    faulted: false,
                    started: Instant::now(),
                });
            }
        } else if roll < 70 {
            let i = self.rng.below(live.len() as u64) as usize;
            let mut l = live.swap_remove(i);
            let run = l.stream.take();
            self.release(s, l);
            if let Some(mut run) = run {
                // Released under it: it may end after the grace period.
                run.faulted = true;
                self.judge(run);
            }
        } else if roll < 76 && fault_ok {
            self.fault_all(live);
            let node = if self.rng.chance(50) {
                Node::Gwa
            } else {
                Node::Gwb
            };
            eprintln!("soak: kill -9 {node}");
            s.gateway_mut(node)
                .kill()
                .unwrap_or_else(|e| panic!("{e:#}"));
            std::thread::sleep(Duration::from_millis(self.rng.below(1000)));
            s.restart(node);
            pids.set(s);
            self.tally.kills.fetch_add(1, Ordering::Relaxed);
        } else if roll < 79 && fault_ok {
            self.fault_all(live);
            let node = if self.rng.chance(50) {
                Node::Gwa
            } else {
                Node::Gwb
            };
            eprintln!("soak: SIGTERM {node} and restart");
            s.gateway_mut(node)
                .terminate()
                .unwrap_or_else(|e| panic!("{e:#}"));
            s.restart(node);
            pids.set(s);
            self.tally.graceful_restarts.fetch_add(1, Ordering::Relaxed);
        } else if roll < 83 && fault_ok {
            self.fault_all(live);
            let wan = s.topo.ifname(Node::Gwa, Link::Wan).expect("gwa on the WAN");
            let secs = 1 + self.rng.below(5);
            eprintln!("soak: WAN partition for {secs} s");
            s.topo
                .ip(Node::Gwa, &["link", "set", "dev", wan, "down"])
                .unwrap_or_else(|e| panic!("{e:#}"));
            std::thread::sleep(Duration::from_secs(secs));
            s.topo
                .ip(Node::Gwa, &["link", "set", "dev", wan, "up"])
                .unwrap_or_else(|e| panic!("{e:#}"));
            self.tally.partitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every stream in flight is exposed to the fault about to happen.
    fn fault_all(&mut self, live: &mut [Live]) {
        self.last_fault = Instant::now();
        let mut exposed = 0;
        for run in live.iter_mut().filter_map(|l| l.stream.as_mut()) {
            run.faulted = true;
            exposed += 1;
        }
        eprintln!("soak: fault with {exposed} stream(s) in flight");
    }

    fn create(&mut self, s: &Setup, live: &mut Vec<Live>) {
        let port = self.next_port;
        self.next_port = if self.next_port >= PRODUCER_PORT + 900 {
            PRODUCER_PORT
        } else {
            self.next_port + 1
        };
        let (addr, producer) = start_producer(&s.topo, port, self.rng.next());
        match s.try_connect(&[addr], 0) {
            Ok(c) => {
                self.tally.sessions_created.fetch_add(1, Ordering::Relaxed);
                live.push(Live {
                    uid: c.uid,
                    cons: c.cons_listeners[0],
                    producer,
                    stream: None,
                });
            }
            Err(e) => {
                self.tally.fail(format!("s2uc connect failed: {e:#}"));
                stop_producer(producer);
            }
        }
    }

    fn release(&self, s: &Setup, l: Live) {
        for gateway in [&s.gwa, &s.gwb] {
            s.release(gateway, &l.uid);
        }
        self.tally.sessions_released.fetch_add(1, Ordering::Relaxed);
        stop_producer(l.producer);
    }
}

fn stop_producer(p: Producer) {
    p.stop.store(true, Ordering::Relaxed);
    let _ = p.thread.join();
}

/// Samples the gateways and the counters every second until stopped.
fn sampler(
    started: Instant,
    tally: Arc<Tally>,
    pids: Arc<Pids>,
    round: Arc<AtomicU32>,
    sessions: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (a, b) = (
                pids.gwa.load(Ordering::Relaxed),
                pids.gwb.load(Ordering::Relaxed),
            );
            samples.push(Sample {
                secs: started.elapsed().as_secs_f64(),
                round: round.load(Ordering::Relaxed) as usize,
                gwa_rss_kib: rss_kib(a),
                gwa_fds: fds(a),
                gwb_rss_kib: rss_kib(b),
                gwb_fds: fds(b),
                sessions: sessions.load(Ordering::Relaxed),
                streams_verified: tally.streams_verified.load(Ordering::Relaxed),
                streams_cut: tally.streams_cut.load(Ordering::Relaxed),
                bytes_verified: tally.bytes_verified.load(Ordering::Relaxed),
            });
            std::thread::sleep(Duration::from_secs(1));
        }
        samples
    })
}

/// Runs the soak for `length` with `seed`; writes the JSON report to `out`
/// and fails on any broken stream or leaked descriptor.
fn run_soak(length: Duration, seed: u64, out: &std::path::Path) {
    e2e::require_root().unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let pids = Arc::new(Pids::default());
    let round_no = Arc::new(AtomicU32::new(0));
    let sessions = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(
        started,
        Arc::clone(&tally),
        Arc::clone(&pids),
        Arc::clone(&round_no),
        Arc::clone(&sessions),
        Arc::clone(&stop),
    );
    let round_length =
        (length / CONFIGS.len() as u32).clamp(Duration::from_secs(20), Duration::from_secs(360));
    let mut driver = Driver {
        tally: &tally,
        rng: Rng(seed),
        next_port: PRODUCER_PORT,
        last_fault: Instant::now(),
    };
    let mut rounds = Vec::new();
    let mut leaks = Vec::new();
    let mut i = 0usize;
    while started.elapsed() + round_length / 2 < length || i == 0 {
        let config = CONFIGS[i % CONFIGS.len()];
        round_no.store(i as u32, Ordering::Relaxed);
        eprintln!(
            "soak: round {i}: --channel {} --data-path {} for {round_length:?}",
            config.channel, config.path
        );
        let end = driver.round(config, round_length, &pids, &sessions);
        let fds = end.fds;
        for (node, (end, fresh)) in ["gwa", "gwb"].iter().zip(fds) {
            // A few descriptors of slack: the runtime's own may come and go.
            if end > fresh + 3 {
                leaks.push(format!(
                    "round {i} ({} {}): {node} held {end} descriptors with no session, a fresh one {fresh}",
                    config.channel, config.path
                ));
            }
        }
        rounds.push(serde_json::json!({
            "round": i,
            "channel": config.channel,
            "data_path": config.path,
            "fds_gwa_end": fds[0].0, "fds_gwa_fresh": fds[0].1,
            "fds_gwb_end": fds[1].0, "fds_gwb_fresh": fds[1].1,
            "rss_gwa_end_kib": end.rss_end_kib[0], "rss_gwb_end_kib": end.rss_end_kib[1],
        }));
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let samples = sampling.join().unwrap_or_default();
    let failures = tally.failures();
    let report = serde_json::json!({
        "seed": seed,
        "seconds": started.elapsed().as_secs_f64(),
        "rounds": rounds,
        "summary": {
            "sessions_created": tally.sessions_created.load(Ordering::Relaxed),
            "sessions_released": tally.sessions_released.load(Ordering::Relaxed),
            "streams_verified": tally.streams_verified.load(Ordering::Relaxed),
            "streams_cut_by_faults": tally.streams_cut.load(Ordering::Relaxed),
            "streams_failed": failures.len(),
            "bytes_verified": tally.bytes_verified.load(Ordering::Relaxed),
            "kills": tally.kills.load(Ordering::Relaxed),
            "graceful_restarts": tally.graceful_restarts.load(Ordering::Relaxed),
            "partitions": tally.partitions.load(Ordering::Relaxed),
            "descriptor_leaks": leaks,
        },
        "failures": failures,
        "samples": samples.iter().map(|s| serde_json::json!({
            "secs": s.secs, "round": s.round,
            "gwa_rss_kib": s.gwa_rss_kib, "gwa_fds": s.gwa_fds,
            "gwb_rss_kib": s.gwb_rss_kib, "gwb_fds": s.gwb_fds,
            "sessions": s.sessions, "streams_verified": s.streams_verified,
            "streams_cut": s.streams_cut, "bytes_verified": s.bytes_verified,
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    std::fs::write(out, text).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    eprintln!("soak: report in {}", out.display());
    eprintln!("soak: {}", report["summary"]);
    assert!(
        failures.is_empty(),
        "broken streams or failed calls: {failures:#?}"
    );
    assert!(leaks.is_empty(), "descriptor leaks: {leaks:#?}");
    assert!(
        tally.streams_verified.load(Ordering::Relaxed) > 0,
        "the soak verified no stream at all"
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn default_out(name: &str) -> PathBuf {
    std::env::var_os("SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name))
}

/// The long soak (`cargo xtask soak --minutes N`).
#[test]
#[ignore = "long: run by `cargo xtask soak`"]
fn soak() {
    let secs: u64 = env_or("SOAK_SECONDS", 600);
    let seed: u64 = env_or("SOAK_SEED", 1);
    run_soak(Duration::from_secs(secs), seed, &default_out("soak.json"));
}

/// A short soak in the test suite: two rounds (TLS on the automatic path,
/// plaintext after authentication on sockmap) with faults.
#[test]
fn soak_smoke() {
    run_soak(Duration::from_secs(40), 7, &default_out("soak-smoke.json"));
}
