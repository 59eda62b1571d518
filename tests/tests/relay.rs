//! End-to-end relay tests: a plain `s2cs relay` process in gwa's namespace,
//! for each data path (sockmap, splice, copy), moving verified streams between
//! real hosts in network namespaces.
//!
//! ```text
//!   prod (server) --LAN A-- gwa (s2cs relay) ==WAN== gwb (client)
//!   10.1.0.2:6000           10.2.0.1:5000 -> 10.1.0.2:6000
//! ```
//!
//! The roles follow SciStream: the producer application listens (prod is the
//! server, bulk data flows from it), and gwa is the producer-side gateway
//! whose listener faces the WAN and which dials the producer on its LAN. The
//! client runs in gwb, where the consumer-side gateway would dial gwa from.
//! So the relay's two sockets sit on two different links, neither end shares
//! a namespace with the relay, and forwarding stays off: every byte the
//! client and server exchange went through the relay process.
//!
//! The relay binary is `target/<profile>/s2cs` next to this test executable
//! (or `$S2CS_BIN`), found and run by the harness (`e2e::daemon`); build it
//! first (`cargo build -p gateway`; `cargo xtask test` builds the workspace
//! before running the tests). Its log goes to a file under
//! `CARGO_TARGET_TMPDIR`, printed when a test fails; the tests read it to
//! check that every connection really used the data path under test:
//! a silent fallback to another path fails the test, except for connections
//! the client had already half-closed when the relay set them up (the kernel
//! admits only established sockets into a SockHash, so sockmap relays those
//! in userspace).
//!
//! Needs root (namespaces, eBPF). Every wait is bounded.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use e2e::stream::{self, StreamError, StreamSpec};
use e2e::{Bin, Daemon, Deadline, Link, Node, Topology, eventually};
use nix::sys::signal::Signal;
use nix::sys::socket::{setsockopt, sockopt};

/// Where the relay listens (gwa, WAN side).
const RELAY_PORT: u16 = 5000;
/// Where the server listens (prod, LAN A).
const SERVER_PORT: u16 = 6000;
/// Bound on any one bulk transfer (debug builds on a shared 2-core machine).
const BULK: Duration = Duration::from_secs(90);
/// Bound on small exchanges and setup steps.
const SHORT: Duration = Duration::from_secs(10);
/// A reset must reach the other end within this long: it is carried at once,
/// so this only has to absorb scheduling delays on a loaded machine (the
/// failure it guards against is a reset noticed only at a stream deadline).
const RESET_PROMPT: Duration = Duration::from_secs(8);
/// Bound on the relay process starting (eBPF load included) and listening.
const START: Duration = Duration::from_secs(30);

/// A topology with an `s2cs relay` running in gwa. Fields drop in order: the
/// relay is killed before the namespaces go.
struct Harness {
    relay: Relay,
    topo: Topology,
}

/// The relay process; prints its log if the test fails (see `e2e::Daemon`).
struct Relay {
    daemon: Daemon,
    path: &'static str,
    /// Where clients connect.
    addr: SocketAddr,
}

impl Harness {
    fn new(path: &'static str) -> Harness {
        let topo = Topology::new().unwrap_or_else(|e| panic!("cannot build the topology: {e:#}"));
        let relay = Relay::start(&topo, path);
        Harness { relay, topo }
    }

    /// The server's listener in prod.
    fn listen(&self) -> TcpListener {
        let addr = self.topo.sockaddr(Node::Prod, Link::LanA, SERVER_PORT);
        self.topo
            .tcp_listen(Node::Prod, addr)
            .expect("server listens in prod")
    }

    /// A client connection from gwb to the relay.
    fn connect(&self) -> TcpStream {
        self.topo
            .tcp_connect(Node::Gwb, self.relay.addr, SHORT)
            .unwrap_or_else(|e| panic!("{}: client cannot reach the relay: {e:#}", self.relay.path))
    }
}

