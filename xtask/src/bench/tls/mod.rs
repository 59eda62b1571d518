//! `cargo xtask bench tls`: the secure gateway pair (issue 5's benchmark) and
//! the session setup time (issue 4), against a stunnel pair, a HAProxy TLS
//! pair and an ssh -L tunnel measured in the same run.
//!
//! What it does, in order:
//! 1. builds `s2cs` and `s2uc` in release (`cargo build --release -p gateway
//!    -p control --bin s2cs --bin s2uc`);
//! 2. installs the peers from Debian packages if missing (iperf3, haproxy,
//!    stunnel4, openssl, openssh-server, openssh-client);
//! 3. builds four namespaces, consumer - gwB - gwA - producer, with no
//!    routing between them ([`topo::PairNet`]; removed on every exit path);
//! 4. for each pair: starts a fresh `iperf3 -s` in the producer namespace and
//!    the pair in gwB (consumer side, plain TCP from the consumer) and gwA
//!    (producer side, plain TCP to the producer), TLS 1.3 between them:
//!    - `s2cs`: two `s2cs serve` (default `--channel tls`), then `--sessions`
//!      times `s2uc connect --num-conn 1` (the defaults a user gets: no rate cap) in gwB, whose "setup time"
//!      lines give the setup time (median reported); the consumer connects
//!      to the last session's listener;
//!    - `s2cs-plain`: the same with `--channel plaintext-after-auth` (the
//!      mutual proof, then plain TCP spliced by the kernel): not a peer but
//!      the ceiling any encrypting pair could reach in this topology, since
//!      it does everything but the cryptography;
//!    - `stunnel`: stunnel4 client in gwB, server in gwA (self-signed EC
//!      certificate made with openssl), TLS 1.3 / AES-256-GCM;
//!    - `haproxy-tls`: HAProxy in gwB with `ssl verify none` on its server
//!      line, HAProxy in gwA with `ssl crt` on its bind line;
//!    - `ssh`: sshd in gwA (host and user keys made with ssh-keygen for this
//!      run), `ssh -N -L` in gwB, cipher aes128-gcm@openssh.com as in
//!      baselines.md;
//!
//!    then for each stream count runs `iperf3 -c -R -P N -J` in the consumer
//!    namespace (the producer sends, as in SciStream) and takes the pair's
//!    CPU from procfs: every process in gwB and gwA ([`measure`]);
//! 5. prints the table with ratios against the stunnel pair, checks the goal
//!    of `shared/reference/baselines.md` (ours >= 2.5x stunnel's throughput)
//!    and writes `tls.json` and `tls.md`.
//!
//! Needs root (namespaces). Only traffic inside the namespaces it creates.
//! A default run (4 pairs x 2 stream counts x 5 s) takes about a minute
//! plus the build.
pub(super) mod pairs;
mod report;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::measure::{self, RunSpec};
use super::report::CaseResult;
use super::topo::{PAIR_SERVER_ADDR, PairNet};
use super::{IperfServer, Machine, RunOpts, interrupted, peers};

use pairs::{ktls_stat, make_cert, start_haproxy, start_s2cs, start_ssh, start_stunnel};
pub use report::TlsReport;
use report::{RecordCost, median};

/// Options of `bench tls`.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsOpts {
    #[command(flatten)]
    pub run: RunOpts,
    /// Only these pairs, comma-separated: s2cs, s2cs-plain, stunnel,
    /// haproxy-tls, ssh.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// `s2uc connect` sessions whose setup time is measured (median reported).
    #[arg(long, default_value_t = 5)]
    pub sessions: u32,
}

