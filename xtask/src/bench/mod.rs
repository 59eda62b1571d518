//! `cargo xtask bench relay`: throughput and CPU per GB of the s2cs relay's
//! three data paths against routed direct TCP and the usual TCP relays, all in
//! one run on this machine.
//!
//! What it does, in order:
//! 1. builds `s2cs` in release (`cargo build --release -p gateway --bin s2cs`);
//! 2. installs the peers from Debian packages if missing (iperf3, haproxy,
//!    socat, nginx-light, libnginx-mod-stream);
//! 3. builds its own three namespaces, client - relay - server, joined by veth
//!    pairs with MTU 1500 (`topo`; removed again on every exit path);
//! 4. for each case (`peers::CASES`): starts the relay in the relay namespace
//!    (for "direct", turns forwarding on there instead), then for each stream
//!    count runs `iperf3 -c -t SECS -P N -J` from the client namespace to a
//!    fresh `iperf3 -s` in the server namespace, reading CPU time from procfs
//!    before and after (`measure`);
//! 5. prints a table with ratios against HAProxy and direct, checks the goals
//!    of `shared/reference/baselines.md`, and writes `relay.json` and
//!    `relay.md` (`report`).
//!
//! Layout:
//! - [`topo`]: the namespaces, veths, forwarding switch and their cleanup;
//! - [`peers`]: the cases, package installation and each relay's start-up and
//!   configuration;
//! - [`measure`]: one iperf3 run and the CPU figures around it;
//! - [`report`]: rows, ratios, goals, table / Markdown / JSON.
//!
//! Entry point: [`run_relay_bench`]. Needs root (namespaces, eBPF). Only
//! traffic inside the namespaces it creates. A full run (9 cases x 2 stream
//! counts x 5 s) measures for about a minute and a half, plus the build.

mod all;
mod chart;
mod common;
pub mod flood;
mod measure;
mod peers;
pub mod report;
pub mod tls;
mod topo;
pub mod udp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use all::{AllOpts, run_all};
pub use common::{Machine, RunOpts};
pub use flood::{FloodOpts, run_flood_bench};
pub use report::{BenchReport, CaseResult};
pub use tls::{TlsOpts, run_tls_bench};
pub use udp::{UdpOpts, run_udp_bench};

use peers::{CASES, Case, Kind};
use topo::{BenchNet, Forwarding};

/// Options of `bench relay`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BenchOpts {
    #[command(flatten)]
    pub run: RunOpts,
    /// Only these cases, comma-separated: direct, s2cs-sockmap, s2cs-splice,
    /// s2cs-copy, haproxy, haproxy-splice, socat, socat-128k, nginx.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
}

/// Set by the Ctrl-C handler: the run stops at the next check and its guards
/// remove the relays and namespaces.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Makes Ctrl-C set [`INTERRUPTED`] (the run then stops at its next check and
/// its guards clean up). Once per process: `cargo xtask bench` runs two suites.
fn install_interrupt_handler() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if let Err(e) = ctrlc::set_handler(|| {
            eprintln!("\nbench: interrupted; cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
        }) {
            eprintln!(
                "bench: no Ctrl-C handler ({e}); an interrupted run leaves namespaces behind"
            );
        }
    });
}

/// First port the relays listen on (one port per case).
const RELAY_PORT: u16 = 7000;

/// Runs the relay benchmark (see the module docs), prints the table and writes
/// `relay.json` and `relay.md`. A case that fails is reported in
/// [`BenchReport::failures`] and the others still run; setup errors (build,
/// install, namespaces) are returned. Whether the goals were met is
/// [`BenchReport::goals_met`].
pub fn run_relay_bench(workspace: &Path, opts: &BenchOpts) -> anyhow::Result<BenchReport> {
    require_root()?;
    let cases = select_cases(&opts.cases)?;
    opts.run.validate()?;
    let s2cs = s2cs_binary(workspace);
    if cases.iter().any(|c| matches!(c.kind, Kind::S2cs(_))) {
        opts.run
            .release_binaries(workspace, &[("gateway", "s2cs")])?;
    }
    peers::ensure_installed(opts.run.no_install)?;

    let out_dir = opts.run.out_dir(workspace);
    let work = out_dir.join("relay-run");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let tck = measure::clock_ticks();
    let mut report = BenchReport {
        duration_s: opts.run.duration,
        machine: Machine::now(),
        json_path: out_dir.join("relay.json"),
        markdown_path: out_dir.join("relay.md"),
        ..BenchReport::default()
    };

    install_interrupt_handler();
    let net = BenchNet::create()?;
    let start = Instant::now();
    let mut raw_results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        if interrupted() {
            bail!("interrupted");
        }
        let port = RELAY_PORT + u16::try_from(i).unwrap_or(0);
        match run_case(&net, case, port, opts, &work, &s2cs, tck) {
            Ok(rows) => raw_results.extend(rows),
            Err(_) if interrupted() => bail!("interrupted"),
            Err(e) => {
                eprintln!("bench: {} FAILED: {e:#}", case.label);
                report
                    .failures
                    .push((case.name.to_owned(), format!("{e:#}")));
            }
        }
    }
    report.machine.finish();
    drop(net);
    eprintln!("bench: measured in {:.0?}", start.elapsed());

    report.results = raw_results
        .into_iter()
        .map(|(case, streams, run): (&Case, u32, measure::Run)| {
            CaseResult::from_run(case.name, case.label, streams, &run)
        })
        .collect();
    report.check_goals();

    common::write_report(
        &report.to_json(),
        (&report.json_path, &report.markdown_path),
        &report.markdown(),
        &report.table(),
        &work,
    )?;
    Ok(report)
}

