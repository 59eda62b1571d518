//! ktls_selftest: the kernel-TLS channel end to end, for kernels that have
//! kernel TLS (run in a VM by `cargo xtask vm-test`; this machine's kernel
//! has none). Built with the workspace and run as root inside the guest
//! (its shared libraries copied in).
//!
//! client --LAN--> gwA --TLS (kernel)--> gwB --LAN--> sink, all on loopback,
//! with two in-process gateways built from `gateway::channel`:
//! 1. the probe reports kernel TLS;
//! 2. kernel TLS on both gateways: streams both ways at once, SHA-256
//!    checked, and both gateways report the kernel TLS path;
//! 3. half-close: request, FIN, then the response on the other half;
//! 4. a fatal TLS alert mid-stream from the peer gateway: the sink sees the
//!    bytes before it and then a reset, and the gateway reports the alert;
//! 5. a wrong secret: refused on both sides, the sink gets no connection;
//! 6. userspace TLS on one gateway, kernel TLS on the other (interop);
//! 7. key updates: a lowered AES-GCM record limit (the test-only setting),
//!    both directions hash-verified, for kernel TLS on both gateways, with
//!    AES-GCM forced, and for the mixed pair. Where the kernel can rekey
//!    (Linux 6.14+), kernel TLS sends and follows the updates; where it
//!    cannot, the channel's policy applies: ChaCha20-Poly1305 on kernel TLS
//!    (no updates needed) or, with AES-GCM forced, userspace TLS;
//! 8. back-pressure: 16 MiB each way (several times what the sockets buffer)
//!    to consumers that read slowly, and to consumers that stop for 3 s and
//!    resume, keys updated every 64 records, every byte checked.
//!
//! Usage: ktls_selftest [MiB per direction, default 4]. Exit status 0 and a
//! final "PASS" line when every case holds; 1 and "FAIL: ..." otherwise.
//!
//! `ktls_selftest probe [bytes, default 1 MiB]` runs only the gateway's
//! kernel-TLS probe (`channel::probe_ktls`) and its deeper wire check
//! (`channel::verify_ktls_wire`: a record read raw off the wire is encrypted,
//! and the bytes go through a TX -> RX pair intact): the VM's first stage.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::channel::args::KtlsWithoutRekey;
use gateway::channel::{
    self, ChannelConfig, ChannelPath, ChannelPaths, ChannelSettings, FailureReason, KtlsSupport,
};
use gateway::relay::{ConnCounters, DataPath, RelayEngine};
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: [u8; 32] = [0x5a; 32];
const DEADLINE: Duration = Duration::from_secs(240);