impl Relay {
    fn start(topo: &Topology, path: &'static str) -> Relay {
        let addr = topo.sockaddr(Node::Gwa, Link::Wan, RELAY_PORT);
        let target = topo.sockaddr(Node::Prod, Link::LanA, SERVER_PORT);
        let dir = Daemon::workdir(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            &format!("{}-{path}", topo.id()),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let args: Vec<String> = [
            "relay",
            "--listen",
            &addr.to_string(),
            "--target",
            &target.to_string(),
            "--path",
            path,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let daemon = Daemon::start(
            topo,
            Node::Gwa,
            Bin::S2cs,
            &args,
            &[("RUST_LOG", "info,gateway::proxy=debug,gateway::relay=debug")],
            dir,
        )
        .unwrap_or_else(|e| panic!("starting s2cs relay in gwa: {e:#}"));
        let mut relay = Relay { daemon, path, addr };
        relay.wait_listening();
        relay
    }

    /// Polls the relay's TCP table (its namespace's) until it listens, without
    /// connecting (a probe connection would make it dial the server).
    fn wait_listening(&mut self) {
        self.daemon
            .wait_until(START, "listening", |d| {
                tcp_sockets(d.id())
                    .iter()
                    .any(|s| s.local_port == RELAY_PORT && s.state == TCP_LISTEN)
            })
            .unwrap_or_else(|e| panic!("s2cs relay ({}): {e:#}", self.path));
    }

    fn log_text(&self) -> String {
        self.daemon.log()
    }

    /// Waits until the relay has logged `n` cleanly closed connections and
    /// checks that each one used this relay's data path, or, where `fallback`
    /// allows it, that every one that did not could not have: only the sockmap
    /// path falls back (to a userspace path), and only for a connection whose
    /// client had already sent FIN when the relay set it up (the kernel admits
    /// only established sockets into a SockHash). The relay reads nothing
    /// before setup, so that FIN can only have arrived if every byte the
    /// client sent fitted in the relay socket's receive buffer: a connection
    /// on another path that carried more than that fails the test.
    fn expect_closed(&self, topo: &Topology, n: usize, fallback: Fallback) {
        let lines = eventually(SHORT, || {
            let closed: Vec<String> = self
                .log_text()
                .lines()
                .filter(|l| l.contains("connection closed"))
                .map(str::to_owned)
                .collect();
            if closed.len() >= n {
                Ok(closed)
            } else {
                Err(format!("{} of {n} connections closed", closed.len()))
            }
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: the relay did not finish its connections: {e:#}",
                self.path
            )
        });
        let want = format!("path={}", self.path);
        let other: Vec<&String> = lines
            .iter()
            .filter(|line| !line.split_whitespace().any(|field| field == want))
            .collect();
        if other.is_empty() {
            return;
        }
        let listing = other
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            self.path == "sockmap" && fallback == Fallback::IfHalfClosedAtSetup,
            "{}: {} of {n} connections used another data path:\n{listing}",
            self.path,
            other.len(),
        );
        let buffer = receive_buffer(topo);
        let too_big: Vec<&&String> = other
            .iter()
            .filter(|line| logged_bytes(line, "up") > buffer)
            .collect();
        assert!(
            too_big.is_empty(),
            "{}: {} connection(s) carrying more than the relay's {buffer} B receive buffer \
             (so not half-closed at setup) used another data path:\n{listing}",
            self.path,
            too_big.len(),
        );
        eprintln!(
            "{}: {} connection(s) already half-closed at setup were relayed in userspace",
            self.path,
            other.len()
        );
    }

    fn stop_process(&self) {
        self.daemon
            .signal(Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn continue_process(&self) {
        self.daemon
            .signal(Signal::SIGCONT)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0a;

/// One line of `/proc/PID/net/tcp`.
struct TcpSocket {
    local_port: u16,
    state: u8,
    rx_queue: u64,
}

/// The IPv4 TCP sockets of `pid`'s network namespace.
fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            let (_, rx) = fields.get(4)?.split_once(':')?;
            Some(TcpSocket {
                local_port: u16::from_str_radix(port, 16).ok()?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Accepts one connection, within `deadline`.
/// Whether a test's connections may leave the path under test (see
/// `Relay::expect_closed`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fallback {
    /// Every connection must use the relay's path.
    Never,
    /// Sockmap may relay in userspace a connection its client had already
    /// half-closed when the relay set it up.
    IfHalfClosedAtSetup,
}

/// The receive buffer a TCP socket accepted in gwa starts with (the middle
/// value of gwa's `net.ipv4.tcp_rmem`): what the kernel can queue for the
/// relay before it reads anything (autotuning grows it only on reads).
fn receive_buffer(topo: &Topology) -> u64 {
    let text = topo
        .run_in(Node::Gwa, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        })
        .and_then(|read| Ok(read?))
        .unwrap_or_else(|e| panic!("read gwa's net.ipv4.tcp_rmem: {e:#}"));
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("gwa's net.ipv4.tcp_rmem is not three numbers: {text:?}"))
}

/// The number after `key=` in a relay log line (`up=`/`down=` byte counts).
fn logged_bytes(line: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("relay log line without {prefix}<bytes>: {line}"))
}

fn accept(listener: &TcpListener, deadline: impl Into<Deadline>) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let conn = eventually(deadline, || listener.accept().map(|(conn, _)| conn))
        .unwrap_or_else(|e| panic!("server: no connection from the relay: {e:#}"));
    conn.set_nonblocking(false).expect("blocking connection");
    conn
}

/// Closes `conn` with RST instead of FIN.
fn reset(conn: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&conn, sockopt::Linger, &linger).expect("SO_LINGER 0");
    drop(conn);
}

fn is_reset(e: &StreamError) -> bool {
    matches!(
        e,
        StreamError::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
    )
}

/// Joins a helper thread, resuming its panic (with its message) here.
fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// 1 GiB from the server (the producer) to the client, every byte verified,
/// then the client closes too.
fn one_gib_one_way(path: &'static str) {
    let h = Harness::new(path);
    let spec = StreamSpec::new(1, 1 << 30);
    let listener = h.listen();
    let server = std::thread::spawn(move || {
        let conn = accept(&listener, SHORT);
        let sent = stream::send_tcp(&conn, spec, BULK)
            .unwrap_or_else(|e| panic!("{path} server sends: {e}"));
        // The client sends nothing and closes: the FIN must come through.
        stream::verify_tcp(&conn, StreamSpec::new(0, 0), SHORT)
            .unwrap_or_else(|e| panic!("{path} server waits for the client's close: {e}"));
        sent
    });
    let conn = h.connect();
    let got = stream::verify_tcp(&conn, spec, BULK)
        .unwrap_or_else(|e| panic!("{path} client receives: {e}"));
    conn.shutdown(Shutdown::Write).expect("client closes");
    let sent = join(server);
    assert_eq!(got.bytes, spec.len);
    assert_eq!(
        got.sha256_hex(),
        sent.sha256_hex(),
        "{path}: digests differ"
    );
    eprintln!("{path}: 1 GiB one way at {:.0} MiB/s", got.mib_per_s());
    h.relay.expect_closed(&h.topo, 1, Fallback::Never);
}

/// 256 MiB each way at the same time on one connection.
///
/// On the sockmap path a kernel defect can duplicate bytes with both
/// directions busy (see gateway/src/relay/sockmap.rs). The gateway cannot
/// stop the kernel from sending them, so what is checked then is that it
/// caught it: it logged the duplication and reset the connection, and no
/// receiver of a damaged stream saw a clean end of stream.
fn both_ways_at_once(path: &'static str) {
    const LEN: u64 = 256 << 20;
    let h = Harness::new(path);
    let (up, down) = (StreamSpec::new(2, LEN), StreamSpec::new(3, LEN));
    let listener = h.listen();
    let server = std::thread::spawn(move || {
        let conn = accept(&listener, SHORT);
        let writer = conn.try_clone().expect("clone");
        let send = std::thread::spawn(move || stream::send_tcp(&writer, down, BULK));
        let got = receive_to_end(&conn, up);
        (got, join(send))
    });
    let conn = h.connect();
    let writer = conn.try_clone().expect("clone");
    let send = std::thread::spawn(move || stream::send_tcp(&writer, up, BULK));
    let got = receive_to_end(&conn, down);
    let sent = join(send);
    let (server_got, server_sent) = join(server);
    let (Ok(got), Ok(sent), Ok(server_got), Ok(server_sent)) =
        (&got, &sent, &server_got, &server_sent)
    else {
        let log = h.relay.log_text();
        assert!(
            path == "sockmap" && log.contains("the kernel relay duplicated bytes"),
            "{path}: a stream failed without the relay detecting a kernel fault:\n\
             client receives: {got:?}\nclient sends: {sent:?}\n\
             server receives: {server_got:?}\nserver sends: {server_sent:?}\n{log}"
        );
        for (who, received) in [("client", &got), ("server", &server_got)] {
            if let Err(damage) = received {
                assert!(
                    !damage.clean_end,
                    "{path}: the {who}'s damaged stream ({}) ended with a clean FIN, not a reset",
                    damage.error
                );
            }
        }
        eprintln!(
            "{path}: the kernel duplicated bytes (kernel sockmap defect); the relay detected it \
             and reset the connection"
        );
        return;
    };
    assert_eq!(
        server_got.sha256_hex(),
        sent.sha256_hex(),
        "{path}: client -> server digest"
    );
    assert_eq!(
        got.sha256_hex(),
        server_sent.sha256_hex(),
        "{path}: server -> client digest"
    );
    eprintln!(
        "{path}: 256 MiB each way, {:.0} MiB/s up, {:.0} MiB/s down",
        server_got.mib_per_s(),
        got.mib_per_s()
    );
    h.relay.expect_closed(&h.topo, 1, Fallback::Never);
}

/// How a stream that did not arrive intact ended.
#[derive(Debug)]
struct Damaged {
    error: StreamError,
    /// The connection then ended with FIN (read 0 and the socket not reset).
    clean_end: bool,
}

/// Verifies `spec` on `conn`; on failure reads on to the end of the
/// connection to tell a clean close from a reset.
fn receive_to_end(conn: &TcpStream, spec: StreamSpec) -> Result<stream::Report, Damaged> {
    stream::verify_tcp(conn, spec, BULK).map_err(|error| {
        let deadline = Deadline::after(SHORT);
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let mut buf = vec![0u8; 1 << 16];
        let clean_end = loop {
            match (&*conn).read(&mut buf) {
                Ok(0) => break e2e::tcp_state(conn).expect("TCP_INFO") != e2e::TCP_CLOSE,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !deadline.expired() => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("the connection neither closed nor reset after {error}")
                }
                Err(_) => break false,
            }
        };
        Damaged { error, clean_end }
    })
}

