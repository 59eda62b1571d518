//! `cargo xtask bench tls`: the secure gateway pair (issue 5's benchmark) and
//! the session setup time (issue 4), against a stunnel pair and a HAProxy TLS
//! pair measured in the same run.
//!
//! What it does, in order:
//! 1. builds `s2cs` and `s2uc` in release (`cargo build --release -p gateway
//!    -p control --bin s2cs --bin s2uc`);
//! 2. installs the peers from Debian packages if missing (iperf3, haproxy,
//!    stunnel4, openssl);
//! 3. builds four namespaces, consumer - gwB - gwA - producer, with no
//!    routing between them ([`topo::PairNet`]; removed on every exit path);
//! 4. for each pair: starts a fresh `iperf3 -s` in the producer namespace and
//!    the pair in gwB (consumer side, plain TCP from the consumer) and gwA
//!    (producer side, plain TCP to the producer), TLS 1.3 between them:
//!    - `s2cs`: two `s2cs serve` (default `--channel tls`), then `--sessions`
//!      times `s2uc connect --num-conn 1 --rate 0` in gwB, whose "setup time"
//!      lines give the setup time (median reported); the consumer connects
//!      to the last session's listener;
//!    - `stunnel`: stunnel4 client in gwB, server in gwA (self-signed EC
//!      certificate made with openssl), TLS 1.3 / AES-256-GCM;
//!    - `haproxy-tls`: HAProxy in gwB with `ssl verify none` on its server
//!      line, HAProxy in gwA with `ssl crt` on its bind line;
//!
//!    then for each stream count runs `iperf3 -c -R -P N -J` in the consumer
//!    namespace (the producer sends, as in SciStream) and takes the pair's
//!    CPU from procfs: every process in gwB and gwA ([`measure`]);
//! 5. prints the table with ratios against the stunnel pair, checks the goal
//!    of `shared/reference/baselines.md` (ours >= 2.5x stunnel's throughput)
//!    and writes `tls.json` and `tls.md`.
//!
//! Needs root (namespaces). Only traffic inside the namespaces it creates.
//! A default run (3 pairs x 2 stream counts x 5 s) takes about a minute
//! plus the build.
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::measure::{self, RunSpec};
use super::report::{CaseResult, Goal};
use super::topo::{
    self, PAIR_GWA_LAN, PAIR_GWA_WAN, PAIR_GWB_LAN, PAIR_GWB_WAN, PAIR_SERVER_ADDR, PairNet,
};
use super::{IperfServer, interrupted, peers};

