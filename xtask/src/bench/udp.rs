//! `cargo xtask bench udp`: UDP datagram throughput and loss through a
//! gateway pair (issue 15's benchmark), against routed direct UDP and the
//! relays a SciStream user has today, in one run on this machine.
//!
//! What it does, in order:
//! 1. builds `s2cs` and `s2uc` in release;
//! 2. installs the peers from Debian packages if missing (iperf3, nginx with
//!    its stream module, socat);
//! 3. builds the gateway-pair namespaces (consumer - gwB - gwA - producer)
//!    with MTU 9000 veths;
//! 4. for each case starts a fresh `iperf3 -s` in the producer namespace and
//!    the case's path, then for each payload size runs
//!    `iperf3 -c -u -R -b RATE -l SIZE` in the consumer namespace (the
//!    producer sends, as in SciStream; iperf3's control connection is TCP
//!    through the same port, its datagrams UDP):
//!    - `direct`: routes through gwB and gwA, forwarding on (the ceiling);
//!    - `s2cs-quic`: two `s2cs serve --channel tls` and `s2uc connect`:
//!      datagrams in QUIC between the gateways (encrypted, authenticated);
//!    - `s2cs-kernel`: `--channel plaintext-after-auth`: after the proof the
//!      kernel forwards the datagrams (tc, `udp_fastpath`);
//!    - `nginx`: an nginx stream proxy pair (`listen PORT` and `listen PORT
//!      udp`, as SciStream's Nginx backend), unencrypted;
//!    - `socat`: a socat pair (TCP4-LISTEN with fork, UDP4-LISTEN),
//!      unencrypted;
//!
//!    Each payload size's rate is searched: a run as fast as iperf3 sends,
//!    then, while 1% or more of the datagrams is lost, runs at 0.6x the
//!    rate the last run sent, then two runs halfway between the best run
//!    under 1% loss and the lowest rate over it (10 runs at most); the row
//!    is the run under 1% loss that received the most (or the last run). Relays without per-flow state of their own
//!    (socat's UDP4-LISTEN serves one flow, then exits) start afresh for
//!    every run.
//! 5. prints the table (received Gbit/s, loss, ratio to direct), checks the
//!    goals (the kernel path >= 90% of direct at < 1% loss; the encrypted
//!    path ahead of every unencrypted userspace peer) and writes `udp.json`
//!    and `udp.md`.
//!
//! Needs root (namespaces, eBPF). Only traffic inside the namespaces it
//! creates.
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::tls::pairs::start_s2cs;
use super::topo::{
    self, PAIR_GWA_LAN, PAIR_GWA_WAN, PAIR_GWB_LAN, PAIR_GWB_WAN, PAIR_SERVER_ADDR, PairNet,
};
use super::{IperfServer, Machine, RunOpts, interrupted, peers};

/// Options of `bench udp`.
#[derive(Clone, Debug, clap::Args)]
pub struct UdpOpts {
    #[command(flatten)]
    pub run: RunOpts,
    /// Only these cases, comma-separated: direct, s2cs-quic, s2cs-kernel,
    /// nginx, socat.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// UDP payload sizes (iperf3 -l), one run per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1400, 8900])]
    pub sizes: Vec<u32>,
    /// Offered rate per run (iperf3 -b, e.g. 2G). Without it each case
    /// finds its rate: first as fast as the sender can, then, while 1% or
    /// more is lost, at 0.6x what the last run sent, then refined (10 runs at most).
    #[arg(long)]
    pub rate: Option<String>,
}

/// Debian packages this benchmark needs, with a file that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "/usr/bin/iperf3"),
    ("nginx-light", "/usr/sbin/nginx"),
    (
        "libnginx-mod-stream",
        "/usr/lib/nginx/modules/ngx_stream_module.so",
    ),
    ("socat", "/usr/bin/socat"),
];

/// The links' MTU: jumbo frames, as between facilities' DTNs.
const MTU: u32 = 9000;
/// Runs per payload size at most while searching the rate under 1% loss.
const ATTEMPTS: u32 = 10;
/// Each search step down offers this much of what the last run sent.
const STEP: f64 = 0.6;
/// Runs between the best rate under 1% loss and the lowest one over it,
/// each halving the gap (the 0.6x steps alone leave up to 40% unmeasured).
const REFINES: u32 = 2;

