//! `cargo xtask demo`: the product working as a scientist would use it, on
//! one machine. It builds four network namespaces (producer LAN, PROD
//! gateway, CONS gateway, consumer LAN), starts an `s2cs` on each gateway, a
//! producer that listens and streams detector-like frames, runs
//! `s2uc connect` to set up both sides in one command, runs the consumer
//! through the gateways with live throughput, and ends with a summary:
//! bytes, time, throughput, the data path each gateway used, the gateways'
//! CPU time, and the proof that the producer's network cannot reach the
//! consumer directly. Everything is removed afterwards, also on Ctrl-C.
//!
//! It runs in four timed steps, each saying what it is for: install (only
//! what the demo needs: the eBPF toolchain and iproute2), build (only the
//! two binaries it runs, in the `demo` profile chosen for build time as
//! much as for speed), set up (namespaces, gateways, the session) and
//! stream.
pub mod app;
pub(crate) mod netns;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};
use netns::{Topology, exec_in};

/// Demo size: 1,440 frames (a detector's burst) of `frame_mib` MiB each.
pub struct DemoOpts {
    pub frames: u64,
    pub frame_mib: usize,
}

const PRODUCER: &str = "10.1.0.2:7000";
const GWA_CONTROL: &str = "10.2.0.1:5000";
const GWB_CONTROL: &str = "10.3.0.1:5000";

/// A gateway process and where its files are.
struct Gateway {
    child: Child,
    log: PathBuf,
    cert: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cargo profile the demo builds its binaries in (Cargo.toml says why).
const PROFILE: &str = "demo";

/// The demo's steps, each timed and announced with what it is for.
struct Steps {
    started: Instant,
    current: Option<(&'static str, Instant)>,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn new() -> Self {
        Steps {
            started: Instant::now(),
            current: None,
            done: Vec::new(),
        }
    }

    fn begin(&mut self, name: &'static str, what_for: &str) {
        self.finish();
        println!("demo: [{}/4] {name}: {what_for}", self.done.len() + 1);
        self.current = Some((name, Instant::now()));
    }

    fn finish(&mut self) {
        if let Some((name, since)) = self.current.take() {
            let secs = since.elapsed().as_secs_f64();
            println!(
                "demo: [{}/4] {name} done in {secs:.0} s",
                self.done.len() + 1
            );
            self.done.push((name, secs));
        }
    }

    fn summary(&mut self) -> String {
        self.finish();
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(name, secs)| format!("{name} {secs:.0} s"))
            .collect();
        format!(
            "{:.0} s in all ({})",
            self.started.elapsed().as_secs_f64(),
            steps.join(", ")
        )
    }
}