/// Options of `bench tls`.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsOpts {
    /// Seconds per iperf3 run (iperf3 -t).
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// Parallel streams (iperf3 -P), one run per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    pub streams: Vec<u32>,
    /// Only these pairs, comma-separated: s2cs, stunnel, haproxy-tls.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// `s2uc connect` sessions whose setup time is measured (median reported).
    #[arg(long, default_value_t = 5)]
    pub sessions: u32,
    /// Use the existing target/release/{s2cs,s2uc} instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Fail instead of installing missing peers with apt-get.
    #[arg(long)]
    pub no_install: bool,
    /// Where to write tls.json and tls.md [default: <workspace>/target/bench].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Debian packages this benchmark needs, with a file that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "/usr/bin/iperf3"),
    ("haproxy", "/usr/sbin/haproxy"),
    ("stunnel4", "/usr/bin/stunnel4"),
    ("openssl", "/usr/bin/openssl"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairKind {
    S2cs,
    Stunnel,
    Haproxy,
}

/// One gateway pair.
#[derive(Clone, Copy, Debug)]
struct PairCase {
    name: &'static str,
    label: &'static str,
    kind: PairKind,
}

/// Every pair, in the order they run.
const PAIRS: &[PairCase] = &[
    PairCase {
        name: "s2cs",
        label: "s2cs pair (TLS 1.3)",
        kind: PairKind::S2cs,
    },
    PairCase {
        name: "stunnel",
        label: "stunnel pair (TLS 1.3)",
        kind: PairKind::Stunnel,
    },
    PairCase {
        name: "haproxy-tls",
        label: "HAProxy pair (TLS 1.3)",
        kind: PairKind::Haproxy,
    },
];

/// The pair ratios are taken against.
const BASELINE: &str = "stunnel";
/// Ours.
const OURS: &str = "s2cs";
/// baselines.md: the TLS gateway pair at least 2.5x the stunnel pair.
const GOAL_RATIO: f64 = 2.5;

/// Port the consumer side's relay listens on in gwB (stunnel, HAProxy).
const PLAIN_PORT: u16 = 7100;
/// Port the producer side's TLS listener uses in gwA (stunnel, HAProxy).
const TLS_PORT: u16 = 7443;
/// Control port of both s2cs gateways.
const CONTROL_PORT: u16 = 5000;
/// s2cs session listener ports.
const PORT_RANGE: &str = "5100-5199";
/// TLS 1.3 suite of every pair (baselines.md: AES-256-GCM).
const SUITE: &str = "TLS_AES_256_GCM_SHA384";

/// Runs the gateway-pair benchmark (see the module docs), prints the table and
/// writes `tls.json` and `tls.md`. A pair that fails is reported in
/// [`TlsReport::failures`] and the others still run.
pub fn run_tls_bench(workspace: &Path, opts: &TlsOpts) -> anyhow::Result<TlsReport> {
    super::require_root()?;
    let pairs = select(&opts.cases)?;
    let mut streams = opts.streams.clone();
    streams.sort_unstable();
    streams.dedup();
    if streams.len() != opts.streams.len() || streams.contains(&0) || opts.duration == 0 {
        bail!("--streams needs distinct positive counts and --duration a positive number");
    }
    if opts.sessions == 0 {
        bail!("--sessions needs at least one session");
    }
    let s2cs = super::s2cs_binary(workspace);
    let s2uc = s2cs.with_file_name("s2uc");
    if pairs.iter().any(|p| p.kind == PairKind::S2cs) {
        if opts.no_build {
            for bin in [&s2cs, &s2uc] {
                if !bin.is_file() {
                    bail!("{} is missing (drop --no-build to build it)", bin.display());
                }
            }
        } else {
            build(workspace)?;
        }
    }
    peers::ensure_packages(PACKAGES, opts.no_install)?;

    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| workspace.join("target/bench"));
    let work = out_dir.join("tls-run");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    make_cert(&work)?;
    let tck = measure::clock_ticks();
    let mut report = TlsReport {
        duration_s: opts.duration,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before: measure::loadavg(),
        json_path: out_dir.join("tls.json"),
        markdown_path: out_dir.join("tls.md"),
        ..TlsReport::default()
    };

    super::install_interrupt_handler();
    let net = PairNet::create()?;
    let start = Instant::now();
    for pair in &pairs {
        if interrupted() {
            bail!("interrupted");
        }
        let bins = (s2cs.as_path(), s2uc.as_path());
        match run_pair(&net, pair, opts, &work, bins, tck, &mut report) {
            Ok(()) => {}
            Err(_) if interrupted() => bail!("interrupted"),
            Err(e) => {
                eprintln!("bench: {} FAILED: {e:#}", pair.label);
                report
                    .failures
                    .push((pair.name.to_owned(), format!("{e:#}")));
            }
        }
    }
    report.loadavg_after = measure::loadavg();
    drop(net);
    eprintln!("bench: measured in {:.0?}", start.elapsed());
    report.check_goals();

    let json = serde_json::to_string_pretty(&report.to_json()).context("serializing the report")?;
    std::fs::write(&report.json_path, json + "\n")
        .with_context(|| format!("writing {}", report.json_path.display()))?;
    std::fs::write(&report.markdown_path, report.markdown())
        .with_context(|| format!("writing {}", report.markdown_path.display()))?;
    println!("{}", report.table());
    println!(
        "wrote {} and {} (raw iperf3 output, configs and logs in {})",
        report.json_path.display(),
        report.markdown_path.display(),
        work.display()
    );
    Ok(report)
}