/// The path a gateway relayed on and the suite it negotiated, or why not.
type Outcome = Result<(ChannelPath, &'static str), (Option<FailureReason>, String)>;

struct Pair {
    lan_addr: SocketAddr,
    wan_addr: SocketAddr,
    sink: TcpListener,
    a: mpsc::UnboundedReceiver<Outcome>,
    b: mpsc::UnboundedReceiver<Outcome>,
    cfg_a: ChannelConfig,
    cfg_b: ChannelConfig,
}

/// One gateway of a pair: its kernel TLS and its `--ktls-without-rekey`.
#[derive(Clone)]
struct End {
    caps: ChannelPaths,
    policy: KtlsWithoutRekey,
}

/// The channel settings `s2cs serve` would build for `end`, with an
/// optional lowered AES-GCM record limit.
fn settings(dir: std::path::PathBuf, end: &End, record_limit: Option<u64>) -> ChannelSettings {
    ChannelSettings {
        prefer_chacha20: end.policy.prefer_chacha20(&end.caps.ktls),
        aes_gcm_record_limit: record_limit,
        ..ChannelSettings::self_signed(dir)
    }
}

async fn start(
    dir: &std::path::Path,
    caps_a: ChannelPaths,
    caps_b: ChannelPaths,
    secret_a: [u8; 32],
) -> Result<Pair, String> {
    let end = |caps| End {
        caps,
        policy: KtlsWithoutRekey::Chacha20,
    };
    start_ends(dir, end(caps_a), end(caps_b), secret_a, None).await
}

async fn start_ends(
    dir: &std::path::Path,
    end_a: End,
    end_b: End,
    secret_a: [u8; 32],
    record_limit: Option<u64>,
) -> Result<Pair, String> {
    let cfg_a = ChannelConfig::new(settings(dir.join("a"), &end_a, record_limit))
        .map_err(|e| e.to_string())?;
    let cfg_b = ChannelConfig::new(settings(dir.join("b"), &end_b, record_limit))
        .map_err(|e| e.to_string())?;
    let (caps_a, caps_b) = (end_a.caps, end_b.caps);
    let sink = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sink_addr = sink.local_addr().map_err(|e| e.to_string())?;
    let wan = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let wan_addr = wan.local_addr().map_err(|e| e.to_string())?;
    let lan = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let lan_addr = lan.local_addr().map_err(|e| e.to_string())?;
    let (tx_a, a) = mpsc::unbounded_channel();
    let (tx_b, b) = mpsc::unbounded_channel();
    let cfg = cfg_b.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = wan.accept().await {
            let (cfg, caps, tx) = (cfg.clone(), caps_b.clone(), tx_b.clone());
            tokio::spawn(async move {
                let outcome = match channel::accept(tcp, &cfg, &SECRET).await {
                    Err(err) => Err((err.reason(), err.to_string())),
                    Ok(ch) => match TcpStream::connect(sink_addr).await {
                        Ok(lan) => {
                            let suite = ch.info().cipher_suite;
                            channel::relay_channel(ch, lan, &ConnCounters::default(), &caps)
                                .await
                                .map(|path| (path, suite))
                                .map_err(|e| (None, e.to_string()))
                        }
                        Err(e) => Err((None, format!("dialling the sink: {e}"))),
                    },
                };
                let _ = tx.send(outcome);
            });
        }
    });
    let cfg = cfg_a.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = lan.accept().await {
            let (cfg, caps, tx) = (cfg.clone(), caps_a.clone(), tx_a.clone());
            tokio::spawn(async move {
                let outcome = match TcpStream::connect(wan_addr).await {
                    Err(e) => Err((None, format!("dialling gwB: {e}"))),
                    Ok(tcp) => match channel::connect(tcp, &cfg, "localhost", &secret_a).await {
                        Err(err) => Err((err.reason(), err.to_string())),
                        Ok(ch) => {
                            let suite = ch.info().cipher_suite;
                            channel::relay_channel(ch, client, &ConnCounters::default(), &caps)
                                .await
                                .map(|path| (path, suite))
                                .map_err(|e| (None, e.to_string()))
                        }
                    },
                };
                let _ = tx.send(outcome);
            });
        }
    });
    Ok(Pair {
        lan_addr,
        wan_addr,
        sink,
        a,
        b,
        cfg_a,
        cfg_b,
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Outcome>, who: &str) -> Result<Outcome, String> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .map_err(|_| format!("{who} reported nothing in time"))?
        .ok_or_else(|| format!("{who} stopped"))
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> Vec<u8> {
    let mut ctx = Context::new(&SHA256);
    ctx.update(data);
    ctx.finish().as_ref().to_vec()
}

async fn send_then_fin(mut w: impl AsyncWriteExt + Unpin, data: &[u8]) -> Result<(), String> {
    w.write_all(data).await.map_err(|e| format!("send: {e}"))?;
    w.shutdown().await.map_err(|e| format!("shutdown: {e}"))
}

/// How a consumer reads.
#[derive(Clone, Copy, Debug)]
enum Consumer {
    Fast,
    /// 16 KiB per read, a short pause after each.
    Slow,
    /// Stops for 3 s once 8 MiB arrived, then reads on.
    Stalling,
}

async fn read_to_end_hash(r: impl AsyncReadExt + Unpin) -> Result<(usize, Vec<u8>), String> {
    read_to_end_hash_as(r, Consumer::Fast).await
}

async fn read_to_end_hash_as(
    mut r: impl AsyncReadExt + Unpin,
    consumer: Consumer,
) -> Result<(usize, Vec<u8>), String> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let mut stalled = false;
    loop {
        let cap = match consumer {
            Consumer::Slow => {
                if total > 0 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                16 * 1024
            }
            Consumer::Stalling if !stalled && total >= 8 << 20 => {
                stalled = true;
                tokio::time::sleep(Duration::from_secs(3)).await;
                buf.len()
            }
            _ => buf.len(),
        };
        let n = r
            .read(&mut buf[..cap])
            .await
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            return Ok((total, ctx.finish().as_ref().to_vec()));
        }
        ctx.update(&buf[..n]);
        total += n;
    }
}