pub fn run(root: &Path, opts: &DemoOpts) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    let mut steps = Steps::new();
    steps.begin(
        "install",
        "the eBPF toolchain (nightly rust-src, bpf-linker) that compiles the gateway's kernel \
         programs, and iproute2 for the namespaces; nothing else",
    );
    setup::run(&[setup::Purpose::Demo])?;
    steps.begin(
        "build",
        "s2cs (the gateway, with its eBPF programs) and s2uc (the user's client), nothing else",
    );
    cmd::run(
        Command::new("cargo")
            .args(["build", "--profile", PROFILE])
            .args([
                "-p", "gateway", "--bin", "s2cs", "-p", "control", "--bin", "s2uc",
            ])
            .current_dir(root),
    )?;
    let bin = root.join("target").join(PROFILE);
    let me = cmd::own_exe();
    steps.begin(
        "set up",
        "a producer LAN, two gateways and a consumer LAN in network namespaces, a gateway on each \
         side, a producer, and the session that joins them (s2uc connect)",
    );
    ctrlc::set_handler(|| {
        eprintln!("\ndemo: interrupted; cleaning up");
        netns::cleanup_all();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    println!(
        "demo: network: prod --LAN A-- gwa ==WAN== gwb --LAN B-- cons (no forwarding anywhere)"
    );
    let _topology = Topology::create().context("building the demo's namespaces")?;
    let work = tempdir()?;
    let gwa = start_gateway(&bin, &work, "gwa", GWA_CONTROL, "10.2.0.1", "10.1.0.0/24")?;
    let gwb = start_gateway(
        &bin,
        &work,
        "gwb",
        GWB_CONTROL,
        "10.3.0.1",
        "10.2.0.0/24:5100-5199",
    )?;

    let frame_size = opts.frame_mib << 20;
    let mut producer = exec_in("prod", &me)
        .args(["demo-app", "produce", "--addr", PRODUCER])
        .args([
            "--frames",
            &opts.frames.to_string(),
            "--frame-size",
            &frame_size.to_string(),
        ])
        .spawn()
        .context("starting the producer")?;

    let direct =
        cmd::output(exec_in("prod", &me).args(["demo-app", "probe", "--addr", "10.3.0.2:7000"]))?;

    println!("demo: s2uc connect (both gateways in one command, run on the consumer's side) ...");
    let connect = connect_session(&bin, &gwa, &gwb)?;
    println!(
        "demo: session {} set up in {}; the consumer connects to {}",
        connect.uid, connect.setup_time, connect.listener
    );

    steps.begin(
        "stream",
        "the consumer reads every frame through both gateways and checks each one",
    );
    let started = Instant::now();
    let cpu_before = [cpu_seconds(&gwa.child), cpu_seconds(&gwb.child)];
    let mut consumer = exec_in("cons", &me)
        .args(["demo-app", "consume", "--addr", &connect.listener])
        .args([
            "--frames",
            &opts.frames.to_string(),
            "--frame-size",
            &frame_size.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the consumer")?;
    let mut summary = None;
    if let Some(out) = consumer.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if line.starts_with("consumer: summary") {
                summary = Some(line);
            }
        }
    }
    let consumer_ok = consumer.wait()?.success();
    let elapsed = started.elapsed();
    let cpu_after = [cpu_seconds(&gwa.child), cpu_seconds(&gwb.child)];
    let _ = producer.wait();

    for (control, gw) in [(GWB_CONTROL, &gwb), (GWA_CONTROL, &gwa)] {
        let _ = cmd::output(
            exec_in("gwb", bin.join("s2uc"))
                .args(["release", &connect.uid, "--s2cs", control, "--server-cert"])
                .arg(&gw.cert),
        );
    }
    let paths = [data_paths(&gwa.log), data_paths(&gwb.log)];

    println!();
    println!("==================== demo summary ====================");
    match &summary {
        Some(line) => println!(
            "stream      {}",
            line.trim_start_matches("consumer: summary ")
        ),
        None => println!("stream      FAILED: the consumer did not finish (see above)"),
    }
    println!(
        "wall time   {:.2} s from consumer connect to last frame verified",
        elapsed.as_secs_f64()
    );
    println!(
        "setup time  {} for req..update on both gateways",
        connect.setup_time
    );
    println!("data path   PROD gateway (gwa): {}", paths[0]);
    println!("            CONS gateway (gwb): {}", paths[1]);
    println!(
        "gateway CPU gwa {:.2} s, gwb {:.2} s (user+system of the s2cs processes; kernel-path work \
         runs in softirq and is not included)",
        cpu_after[0] - cpu_before[0],
        cpu_after[1] - cpu_before[1]
    );
    println!(
        "isolation   producer -> consumer directly: {}",
        direct.trim()
    );
    println!("demo time   {}", steps.summary());
    println!("======================================================");
    if !consumer_ok || summary.is_none() {
        bail!("the consumer did not verify every frame");
    }
    println!("{NEXT_STEPS}");
    Ok(())
}

/// What to try next with one's own application (README says the same).
const NEXT_STEPS: &str = "\
Next, with your own application (README, \"Your own stream\"):
  1. on each gateway host:  s2cs serve --control-listen IP:5000 --listener-ip LAN_IP --port-range 5100-5199
  2. start your producer, listening (e.g. on 10.1.0.2:7000 in the producer's LAN)
  3. on the consumer's side: s2uc connect --prod-s2cs PROD_GW:5000 --cons-s2cs CONS_GW:5000 \\
       --prod-cert prod.pem --cons-cert cons.pem --producer 10.1.0.2:7000
  4. point your consumer at the address printed as `consumer connects to:`";

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("s2demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn start_gateway(
    bin: &Path,
    work: &Path,
    node: &str,
    control: &str,
    ip: &str,
    allow: &str,
) -> anyhow::Result<Gateway> {
    let state = work.join(node);
    let log = work.join(format!("{node}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = exec_in(node, bin.join("s2cs"))
        .args([
            "serve",
            "--control-listen",
            control,
            "--port-range",
            "5100-5199",
        ])
        .args([
            "--listener-ip",
            ip,
            "--advertise-ip",
            ip,
            "--no-auth",
            "--allow",
            allow,
        ])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "info,gateway=debug")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting s2cs on {node}"))?;
    println!(
        "demo: s2cs on {node}: control {control}, log {}",
        log.display()
    );
    Ok(Gateway {
        child,
        log,
        cert: state.join("tls/control-cert.pem"),
    })
}

struct Connected {
    uid: String,
    listener: String,
    setup_time: String,
}

fn connect_session(bin: &Path, gwa: &Gateway, gwb: &Gateway) -> anyhow::Result<Connected> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = cmd::output(
            exec_in("gwb", bin.join("s2uc"))
                .args([
                    "connect",
                    "--prod-s2cs",
                    GWA_CONTROL,
                    "--cons-s2cs",
                    GWB_CONTROL,
                ])
                .arg("--prod-cert")
                .arg(&gwa.cert)
                .arg("--cons-cert")
                .arg(&gwb.cert)
                .args(["--producer", PRODUCER, "--num-conn", "1"]),
        );
        match attempt {
            Ok(out) => {
                let field = |key: &str| {
                    out.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .map(|v| v.trim().to_string())
                        .with_context(|| format!("s2uc connect printed no `{key}`: {out}"))
                };
                let listener = field("consumer connects to:")?;
                let listener = listener.split(',').next().unwrap_or_default().to_string();
                return Ok(Connected {
                    uid: field("uid:")?,
                    listener,
                    setup_time: field("setup time:")?,
                });
            }
            // The gateways may still be starting (certificates, eBPF load).
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(err) => return Err(err.context("s2uc connect failed")),
        }
    }
}

/// user+system CPU seconds of a child process so far.
fn cpu_seconds(child: &Child) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", child.id())) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// A log line of the data plane (target `gateway::session` or one of its
/// modules) saying a connection closed.
fn is_session_close(line: &str) -> bool {
    line.split_once("gateway::session")
        .is_some_and(|(_, rest)| {
            rest.trim_start_matches(|c: char| c == ':' || c == '_' || c.is_ascii_alphanumeric())
                .trim_start()
                .starts_with("connection closed")
        })
}

/// Which data paths a gateway's connections used, from its log.
pub(crate) fn data_paths(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines().map(strip_ansi).filter(|l| is_session_close(l)) {
        if let Some(path) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("path=").map(String::from))
        {
            match counts.iter_mut().find(|(p, _)| *p == path) {
                Some((_, n)) => *n += 1,
                None => counts.push((path, 1)),
            }
        }
    }
    if counts.is_empty() {
        return "no connection reported (see the gateway log)".into();
    }
    counts
        .iter()
        .map(|(p, n)| format!("{p} ({n} connection{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_paths_reads_coloured_and_plain_logs() {
        let dir = std::env::temp_dir().join(format!("s2demo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("gw.log");
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[2mgateway::session\u{1b}[0m\u{1b}[2m:\u{1b}[0m \
                        connection closed \u{1b}[3mpath\u{1b}[0m\u{1b}[2m=\u{1b}[0muserspace-tls up=0";
        let plain =
            "2026 DEBUG gateway::session::accept: connection closed uid=x path=userspace-tls up=0";
        // As `s2cs serve` writes it: inside the session and connection spans.
        let spanned = "2026 DEBUG session{uid=u role=PROD}:conn{peer=10.2.0.2:1}: \
                       gateway::session::accept: connection closed uid=u path=ktls-splice up=0";
        let other = "2026 DEBUG gateway::channel: channel: connection closed path=userspace-tls";
        std::fs::write(&log, format!("{coloured}\n{plain}\n{spanned}\n{other}\n")).expect("log");
        assert_eq!(
            data_paths(&log),
            "userspace-tls (2 connections), ktls-splice (1 connection)"
        );
        std::fs::write(&log, "nothing here\n").expect("log");
        assert!(data_paths(&log).starts_with("no connection reported"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