/// The search for a payload size's highest rate under 1% loss: steps of
/// 0.6x down from full speed until a run passes, then [`REFINES`] runs
/// halfway between the best pass and the lowest failure.
#[derive(Default)]
struct RateSearch {
    /// The run that received the most under 1% loss.
    best: Option<Row>,
    /// The lowest rate sent by a run that lost 1% or more.
    failed_at: Option<f64>,
    refines: u32,
    /// The last run (the result when none passed).
    last: Option<Row>,
}

impl RateSearch {
    /// Takes a run's result; returns the next rate to offer, or None when
    /// the search is over.
    fn next_rate(&mut self, row: Row) -> Option<f64> {
        if row.lost_percent < 1.0 {
            if self.best.as_ref().is_none_or(|b| row.bps > b.bps) {
                self.best = Some(row.clone());
            }
        } else {
            self.failed_at = Some(self.failed_at.map_or(row.sent_bps, |f| f.min(row.sent_bps)));
        }
        let step_down = (row.sent_bps * STEP).max(1e6);
        self.last = Some(row);
        match (&self.best, self.failed_at) {
            (None, _) => Some(step_down),
            (Some(best), Some(failed))
                if self.refines < REFINES && failed > best.sent_bps * 1.05 =>
            {
                self.refines += 1;
                Some((best.sent_bps + failed) / 2.0)
            }
            _ => None,
        }
    }

    /// The row to report: the best pass, else the last run.
    fn result(self) -> Option<Row> {
        self.best.or(self.last)
    }
}
/// Where gwB's relays (nginx, socat) listen for the consumer.
const CONS_PORT: u16 = 7100;
/// Where gwA's relays listen for gwB.
const WAN_PORT: u16 = 7200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Direct,
    S2cs(&'static str),
    Nginx,
    Socat,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    label: &'static str,
    kind: Kind,
}

const CASES: &[Case] = &[
    Case {
        name: "direct",
        label: "routed direct (no gateway)",
        kind: Kind::Direct,
    },
    Case {
        name: "s2cs-quic",
        label: "s2cs pair, QUIC datagrams (encrypted)",
        kind: Kind::S2cs("tls"),
    },
    Case {
        name: "s2cs-kernel",
        label: "s2cs pair, kernel path (plaintext after auth)",
        kind: Kind::S2cs("plaintext-after-auth"),
    },
    Case {
        name: "nginx",
        label: "nginx stream UDP pair (unencrypted)",
        kind: Kind::Nginx,
    },
    Case {
        name: "socat",
        label: "socat UDP pair (unencrypted)",
        kind: Kind::Socat,
    },
];

/// One measured run.
#[derive(Clone, Debug)]
struct Row {
    case: &'static str,
    label: &'static str,
    size: u32,
    /// The offered rate (iperf3 -b; "0": unlimited).
    offered: String,
    /// Received by the consumer, bits per second.
    bps: f64,
    /// Sent by the producer, bits per second.
    sent_bps: f64,
    /// Datagrams lost, percent of those sent.
    lost_percent: f64,
    packets: u64,
}