/// Checks the path; returns the negotiated suite.
fn expect_path(outcome: Outcome, want: ChannelPath, who: &str) -> Result<&'static str, String> {
    match outcome {
        Ok((path, suite)) if path == want => Ok(suite),
        Ok((path, _)) => Err(format!("{who} took {path}, expected {want}")),
        Err((_, e)) => Err(format!("{who} failed: {e}")),
    }
}

async fn case_streams(
    pair: &mut Pair,
    len: usize,
    want_a: ChannelPath,
    want_b: ChannelPath,
) -> Result<(), String> {
    case_streams_as(pair, len, want_a, want_b, Consumer::Fast)
        .await
        .map(drop)
}

async fn case_streams_as(
    pair: &mut Pair,
    len: usize,
    want_a: ChannelPath,
    want_b: ChannelPath,
    consumer: Consumer,
) -> Result<&'static str, String> {
    let up = pattern(1, len);
    let down = pattern(2, len);
    let started = Instant::now();
    let client = TcpStream::connect(pair.lan_addr)
        .await
        .map_err(|e| e.to_string())?;
    let (server, _) = tokio::time::timeout(DEADLINE, pair.sink.accept())
        .await
        .map_err(|_| "the sink got no connection".to_string())?
        .map_err(|e| e.to_string())?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (_, _, (up_len, up_hash), (down_len, down_hash)) = tokio::time::timeout(DEADLINE, async {
        tokio::try_join!(
            send_then_fin(cw, &up),
            send_then_fin(sw, &down),
            read_to_end_hash_as(sr, consumer),
            read_to_end_hash_as(cr, consumer)
        )
    })
    .await
    .map_err(|_| "transfer timed out".to_string())??;
    if up_len != len || up_hash != sha(&up) {
        return Err(format!(
            "client -> sink: {up_len} of {len} bytes, hash {}",
            if up_hash == sha(&up) {
                "equal"
            } else {
                "DIFFERENT"
            }
        ));
    }
    if down_len != len || down_hash != sha(&down) {
        return Err(format!(
            "sink -> client: {down_len} of {len} bytes, hash {}",
            if down_hash == sha(&down) {
                "equal"
            } else {
                "DIFFERENT"
            }
        ));
    }
    let suite = expect_path(next(&mut pair.a, "gwA").await?, want_a, "gwA")?;
    expect_path(next(&mut pair.b, "gwB").await?, want_b, "gwB")?;
    println!(
        "  {len} bytes each way ({consumer:?} consumers), SHA-256 identical, {suite}, gwA {want_a}, \
         gwB {want_b}, {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(suite)
}