/// One pair: iperf3 server, the pair, every stream count, then stop both.
fn run_pair(
    net: &PairNet,
    pair: &PairCase,
    opts: &TlsOpts,
    work: &Path,
    (s2cs, s2uc): (&Path, &Path),
    tck: u64,
    report: &mut TlsReport,
) -> anyhow::Result<()> {
    eprintln!("bench: {}", pair.label);
    let server = IperfServer::start_in(&net.server, PAIR_SERVER_ADDR, work)?;
    let running = match pair.kind {
        PairKind::S2cs => start_s2cs(net, work, s2cs, s2uc, opts.sessions)?,
        PairKind::Stunnel => start_stunnel(net, work)?,
        PairKind::Haproxy => start_haproxy(net, work)?,
    };
    if !running.setup_times.is_empty() {
        report.setup_times_s = running.setup_times.clone();
        eprintln!(
            "bench:   setup time over {} sessions: median {:.3} s",
            running.setup_times.len(),
            median(&running.setup_times)
        );
    }
    let gateways = [net.gwb.as_str(), net.gwa.as_str()];
    for &streams in &opts.streams {
        if interrupted() {
            bail!("interrupted");
        }
        let raw = work.join(format!("{}-P{streams}.json", pair.name));
        let spec = RunSpec {
            client_ns: &net.client,
            gateway_ns: &gateways,
            target: running.addr,
            secs: opts.duration,
            streams,
            reverse: true,
            server_pid: server.pid(),
        };
        let run = measure::iperf_run_in(&spec, tck, &raw).with_context(|| {
            format!(
                "{} with {streams} stream(s); logs in {}",
                pair.label,
                running.logs.join(", ")
            )
        })?;
        eprintln!(
            "bench:   P{streams}: {:.2} Gbit/s, pair {:.2} s CPU, machine {:.2} s busy over {:.1} s",
            run.iperf.bits_per_second / 1e9,
            run.relay_cpu,
            run.machine_cpu,
            run.wall.as_secs_f64()
        );
        report.results.push(CaseResult {
            case: pair.name.to_owned(),
            label: pair.label.to_owned(),
            streams,
            gbit_per_s: run.iperf.bits_per_second / 1e9,
            bytes: run.iperf.bytes,
            sent_bytes: run.iperf.sent_bytes,
            retransmits: run.iperf.retransmits,
            wall_s: run.wall.as_secs_f64(),
            relay_cpu_s: run.relay_cpu,
            endpoints_cpu_s: run.endpoints_cpu,
            kernel_threads_cpu_s: run.kernel_threads_cpu,
            unattributed_cpu_s: run.unattributed_cpu,
            others_cpu_s: run.others_cpu,
            machine_cpu_s: run.machine_cpu,
            softirq_cpu_s: run.softirq_cpu,
        });
    }
    if pair.kind == PairKind::S2cs {
        report.ktls = gateways
            .iter()
            .zip(["gwB", "gwA"])
            .map(|(ns, name)| format!("{name}: {}", ktls_stat(ns)))
            .collect::<Vec<_>>()
            .join("; ");
    }
    drop(running);
    drop(server);
    Ok(())
}

/// The non-zero kernel TLS counters of namespace `ns` (`/proc/net/tls_stat`),
/// or why there are none: whether the s2cs pair ran on kTLS.
fn ktls_stat(ns: &str) -> String {
    let out = topo::ns_command(ns, "cat")
        .arg("/proc/net/tls_stat")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let counters: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_once(char::is_whitespace))
                .map(|(k, v)| (k, v.trim()))
                .filter(|(k, v)| !k.starts_with("TlsCurr") && *v != "0")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if counters.is_empty() {
                "kernel TLS available, not used".into()
            } else {
                format!("kernel TLS {}", counters.join(" "))
            }
        }
        _ => "no kernel TLS (no /proc/net/tls_stat: tls module not loaded), userspace TLS".into(),
    }
}

/// A pair running in gwB and gwA; dropping it kills everything in both.
struct RunningPair<'a> {
    net: &'a PairNet,
    children: Vec<Child>,
    /// Where the consumer connects (gwB's LAN side).
    addr: SocketAddrV4,
    /// Log files, for error messages.
    logs: Vec<String>,
    /// `s2uc connect` setup times, seconds (s2cs only).
    setup_times: Vec<f64>,
}

impl RunningPair<'_> {
    fn new(net: &PairNet) -> RunningPair<'_> {
        RunningPair {
            net,
            children: Vec::new(),
            addr: SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT),
            logs: Vec::new(),
            setup_times: Vec::new(),
        }
    }

    /// Spawns `cmd` with its output in `log` and keeps it.
    fn spawn(&mut self, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        self.children.push(child);
        self.logs.push(log.display().to_string());
        Ok(())
    }

    /// Waits until the last child spawned listens on `port` (10 s at most).
    fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let log = self.logs.last().cloned().unwrap_or_default();
        let child = self.children.last_mut().context("nothing started")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().context("checking the relay")? {
                bail!("exited at start ({status}); output:\n{}", tail(&log));
            }
            if peers::listening(child.id(), port) {
                return Ok(());
            }
            if Instant::now() > deadline || interrupted() {
                bail!(
                    "not listening on port {port} after 10 s; output:\n{}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningPair<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.net.gwb, &self.net.gwa] {
            if let Err(e) = self.net.kill_all(ns) {
                eprintln!("bench: stopping the pair in {ns}: {e:#}");
            }
        }
    }
}