/// Connection sizes: a fixed mix of zero, one byte and a few MiB, the rest
/// log-uniform up to 4 MiB from `seed` (xorshift64).
fn sizes(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match i % 16 {
                0 => 0,
                1 => 1,
                2 => (4 << 20) + x % 4096,
                _ => {
                    let exp = x % 22;
                    (1 << exp) + (x >> 32) % (1 << exp)
                }
            }
        })
        .collect()
}

/// 64 concurrent connections of random sizes (zero bytes included), each one
/// echoed by the server and verified by the client, both directions at once.
fn sixty_four_connections(path: &'static str) {
    const N: usize = 64;
    let h = Harness::new(path);
    let seed = std::env::var("E2E_RELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let lens = sizes(seed, N);
    let total: u64 = lens.iter().sum();
    let listener = h.listen();
    let deadline = Deadline::after(BULK);
    let server = h
        .topo
        .spawn_tokio_in(Node::Prod, move || async move {
            use tokio::io::AsyncWriteExt;
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let mut echoes = tokio::task::JoinSet::new();
            for _ in 0..N {
                let accepted =
                    tokio::time::timeout_at(deadline.instant().into(), listener.accept()).await;
                let (conn, _) = accepted
                    .unwrap_or_else(|_| panic!("{path} server: fewer than {N} connections"))
                    .expect("accept");
                echoes.spawn(async move {
                    let (mut r, mut w) = conn.into_split();
                    let n = tokio::io::copy(&mut r, &mut w).await?;
                    w.shutdown().await?;
                    Ok::<u64, std::io::Error>(n)
                });
            }
            let mut echoed = 0;
            while let Some(done) = echoes.join_next().await {
                echoed += done
                    .expect("echo task")
                    .unwrap_or_else(|e| panic!("{path} server echo: {e}"));
            }
            echoed
        })
        .expect("server in prod");
    let relay_addr = h.relay.addr;
    let failures = h
        .topo
        .block_on_in(Node::Gwb, move || async move {
            use tokio::io::AsyncWriteExt;
            let mut clients = tokio::task::JoinSet::new();
            for (i, len) in lens.into_iter().enumerate() {
                clients.spawn(async move {
                    let spec = StreamSpec::new(1000 + i as u64, len);
                    let conn =
                        tokio::time::timeout(SHORT, tokio::net::TcpStream::connect(relay_addr))
                            .await
                            .map_err(|_| format!("connection {i}: connect timed out"))?
                            .map_err(|e| format!("connection {i}: connect: {e}"))?;
                    let (mut r, mut w) = conn.into_split();
                    let send = async {
                        let sent = stream::send_async(&mut w, spec, deadline).await?;
                        w.shutdown()
                            .await
                            .map_err(|source| StreamError::Io { done: len, source })?;
                        Ok::<_, StreamError>(sent)
                    };
                    let (sent, got) =
                        tokio::join!(send, stream::verify_async(&mut r, spec, deadline));
                    match (sent, got) {
                        (Ok(sent), Ok(got)) if sent.sha256 == got.sha256 => Ok(()),
                        (Ok(_), Ok(_)) => Err(format!("connection {i} ({len} B): digests differ")),
                        (Err(e), _) => Err(format!("connection {i} ({len} B) send: {e}")),
                        (_, Err(e)) => Err(format!("connection {i} ({len} B) echo: {e}")),
                    }
                });
            }
            let mut failures = Vec::new();
            while let Some(done) = clients.join_next().await {
                if let Err(e) = done.expect("client task") {
                    failures.push(e);
                }
            }
            failures
        })
        .expect("clients in gwb");
    assert!(
        failures.is_empty(),
        "{path}: {} of {N} connections failed (E2E_RELAY_SEED={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    let echoed = server.join_deadline(SHORT).expect("server");
    assert_eq!(echoed, total, "{path}: bytes echoed");
    // A client that sends everything and FIN at once may have half-closed
    // before the relay set its connection up.
    h.relay
        .expect_closed(&h.topo, N, Fallback::IfHalfClosedAtSetup);
}

/// The client sends a request, shuts its write side, then reads the answer:
/// the server must see the end of the request only after all of it, and the
/// answer must still flow back. Once with 8 MiB (bytes in flight when the FIN
/// arrives at the relay), once with an empty request (a bare FIN).
fn request_then_half_close(path: &'static str) {
    let h = Harness::new(path);
    let listener = h.listen();
    let cases = [
        (StreamSpec::new(4, 8 << 20), StreamSpec::new(5, 4 << 20)),
        (StreamSpec::new(6, 0), StreamSpec::new(7, 1024)),
    ];
    for (request, answer) in cases {
        let server = {
            let listener = listener.try_clone().expect("clone listener");
            std::thread::spawn(move || {
                let conn = accept(&listener, SHORT);
                let got = stream::verify_tcp(&conn, request, BULK)
                    .unwrap_or_else(|e| panic!("{path} server reads the request: {e}"));
                let sent = stream::send_tcp(&conn, answer, BULK)
                    .unwrap_or_else(|e| panic!("{path} server answers: {e}"));
                (got, sent)
            })
        };
        let conn = h.connect();
        let sent = stream::send_tcp(&conn, request, BULK)
            .unwrap_or_else(|e| panic!("{path} client sends: {e}"));
        let got = stream::verify_tcp(&conn, answer, BULK).unwrap_or_else(|e| {
            panic!(
                "{path} client reads the answer of a {} B request: {e}",
                request.len
            )
        });
        let (server_got, server_sent) = join(server);
        assert_eq!(server_got.sha256, sent.sha256, "{path}: request digest");
        assert_eq!(got.sha256, server_sent.sha256, "{path}: answer digest");
    }
    // The empty request's FIN may reach the relay before it sets up.
    h.relay
        .expect_closed(&h.topo, cases.len(), Fallback::IfHalfClosedAtSetup);
}

/// A peer resets mid-stream: the other end must see a reset (not a clean end,
/// not a hang) promptly. First the server resets while the client sends, then
/// the client resets while the server sends; the relay keeps working after.
fn reset_mid_stream(path: &'static str) {
    const SOME: u64 = 1 << 20;
    let h = Harness::new(path);
    let listener = h.listen();
    let endless = StreamSpec::new(8, 1 << 40);

    // The server resets.
    let (reset_at_tx, reset_at) = mpsc::channel();
    let server = {
        let listener = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            let mut conn = accept(&listener, SHORT);
            conn.set_read_timeout(Some(SHORT)).expect("timeout");
            stream::verify_exact(&mut conn, StreamSpec::new(endless.seed, SOME), SHORT)
                .unwrap_or_else(|e| panic!("{path} server reads: {e}"));
            reset(conn);
            reset_at_tx.send(Instant::now()).expect("report the reset");
        })
    };
    let conn = h.connect();
    let outcome = stream::send_tcp(&conn, endless, BULK);
    let seen = Instant::now();
    join(server);
    let reset_at = reset_at.recv().expect("reset time");
    match outcome {
        Err(e) if is_reset(&e) => {}
        other => panic!("{path}: client expected a reset after the server's, got {other:?}"),
    }
    let took = seen.saturating_duration_since(reset_at);
    assert!(
        took < RESET_PROMPT,
        "{path}: the client saw the server's reset after {took:?}"
    );
    eprintln!("{path}: server reset reached the client in {took:?}");

    // The client resets.
    let server = {
        let listener = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            let conn = accept(&listener, SHORT);
            let outcome = stream::send_tcp(&conn, endless, BULK);
            (outcome, Instant::now())
        })
    };
    let mut conn = h.connect();
    conn.set_read_timeout(Some(SHORT)).expect("timeout");
    stream::verify_exact(&mut conn, StreamSpec::new(endless.seed, SOME), SHORT)
        .unwrap_or_else(|e| panic!("{path} client reads: {e}"));
    let reset_at = Instant::now();
    reset(conn);
    let (outcome, seen) = join(server);
    match outcome {
        Err(e) if is_reset(&e) => {}
        other => panic!("{path}: server expected a reset after the client's, got {other:?}"),
    }
    let took = seen.saturating_duration_since(reset_at);
    assert!(
        took < RESET_PROMPT,
        "{path}: the server saw the client's reset after {took:?}"
    );
    eprintln!("{path}: client reset reached the server in {took:?}");

    // Still relaying.
    let spec = StreamSpec::new(9, 1 << 20);
    let server = std::thread::spawn(move || {
        let conn = accept(&listener, SHORT);
        stream::send_tcp(&conn, spec, SHORT)
            .unwrap_or_else(|e| panic!("{path} server sends after resets: {e}"))
    });
    let conn = h.connect();
    let got = stream::verify_tcp(&conn, spec, SHORT)
        .unwrap_or_else(|e| panic!("{path} after resets: {e}"));
    conn.shutdown(Shutdown::Write).expect("close");
    assert_eq!(got.sha256, join(server).sha256);
    h.relay.expect_closed(&h.topo, 1, Fallback::Never);
}