async fn case_half_close(pair: &mut Pair) -> Result<(), String> {
    let request = pattern(3, 64 * 1024);
    let response = pattern(4, 1 << 20);
    let mut client = TcpStream::connect(pair.lan_addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut server, _) = pair.sink.accept().await.map_err(|e| e.to_string())?;
    tokio::time::timeout(DEADLINE, async {
        client
            .write_all(&request)
            .await
            .map_err(|e| e.to_string())?;
        client.shutdown().await.map_err(|e| e.to_string())?;
        let (n, hash) = read_to_end_hash(&mut server).await?;
        if n != request.len() || hash != sha(&request) {
            return Err(format!("request: {n} bytes, wrong or short"));
        }
        server
            .write_all(&response)
            .await
            .map_err(|e| e.to_string())?;
        server.shutdown().await.map_err(|e| e.to_string())?;
        let (n, hash) = read_to_end_hash(&mut client).await?;
        if n != response.len() || hash != sha(&response) {
            return Err(format!("response: {n} bytes, wrong or short"));
        }
        Ok(())
    })
    .await
    .map_err(|_| "half-close timed out".to_string())??;
    next(&mut pair.a, "gwA").await?.map_err(|e| e.1)?;
    next(&mut pair.b, "gwB").await?.map_err(|e| e.1)?;
    println!("  request, FIN, response on the other half: intact");
    Ok(())
}

async fn case_alert(pair: &mut Pair) -> Result<(), String> {
    let tcp = TcpStream::connect(pair.wan_addr)
        .await
        .map_err(|e| e.to_string())?;
    let rogue = channel::connect(tcp, &pair.cfg_a, "localhost", &SECRET)
        .await
        .map_err(|e| e.to_string())?;
    let (mut server, _) = pair.sink.accept().await.map_err(|e| e.to_string())?;
    rogue
        .send_then_alert(&[7u8; 100_000], 80)
        .await
        .map_err(|e| format!("rogue send: {e}"))?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match server.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got += n,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| "alert case timed out".to_string())?;
    match end {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(format!("sink: expected a reset after the alert, got {e}")),
        Ok(()) => return Err("sink: clean EOF after a fatal alert (expected a reset)".into()),
    }
    match next(&mut pair.b, "gwB").await? {
        Err((_, e)) if e.contains("alert 80") => {}
        other => return Err(format!("gwB should report alert 80, got {other:?}")),
    }
    println!("  fatal alert after {got} bytes: sink reset, gwB reported the alert");
    Ok(())
}

async fn case_wrong_secret(pair: &mut Pair) -> Result<(), String> {
    let _client = TcpStream::connect(pair.lan_addr)
        .await
        .map_err(|e| e.to_string())?;
    for (rx, who) in [(&mut pair.a, "gwA"), (&mut pair.b, "gwB")] {
        match next(rx, who).await? {
            Err((Some(FailureReason::BadProof), _)) => {}
            other => {
                return Err(format!(
                    "{who} should refuse the wrong secret, got {other:?}"
                ));
            }
        }
    }
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), pair.sink.accept()).await {
        return Err("the sink got a connection despite a wrong secret".into());
    }
    println!("  wrong secret: refused on both gateways, nothing reached the sink");
    Ok(())
}