/// The last 20 lines of a log file.
fn tail(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Two `s2cs serve` (PROD in gwA, CONS in gwB) and `sessions` x `s2uc
/// connect` in gwB.
fn start_s2cs<'a>(
    net: &'a PairNet,
    work: &Path,
    s2cs: &Path,
    s2uc: &Path,
    sessions: u32,
) -> anyhow::Result<RunningPair<'a>> {
    let dir = work.join("s2cs");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let mut pair = RunningPair::new(net);
    // (namespace, name, control/listener address, allow rule)
    let gateways = [
        (&net.gwa, "gwa", PAIR_GWA_WAN, format!("{PAIR_GWA_LAN}/24")),
        (
            &net.gwb,
            "gwb",
            PAIR_GWB_LAN,
            format!("{PAIR_GWB_WAN}/24:{PORT_RANGE}"),
        ),
    ];
    for (ns, name, ip, allow) in &gateways {
        let state = dir.join(name);
        let mut cmd = topo::ns_command(ns, &s2cs.to_string_lossy());
        cmd.args(["serve", "--control-listen"])
            .arg(SocketAddrV4::new(*ip, CONTROL_PORT).to_string())
            .args(["--port-range", PORT_RANGE])
            .args(["--listener-ip", &ip.to_string()])
            .args(["--advertise-ip", &ip.to_string()])
            .args(["--no-auth", "--allow", allow, "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        let log = dir.join(format!("{name}.log"));
        pair.spawn(cmd, &log)?;
        // The fingerprint line comes once the control listener is bound.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = pair.children.last_mut().context("no s2cs")?;
            if let Some(status) = child.try_wait().context("checking s2cs")? {
                bail!(
                    "s2cs in {name} exited at start ({status}); output:\n{}",
                    tail(&log.display().to_string())
                );
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("SHA-256 fingerprint")
            {
                break;
            }
            if Instant::now() > deadline || interrupted() {
                bail!("s2cs in {name} not ready after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let cert = |name: &str| dir.join(name).join("tls/control-cert.pem");
    let producer = SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT).to_string();
    for i in 0..sessions {
        let mut cmd = topo::ns_command(&net.gwb, "timeout");
        cmd.arg("30")
            .arg(s2uc)
            .arg("connect")
            .arg("--prod-s2cs")
            .arg(SocketAddrV4::new(PAIR_GWA_WAN, CONTROL_PORT).to_string())
            .arg("--cons-s2cs")
            .arg(SocketAddrV4::new(PAIR_GWB_LAN, CONTROL_PORT).to_string())
            .arg("--prod-cert")
            .arg(cert("gwa"))
            .arg("--cons-cert")
            .arg(cert("gwb"))
            .args(["--producer", &producer, "--num-conn", "1", "--rate", "0"])
            .env("HOME", &home)
            .env_remove("S2UC_TOKEN")
            .stdin(Stdio::null());
        let out = cmd.output().context("running s2uc connect")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "s2uc connect (session {}) failed ({}):\n{stdout}{}",
                i + 1,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (setup, addr) = parse_connect(&stdout)?;
        pair.setup_times.push(setup);
        pair.addr = addr;
    }
    Ok(pair)
}

/// The setup time (seconds) and the first consumer listener from `s2uc
/// connect`'s output.
fn parse_connect(out: &str) -> anyhow::Result<(f64, SocketAddrV4)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("s2uc connect printed no {name:?} line:\n{out}"))
    };
    let setup = field("setup time:")?;
    let secs: f64 = setup
        .strip_suffix('s')
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("setup time {setup:?} is not \"N s\""))?;
    let listeners = field("consumer connects to:")?;
    let first = listeners.split(',').next().unwrap_or_default().trim();
    let addr = first
        .parse()
        .with_context(|| format!("consumer listener {first:?} is not IPv4:PORT"))?;
    Ok((secs, addr))
}