/// Waits until the relay's namespace holds an established connection to the
/// relay port (accepted or not) with at least `bytes` unread.
fn wait_queued(relay: &Relay, bytes: u64) {
    eventually(SHORT, || {
        let queued = tcp_sockets(relay.daemon.id())
            .iter()
            .filter(|s| s.local_port == RELAY_PORT && s.state == TCP_ESTABLISHED)
            .map(|s| s.rx_queue)
            .max()
            .unwrap_or(0);
        if queued >= bytes {
            Ok(())
        } else {
            Err(format!("{queued} of {bytes} bytes queued at the relay"))
        }
    })
    .unwrap_or_else(|e| panic!("{}: {e:#}", relay.path));
}

/// The client sends before the relay has even accepted its connection (the
/// relay process is stopped with SIGSTOP while the kernel completes the
/// handshake and queues the bytes), and the server speaks first as soon as it
/// is dialled. Once with a small request and nothing after it until the
/// answer (bytes queued before setup must not wait for more traffic), once
/// with 8 MiB each way.
fn sends_before_setup(path: &'static str) {
    let h = Harness::new(path);
    let listener = h.listen();

    // Small: a 100-byte request, then silence until the 1 KiB greeting.
    let (request, greeting) = (StreamSpec::new(10, 100), StreamSpec::new(11, 1024));
    let server = {
        let listener = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            let mut conn = accept(&listener, SHORT);
            conn.write_all(&greeting.to_vec()).expect("greeting");
            conn.set_read_timeout(Some(SHORT)).expect("timeout");
            stream::verify_exact(&mut conn, request, SHORT)
                .unwrap_or_else(|e| panic!("{path} server reads the early request: {e}"));
            conn.shutdown(Shutdown::Write).expect("server closes");
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).expect("client's close");
            assert!(rest.is_empty(), "{path}: {} unexpected bytes", rest.len());
        })
    };
    h.relay.stop_process();
    let mut conn = h.connect();
    conn.write_all(&request.to_vec()).expect("early request");
    wait_queued(&h.relay, request.len);
    h.relay.continue_process();
    conn.set_read_timeout(Some(SHORT)).expect("timeout");
    stream::verify_exact(&mut conn, greeting, SHORT)
        .unwrap_or_else(|e| panic!("{path} client reads the greeting: {e}"));
    conn.shutdown(Shutdown::Write).expect("client closes");
    // Nothing follows the greeting but the server's close.
    stream::verify_tcp(&conn, StreamSpec::new(greeting.seed, 0), SHORT)
        .unwrap_or_else(|e| panic!("{path} client waits for the server's close: {e}"));
    join(server);

    // Bulk: the client streams from the first instant, the server too.
    const LEN: u64 = 8 << 20;
    let (up, down) = (StreamSpec::new(12, LEN), StreamSpec::new(13, LEN));
    let server = std::thread::spawn(move || {
        let conn = accept(&listener, SHORT);
        let writer = conn.try_clone().expect("clone");
        let send = std::thread::spawn(move || stream::send_tcp(&writer, down, BULK));
        let got = stream::verify_tcp(&conn, up, BULK)
            .unwrap_or_else(|e| panic!("{path} server receives: {e}"));
        let sent = join(send).unwrap_or_else(|e| panic!("{path} server sends: {e}"));
        (got, sent)
    });
    h.relay.stop_process();
    let conn = h.connect();
    let writer = conn.try_clone().expect("clone");
    let send = std::thread::spawn(move || stream::send_tcp(&writer, up, BULK));
    // Some of the client's bulk bytes wait in the kernel before setup.
    wait_queued(&h.relay, 16 << 10);
    h.relay.continue_process();
    let got = stream::verify_tcp(&conn, down, BULK)
        .unwrap_or_else(|e| panic!("{path} client receives: {e}"));
    let sent = join(send).unwrap_or_else(|e| panic!("{path} client sends: {e}"));
    let (server_got, server_sent) = join(server);
    assert_eq!(
        server_got.sha256, sent.sha256,
        "{path}: client -> server digest"
    );
    assert_eq!(
        got.sha256, server_sent.sha256,
        "{path}: server -> client digest"
    );
    h.relay.expect_closed(&h.topo, 2, Fallback::Never);
}

