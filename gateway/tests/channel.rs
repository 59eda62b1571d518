//! The secure gateway-to-gateway channel on loopback, with real TLS: two
//! in-process gateways (CONS "gwA" with a LAN listener, PROD "gwB" with a
//! WAN listener that dials the sink) built from `gateway::channel`'s API.
//!
//! client --LAN--> gwA --TLS channel--> gwB --LAN--> sink
//!
//! Integrity both ways, half-close, resets, a TLS alert mid-stream; refused
//! connections (wrong secret, replayed proof, plain TCP, silent, garbage,
//! wrong pinned certificate, mode mismatch) never reach the sink; the opt-in
//! plaintext mode runs over the kernel relay (needs root, as CI has). The
//! TLS 1.2 opt-in and CA verification end to end (accepted and refused),
//! and TLS 1.3 KeyUpdates from a plain rustls peer followed mid-stream.
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::{Consumer, Pattern, expect_pattern, expect_pattern_as, send_pattern, send_rest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::Role;
use gateway::channel::{
    self, CertSource, ChannelConfig, ChannelInfo, ChannelPath, ChannelPaths, ChannelSettings,
    FailureReason, PeerVerification,
};
use gateway::ebpf::KernelRelay;
use gateway::relay::{ConnCounters, DataPath, RelayEngine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(120);
const SECRET: [u8; 32] = [0x5a; 32];

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// What one gateway did with one connection.
#[derive(Debug)]
enum Outcome {
    Refused(Option<FailureReason>, #[allow(dead_code)] String),
    Relayed(Result<ChannelPath, String>),
}

struct Options {
    settings_a: Box<dyn Fn(&std::path::Path) -> ChannelSettings>,
    settings_b: Box<dyn Fn(&std::path::Path) -> ChannelSettings>,
    secret_a: [u8; 32],
    caps: ChannelPaths,
    /// gwA speaks TLS 1.2 only (`ChannelConfig::new_tls12_only`).
    tls12_only_a: bool,
    /// gwB speaks TLS 1.2 only.
    tls12_only_b: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settings_a: Box::new(|dir| ChannelSettings::self_signed(dir)),
            settings_b: Box::new(|dir| ChannelSettings::self_signed(dir)),
            secret_a: SECRET,
            caps: ChannelPaths::detect(RelayEngine::userspace(), DataPath::Splice),
            tls12_only_a: false,
            tls12_only_b: false,
        }
    }
}

fn config(settings: ChannelSettings, tls12_only: bool) -> ChannelConfig {
    if tls12_only {
        ChannelConfig::new_tls12_only(settings).expect("TLS 1.2-only config")
    } else {
        ChannelConfig::new(settings).expect("config")
    }
}

/// What each gateway negotiated, per established channel.
type Infos = Arc<Mutex<Vec<ChannelInfo>>>;

struct Pair {
    /// gwA's LAN listener (where the client connects).
    lan_addr: SocketAddr,
    /// gwB's WAN listener (where attackers connect).
    wan_addr: SocketAddr,
    /// What the PROD application (behind gwB) sees.
    sink: TcpListener,
    a: mpsc::UnboundedReceiver<Outcome>,
    b: mpsc::UnboundedReceiver<Outcome>,
    cfg_a: ChannelConfig,
    cfg_b: ChannelConfig,
    info_a: Infos,
    info_b: Infos,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(options: Options) -> Pair {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_a = config(
            (options.settings_a)(&dir.path().join("a")),
            options.tls12_only_a,
        );
        let cfg_b = config(
            (options.settings_b)(&dir.path().join("b")),
            options.tls12_only_b,
        );
        let (info_a, info_b) = (Infos::default(), Infos::default());
        let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink_addr = sink.local_addr().expect("sink addr");
        let wan = TcpListener::bind("127.0.0.1:0").await.expect("bind gwB");
        let wan_addr = wan.local_addr().expect("gwB addr");
        let lan = TcpListener::bind("127.0.0.1:0").await.expect("bind gwA");
        let lan_addr = lan.local_addr().expect("gwA addr");
        let (tx_a, a) = mpsc::unbounded_channel();
        let (tx_b, b) = mpsc::unbounded_channel();

        // gwB (PROD): channel::accept, then (only then) dial the sink.
        let (cfg, caps, infos) = (cfg_b.clone(), options.caps.clone(), info_b.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = wan.accept().await else {
                    return;
                };
                let (cfg, caps, tx) = (cfg.clone(), caps.clone(), tx_b.clone());
                let infos = infos.clone();
                tokio::spawn(async move {
                    let outcome = match channel::accept(tcp, &cfg, &SECRET).await {
                        Err(err) => Outcome::Refused(err.reason(), err.to_string()),
                        Ok(ch) => {
                            assert_eq!(ch.role(), Role::Prod);
                            infos.lock().expect("infos").push(ch.info().clone());
                            let lan = TcpStream::connect(sink_addr)
                                .await
                                .expect("gwB dials the sink");
                            let counters = ConnCounters::default();
                            let result = channel::relay_channel(ch, lan, &counters, &caps).await;
                            Outcome::Relayed(result.map_err(|e| e.to_string()))
                        }
                    };
                    let _ = tx.send(outcome);
                });
            }
        });

        // gwA (CONS): accept the client, dial gwB, channel::connect, relay.
        let (cfg, caps, secret) = (cfg_a.clone(), options.caps, options.secret_a);
        let infos = info_a.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = lan.accept().await else {
                    return;
                };
                let (cfg, caps, tx) = (cfg.clone(), caps.clone(), tx_a.clone());
                let infos = infos.clone();
                tokio::spawn(async move {
                    let tcp = TcpStream::connect(wan_addr).await.expect("gwA dials gwB");
                    let outcome = match channel::connect(tcp, &cfg, "localhost", &secret).await {
                        Err(err) => Outcome::Refused(err.reason(), err.to_string()),
                        Ok(ch) => {
                            infos.lock().expect("infos").push(ch.info().clone());
                            let counters = ConnCounters::default();
                            let result = channel::relay_channel(ch, client, &counters, &caps).await;
                            Outcome::Relayed(result.map_err(|e| e.to_string()))
                        }
                    };
                    let _ = tx.send(outcome);
                });
            }
        });
        Pair {
            lan_addr,
            wan_addr,
            sink,
            a,
            b,
            cfg_a,
            cfg_b,
            info_a,
            info_b,
            _dir: dir,
        }
    }

    async fn outcome_b(&mut self) -> Outcome {
        tokio::time::timeout(DEADLINE, self.b.recv())
            .await
            .expect("gwB reports in time")
            .expect("gwB alive")
    }

    async fn outcome_a(&mut self) -> Outcome {
        tokio::time::timeout(DEADLINE, self.a.recv())
            .await
            .expect("gwA reports in time")
            .expect("gwA alive")
    }

    /// What each gateway negotiated on its one established channel.
    fn negotiated(&self) -> (ChannelInfo, ChannelInfo) {
        let one = |infos: &Infos, who: &str| {
            let infos = infos.lock().expect("infos");
            assert_eq!(infos.len(), 1, "{who}: one established channel");
            infos[0].clone()
        };
        (one(&self.info_a, "gwA"), one(&self.info_b, "gwB"))
    }

    /// The sink must not get a connection (checked after the refusal was
    /// reported, so a short wait only guards against a late dial).
    async fn assert_sink_untouched(&self) {
        if let Ok(Ok((_, peer))) =
            tokio::time::timeout(Duration::from_millis(300), self.sink.accept()).await
        {
            panic!("the sink got a connection from {peer} although the channel was refused");
        }
    }
}