/// The kernel's TLS counters (/proc/net/tls_stat), by name.
fn tls_stat() -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string("/proc/net/tls_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// What a key-update case must show on this kernel.
struct Expect {
    suite: &'static str,
    path_a: ChannelPath,
    path_b: ChannelPath,
    /// Both gateways send and follow key updates (else none at all).
    updates: bool,
}

/// A lowered record limit, `len` bytes each way, then the paths, the suite
/// and the key update counters (and, where kernel TLS updated keys, the
/// kernel's own rekey counters) against `expect`.
async fn case_key_updates(
    dir: &std::path::Path,
    end_a: End,
    end_b: End,
    len: usize,
    expect: Expect,
) -> Result<(), String> {
    let before = tls_stat();
    let mut pair = start_ends(dir, end_a, end_b, SECRET, Some(64)).await?;
    let suite =
        case_streams_as(&mut pair, len, expect.path_a, expect.path_b, Consumer::Fast).await?;
    if !suite.contains(expect.suite) {
        return Err(format!("negotiated {suite}, expected {}", expect.suite));
    }
    let (a, b) = (pair.cfg_a.key_updates(), pair.cfg_b.key_updates());
    let counts = format!(
        "key updates: gwA sent {} followed {}, gwB sent {} followed {}",
        a.sent(),
        a.received(),
        b.sent(),
        b.received()
    );
    if expect.updates {
        if a.sent() < 2 || b.sent() < 2 || a.sent() != b.received() || b.sent() != a.received() {
            return Err(format!(
                "{counts}: expected several each way, each one followed"
            ));
        }
    } else if a.sent() + a.received() + b.sent() + b.received() != 0 {
        return Err(format!("{counts}: expected none"));
    }
    let after = tls_stat();
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let kernel_tx = |path| if path == ChannelPath::KernelTls { 1 } else { 0 };
    let want_tx = kernel_tx(expect.path_a) * a.sent() + kernel_tx(expect.path_b) * b.sent();
    let want_rx = kernel_tx(expect.path_a) * a.received() + kernel_tx(expect.path_b) * b.received();
    if after.contains_key("TlsTxRekeyOk")
        && (delta("TlsTxRekeyOk") != want_tx || delta("TlsRxRekeyOk") != want_rx)
    {
        return Err(format!(
            "{counts}; the kernel counted TlsTxRekeyOk +{} TlsRxRekeyOk +{}, expected +{want_tx} +{want_rx}",
            delta("TlsTxRekeyOk"),
            delta("TlsRxRekeyOk")
        ));
    }
    if delta("TlsDecryptError") != 0 {
        return Err(format!(
            "{counts}; the kernel counted {} decryption errors",
            delta("TlsDecryptError")
        ));
    }
    println!(
        "  {counts}; kernel TlsTxRekeyOk +{} TlsRxRekeyOk +{}",
        delta("TlsTxRekeyOk"),
        delta("TlsRxRekeyOk")
    );
    Ok(())
}

/// Key updates at a lowered limit, on every pairing, as this kernel allows.
async fn key_update_cases(
    dir: &std::path::Path,
    user: &ChannelPaths,
    ktls: &ChannelPaths,
    len: usize,
) -> Result<(), String> {
    let rekey = ktls.ktls.rekey;
    let end = |caps: &ChannelPaths, policy| End {
        caps: caps.clone(),
        policy,
    };
    let (chacha, forced) = (KtlsWithoutRekey::Chacha20, KtlsWithoutRekey::Userspace);
    let (k, u) = (ChannelPath::KernelTls, ChannelPath::UserspaceTls);
    let cases = [
        (
            "kernel TLS on both gateways",
            end(ktls, chacha),
            end(ktls, chacha),
            if rekey {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: k,
                    path_b: k,
                    updates: true,
                }
            } else {
                Expect {
                    suite: "CHACHA20",
                    path_a: k,
                    path_b: k,
                    updates: false,
                }
            },
        ),
        (
            "kernel TLS on both gateways, AES-GCM kept (--ktls-without-rekey userspace)",
            end(ktls, forced),
            end(ktls, forced),
            if rekey {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: k,
                    path_b: k,
                    updates: true,
                }
            } else {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: u,
                    path_b: u,
                    updates: true,
                }
            },
        ),
        (
            "userspace TLS (gwA) <-> kernel TLS (gwB)",
            end(user, chacha),
            end(ktls, chacha),
            if rekey {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: u,
                    path_b: k,
                    updates: true,
                }
            } else {
                Expect {
                    suite: "CHACHA20",
                    path_a: u,
                    path_b: k,
                    updates: false,
                }
            },
        ),
        (
            "userspace TLS (gwA) <-> kernel TLS (gwB), AES-GCM kept",
            end(user, forced),
            end(ktls, forced),
            if rekey {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: u,
                    path_b: k,
                    updates: true,
                }
            } else {
                Expect {
                    suite: "AES_128_GCM",
                    path_a: u,
                    path_b: u,
                    updates: true,
                }
            },
        ),
    ];
    for (i, (label, a, b, expect)) in cases.into_iter().enumerate() {
        println!(
            "case: key updates at 64 records per key, {label} (kernel rekey: {})",
            if rekey { "yes" } else { "no" }
        );
        case_key_updates(&dir.join(format!("k{i}")), a, b, len, expect).await?;
    }
    Ok(())
}