/// Runs the benchmark (see the module docs), prints the table and writes
/// `udp.json` and `udp.md`. A case that fails is reported and the others
/// still run.
pub fn run_udp_bench(workspace: &Path, opts: &UdpOpts) -> anyhow::Result<()> {
    super::require_root()?;
    let cases = select(&opts.cases)?;
    opts.run.validate()?;
    if opts.sizes.is_empty() || opts.sizes.iter().any(|&s| !(16..=65_000).contains(&s)) {
        bail!("--sizes needs payload sizes of 16 to 65000 bytes");
    }
    let s2cs = super::s2cs_binary(workspace);
    let s2uc = s2cs.with_file_name("s2uc");
    if cases.iter().any(|c| matches!(c.kind, Kind::S2cs(_))) {
        opts.run
            .release_binaries(workspace, &[("gateway", "s2cs"), ("control", "s2uc")])?;
    }
    peers::ensure_packages(PACKAGES, opts.run.no_install)?;
    let out_dir = opts.run.out_dir(workspace);
    let work = out_dir.join("udp-run");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut machine = Machine::now();
    super::install_interrupt_handler();
    let net = PairNet::create_with_mtu(MTU)?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let start = Instant::now();
    for case in &cases {
        if interrupted() {
            bail!("interrupted");
        }
        eprintln!("bench: {}", case.label);
        match run_case(&net, case, opts, &work, (&s2cs, &s2uc), &mut rows) {
            Ok(()) => {}
            Err(_) if interrupted() => bail!("interrupted"),
            Err(e) => {
                eprintln!("bench: {} FAILED: {e:#}", case.label);
                failures.push((case.name.to_owned(), format!("{e:#}")));
            }
        }
    }
    machine.finish();
    drop(net);
    eprintln!("bench: measured in {:.0?}", start.elapsed());
    rows.sort_by_key(|r| r.size);
    let goals = goals(&rows);
    let table = table(&rows, &goals, &failures);
    let json = json!({
        "duration_s": opts.run.duration,
        "mtu": MTU,
        "rate": opts.rate,
        "machine": {
            "kernel": machine.kernel, "cpus": machine.cpus,
            "loadavg_before": machine.loadavg_before, "loadavg_after": machine.loadavg_after,
        },
        "results": rows.iter().map(|r| json!({
            "case": r.case, "label": r.label, "payload_bytes": r.size,
            "offered": r.offered, "gbit_per_s": r.bps / 1e9, "lost_percent": r.lost_percent,
            "packets": r.packets,
        })).collect::<Vec<_>>(),
        "goals": goals.iter().map(|(goal, ok)| json!({"goal": goal, "met": ok})).collect::<Vec<_>>(),
        "failures": failures.iter().map(|(c, e)| json!({"case": c, "error": e})).collect::<Vec<_>>(),
    });
    let markdown = format!("# UDP through a gateway pair (MTU {MTU})\n\n```\n{table}```\n");
    super::common::write_report(
        &json,
        (&out_dir.join("udp.json"), &out_dir.join("udp.md")),
        &markdown,
        &table,
        &work,
    )
}

/// One case: iperf3 server, the path, every payload size.
fn run_case(
    net: &PairNet,
    case: &Case,
    opts: &UdpOpts,
    work: &Path,
    (s2cs, s2uc): (&Path, &Path),
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let server = IperfServer::start_in(&net.server, PAIR_SERVER_ADDR, work)?;
    let server_addr = SocketAddrV4::new(PAIR_SERVER_ADDR, topo::SERVER_PORT);
    let relay_addr = SocketAddrV4::new(PAIR_GWB_LAN, CONS_PORT);
    // What runs the path for the whole case, dropped (killed) after it.
    let mut _pair = None;
    let mut _routes = None;
    let target = match case.kind {
        Kind::Direct => {
            _routes = Some(Routes::direct(net)?);
            server_addr
        }
        Kind::S2cs(channel) => {
            let running = start_s2cs(net, work, s2cs, s2uc, channel, 1)?;
            let addr = running.addr;
            _pair = Some(running);
            addr
        }
        Kind::Nginx | Kind::Socat => relay_addr,
    };
    for &size in &opts.sizes {
        let mut rate = opts.rate.clone().unwrap_or_else(|| "0".to_owned());
        let mut search = RateSearch::default();
        for attempt in 0..ATTEMPTS {
            if interrupted() {
                bail!("interrupted");
            }
            // Peer relays start afresh for every run.
            let _relays = match case.kind {
                Kind::Nginx => Some(Relays::nginx(net, work, server_addr)?),
                Kind::Socat => Some(Relays::socat(net, work, server_addr)?),
                _ => None,
            };
            let raw = work.join(format!("{}-{size}-{attempt}.json", case.name));
            let row = iperf_udp(net, case, target, size, &rate, opts.run.duration, &raw)?;
            eprintln!(
                "bench:   {size} B at {}: {:.2} Gbit/s received, {:.2}% lost ({} datagrams)",
                if rate == "0" { "full speed" } else { &rate },
                row.bps / 1e9,
                row.lost_percent,
                row.packets
            );
            if opts.rate.is_some() {
                search.best = Some(row);
                break;
            }
            match search.next_rate(row) {
                Some(next) => rate = format!("{next:.0}"),
                None => break,
            }
        }
        rows.extend(search.result());
    }
    drop(server);
    Ok(())
}