/// Most a relay may hold for a stalled reader: the sender's send buffer, the
/// relay's two sockets' buffers and its own buffer, and the reader's receive
/// buffer, with room to spare (tcp_rmem/tcp_wmem maxima are a few MiB each).
const BUFFERED_MAX: u64 = 64 << 20;

/// A reader that stops reading must stop the sender (TCP flow control through
/// the relay), not make the relay queue without bound: the server reads
/// nothing for two seconds while the client sends as fast as it can; then
/// everything the client got rid of must arrive intact, and no more.
fn stalled_reader_holds_back_the_sender(path: &'static str) {
    const STALL: Duration = Duration::from_secs(2);
    let h = Harness::new(path);
    let listener = h.listen();
    let (accepted_tx, accepted) = mpsc::channel();
    let (sent_tx, sent_rx) = mpsc::channel::<u64>();
    let spec = StreamSpec::new(14, 1 << 40);
    let server = std::thread::spawn(move || {
        let conn = accept(&listener, SHORT);
        accepted_tx.send(()).expect("report the accept");
        // Read nothing until the client has given up sending.
        let sent = sent_rx
            .recv_timeout(STALL + SHORT)
            .expect("the client's count");
        stream::verify_tcp(&conn, StreamSpec::new(spec.seed, sent), BULK)
            .unwrap_or_else(|e| panic!("{path} server reads what was sent ({sent} B): {e}"))
    });
    let conn = h.connect();
    accepted
        .recv_timeout(SHORT)
        .expect("the relay dialled the server");
    let sent = match stream::send_tcp(&conn, spec, STALL) {
        Err(StreamError::Timeout { done, .. }) => done,
        other => panic!("{path}: the client should still be blocked, got {other:?}"),
    };
    conn.shutdown(Shutdown::Write).expect("client closes");
    sent_tx.send(sent).expect("tell the server");
    let got = join(server);
    assert_eq!(got.bytes, sent);
    eprintln!("{path}: {} MiB in flight for a stalled reader", sent >> 20);
    assert!(
        sent <= BUFFERED_MAX,
        "{path}: the sender got rid of {} MiB while nobody read: the relay does not push back \
         (at most {} MiB fit in the sockets' buffers)",
        sent >> 20,
        BUFFERED_MAX >> 20
    );
    h.relay.expect_closed(&h.topo, 1, Fallback::Never);
}

