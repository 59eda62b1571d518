//! ktls_selftest: the kernel-TLS channel end to end, for kernels that have
//! kernel TLS (run in a VM by `cargo xtask vm-test`; this machine's kernel
//! has none). Built as a static binary and run as root inside the guest.
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
//! 6. userspace TLS on one gateway, kernel TLS on the other (interop).
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

use gateway::channel::{
    self, ChannelConfig, ChannelPath, ChannelSettings, FailureReason, KernelCaps, KtlsSupport,
};
use gateway::relay::{ConnCounters, DataPath, RelayEngine};
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: [u8; 32] = [0x5a; 32];
const DEADLINE: Duration = Duration::from_secs(240);

type Outcome = Result<ChannelPath, (Option<FailureReason>, String)>;

struct Pair {
    lan_addr: SocketAddr,
    wan_addr: SocketAddr,
    sink: TcpListener,
    a: mpsc::UnboundedReceiver<Outcome>,
    b: mpsc::UnboundedReceiver<Outcome>,
    cfg_a: ChannelConfig,
}

async fn start(
    dir: &std::path::Path,
    caps_a: KernelCaps,
    caps_b: KernelCaps,
    secret_a: [u8; 32],
) -> Result<Pair, String> {
    let cfg_a = ChannelConfig::new(ChannelSettings::self_signed(dir.join("a")))
        .map_err(|e| e.to_string())?;
    let cfg_b = ChannelConfig::new(ChannelSettings::self_signed(dir.join("b")))
        .map_err(|e| e.to_string())?;
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
                        Ok(lan) => channel::relay_channel(ch, lan, &ConnCounters::default(), &caps)
                            .await
                            .map_err(|e| (None, e.to_string())),
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
                            channel::relay_channel(ch, client, &ConnCounters::default(), &caps)
                                .await
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

async fn read_to_end_hash(mut r: impl AsyncReadExt + Unpin) -> Result<(usize, Vec<u8>), String> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {total} bytes: {e}"))?;
        if n == 0 {
            return Ok((total, ctx.finish().as_ref().to_vec()));
        }
        ctx.update(&buf[..n]);
        total += n;
    }
}

fn expect_path(outcome: Outcome, want: ChannelPath, who: &str) -> Result<(), String> {
    match outcome {
        Ok(path) if path == want => Ok(()),
        Ok(path) => Err(format!("{who} took {path}, expected {want}")),
        Err((_, e)) => Err(format!("{who} failed: {e}")),
    }
}

async fn case_streams(
    pair: &mut Pair,
    len: usize,
    want_a: ChannelPath,
    want_b: ChannelPath,
) -> Result<(), String> {
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
            read_to_end_hash(sr),
            read_to_end_hash(cr)
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
    expect_path(next(&mut pair.a, "gwA").await?, want_a, "gwA")?;
    expect_path(next(&mut pair.b, "gwB").await?, want_b, "gwB")?;
    println!(
        "  {len} bytes each way, SHA-256 identical, gwA {want_a}, gwB {want_b}, {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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

async fn run(mib: usize) -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    let support: KtlsSupport = channel::probe_ktls();
    println!("probe: {}", support.detail);
    if !support.available() {
        return Err("kernel TLS is not available".into());
    }
    let dir = std::env::temp_dir().join(format!("ktls-selftest-{}", std::process::id()));
    let user = KernelCaps::without_ktls(RelayEngine::userspace(), DataPath::Splice);
    let ktls = KernelCaps {
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
    let mut pair = start(&dir.join("3"), user, ktls, SECRET).await?;
    case_streams(
        &mut pair,
        len / 4,
        ChannelPath::UserspaceTls,
        ChannelPath::KernelTls,
    )
    .await?;
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
            "PASS: kernel TLS channel (both directions, half-close, alert, wrong secret, interop)"
        ),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}