/// A self-signed P-256 certificate for the peers' TLS servers:
/// `cert.pem`, `key.pem` and `combined.pem` (HAProxy's `crt`) in `work`.
fn make_cert(work: &Path) -> anyhow::Result<()> {
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "2", "-subj", "/CN=s2bench-gwa", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .context("running openssl req")?;
    if !out.status.success() {
        bail!(
            "openssl req failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let combined = read(&cert)? + &read(&key)?;
    write(&work.join("combined.pem"), &combined)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// stunnel's server side in gwA, then its client side in gwB.
fn start_stunnel<'a>(net: &'a PairNet, work: &Path) -> anyhow::Result<RunningPair<'a>> {
    let mut pair = RunningPair::new(net);
    let wan = SocketAddrV4::new(PAIR_GWA_WAN, TLS_PORT);
    let common = format!(
        "foreground = yes\npid =\ndebug = warning\nsslVersionMin = TLSv1.3\nciphersuites = {SUITE}\n"
    );
    let server = format!(
        "{common}\n[gwa]\naccept = {wan}\nconnect = {}\ncert = {}\nkey = {}\n",
        SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT),
        work.join("cert.pem").display(),
        work.join("key.pem").display()
    );
    let client = format!(
        "{common}\n[gwb]\nclient = yes\naccept = {}\nconnect = {wan}\n",
        SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT)
    );
    for (ns, name, config, port) in [
        (&net.gwa, "gwa", server, TLS_PORT),
        (&net.gwb, "gwb", client, PLAIN_PORT),
    ] {
        let path = work.join(format!("stunnel-{name}.conf"));
        write(&path, &config)?;
        let mut cmd = topo::ns_command(ns, "stunnel4");
        cmd.arg(&path);
        pair.spawn(cmd, &work.join(format!("stunnel-{name}.log")))?;
        pair.wait_listening(port)
            .with_context(|| format!("stunnel in {name}"))?;
    }
    Ok(pair)
}

/// HAProxy terminating TLS in gwA (`ssl crt`), then HAProxy in gwB dialling
/// it with `ssl verify none`.
fn start_haproxy<'a>(net: &'a PairNet, work: &Path) -> anyhow::Result<RunningPair<'a>> {
    let mut pair = RunningPair::new(net);
    let wan = SocketAddrV4::new(PAIR_GWA_WAN, TLS_PORT);
    let common = "global\n    maxconn 1024\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n";
    let tls = format!("ssl-min-ver TLSv1.3 ciphersuites {SUITE}");
    let server = format!(
        "{common}frontend wan\n    bind {wan} ssl crt {} {tls}\n    default_backend producer\n\n\
         backend producer\n    server iperf {}\n",
        work.join("combined.pem").display(),
        SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT)
    );
    let client = format!(
        "{common}frontend lan\n    bind {}\n    default_backend gwa\n\n\
         backend gwa\n    server gwa {wan} ssl verify none {tls}\n",
        SocketAddrV4::new(PAIR_GWB_LAN, PLAIN_PORT)
    );
    for (ns, name, config, port) in [
        (&net.gwa, "gwa", server, TLS_PORT),
        (&net.gwb, "gwb", client, PLAIN_PORT),
    ] {
        let path = work.join(format!("haproxy-{name}.cfg"));
        write(&path, &config)?;
        let mut cmd = topo::ns_command(ns, "haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        pair.spawn(cmd, &work.join(format!("haproxy-{name}.log")))?;
        pair.wait_listening(port)
            .with_context(|| format!("HAProxy in {name}"))?;
    }
    Ok(pair)
}

fn select(names: &[String]) -> anyhow::Result<Vec<PairCase>> {
    for name in names {
        if !PAIRS.iter().any(|p| p.name == name) {
            let known: Vec<&str> = PAIRS.iter().map(|p| p.name).collect();
            bail!("unknown pair {name:?}; known: {}", known.join(", "));
        }
    }
    Ok(PAIRS
        .iter()
        .filter(|p| names.is_empty() || names.iter().any(|n| n == p.name))
        .copied()
        .collect())
}