async fn run(mib: usize) -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    let support: KtlsSupport = channel::probe_ktls();
    println!("probe: {}", support.detail);
    if !support.available() {
        return Err("kernel TLS is not available".into());
    }
    let dir = std::env::temp_dir().join(format!("ktls-selftest-{}", std::process::id()));
    let user = ChannelPaths::without_ktls(RelayEngine::userspace(), DataPath::Splice);
    let ktls = ChannelPaths {
        ktls: support.clone(),
        ..user.clone()
    };
    let len = mib << 20;

    println!("case: kernel TLS on both gateways");
    let mut pair = start(&dir.join("1"), ktls.clone(), ktls.clone(), SECRET).await?;
    case_streams(
        &mut pair,
        len,
        ChannelPath::KernelTls,
        ChannelPath::KernelTls,
    )
    .await?;
    println!("case: half-close");
    case_half_close(&mut pair).await?;
    println!("case: TLS alert mid-stream");
    case_alert(&mut pair).await?;
    println!("case: wrong secret");
    let mut pair = start(&dir.join("2"), ktls.clone(), ktls.clone(), [0x11; 32]).await?;
    case_wrong_secret(&mut pair).await?;
    println!("case: userspace TLS (gwA) <-> kernel TLS (gwB)");
    let mut pair = start(&dir.join("3"), user.clone(), ktls.clone(), SECRET).await?;
    case_streams(
        &mut pair,
        len / 4,
        ChannelPath::UserspaceTls,
        ChannelPath::KernelTls,
    )
    .await?;
    key_update_cases(&dir, &user, &ktls, len.max(4 << 20)).await?;
    for consumer in [Consumer::Slow, Consumer::Stalling] {
        println!(
            "case: back-pressure, 16 MiB each way, {consumer:?} consumers, kernel TLS on both"
        );
        let end = End {
            caps: ktls.clone(),
            policy: KtlsWithoutRekey::Chacha20,
        };
        // Key updates go on under pressure where the kernel has them.
        let mut pair = start_ends(
            &dir.join(format!("{consumer:?}")),
            end.clone(),
            end,
            SECRET,
            Some(64),
        )
        .await?;
        let both = ChannelPath::KernelTls;
        case_streams_as(&mut pair, 16 << 20, both, both, consumer).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The probe stage: the gateway's probe, then the wire and stream check.
fn probe(bytes: usize) -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "kernel {} ; tcp_available_ulp: {}",
        release.trim(),
        channel::available_ulps()
    );
    let support = channel::probe_ktls();
    println!("probe: {}", support.detail);
    if !support.available() {
        return Err("kernel TLS is not available".into());
    }
    println!("rekey: {}", if support.rekey { "yes" } else { "no" });
    println!("chacha20: {}", if support.chacha20 { "yes" } else { "no" });
    for line in channel::verify_ktls_wire(bytes)? {
        println!("{line}");
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("probe") {
        let bytes = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 20);
        match probe(bytes) {
            Ok(()) => println!("PASS: kernel TLS 1.3 AES-GCM-128 TX and RX work"),
            Err(e) => {
                println!("FAIL: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let mib = first.and_then(|a| a.parse().ok()).unwrap_or(4);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("FAIL: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(mib)) {
        Ok(()) => println!(
            "PASS: kernel TLS channel (both directions, half-close, alert, wrong secret, interop, \
             key updates, back-pressure)"
        ),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}