/// One `iperf3 -c -u -R` run from the consumer namespace at `rate`.
fn iperf_udp(
    net: &PairNet,
    case: &Case,
    target: SocketAddrV4,
    size: u32,
    rate: &str,
    secs: u32,
    raw: &Path,
) -> anyhow::Result<Row> {
    let out = topo::ns_command(&net.client, "timeout")
        .arg((secs + 30).to_string())
        .args(["iperf3", "-c", &target.ip().to_string()])
        .args(["-p", &target.port().to_string()])
        .args(["-u", "-R", "-J", "--connect-timeout", "5000", "-w", "4M"])
        .args(["-b", rate, "-l", &size.to_string()])
        .args(["-t", &secs.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running iperf3 -c -u")?;
    std::fs::write(raw, &out.stdout).with_context(|| format!("writing {}", raw.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output is not JSON (see {})", raw.display()))?;
    if let Some(err) = report["error"].as_str() {
        bail!("iperf3: {err} (see {})", raw.display());
    }
    // What the consumer received (end.sum is the sender's rate).
    let sum = &report["end"]["sum_received"];
    if sum["packets"].as_u64().unwrap_or(0) == 0 {
        bail!(
            "no datagram of {size} bytes arrived (see {})",
            raw.display()
        );
    }
    let bps = sum["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in {}", raw.display()))?;
    Ok(Row {
        case: case.name,
        label: case.label,
        size,
        offered: rate.to_owned(),
        bps,
        sent_bps: report["end"]["sum_sent"]["bits_per_second"]
            .as_f64()
            .unwrap_or(bps),
        lost_percent: sum["lost_percent"].as_f64().unwrap_or(100.0),
        packets: sum["packets"].as_u64().unwrap_or(0),
    })
}

/// Routes through gwB and gwA with forwarding on, for `direct`; removed on
/// drop.
struct Routes<'a> {
    net: &'a PairNet,
}

impl<'a> Routes<'a> {
    fn direct(net: &'a PairNet) -> anyhow::Result<Routes<'a>> {
        let routes = Routes { net };
        for (ns, dest, via) in routes.plan() {
            run(topo::ns_command(ns, "ip").args(["route", "add", dest, "via", &via.to_string()]))?;
        }
        for ns in [&net.gwb, &net.gwa] {
            netlab::set_forwarding(ns, true)?;
        }
        Ok(routes)
    }

    fn plan(&self) -> [(&'a str, &'static str, Ipv4Addr); 4] {
        let net = self.net;
        [
            (net.client.as_str(), "10.202.1.0/24", PAIR_GWB_LAN),
            (net.gwb.as_str(), "10.202.1.0/24", PAIR_GWA_WAN),
            (net.gwa.as_str(), "10.202.3.0/24", PAIR_GWB_WAN),
            (net.server.as_str(), "10.202.3.0/24", PAIR_GWA_LAN),
        ]
    }
}

impl Drop for Routes<'_> {
    fn drop(&mut self) {
        for ns in [&self.net.gwb, &self.net.gwa] {
            let _ = netlab::set_forwarding(ns, false);
        }
        for (ns, dest, via) in self.plan() {
            let _ = topo::ns_command(ns, "ip")
                .args(["route", "del", dest, "via", &via.to_string()])
                .output();
        }
    }
}

/// The two relays of a peer pair: (namespace, name, where it listens, where
/// it relays to): gwB from the consumer to gwA, gwA on to the producer.
fn hops(
    net: &PairNet,
    server: SocketAddrV4,
) -> [(&str, &'static str, SocketAddrV4, SocketAddrV4); 2] {
    [
        (
            &net.gwb,
            "gwb",
            SocketAddrV4::new(PAIR_GWB_LAN, CONS_PORT),
            SocketAddrV4::new(PAIR_GWA_WAN, WAN_PORT),
        ),
        (
            &net.gwa,
            "gwa",
            SocketAddrV4::new(PAIR_GWA_WAN, WAN_PORT),
            server,
        ),
    ]
}

/// A peer relay pair (nginx or socat) in gwB and gwA; killed on drop.
struct Relays<'a> {
    net: &'a PairNet,
    children: Vec<Child>,
}

impl<'a> Relays<'a> {
    /// nginx in each gateway: `listen` TCP and UDP on one port, as SciStream's
    /// Nginx backend writes it.
    fn nginx(net: &'a PairNet, work: &Path, server: SocketAddrV4) -> anyhow::Result<Relays<'a>> {
        let mut relays = Relays {
            net,
            children: Vec::new(),
        };
        for (ns, name, listen, to) in hops(net, server) {
            let prefix = work.join(format!("nginx-{name}"));
            std::fs::create_dir_all(&prefix)
                .with_context(|| format!("creating {}", prefix.display()))?;
            let config = prefix.join("nginx.conf");
            std::fs::write(&config, nginx_udp_config(listen, to, &prefix))
                .with_context(|| format!("writing {}", config.display()))?;
            let mut cmd = topo::ns_command(ns, "nginx");
            cmd.args([
                "-p",
                &prefix.to_string_lossy(),
                "-c",
                &config.to_string_lossy(),
            ]);
            relays.spawn(cmd, &prefix.join("stdout.log"))?;
        }
        relays.settle()?;
        Ok(relays)
    }

    /// socat in each gateway: a TCP relay (fork) for iperf3's control
    /// connection and a UDP relay for its one flow.
    fn socat(net: &'a PairNet, work: &Path, server: SocketAddrV4) -> anyhow::Result<Relays<'a>> {
        let mut relays = Relays {
            net,
            children: Vec::new(),
        };
        for (ns, name, listen, to) in hops(net, server) {
            let (port, ip) = (listen.port(), listen.ip());
            for (proto, args) in [
                (
                    "tcp",
                    [
                        format!("TCP4-LISTEN:{port},bind={ip},reuseaddr,fork"),
                        format!("TCP4:{to}"),
                    ],
                ),
                (
                    "udp",
                    [
                        format!("UDP4-LISTEN:{port},bind={ip},reuseaddr,rcvbuf=8388608"),
                        format!("UDP4:{to},sndbuf=8388608"),
                    ],
                ),
            ] {
                let mut cmd = topo::ns_command(ns, "socat");
                cmd.arg("-b65536").args(&args);
                relays.spawn(cmd, &work.join(format!("socat-{name}-{proto}.log")))?;
            }
        }
        relays.settle()?;
        Ok(relays)
    }

    fn spawn(&mut self, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        self.children
            .push(cmd.spawn().with_context(|| format!("starting {cmd:?}"))?);
        Ok(())
    }

    /// Gives the relays a moment to bind, and fails if one exited.
    fn settle(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            for child in &mut self.children {
                if let Some(status) = child.try_wait().context("checking a relay")? {
                    bail!("a relay exited at start ({status}); see its log in the run directory");
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Relays<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.net.gwb, &self.net.gwa] {
            let _ = self.net.kill_all(ns);
        }
    }
}

/// nginx's stream proxy for TCP and UDP on one port, in the foreground.
fn nginx_udp_config(listen: SocketAddrV4, target: SocketAddrV4, prefix: &Path) -> String {
    let prefix = prefix.display();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off;\nworker_processes auto;\npid {prefix}/nginx.pid;\n\
         error_log {prefix}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n    server {{\n        listen {listen};\n        listen {listen} udp;\n        \
         proxy_pass {target};\n        proxy_timeout 30s;\n    }}\n}}\n"
    )
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Each goal with whether it was met (only goals whose cases ran).
fn goals(rows: &[Row]) -> Vec<(String, bool)> {
    let find = |case: &str, size: u32| rows.iter().find(|r| r.case == case && r.size == size);
    let mut goals = Vec::new();
    let sizes: Vec<u32> = {
        let mut s: Vec<u32> = rows.iter().map(|r| r.size).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    for size in sizes {
        if let (Some(kernel), Some(direct)) = (find("s2cs-kernel", size), find("direct", size)) {
            let ratio = kernel.bps / direct.bps.max(1.0);
            goals.push((
                format!(
                    "{size} B: kernel path {:.0}% of direct (>= 90%) at {:.2}% loss (< 1%)",
                    ratio * 100.0,
                    kernel.lost_percent
                ),
                ratio >= 0.9 && kernel.lost_percent < 1.0,
            ));
        }
        if let Some(quic) = find("s2cs-quic", size) {
            for peer in ["nginx", "socat"] {
                if let Some(p) = find(peer, size) {
                    goals.push((
                        format!(
                            "{size} B: encrypted path {:.2} Gbit/s ahead of {peer}'s {:.2}",
                            quic.bps / 1e9,
                            p.bps / 1e9
                        ),
                        quic.bps > p.bps,
                    ));
                }
            }
        }
    }
    goals
}

fn table(rows: &[Row], goals: &[(String, bool)], failures: &[(String, String)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<48} {:>7} {:>11} {:>10} {:>8} {:>9}",
        "case", "payload", "offered", "Gbit/s", "lost %", "x direct"
    );
    for r in rows {
        let direct = rows
            .iter()
            .find(|d| d.case == "direct" && d.size == r.size)
            .map(|d| r.bps / d.bps.max(1.0));
        let _ = writeln!(
            t,
            "{:<48} {:>7} {:>11} {:>10.2} {:>8.2} {:>9}",
            r.label,
            r.size,
            if r.offered == "0" {
                "full".to_owned()
            } else {
                r.offered
                    .parse::<f64>()
                    .map_or_else(|_| r.offered.clone(), |b| format!("{:.2}G", b / 1e9))
            },
            r.bps / 1e9,
            r.lost_percent,
            direct.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
        );
    }
    for (goal, ok) in goals {
        let _ = writeln!(t, "[{}] {goal}", if *ok { " ok " } else { "MISS" });
    }
    for (case, err) in failures {
        let _ = writeln!(t, "[FAIL] {case}: {err}");
    }
    t
}

fn select(names: &[String]) -> anyhow::Result<Vec<Case>> {
    let chosen = super::common::select_by_name(CASES, names, |c| c.name, "case")?;
    Ok(chosen.into_iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_select_and_configs_name_both_protocols() {
        assert_eq!(select(&[]).expect("all").len(), CASES.len());
        assert!(select(&["nope".into()]).is_err());
        let c = nginx_udp_config(
            SocketAddrV4::new(PAIR_GWB_LAN, CONS_PORT),
            SocketAddrV4::new(PAIR_GWA_WAN, WAN_PORT),
            Path::new("/tmp/x"),
        );
        assert!(c.contains("listen 10.202.3.1:7100;") && c.contains("listen 10.202.3.1:7100 udp;"));
        assert!(c.contains("proxy_pass 10.202.2.1:7200;"));
    }

    #[test]
    fn the_rate_search_steps_down_then_halves_the_gap_and_keeps_the_best_pass() {
        let run = |sent: f64, lost_percent: f64| Row {
            case: "s2cs-quic",
            label: "s2cs-quic",
            size: 1400,
            offered: "0".to_owned(),
            bps: sent * (1.0 - lost_percent / 100.0),
            sent_bps: sent,
            lost_percent,
            packets: 1,
        };
        let mut search = RateSearch::default();
        // Full speed loses: 0.6x of what was sent.
        assert_eq!(search.next_rate(run(2.0e9, 40.0)), Some(1.2e9));
        assert_eq!(search.next_rate(run(1.2e9, 5.0)), Some(0.72e9));
        // A pass: halfway to the lowest failure, twice.
        assert_eq!(search.next_rate(run(0.72e9, 0.1)), Some(0.96e9));
        assert_eq!(search.next_rate(run(0.96e9, 0.5)), Some(1.08e9));
        assert_eq!(search.next_rate(run(1.08e9, 3.0)), None);
        let best = search.result().expect("a row");
        assert_eq!((best.sent_bps, best.lost_percent), (0.96e9, 0.5));

        // Full speed passing ends the search at once.
        let mut search = RateSearch::default();
        assert_eq!(search.next_rate(run(3.0e9, 0.0)), None);
        assert_eq!(search.result().expect("a row").sent_bps, 3.0e9);

        // Nothing passing reports the last run.
        let mut search = RateSearch::default();
        search.next_rate(run(2.0e9, 50.0));
        search.next_rate(run(1.2e9, 50.0));
        assert_eq!(search.result().expect("a row").sent_bps, 1.2e9);
    }

    #[test]
    fn goals_compare_against_direct_and_the_peers() {
        let row = |case, bps, lost_percent| Row {
            case,
            label: case,
            size: 1400,
            offered: "0".to_owned(),
            bps,
            sent_bps: bps,
            lost_percent,
            packets: 1,
        };
        let rows = [
            row("direct", 10e9, 0.0),
            row("s2cs-kernel", 9.5e9, 0.5),
            row("s2cs-quic", 3e9, 0.1),
            row("nginx", 2e9, 0.0),
            row("socat", 4e9, 0.0),
        ];
        let g = goals(&rows);
        assert_eq!(g.len(), 3);
        assert!(g[0].1, "{g:?}");
        assert!(g[1].1 && !g[2].1, "{g:?}");
    }
}