fn build(workspace: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = [
        "build",
        "--release",
        "-p",
        "gateway",
        "-p",
        "control",
        "--bin",
        "s2cs",
        "--bin",
        "s2uc",
    ];
    eprintln!("bench: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The median of `values` (0 when empty).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Everything one `bench tls` run measured.
#[derive(Clone, Debug, Default)]
pub struct TlsReport {
    /// One row per pair and stream count; `relay_cpu_s` is the pair's (every
    /// process in gwB and gwA).
    pub results: Vec<CaseResult>,
    pub goals: Vec<Goal>,
    /// Pairs that could not be measured, with the reason.
    pub failures: Vec<(String, String)>,
    /// `s2uc connect` setup times, seconds.
    pub setup_times_s: Vec<f64>,
    /// Whether the s2cs pair's channel ran on kernel TLS (per gateway).
    pub ktls: String,
    pub duration_s: u32,
    pub kernel: String,
    pub cpus: usize,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub json_path: PathBuf,
    pub markdown_path: PathBuf,
}

impl TlsReport {
    fn find(&self, case: &str, streams: u32) -> Option<&CaseResult> {
        self.results
            .iter()
            .find(|r| r.case == case && r.streams == streams)
    }

    /// Throughput / stunnel's and the pair's CPU per GB / stunnel's.
    fn ratios(&self, r: &CaseResult) -> (Option<f64>, Option<f64>) {
        let Some(base) = self.find(BASELINE, r.streams) else {
            return (None, None);
        };
        let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        (
            div(r.gbit_per_s, base.gbit_per_s),
            div(r.relay_cpu_per_gb(), base.relay_cpu_per_gb()),
        )
    }

    /// Ours >= 2.5x the stunnel pair, for each stream count both were
    /// measured with.
    fn check_goals(&mut self) {
        let mut goals = Vec::new();
        for ours in self.results.iter().filter(|r| r.case == OURS) {
            if let (Some(value), _) = self.ratios(ours) {
                goals.push(Goal {
                    streams: ours.streams,
                    what: "s2cs pair throughput / stunnel pair's".into(),
                    value,
                    target: format!(">= {GOAL_RATIO:.2}"),
                    met: value >= GOAL_RATIO,
                });
            }
        }
        self.goals = goals;
    }

    /// Every goal checked and met, and nothing failed.
    pub fn goals_met(&self) -> bool {
        !self.goals.is_empty() && self.goals.iter().all(|g| g.met) && self.failures.is_empty()
    }

    fn setup_line(&self) -> String {
        if self.setup_times_s.is_empty() {
            return "session setup time: not measured".into();
        }
        let list: Vec<String> = self
            .setup_times_s
            .iter()
            .map(|s| format!("{:.1}", s * 1e3))
            .collect();
        format!(
            "session setup time (s2uc connect, {} sessions): median {:.1} ms (each: {} ms)",
            self.setup_times_s.len(),
            median(&self.setup_times_s) * 1e3,
            list.join(", ")
        )
    }

    fn rows(&self) -> Vec<[String; 8]> {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}x"));
        self.results
            .iter()
            .map(|r| {
                let (tput, cpu) = self.ratios(r);
                [
                    r.label.clone(),
                    format!("P{}", r.streams),
                    format!("{:.2}", r.gbit_per_s),
                    opt(tput),
                    format!("{:.2}", r.relay_cpu_s / r.wall_s.max(1e-9)),
                    format!("{:.2}", r.relay_cpu_per_gb()),
                    opt(cpu),
                    format!("{:.2}", r.machine_cpu_per_gb()),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 8] = [
        "pair",
        "streams",
        "Gbit/s",
        "vs stunnel",
        "pair cores",
        "pair CPU s/GB",
        "CPU/GB vs stunnel",
        "machine CPU s/GB",
    ];

    fn goal_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .goals
            .iter()
            .map(|g| {
                format!(
                    "goal P{}: {} = {:.2} ({}): {}",
                    g.streams,
                    g.what,
                    g.value,
                    g.target,
                    if g.met { "met" } else { "NOT met" }
                )
            })
            .collect();
        if self.goals.is_empty() {
            lines.push("goal: not checked (s2cs or stunnel pair missing)".into());
        }
        for (case, why) in &self.failures {
            lines.push(format!("FAILED {case}: {why}"));
        }
        lines
    }

    /// The plain-text table with the setup time and the goals.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let mut widths = Self::HEADER.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        let _ = writeln!(
            out,
            "bench tls: iperf3 -R -t {} through each gateway pair (consumer - gwB =TLS 1.3= gwA - producer), {} CPUs, kernel {}, load {} -> {}",
            self.duration_s, self.cpus, self.kernel, self.loadavg_before, self.loadavg_after
        );
        line(&mut out, &Self::HEADER.map(String::from));
        for row in &rows {
            line(&mut out, row);
        }
        let _ = writeln!(out, "{}", self.setup_line());
        if !self.ktls.is_empty() {
            let _ = writeln!(out, "s2cs channel: {}", self.ktls);
        }
        for l in self.goal_lines() {
            let _ = writeln!(out, "{l}");
        }
        let _ = write!(
            out,
            "pair CPU = every process in gwB and gwA (procfs); a shared {}-CPU machine: figures are noisy",
            self.cpus
        );
        out
    }

    /// The same as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# bench tls: gateway pairs\n\n");
        let _ = writeln!(
            out,
            "iperf3 -R -t {} (producer sends), consumer - gwB =TLS 1.3 ({SUITE})= gwA - producer, \
             {} CPUs, kernel {}, load {} -> {}.\n",
            self.duration_s, self.cpus, self.kernel, self.loadavg_before, self.loadavg_after
        );
        let _ = writeln!(out, "| {} |", Self::HEADER.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(Self::HEADER.len()));
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        let _ = writeln!(out, "\n{}\n", self.setup_line());
        if !self.ktls.is_empty() {
            let _ = writeln!(out, "s2cs channel: {}\n", self.ktls);
        }
        for l in self.goal_lines() {
            let _ = writeln!(out, "- {l}");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let results: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|r| {
                let (tput, cpu) = self.ratios(r);
                json!({
                    "case": r.case,
                    "label": r.label,
                    "streams": r.streams,
                    "gbit_per_s": r.gbit_per_s,
                    "bytes": r.bytes,
                    "sent_bytes": r.sent_bytes,
                    "retransmits": r.retransmits,
                    "wall_s": r.wall_s,
                    "pair_cpu_s": r.relay_cpu_s,
                    "pair_cpu_s_per_gb": r.relay_cpu_per_gb(),
                    "endpoints_cpu_s": r.endpoints_cpu_s,
                    "kernel_threads_cpu_s": r.kernel_threads_cpu_s,
                    "unattributed_cpu_s": r.unattributed_cpu_s,
                    "others_cpu_s": r.others_cpu_s,
                    "machine_cpu_s": r.machine_cpu_s,
                    "softirq_cpu_s": r.softirq_cpu_s,
                    "throughput_vs_stunnel": tput,
                    "cpu_per_gb_vs_stunnel": cpu,
                })
            })
            .collect();
        let goals: Vec<serde_json::Value> = self
            .goals
            .iter()
            .map(|g| {
                json!({
                    "streams": g.streams, "what": g.what, "value": g.value,
                    "target": g.target, "met": g.met,
                })
            })
            .collect();
        let failures: Vec<serde_json::Value> = self
            .failures
            .iter()
            .map(|(case, why)| json!({ "case": case, "error": why }))
            .collect();
        json!({
            "bench": "tls",
            "duration_s": self.duration_s,
            "kernel": self.kernel,
            "cpus": self.cpus,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "setup_time_s": {
                "median": (!self.setup_times_s.is_empty()).then(|| median(&self.setup_times_s)),
                "sessions": self.setup_times_s,
            },
            "s2cs_channel": self.ktls,
            "results": results,
            "goals": goals,
            "goals_met": self.goals_met(),
            "failures": failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s2uc_connect_output() {
        let out = "uid: abc\nprod gateway listeners: 10.202.2.1:5100\n\
                   consumer connects to: 10.202.3.1:5101,10.202.3.1:5102\nsetup time: 0.042 s\n";
        let (setup, addr) = parse_connect(out).expect("parses");
        assert!((setup - 0.042).abs() < 1e-9);
        assert_eq!(addr, "10.202.3.1:5101".parse().expect("addr"));
        assert!(parse_connect("nothing").is_err());
    }

    #[test]
    fn median_and_selection() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert_eq!(select(&[]).expect("all").len(), PAIRS.len());
        assert!(select(&["nope".into()]).is_err());
        assert!(PAIRS.iter().any(|p| p.name == BASELINE) && PAIRS.iter().any(|p| p.name == OURS));
    }
}