/// Flow control, per path: see [`stalled_reader_holds_back_the_sender`].
mod backpressure {
    #[test]
    #[ignore = "known limitation: the sockmap redirect queue has no backpressure of its own; \
                the window-clamp flow gate bounds a slow reader (gateway relay_paths test) \
                but not one that stops reading; sockmap is therefore opt-in (auto = splice)"]
    fn sockmap_stalled_reader_holds_back_the_sender() {
        super::stalled_reader_holds_back_the_sender("sockmap")
    }
    #[test]
    fn splice_stalled_reader_holds_back_the_sender() {
        super::stalled_reader_holds_back_the_sender("splice")
    }
    #[test]
    fn copy_stalled_reader_holds_back_the_sender() {
        super::stalled_reader_holds_back_the_sender("copy")
    }
}

macro_rules! path_tests {
    ($module:ident, $path:literal) => {
        mod $module {
            #[test]
            fn one_gib_one_way() {
                super::one_gib_one_way($path)
            }
            #[test]
            fn both_ways_256_mib_at_once() {
                super::both_ways_at_once($path)
            }
            #[test]
            fn sixty_four_concurrent_connections() {
                super::sixty_four_connections($path)
            }
            #[test]
            fn request_then_half_close_then_answer() {
                super::request_then_half_close($path)
            }
            #[test]
            fn reset_mid_stream_reaches_the_other_side() {
                super::reset_mid_stream($path)
            }
            #[test]
            fn bytes_sent_before_setup_are_kept() {
                super::sends_before_setup($path)
            }
        }
    };
}

path_tests!(sockmap, "sockmap");
path_tests!(splice, "splice");
path_tests!(copy, "copy");

#[test]
fn sizes_include_empty_and_large_connections() {
    let lens = sizes(42, 64);
    assert_eq!(lens.len(), 64);
    assert!(lens.iter().filter(|&&l| l == 0).count() >= 4);
    assert!(lens.contains(&1));
    assert!(lens.iter().any(|&l| l >= 4 << 20));
    assert!(lens.iter().all(|&l| l < 5 << 20));
}