/// One case: start its relay, run every stream count, stop it.
fn run_case<'c>(
    net: &BenchNet,
    case: &'c Case,
    port: u16,
    opts: &BenchOpts,
    work: &Path,
    s2cs: &Path,
    tck: u64,
) -> anyhow::Result<Vec<(&'c Case, u32, measure::Run)>> {
    eprintln!("bench: {}", case.label);
    let _forwarding = match case.kind {
        Kind::Direct => Some(Forwarding::enable(net)?),
        _ => None,
    };
    let relay = peers::start(net, case, port, work, s2cs)?;
    let mut rows = Vec::new();
    for &streams in &opts.run.streams {
        let raw = work.join(format!("{}-P{streams}.json", case.name));
        let server = IperfServer::start(net, work)?;
        let run = measure::iperf_run(
            net,
            relay.addr,
            opts.run.duration,
            streams,
            server.pid(),
            tck,
            &raw,
        )
        .with_context(|| {
            format!(
                "{} with {streams} stream(s); relay output:\n{}",
                case.label,
                relay.log_tail()
            )
        })?;
        drop(server);
        eprintln!(
            "bench:   P{streams}: {:.2} Gbit/s, relay {:.2} s CPU, machine {:.2} s busy over {:.1} s",
            run.iperf.bits_per_second / 1e9,
            run.relay_cpu,
            run.machine_cpu,
            run.wall.as_secs_f64()
        );
        rows.push((case, streams, run));
    }
    Ok(rows)
}

/// A fresh `iperf3 -s` in the server namespace for one run (a failed run
/// cannot leave the next one facing a busy server); killed on drop.
struct IperfServer {
    child: Child,
}

impl IperfServer {
    fn start(net: &BenchNet, work: &Path) -> anyhow::Result<IperfServer> {
        IperfServer::start_in(&net.server, topo::SERVER_ADDR, work)
    }

    /// `iperf3 -s -B ADDR -p 5201` in namespace `ns`.
    fn start_in(ns: &str, addr: std::net::Ipv4Addr, work: &Path) -> anyhow::Result<IperfServer> {
        let log = work.join("iperf3-server.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = topo::ns_command(ns, "iperf3")
            .args(["-s", "-B", &addr.to_string()])
            .args(["-p", &topo::SERVER_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s in the server namespace")?;
        let mut server = IperfServer { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !peers::listening(server.pid(), topo::SERVER_PORT) {
            if let Some(status) = server.child.try_wait().context("checking iperf3 -s")? {
                bail!(
                    "iperf3 -s exited at start ({status}); see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("iperf3 -s not listening after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn select_cases(names: &[String]) -> anyhow::Result<Vec<&'static Case>> {
    common::select_by_name(CASES, names, |c| c.name, "case")
}

fn require_root() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("the benchmarks build network namespaces and load eBPF: run them as root");
    }
    Ok(())
}

/// `target/release/s2cs` (honouring CARGO_TARGET_DIR).
fn s2cs_binary(workspace: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("release").join("s2cs")
}

/// `cargo build --release` of the given binaries (package, binary).
fn build_release(workspace: &Path, bins: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build", "--release"];
    for (package, bin) in bins {
        args.extend(["-p", package, "--bin", bin]);
    }
    eprintln!("bench: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_cases_by_name_in_run_order() {
        let all = select_cases(&[]).expect("all");
        assert_eq!(all.len(), CASES.len());
        let two = select_cases(&["haproxy".into(), "direct".into()]).expect("two");
        let names: Vec<&str> = two.iter().map(|c| c.name).collect();
        assert_eq!(names, ["direct", "haproxy"]);
        assert!(select_cases(&["nope".into()]).is_err());
    }
}