/// Debian packages this benchmark needs, with a file that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "/usr/bin/iperf3"),
    ("haproxy", "/usr/sbin/haproxy"),
    ("stunnel4", "/usr/bin/stunnel4"),
    ("openssl", "/usr/bin/openssl"),
    ("openssh-server", "/usr/sbin/sshd"),
    ("openssh-client", "/usr/bin/ssh"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairKind {
    /// Two `s2cs serve` with this `--channel` mode.
    S2cs(&'static str),
    Stunnel,
    Haproxy,
    Ssh,
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
        kind: PairKind::S2cs("tls"),
    },
    PairCase {
        name: "s2cs-plain",
        label: "s2cs pair, no crypto (ceiling)",
        kind: PairKind::S2cs("plaintext-after-auth"),
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
    PairCase {
        name: "ssh",
        label: "ssh -L tunnel (aes128-gcm)",
        kind: PairKind::Ssh,
    },
];

/// The pair ratios are taken against.
const BASELINE: &str = "stunnel";
/// Ours.
const OURS: &str = "s2cs";
/// Ours without the cryptography: the ceiling of any encrypting pair here.
const CEILING: &str = "s2cs-plain";
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
/// TLS 1.3 suite of every peer pair (baselines.md: AES-256-GCM).
const SUITE: &str = "TLS_AES_256_GCM_SHA384";
/// The suite the s2cs pair negotiates (its first preference), as `s2cs
/// check` names it.
const OURS_SUITE: &str = "TLS13_AES_128_GCM_SHA256";

/// Installs this suite's missing peers with apt-get, unless `no_install`.
pub fn ensure_installed(no_install: bool) -> anyhow::Result<()> {
    peers::ensure_packages(PACKAGES, no_install)
}

/// Runs the gateway-pair benchmark (see the module docs), prints the table and
/// writes `tls.json` and `tls.md`. A pair that fails is reported in
/// [`TlsReport::failures`] and the others still run.
pub fn run_tls_bench(workspace: &Path, opts: &TlsOpts) -> anyhow::Result<TlsReport> {
    super::require_root()?;
    let pairs = select(&opts.cases)?;
    opts.run.validate()?;
    if opts.sessions == 0 {
        bail!("--sessions needs at least one session");
    }
    let s2cs = super::s2cs_binary(workspace);
    let s2uc = s2cs.with_file_name("s2uc");
    if pairs.iter().any(|p| matches!(p.kind, PairKind::S2cs(_))) {
        opts.run
            .release_binaries(workspace, &[("gateway", "s2cs"), ("control", "s2uc")])?;
    }
    ensure_installed(opts.run.no_install)?;

    let out_dir = opts.run.out_dir(workspace);
    let work = out_dir.join("tls-run");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    make_cert(&work)?;
    let tck = measure::clock_ticks();
    let mut report = TlsReport {
        duration_s: opts.run.duration,
        machine: Machine::now(),
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
    report.machine.finish();
    drop(net);
    eprintln!("bench: measured in {:.0?}", start.elapsed());
    report.check_goals();

    super::common::write_report(
        &report.to_json(),
        (&report.json_path, &report.markdown_path),
        &report.markdown(),
        &report.table(),
        &work,
    )?;
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
        PairKind::S2cs(channel) => start_s2cs(net, work, s2cs, s2uc, channel, opts.sessions)?,
        PairKind::Stunnel => start_stunnel(net, work)?,
        PairKind::Haproxy => start_haproxy(net, work)?,
        PairKind::Ssh => start_ssh(net, work)?,
    };
    if pair.kind == PairKind::S2cs("tls") && !running.setup_times.is_empty() {
        report.setup_times_s = running.setup_times.clone();
        eprintln!(
            "bench:   setup time over {} sessions: median {:.3} s",
            running.setup_times.len(),
            median(&running.setup_times)
        );
    }
    let gateways = [net.gwb.as_str(), net.gwa.as_str()];
    for &streams in &opts.run.streams {
        if interrupted() {
            bail!("interrupted");
        }
        let raw = work.join(format!("{}-P{streams}.json", pair.name));
        let spec = RunSpec {
            client_ns: &net.client,
            gateway_ns: &gateways,
            target: running.addr,
            secs: opts.run.duration,
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
        report
            .results
            .push(CaseResult::from_run(pair.name, pair.label, streams, &run));
    }
    if pair.kind == PairKind::S2cs("tls") {
        let stats: Vec<(String, bool)> = gateways.iter().map(|ns| ktls_stat(ns)).collect();
        report.ktls = stats
            .iter()
            .zip(["gwB", "gwA"])
            .map(|((text, _), name)| format!("{name}: {text}"))
            .collect::<Vec<_>>()
            .join("; ");
        if !stats.iter().any(|(_, used)| *used) {
            report.record_cost = record_cost(s2cs);
        }
    }
    drop(running);
    drop(server);
    Ok(())
}

/// What one core's AES-128-GCM (the pair's suite) costs in the record
/// layer, from `s2cs check --json`; None (with a note) when it cannot run.
fn record_cost(s2cs: &Path) -> Option<RecordCost> {
    let read = || -> anyhow::Result<RecordCost> {
        let out = Command::new(s2cs)
            .args(["check", "--json"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} check --json", s2cs.display()))?;
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("s2cs check printed no JSON report")?;
        RecordCost::from_check(&report, OURS_SUITE)
    };
    match read() {
        Ok(cost) => Some(cost),
        Err(err) => {
            eprintln!("bench: the record layer's own cost is not known: {err:#}");
            None
        }
    }
}

fn select(names: &[String]) -> anyhow::Result<Vec<PairCase>> {
    let chosen = super::common::select_by_name(PAIRS, names, |p| p.name, "pair")?;
    Ok(chosen.into_iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_pairs_by_name() {
        assert_eq!(select(&[]).expect("all").len(), PAIRS.len());
        assert!(select(&["nope".into()]).is_err());
        assert!(PAIRS.iter().any(|p| p.name == BASELINE) && PAIRS.iter().any(|p| p.name == OURS));
    }
}