fn expected_tls_path(caps: &ChannelPaths) -> ChannelPath {
    if caps.ktls.available() {
        ChannelPath::KernelTls
    } else {
        ChannelPath::UserspaceTls
    }
}

fn kernel_engine() -> RelayEngine {
    RelayEngine::with_kernel(Arc::new(
        KernelRelay::load().expect("loading the eBPF relay (this test needs root)"),
    ))
}

/// `len` bytes each way at once, through both gateways.
async fn both_ways(pair: &mut Pair, len: u64) {
    both_ways_as(pair, len, Consumer::Fast).await
}

/// [`both_ways`] with both ends reading as `consumer` does.
async fn both_ways_as(pair: &mut Pair, len: u64, consumer: Consumer) {
    let mut client = TcpStream::connect(pair.lan_addr)
        .await
        .expect("connect gwA");
    let (mut server, _) = tokio::time::timeout(DEADLINE, pair.sink.accept())
        .await
        .expect("sink accept in time")
        .expect("accept");
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    let work = async {
        tokio::try_join!(
            async {
                send_pattern(&mut client_w, 1, len)
                    .await
                    .map_err(|e| format!("client send: {e}"))?;
                client_w
                    .shutdown()
                    .await
                    .map_err(|e| format!("client shutdown: {e}"))
            },
            async {
                send_pattern(&mut server_w, 2, len)
                    .await
                    .map_err(|e| format!("server send: {e}"))?;
                server_w
                    .shutdown()
                    .await
                    .map_err(|e| format!("server shutdown: {e}"))
            },
            async {
                expect_pattern_as(&mut server_r, 1, len, consumer)
                    .await
                    .map_err(|e| format!("client -> server: {e}"))
            },
            async {
                expect_pattern_as(&mut client_r, 2, len, consumer)
                    .await
                    .map_err(|e| format!("server -> client: {e}"))
            },
        )
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .expect("transfer in time")
        .expect("bytes intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_intact_both_ways_through_two_gateways() {
    let options = Options::default();
    let want = expected_tls_path(&options.caps);
    let mut pair = Pair::start(options).await;
    both_ways(&mut pair, 64 << 20).await;
    for outcome in [pair.outcome_a().await, pair.outcome_b().await] {
        match outcome {
            Outcome::Relayed(Ok(path)) => assert_eq!(path, want),
            other => panic!("expected a clean relay on {want}, got {other:?}"),
        }
    }
    assert_eq!(pair.cfg_a.failures().established(), 1);
    assert_eq!(pair.cfg_b.failures().established(), 1);
    assert_eq!(pair.cfg_b.failures().total(), 0);
}

/// Both gateways relayed one connection cleanly on the expected path.
async fn expect_clean_relays(pair: &mut Pair, want: ChannelPath) {
    for (who, outcome) in [
        ("gwA", pair.outcome_a().await),
        ("gwB", pair.outcome_b().await),
    ] {
        match outcome {
            Outcome::Relayed(Ok(path)) => assert_eq!(path, want, "{who}"),
            other => panic!("{who}: expected a clean relay on {want}, got {other:?}"),
        }
    }
}

/// A lowered AES-GCM record limit (the test-only setting) on both gateways.
fn record_limit(records: u64) -> Box<dyn Fn(&Path) -> ChannelSettings> {
    Box::new(move |dir: &Path| ChannelSettings {
        aes_gcm_record_limit: Some(records),
        ..ChannelSettings::self_signed(dir)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_updated_many_times_on_a_long_stream_both_ways() {
    // 64 records of at most 16 KiB under one key: 8 MiB each way needs at
    // least 8 key updates per direction.
    let options = Options {
        settings_a: record_limit(64),
        settings_b: record_limit(64),
        ..Options::default()
    };
    let want = expected_tls_path(&options.caps);
    let mut pair = Pair::start(options).await;
    both_ways(&mut pair, 8 << 20).await;
    expect_clean_relays(&mut pair, want).await;
    let (a, b) = pair.negotiated();
    assert!(a.cipher_suite.contains("AES_128_GCM"), "{a:?}");
    let (sent_a, sent_b) = (
        pair.cfg_a.key_updates().sent(),
        pair.cfg_b.key_updates().sent(),
    );
    assert!(
        sent_a >= 8 && sent_b >= 8,
        "key updates sent: gwA {sent_a}, gwB {sent_b}"
    );
    assert_eq!(
        pair.cfg_b.key_updates().received(),
        sent_a,
        "gwB followed each of gwA's"
    );
    assert_eq!(
        pair.cfg_a.key_updates().received(),
        sent_b,
        "gwA followed each of gwB's"
    );
    assert_eq!(b.cipher_suite, a.cipher_suite);
}

/// 64 MiB each way to ends that read as `consumer` does, with key updates
/// every 256 records on the way.
async fn under_back_pressure(consumer: Consumer) {
    let options = Options {
        settings_a: record_limit(256),
        settings_b: record_limit(256),
        ..Options::default()
    };
    let want = expected_tls_path(&options.caps);
    let mut pair = Pair::start(options).await;
    both_ways_as(&mut pair, 64 << 20, consumer).await;
    expect_clean_relays(&mut pair, want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_lose_nothing_under_back_pressure() {
    // Both ends read 16 KiB at a time with a pause: every socket and pipe on
    // the way fills and the relays meet short writes and EAGAIN throughout.
    under_back_pressure(Consumer::Slow {
        chunk: 16 * 1024,
        pause: Duration::from_micros(200),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_consumers_resume_and_lose_nothing() {
    // Both ends stop reading for 3 s after 8 MiB, then read on.
    under_back_pressure(Consumer::Stalling {
        after: 8 << 20,
        pause: Duration::from_secs(3),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chacha20_is_negotiated_when_either_gateway_prefers_it() {
    let prefer = |dir: &Path| ChannelSettings {
        prefer_chacha20: true,
        ..ChannelSettings::self_signed(dir)
    };
    for (case, prefer_a, prefer_b, want) in [
        ("neither", false, false, "AES_128_GCM"),
        ("the CONS gateway", true, false, "CHACHA20_POLY1305"),
        ("the PROD gateway", false, true, "CHACHA20_POLY1305"),
        ("both", true, true, "CHACHA20_POLY1305"),
    ] {
        let pick = |yes: bool| -> Box<dyn Fn(&Path) -> ChannelSettings> {
            if yes {
                Box::new(prefer)
            } else {
                Box::new(|dir: &Path| ChannelSettings::self_signed(dir))
            }
        };
        let options = Options {
            settings_a: pick(prefer_a),
            settings_b: pick(prefer_b),
            ..Options::default()
        };
        let path = expected_tls_path(&options.caps);
        let mut pair = Pair::start(options).await;
        both_ways(&mut pair, 1 << 20).await;
        expect_clean_relays(&mut pair, path).await;
        let (a, b) = pair.negotiated();
        assert!(
            a.cipher_suite.contains(want) && b.cipher_suite == a.cipher_suite,
            "{case} prefers ChaCha20: negotiated {} / {}, expected {want}",
            a.cipher_suite,
            b.cipher_suite
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_request_then_response() {
    let mut pair = Pair::start(Options::default()).await;
    let mut client = TcpStream::connect(pair.lan_addr)
        .await
        .expect("connect gwA");
    let (mut server, _) = pair.sink.accept().await.expect("sink accept");
    let work = async {
        send_pattern(&mut client, 3, 100_000)
            .await
            .expect("request");
        client.shutdown().await.expect("client FIN");
        // The server sees the whole request, then EOF (close_notify -> FIN) ...
        expect_pattern(&mut server, 3, 100_000)
            .await
            .expect("request intact, then EOF");
        // ... and can still answer on the other half.
        send_pattern(&mut server, 4, 3 << 20)
            .await
            .expect("response");
        server.shutdown().await.expect("server FIN");
        expect_pattern(&mut client, 4, 3 << 20)
            .await
            .expect("response intact, then EOF");
    };
    tokio::time::timeout(DEADLINE, work).await.expect("in time");
    assert!(matches!(pair.outcome_a().await, Outcome::Relayed(Ok(_))));
    assert!(matches!(pair.outcome_b().await, Outcome::Relayed(Ok(_))));
}

fn is_reset(result: std::io::Result<usize>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

async fn read_until_error(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(0),
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Connects the LAN client to gwA in a test whose channel is refused. `None`
/// when the refusal was fast enough to reset the connection while connect
/// was still returning (seen on a loaded machine): for such a test that is a
/// client closed at once, without a byte.
async fn connect_refused_client(addr: SocketAddr) -> Option<TcpStream> {
    match TcpStream::connect(addr).await {
        Ok(client) => Some(client),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect gwA: {e}"),
    }
}

/// The refused client's connection ends without a byte (a clean end or a
/// reset), within the test deadline.
async fn expect_closed_without_data(client: Option<TcpStream>, case: &str) {
    let Some(mut client) = client else { return };
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, client.read(&mut buf))
        .await
        .expect("in time");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "{case}: client connection should be closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_propagates_both_ways() {
    let mut pair = Pair::start(Options::default()).await;
    // The sink resets: the client must see a reset, not a clean EOF.
    let mut client = TcpStream::connect(pair.lan_addr)
        .await
        .expect("connect gwA");
    let (mut server, _) = pair.sink.accept().await.expect("sink accept");
    client.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.expect("ping arrives");
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(server);
    let seen = tokio::time::timeout(DEADLINE, read_until_error(&mut client))
        .await
        .expect("in time");
    assert!(
        is_reset(seen),
        "client should see a reset after the sink reset"
    );
    assert!(matches!(pair.outcome_b().await, Outcome::Relayed(Err(_))));
    assert!(matches!(pair.outcome_a().await, Outcome::Relayed(Err(_))));

    // The client resets: the sink must see a reset.
    let mut client = TcpStream::connect(pair.lan_addr)
        .await
        .expect("connect gwA");
    let (mut server, _) = pair.sink.accept().await.expect("sink accept");
    client.write_all(b"ping").await.expect("write");
    server.read_exact(&mut got).await.expect("ping arrives");
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(client);
    let seen = tokio::time::timeout(DEADLINE, read_until_error(&mut server))
        .await
        .expect("in time");
    assert!(
        is_reset(seen),
        "sink should see a reset after the client reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_on_both_sides_and_nothing_is_forwarded() {
    let mut pair = Pair::start(Options {
        secret_a: [0x11; 32],
        ..Options::default()
    })
    .await;
    let mut client = connect_refused_client(pair.lan_addr).await;
    if let Some(client) = client.as_mut() {
        let _ = client.write_all(b"must never arrive").await;
    }
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::BadProof), _) => {}
        other => panic!("gwB should refuse a wrong secret, got {other:?}"),
    }
    match pair.outcome_a().await {
        Outcome::Refused(Some(FailureReason::BadProof), _) => {}
        other => panic!("gwA should refuse gwB's proof too, got {other:?}"),
    }
    pair.assert_sink_untouched().await;
    expect_closed_without_data(client, "wrong secret").await;
    assert_eq!(pair.cfg_b.failures().get(FailureReason::BadProof), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_client_is_refused() {
    let mut pair = Pair::start(Options::default()).await;
    let mut raw = TcpStream::connect(pair.wan_addr)
        .await
        .expect("connect gwB");
    raw.write_all(b"hello, is this a relay?\n")
        .await
        .expect("write");
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::NotTls), _) => {}
        other => panic!("expected NotTls, got {other:?}"),
    }
    let n = tokio::time::timeout(DEADLINE, read_until_error(&mut raw))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    pair.assert_sink_untouched().await;
    assert_eq!(pair.cfg_b.failures().get(FailureReason::NotTls), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_garbage_is_refused() {
    let mut pair = Pair::start(Options::default()).await;
    let mut raw = TcpStream::connect(pair.wan_addr)
        .await
        .expect("connect gwB");
    let mut garbage = vec![0u8; 4096];
    Pattern::new(99).fill(&mut garbage);
    garbage[0] = 0xde;
    let _ = raw.write_all(&garbage).await;
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::NotTls | FailureReason::Handshake), _) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    let n = tokio::time::timeout(DEADLINE, read_until_error(&mut raw))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    pair.assert_sink_untouched().await;
}

/// A pair whose gwB (PROD) gives handshake and proof `timeout`.
async fn pair_with_proof_timeout(timeout: Duration) -> Pair {
    let settings = move |dir: &std::path::Path| ChannelSettings {
        proof_timeout: timeout,
        ..ChannelSettings::self_signed(dir)
    };
    Pair::start(Options {
        settings_b: Box::new(settings),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out() {
    let timeout = Duration::from_millis(800);
    let mut pair = pair_with_proof_timeout(timeout).await;
    let started = std::time::Instant::now();
    let mut raw = TcpStream::connect(pair.wan_addr)
        .await
        .expect("connect gwB");
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::Timeout), _) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= timeout, "refused before the deadline");
    let n = tokio::time::timeout(DEADLINE, read_until_error(&mut raw))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    pair.assert_sink_untouched().await;
    assert_eq!(pair.cfg_b.failures().get(FailureReason::Timeout), 1);
}

/// The PROD side is no oracle: a peer that completes TLS with its data
/// port (any certificate is accepted without `--channel-peer-*`) and proves
/// nothing receives no application byte, so no MAC over an exporter it
/// knows to test guessed secrets against offline. It is refused at the
/// proof deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_proves_nothing_receives_no_application_byte() {
    let mut pair = pair_with_proof_timeout(Duration::from_millis(800)).await;
    let addr = pair.wan_addr;
    let received =
        tokio::task::spawn_blocking(move || raw_client::application_bytes_without_proof(addr));
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::Timeout), _) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    let received = tokio::time::timeout(DEADLINE, received)
        .await
        .expect("gwB closed the connection in time")
        .expect("client thread");
    assert_eq!(
        received, 0,
        "gwB sent {received} bytes of application data (its proof) before the peer proved anything"
    );
    pair.assert_sink_untouched().await;
}

/// A hand-made TLS client that sends a given proof (or computes one).
mod raw_client {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCert;
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Connects, completes the handshake, sends `proof` (or the right proof
    /// for this connection when None), then some data; returns the proof
    /// sent and whether the server closed the connection (`wait_close`: wait
    /// for the close instead of returning once gwB's proof arrived).
    /// A TLS 1.3 rustls client connected to gwB, handshake done; returns
    /// the connection, its socket and its exporter value for the proof.
    fn handshake(
        addr: std::net::SocketAddr,
    ) -> (rustls::ClientConnection, std::net::TcpStream, [u8; 32]) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
                .unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake with gwB");
        }
        let mut exporter = [0u8; 32];
        conn.export_keying_material(
            &mut exporter[..],
            gateway::channel::proof::EXPORTER_LABEL,
            None,
        )
        .unwrap();
        (conn, tcp, exporter)
    }

    /// Completes the handshake with gwB and proves nothing: how many bytes
    /// of application data gwB sent before it closed the connection (or the
    /// 10 s read timeout passed).
    pub fn application_bytes_without_proof(addr: std::net::SocketAddr) -> usize {
        let (mut conn, mut tcp, _) = handshake(addr);
        let mut got = 0;
        let mut buf = [0u8; 1024];
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match conn.read_tls(&mut tcp) {
                        Ok(0) | Err(_) => return got,
                        Ok(_) => {
                            if conn.process_new_packets().is_err() {
                                return got;
                            }
                        }
                    }
                }
                Err(_) => return got,
            }
        }
    }

    /// The fingerprint of the certificate gwB presents to a new handshake.
    pub fn presented(addr: std::net::SocketAddr) -> gateway::channel::Fingerprint {
        let (conn, _tcp, _) = handshake(addr);
        let chain = conn
            .peer_certificates()
            .expect("gwB presented a certificate");
        gateway::channel::Fingerprint::of_der(chain[0].as_ref())
    }

    pub fn run(
        addr: std::net::SocketAddr,
        proof: Option<[u8; 34]>,
        wait_close: bool,
    ) -> ([u8; 34], bool) {
        let (mut conn, mut tcp, exporter) = handshake(addr);
        let proof = proof.unwrap_or_else(|| {
            gateway::channel::proof::compute(&super::SECRET, control::Role::Cons, 0, &exporter)
        });
        let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
        let _ = stream.write_all(&proof);
        let _ = stream.write_all(b"payload after the proof");
        let _ = stream.flush();
        // gwB sends its own proof first in any case; then an honest
        // connection stays open, a refused one is closed.
        let mut buf = [0u8; 256];
        let mut got = 0;
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    got += n;
                    if got >= 34 && !wait_close {
                        break false;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false;
                }
                Err(_) => break true,
            }
        };
        (proof, closed)
    }

    /// Bytes each way per round of [`key_update_rounds`].
    pub const ROUND: usize = 300_000;

    /// Plaintext + content type + tag of a record holding a KeyUpdate.
    const KEY_UPDATE_BODY: usize = 5 + 1 + 16;

    /// The peer's socket, counting the records gwB sends that have a
    /// KeyUpdate's length (contents are encrypted; data records of exactly
    /// 5 bytes would count too, so only a lower bound is meaningful).
    pub struct Tap {
        tcp: std::net::TcpStream,
        header: Vec<u8>,
        body_left: usize,
        key_update_sized: usize,
    }

    impl Read for Tap {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.tcp.read(buf)?;
            let mut bytes = &buf[..n];
            while !bytes.is_empty() {
                if self.body_left > 0 {
                    let skip = self.body_left.min(bytes.len());
                    self.body_left -= skip;
                    bytes = &bytes[skip..];
                    continue;
                }
                self.header.push(bytes[0]);
                bytes = &bytes[1..];
                if self.header.len() == 5 {
                    self.body_left =
                        usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    self.key_update_sized += usize::from(self.body_left == KEY_UPDATE_BODY);
                    self.header.clear();
                }
            }
            Ok(n)
        }
    }

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.tcp.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.tcp.flush()
        }
    }

    /// Sends `data` through rustls, in record-sized pieces (rustls buffers
    /// 64 KiB at most).
    fn send(conn: &mut rustls::ClientConnection, tcp: &mut Tap, data: &[u8]) -> Result<(), String> {
        for piece in data.chunks(16 * 1024) {
            conn.writer()
                .write_all(piece)
                .map_err(|e| format!("buffering: {e}"))?;
            while conn.wants_write() {
                conn.write_tls(tcp).map_err(|e| format!("sending: {e}"))?;
            }
        }
        Ok(())
    }

    /// Reads more records from gwB into rustls.
    fn pull(conn: &mut rustls::ClientConnection, tcp: &mut Tap) -> Result<(), String> {
        let n = conn.read_tls(tcp).map_err(|e| format!("receiving: {e}"))?;
        if n == 0 {
            return Err("gwB closed without close_notify".into());
        }
        conn.process_new_packets()
            .map_err(|e| format!("rustls refused gwB's records: {e}"))?;
        Ok(())
    }

    /// Reads plaintext until `want` is full.
    fn receive(
        conn: &mut rustls::ClientConnection,
        tcp: &mut Tap,
        want: &mut [u8],
    ) -> Result<(), String> {
        let mut got = 0;
        while got < want.len() {
            match conn.reader().read(&mut want[got..]) {
                Ok(0) => return Err(format!("close_notify after {got} of {} bytes", want.len())),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => pull(conn, tcp)?,
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
        Ok(())
    }

    /// Reads up to close_notify; no data may come before it.
    fn receive_close(conn: &mut rustls::ClientConnection, tcp: &mut Tap) -> Result<(), String> {
        let mut buf = [0u8; 1024];
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => return Err(format!("{n} unexpected bytes before close_notify")),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => pull(conn, tcp)?,
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
    }

    /// A plain rustls peer of gwB that proves the secret, then runs one
    /// round per entry of `updates`: half of ROUND bytes of stream 5, that
    /// many KeyUpdates (update_requested) from rustls, the other half; then
    /// it reads ROUND bytes of stream 6 from the sink through gwB (sent
    /// after gwB saw the updates) and checks them. Finally close_notify both
    /// ways. Returns how many records of a KeyUpdate's length gwB sent.
    pub fn key_update_rounds(
        addr: std::net::SocketAddr,
        updates: &[usize],
    ) -> Result<usize, String> {
        let (mut conn, tcp, exporter) = handshake(addr);
        // gwB sends nothing after its handshake flight until our Finished,
        // so the tap starts on a record boundary.
        let mut tcp = Tap {
            tcp,
            header: Vec::new(),
            body_left: 0,
            key_update_sized: 0,
        };
        let proof =
            gateway::channel::proof::compute(&super::SECRET, control::Role::Cons, 0, &exporter);
        send(&mut conn, &mut tcp, &proof)?;
        let mut theirs = [0u8; 34];
        receive(&mut conn, &mut tcp, &mut theirs)?;
        let (mut out, mut expect) = (super::Pattern::new(5), super::Pattern::new(6));
        let (mut chunk, mut want, mut got) = (vec![0u8; ROUND], vec![0u8; ROUND], vec![0u8; ROUND]);
        for (round, &count) in updates.iter().enumerate() {
            out.fill(&mut chunk);
            let (first, second) = chunk.split_at(ROUND / 2);
            send(&mut conn, &mut tcp, first)?;
            for _ in 0..count {
                conn.refresh_traffic_keys()
                    .map_err(|e| format!("KeyUpdate: {e}"))?;
            }
            send(&mut conn, &mut tcp, second)?;
            receive(&mut conn, &mut tcp, &mut got).map_err(|e| format!("round {round}: {e}"))?;
            expect.fill(&mut want);
            if got != want {
                return Err(format!("round {round}: the sink's bytes differ"));
            }
        }
        conn.send_close_notify();
        while conn.wants_write() {
            conn.write_tls(&mut tcp)
                .map_err(|e| format!("sending: {e}"))?;
        }
        receive_close(&mut conn, &mut tcp)?;
        Ok(tcp.key_update_sized)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_proof_is_refused() {
    let mut pair = Pair::start(Options::default()).await;
    let addr = pair.wan_addr;
    // Connection 1: a client that knows the secret proves it properly.
    let (proof, _) = tokio::task::spawn_blocking(move || raw_client::run(addr, None, false))
        .await
        .unwrap();
    let (mut first, _) = pair
        .sink
        .accept()
        .await
        .expect("the honest connection reaches the sink");
    let mut got = vec![0u8; 23];
    first.read_exact(&mut got).await.expect("payload");
    assert_eq!(&got, b"payload after the proof");
    // Connection 2: the same proof bytes, replayed on a new connection.
    let (_, closed) = tokio::task::spawn_blocking(move || raw_client::run(addr, Some(proof), true))
        .await
        .unwrap();
    assert!(closed, "gwB must close a connection with a replayed proof");
    loop {
        match pair.outcome_b().await {
            Outcome::Refused(Some(FailureReason::BadProof), _) => break,
            Outcome::Relayed(_) => continue, // connection 1 finishing
            other => panic!("expected BadProof for the replay, got {other:?}"),
        }
    }
    pair.assert_sink_untouched().await;
    assert_eq!(pair.cfg_b.failures().get(FailureReason::BadProof), 1);
    assert_eq!(pair.cfg_b.failures().established(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_certificates_accept_the_right_peer_and_reject_a_wrong_one() {
    // Learn both self-signed fingerprints first (generated on first start).
    let dir = tempfile::tempdir().unwrap();
    let fp = |name: &str| {
        ChannelConfig::new(ChannelSettings::self_signed(dir.path().join(name)))
            .unwrap()
            .fingerprint()
    };
    let (fp_a, fp_b) = (fp("a"), fp("b"));
    let (base_a, base_b) = (dir.path().join("a"), dir.path().join("b"));
    let pinned = |base: std::path::PathBuf, pin| {
        Box::new(move |_: &std::path::Path| ChannelSettings {
            verify: PeerVerification::Pinned(vec![pin]),
            ..ChannelSettings::self_signed(base.clone())
        }) as Box<dyn Fn(&std::path::Path) -> ChannelSettings>
    };

    // Right pins both ways: works.
    let mut pair = Pair::start(Options {
        settings_a: pinned(base_a.clone(), fp_b),
        settings_b: pinned(base_b.clone(), fp_a),
        ..Options::default()
    })
    .await;
    both_ways(&mut pair, 1 << 20).await;
    assert!(matches!(pair.outcome_a().await, Outcome::Relayed(Ok(_))));

    // gwA pins a different certificate: the handshake fails on the certificate.
    let wrong = gateway::channel::Fingerprint([0xee; 32]);
    let mut pair = Pair::start(Options {
        settings_a: pinned(base_a.clone(), wrong),
        settings_b: pinned(base_b.clone(), fp_a),
        ..Options::default()
    })
    .await;
    let mut client = connect_refused_client(pair.lan_addr).await;
    if let Some(client) = client.as_mut() {
        let _ = client.write_all(b"must never arrive").await;
    }
    match pair.outcome_a().await {
        Outcome::Refused(Some(FailureReason::Certificate), _) => {}
        other => panic!("gwA should reject gwB's certificate, got {other:?}"),
    }
    assert!(matches!(
        pair.outcome_b().await,
        Outcome::Refused(Some(_), _)
    ));
    pair.assert_sink_untouched().await;
    expect_closed_without_data(client, "gwA pins another certificate").await;

    // gwB pins a different client certificate: refused too.
    let mut pair = Pair::start(Options {
        settings_a: pinned(base_a, fp_b),
        settings_b: pinned(base_b, wrong),
        ..Options::default()
    })
    .await;
    let _client = connect_refused_client(pair.lan_addr).await;
    match pair.outcome_b().await {
        Outcome::Refused(Some(FailureReason::Certificate), _) => {}
        other => panic!("gwB should reject gwA's certificate, got {other:?}"),
    }
    pair.assert_sink_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_mid_stream_resets_the_lan_side() {
    let mut pair = Pair::start(Options::default()).await;
    let tcp = TcpStream::connect(pair.wan_addr)
        .await
        .expect("connect gwB");
    let rogue = channel::connect(tcp, &pair.cfg_a, "localhost", &SECRET)
        .await
        .expect("rogue CONS proves the secret");
    let (mut server, _) = pair.sink.accept().await.expect("sink accept");
    rogue
        .send_then_alert(&[7u8; 100_000], 80)
        .await
        .expect("send data then internal_error");
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        match server.read(&mut buf).await {
            Ok(0) => break Ok(0),
            Ok(n) => got += n,
            Err(e) => break Err(e),
        }
    };
    assert!(
        is_reset(end),
        "the sink must see a reset, not a clean end, after a fatal alert"
    );
    assert!(got <= 100_000);
    match pair.outcome_b().await {
        Outcome::Relayed(Err(e)) => assert!(e.contains("alert 80"), "{e}"),
        other => panic!("expected the relay to fail on the alert, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_mismatch_is_refused() {
    let plain = |dir: &std::path::Path| ChannelSettings {
        plaintext_after_auth: true,
        ..ChannelSettings::self_signed(dir)
    };
    let mut pair = Pair::start(Options {
        settings_a: Box::new(plain),
        ..Options::default()
    })
    .await;
    let _client = connect_refused_client(pair.lan_addr).await;
    assert!(matches!(
        pair.outcome_b().await,
        Outcome::Refused(Some(FailureReason::ModeMismatch), _)
    ));
    assert!(matches!(
        pair.outcome_a().await,
        Outcome::Refused(Some(FailureReason::ModeMismatch), _)
    ));
    pair.assert_sink_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_auth_uses_the_plaintext_relay() {
    let plain = |dir: &std::path::Path| ChannelSettings {
        plaintext_after_auth: true,
        ..ChannelSettings::self_signed(dir)
    };
    let engine = kernel_engine();
    let mut pair = Pair::start(Options {
        settings_a: Box::new(plain),
        settings_b: Box::new(plain),
        caps: ChannelPaths::detect(engine, DataPath::Splice),
        ..Options::default()
    })
    .await;
    both_ways(&mut pair, 16 << 20).await;
    for outcome in [pair.outcome_a().await, pair.outcome_b().await] {
        match outcome {
            // The path the gateway chose (here splice, what `auto` picks).
            Outcome::Relayed(Ok(path)) => {
                assert_eq!(path, ChannelPath::Plaintext(DataPath::Splice))
            }
            other => panic!("expected the plaintext relay, got {other:?}"),
        }
    }
    // And a wrong secret is still refused in this mode.
    drop(pair);
    let mut pair = Pair::start(Options {
        settings_a: Box::new(plain),
        settings_b: Box::new(plain),
        secret_a: [1; 32],
        caps: ChannelPaths::detect(RelayEngine::userspace(), DataPath::Splice),
        ..Options::default()
    })
    .await;
    let _client = connect_refused_client(pair.lan_addr).await;
    assert!(matches!(
        pair.outcome_b().await,
        Outcome::Refused(Some(FailureReason::BadProof), _)
    ));
    pair.assert_sink_untouched().await;
}

/// The plaintext mode relays on the data path the gateway chose
/// (`ChannelPaths::path`, from `s2cs serve --data-path`), not on the engine's
/// default: copy, and sockmap through the kernel relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_auth_relays_on_the_chosen_data_path() {
    let plain = |dir: &std::path::Path| ChannelSettings {
        plaintext_after_auth: true,
        ..ChannelSettings::self_signed(dir)
    };
    for path in [DataPath::Copy, DataPath::Sockmap] {
        let mut pair = Pair::start(Options {
            settings_a: Box::new(plain),
            settings_b: Box::new(plain),
            caps: ChannelPaths::detect(kernel_engine(), path),
            ..Options::default()
        })
        .await;
        both_ways(&mut pair, 4 << 20).await;
        for (who, outcome) in [
            ("gwA", pair.outcome_a().await),
            ("gwB", pair.outcome_b().await),
        ] {
            match outcome {
                Outcome::Relayed(Ok(used)) => {
                    assert_eq!(used, ChannelPath::Plaintext(path), "{who}")
                }
                other => panic!("{who}: expected the plaintext relay on {path}, got {other:?}"),
            }
        }
    }
}

/// The AEAD suites a TLS 1.2 channel may negotiate (as `ChannelInfo` names them).
const TLS12_AEAD_SUITES: [&str; 3] = [
    "TLS12_ECDHE_AES_128_GCM_SHA256",
    "TLS12_ECDHE_AES_256_GCM_SHA384",
    "TLS12_ECDHE_CHACHA20_POLY1305_SHA256",
];

/// Self-signed, with the operator's TLS 1.2 opt-in.
fn allow_tls12(dir: &Path) -> ChannelSettings {
    ChannelSettings {
        allow_tls12: true,
        ..ChannelSettings::self_signed(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_opt_in_negotiates_tls12_with_an_aead_suite_and_streams_both_ways() {
    // Both gateways opt in; gwA's stack speaks TLS 1.2 only.
    let mut pair = Pair::start(Options {
        settings_a: Box::new(allow_tls12),
        settings_b: Box::new(allow_tls12),
        tls12_only_a: true,
        ..Options::default()
    })
    .await;
    both_ways(&mut pair, 8 << 20).await;
    for outcome in [pair.outcome_a().await, pair.outcome_b().await] {
        match outcome {
            // Kernel TLS where it takes TLS 1.2 keys, else userspace.
            Outcome::Relayed(Ok(ChannelPath::KernelTls | ChannelPath::UserspaceTls)) => {}
            other => panic!("expected a clean TLS 1.2 relay, got {other:?}"),
        }
    }
    let (a, b) = pair.negotiated();
    for (who, info) in [("gwA", &a), ("gwB", &b)] {
        assert_eq!(info.protocol, "TLSv1.2", "{who}");
        assert!(
            TLS12_AEAD_SUITES.contains(&info.cipher_suite),
            "{who}: {} is not an AEAD suite",
            info.cipher_suite
        );
        assert!(!info.plaintext_after_auth, "{who}");
    }
    assert_eq!(a.cipher_suite, b.cipher_suite);
    // The proof succeeded on both sides.
    assert_eq!(pair.cfg_a.failures().established(), 1);
    assert_eq!(pair.cfg_b.failures().established(), 1);
    assert_eq!(pair.cfg_a.failures().total(), 0);
    assert_eq!(pair.cfg_b.failures().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_peer_is_refused_without_the_opt_in() {
    for gwa_is_tls12_only in [true, false] {
        // The TLS 1.2-only end opted in; the other did not.
        let options = if gwa_is_tls12_only {
            Options {
                settings_a: Box::new(allow_tls12),
                tls12_only_a: true,
                ..Options::default()
            }
        } else {
            Options {
                settings_b: Box::new(allow_tls12),
                tls12_only_b: true,
                ..Options::default()
            }
        };
        let case = if gwa_is_tls12_only {
            "gwA TLS 1.2 only"
        } else {
            "gwB TLS 1.2 only"
        };
        let mut pair = Pair::start(options).await;
        let mut client = connect_refused_client(pair.lan_addr).await;
        if let Some(client) = client.as_mut() {
            let _ = client.write_all(b"must never arrive").await;
        }
        let (without_opt_in, with_opt_in) = if gwa_is_tls12_only {
            (pair.outcome_b().await, pair.outcome_a().await)
        } else {
            (pair.outcome_a().await, pair.outcome_b().await)
        };
        match without_opt_in {
            Outcome::Refused(Some(FailureReason::Handshake), _) => {}
            other => panic!("{case}: the gateway without the opt-in must refuse, got {other:?}"),
        }
        assert!(
            matches!(with_opt_in, Outcome::Refused(Some(_), _)),
            "{case}: {with_opt_in:?}"
        );
        pair.assert_sink_untouched().await;
        assert_eq!(pair.cfg_a.failures().established(), 0, "{case}");
        assert_eq!(pair.cfg_b.failures().established(), 0, "{case}");
        expect_closed_without_data(client, case).await;
    }
}

/// A certificate authority made for one test (rcgen), its certificate in a
/// PEM file for `PeerVerification::Ca`.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    roots_pem: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("CA dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("s2cs test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let roots_pem = dir.join(format!("ca-{name}.pem"));
        std::fs::write(&roots_pem, issuer.pem()).expect("write the CA certificate");
        TestCa { issuer, roots_pem }
    }

    fn verification(&self) -> PeerVerification {
        PeerVerification::Ca {
            roots_pem: self.roots_pem.clone(),
        }
    }

    /// A gateway certificate for `names` signed by this CA, as PEM files
    /// (the key 0600), and its fingerprint.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (CertSource, channel::Fingerprint) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &*self.issuer).expect("sign");
        let cert_path = dir.join(format!("{stem}-cert.pem"));
        let key_path = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
            .expect("write the key");
        let source = CertSource::Files {
            cert: cert_path,
            key: key_path,
        };
        (source, channel::Fingerprint::of_der(cert.der()))
    }
}

/// Settings with the given certificate files and verification.
fn with_certs(
    certs: CertSource,
    verify: PeerVerification,
) -> Box<dyn Fn(&Path) -> ChannelSettings> {
    Box::new(move |dir: &Path| ChannelSettings {
        certs: certs.clone(),
        verify: verify.clone(),
        ..ChannelSettings::self_signed(dir)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_verification_accepts_certificates_of_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "site");
    let (certs_a, fp_a) = ca.issue(dir.path(), "gwa", &["localhost"]);
    let (certs_b, fp_b) = ca.issue(dir.path(), "gwb", &["localhost"]);
    let mut pair = Pair::start(Options {
        settings_a: with_certs(certs_a, ca.verification()),
        settings_b: with_certs(certs_b, ca.verification()),
        ..Options::default()
    })
    .await;
    both_ways(&mut pair, 8 << 20).await;
    assert!(matches!(pair.outcome_a().await, Outcome::Relayed(Ok(_))));
    assert!(matches!(pair.outcome_b().await, Outcome::Relayed(Ok(_))));
    let (a, b) = pair.negotiated();
    assert_eq!(
        a.peer_fingerprint,
        Some(fp_b),
        "gwA saw gwB's CA-signed certificate"
    );
    assert_eq!(
        b.peer_fingerprint,
        Some(fp_a),
        "gwB saw gwA's CA-signed client certificate"
    );
    assert_eq!(pair.cfg_a.failures().total(), 0);
    assert_eq!(pair.cfg_b.failures().total(), 0);
}

/// Runs one client through a pair whose `rejecting` gateway ("gwA" or
/// "gwB") must refuse the other's certificate: refused on certificate
/// verification, counted, and nothing forwarded.
async fn expect_certificate_refused(options: Options, rejecting: &str, case: &str) {
    let mut pair = Pair::start(options).await;
    let mut client = connect_refused_client(pair.lan_addr).await;
    if let Some(client) = client.as_mut() {
        let _ = client.write_all(b"must never arrive").await;
    }
    let (a, b) = (pair.outcome_a().await, pair.outcome_b().await);
    let (refuser, other, cfg) = match rejecting {
        "gwA" => (a, b, &pair.cfg_a),
        _ => (b, a, &pair.cfg_b),
    };
    match refuser {
        Outcome::Refused(Some(FailureReason::Certificate), message) => assert!(
            message.contains("certificate verification"),
            "{case}: {message}"
        ),
        other => panic!("{case}: {rejecting} should reject the certificate, got {other:?}"),
    }
    assert!(
        matches!(other, Outcome::Refused(Some(_), _)),
        "{case}: {other:?}"
    );
    assert_eq!(cfg.failures().get(FailureReason::Certificate), 1, "{case}");
    pair.assert_sink_untouched().await;
    expect_closed_without_data(client, case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_verification_rejects_foreign_and_self_signed_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "site");
    let rogue = TestCa::new(dir.path(), "rogue");
    let (good_a, _) = ca.issue(dir.path(), "gwa", &["localhost"]);
    let (good_b, _) = ca.issue(dir.path(), "gwb", &["localhost"]);
    let (rogue_a, _) = rogue.issue(dir.path(), "rogue-gwa", &["localhost"]);
    let (rogue_b, _) = rogue.issue(dir.path(), "rogue-gwb", &["localhost"]);
    let (elsewhere_b, _) = ca.issue(dir.path(), "elsewhere-gwb", &["elsewhere.example"]);

    // gwB's certificate comes from another CA: gwA refuses it.
    expect_certificate_refused(
        Options {
            settings_a: with_certs(good_a.clone(), ca.verification()),
            settings_b: with_certs(rogue_b, ca.verification()),
            ..Options::default()
        },
        "gwA",
        "server certificate from another CA",
    )
    .await;

    // gwB's certificate is self-signed: gwA refuses it.
    let verify = ca.verification();
    expect_certificate_refused(
        Options {
            settings_a: with_certs(good_a.clone(), ca.verification()),
            settings_b: Box::new(move |dir: &Path| ChannelSettings {
                verify: verify.clone(),
                ..ChannelSettings::self_signed(dir)
            }),
            ..Options::default()
        },
        "gwA",
        "self-signed server certificate",
    )
    .await;

    // gwB's certificate is from the CA but for another name: gwA refuses it.
    expect_certificate_refused(
        Options {
            settings_a: with_certs(good_a, ca.verification()),
            settings_b: with_certs(elsewhere_b, ca.verification()),
            ..Options::default()
        },
        "gwA",
        "server certificate for another name",
    )
    .await;

    // gwA's client certificate comes from another CA: gwB refuses it.
    expect_certificate_refused(
        Options {
            settings_a: with_certs(rogue_a, ca.verification()),
            settings_b: with_certs(good_b, ca.verification()),
            ..Options::default()
        },
        "gwB",
        "client certificate from another CA",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_from_a_rustls_peer_are_followed_mid_stream() {
    let options = Options::default();
    let ktls = options.caps.ktls.available();
    let mut pair = Pair::start(options).await;
    let addr = pair.wan_addr;
    // Per round: KeyUpdates (update_requested) the peer sends mid-chunk.
    let updates = [0usize, 1, 2, 1];
    let peer = tokio::task::spawn_blocking(move || raw_client::key_update_rounds(addr, &updates));
    let (mut server, _) = tokio::time::timeout(DEADLINE, pair.sink.accept())
        .await
        .expect("sink accept in time")
        .expect("accept");
    let sink = async {
        let round_len = raw_client::ROUND;
        let (mut input, mut output) = (Pattern::new(5), Pattern::new(6));
        let (mut got, mut want) = (vec![0u8; round_len], vec![0u8; round_len]);
        for round in 0..updates.len() {
            server
                .read_exact(&mut got)
                .await
                .map_err(|e| format!("sink, round {round}: {e}"))?;
            input.fill(&mut want);
            if got != want {
                return Err(format!(
                    "round {round}: the peer's bytes differ at the sink"
                ));
            }
            // Sent after gwB followed the round's updates.
            output.fill(&mut want);
            server
                .write_all(&want)
                .await
                .map_err(|e| format!("sink, round {round}: {e}"))?;
        }
        let n = server
            .read(&mut got)
            .await
            .map_err(|e| format!("sink, end: {e}"))?;
        if n != 0 {
            return Err(format!("{n} bytes after the last round"));
        }
        server
            .shutdown()
            .await
            .map_err(|e| format!("sink FIN: {e}"))
    };
    let sink = tokio::time::timeout(DEADLINE, sink)
        .await
        .expect("sink in time");
    let peer = peer.await.expect("peer thread");
    let outcome = pair.outcome_b().await;
    if ktls {
        // Kernel TLS cannot follow a KeyUpdate: the connection ends, naming why.
        match outcome {
            Outcome::Relayed(Err(e)) => assert!(e.contains("KeyUpdate"), "{e}"),
            other => {
                panic!("expected the kernel TLS relay to stop on the KeyUpdate, got {other:?}")
            }
        }
        assert!(peer.is_err(), "the peer's connection must fail");
    } else {
        sink.expect("the sink got every byte, in order");
        let answers = peer.expect("the peer read every byte gwB sent after its updates");
        // gwB answered each round's update_requested (two in a row: once)
        // with its own KeyUpdate before that round's data.
        let rounds_with_updates = updates.iter().filter(|&&n| n > 0).count();
        assert!(
            answers >= rounds_with_updates,
            "gwB sent {answers} KeyUpdate-sized records for {rounds_with_updates} requesting rounds"
        );
        match outcome {
            Outcome::Relayed(Ok(ChannelPath::UserspaceTls)) => {}
            other => panic!("expected a clean userspace relay, got {other:?}"),
        }
    }
    assert_eq!(pair.cfg_b.failures().established(), 1);
}

/// A quick throughput figure for the TLS channel (not a benchmark: that is
/// `cargo xtask bench tls`). Run with
/// `cargo test --release -p gateway --test channel -- --ignored --nocapture throughput`.
/// The client and the sink are blocking threads; the two gateways share the
/// test's runtime. CHANNEL_BENCH_MIB sets the volume (default 4096).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand in release mode"]
async fn throughput_one_stream() {
    let mib: usize = std::env::var("CHANNEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let pair = Pair::start(Options::default()).await;
    let sink = pair.sink.into_std().expect("std listener");
    sink.set_nonblocking(false).expect("blocking");
    let lan_addr = pair.lan_addr;
    let receiver = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = sink.accept().expect("sink accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("sink read: {e}"),
            }
        }
        total
    });
    let started = std::time::Instant::now();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(lan_addr).expect("connect gwA");
        let buf = vec![0x42u8; 1 << 20];
        for _ in 0..mib {
            c.write_all(&buf).expect("client write");
        }
        c.shutdown(std::net::Shutdown::Write).expect("FIN");
        let mut rest = Vec::new();
        use std::io::Read;
        let _ = c.read_to_end(&mut rest);
    });
    let total = tokio::task::spawn_blocking(move || receiver.join().expect("receiver"))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    sender.join().expect("sender");
    assert_eq!(total, mib << 20);
    println!(
        "channel throughput: {mib} MiB in {secs:.2} s = {:.2} Gbit/s (one stream, client -> gwA -> TLS -> gwB -> sink)",
        (total as f64 * 8.0) / secs / 1e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_and_drops_no_stream() {
    use std::os::unix::fs::PermissionsExt as _;
    // Two self-signed certificates, the operator's "old" and "new" files.
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let cfg = ChannelConfig::new(ChannelSettings::self_signed(dir.path().join(name))).unwrap();
        let base = dir.path().join(name);
        (
            cfg.fingerprint(),
            base.join(gateway::channel::config::CHANNEL_CERT_FILE),
            base.join(gateway::channel::config::CHANNEL_KEY_FILE),
        )
    };
    let (fp_old, old_cert, old_key) = make("old");
    let (fp_new, new_cert, new_key) = make("new");
    assert_ne!(fp_old, fp_new);
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    let put = |from_cert: &Path, from_key: &Path| {
        std::fs::copy(from_cert, &cert).unwrap();
        std::fs::copy(from_key, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    put(&old_cert, &old_key);
    let files = CertSource::Files {
        cert: cert.clone(),
        key: key.clone(),
    };
    let pair = Pair::start(Options {
        settings_b: Box::new(move |dir| ChannelSettings {
            certs: files.clone(),
            ..ChannelSettings::self_signed(dir)
        }),
        ..Options::default()
    })
    .await;
    let wan = pair.wan_addr;
    let presented = move || tokio::task::spawn_blocking(move || raw_client::presented(wan));
    assert_eq!(presented().await.unwrap(), fp_old);

    // A stream established before the rotation ...
    const HALF: u64 = 4 << 20;
    let mut client = TcpStream::connect(pair.lan_addr).await.unwrap();
    send_rest(&mut client, common::Pattern::new(7), HALF)
        .await
        .unwrap();
    let (mut at_sink, _) = tokio::time::timeout(DEADLINE, pair.sink.accept())
        .await
        .expect("the stream reaches the sink")
        .unwrap();
    let received =
        tokio::spawn(async move { common::expect_pattern(&mut at_sink, 7, 2 * HALF).await });

    // ... the operator replaces the files in place and reloads ...
    put(&new_cert, &new_key);
    let (before, after) = pair.cfg_b.reload_certificate().expect("rotation");
    assert_eq!((before, after), (fp_old, fp_new));
    assert_eq!(pair.cfg_b.fingerprint(), fp_new);

    // ... and the stream goes on to its end, every byte in order.
    let mut rest = common::Pattern::new(7);
    rest.fill(&mut vec![0u8; HALF as usize]);
    send_rest(&mut client, rest, HALF).await.unwrap();
    client.shutdown().await.unwrap();
    tokio::time::timeout(DEADLINE, received)
        .await
        .expect("the stream ends in time")
        .unwrap()
        .expect("every byte of the stream across the rotation");

    // New handshakes present the new certificate, and new streams flow.
    assert_eq!(presented().await.unwrap(), fp_new);
    let mut fresh = TcpStream::connect(pair.lan_addr).await.unwrap();
    send_pattern(&mut fresh, 8, 1 << 20).await.unwrap();
    fresh.shutdown().await.unwrap();
    let (mut at_sink, _) = tokio::time::timeout(DEADLINE, pair.sink.accept())
        .await
        .unwrap()
        .unwrap();
    common::expect_pattern(&mut at_sink, 8, 1 << 20)
        .await
        .expect("a stream after the rotation");

    // A broken replacement is refused, naming the file, and changes nothing.
    std::fs::write(&cert, "not a certificate").unwrap();
    let err = pair.cfg_b.reload_certificate().unwrap_err().to_string();
    assert!(err.contains("cert.pem"), "{err}");
    assert_eq!(pair.cfg_b.fingerprint(), fp_new);
    assert_eq!(presented().await.unwrap(), fp_new);
}
