//! Measuring one run: iperf3 in the client namespace (JSON output), and CPU
//! time from procfs before and after it.
//!
//! The kernel path's work is not all in a process, and the machine is shared,
//! so every process's time is read (`/proc/PID/stat`: utime+stime, plus the
//! cutime+cstime of reaped children) and attributed:
//! - the gateway: every process in the relay namespace (socat's per-connection
//!   children are reaped into its parent's cutime before the second sample);
//! - the endpoints: the iperf3 server, and the iperf3 client (a child of this
//!   process, counted through our own cutime once it is reaped);
//! - kernel threads (PF_KTHREAD): among them the workqueue that transmits what
//!   the sockmap program redirected, and ksoftirqd;
//! - every other process (other people's builds and tests, and this one);
//! - unattributed: the machine's busy time (`/proc/stat`: user, nice, system,
//!   irq, softirq, steal) minus all of the above: interrupt and softirq work
//!   done while a CPU was otherwise idle.
//!
//! The relay's "all-in" cost is gateway + kernel threads + unattributed, i.e.
//! the machine's busy time minus the endpoints and everyone else. Softirq work
//! charged to the endpoints or to other processes (whichever task was running
//! when it fired) is not in it, for every case alike.
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::topo::{self, BenchNet};

/// Clock ticks per second of the times in procfs.
pub(super) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Machine-wide CPU time from `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MachineTicks {
    /// user + nice + system + irq + softirq + steal.
    pub(super) busy: u64,
    /// softirq alone (where much of the network stack runs).
    pub(super) softirq: u64,
}

impl MachineTicks {
    pub(super) fn read() -> anyhow::Result<MachineTicks> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no cpu line")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal ...
        Ok(MachineTicks {
            busy: field(0) + field(1) + field(2) + field(5) + field(6) + field(7),
            softirq: field(6),
        })
    }

    pub(super) fn since(self, before: MachineTicks) -> MachineTicks {
        MachineTicks {
            busy: self.busy.saturating_sub(before.busy),
            softirq: self.softirq.saturating_sub(before.softirq),
        }
    }
}

/// Flag of kernel threads in `/proc/PID/stat` (field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// A process's own utime+stime and its reaped children's cutime+cstime.
#[derive(Clone, Copy, Debug)]
struct Times {
    own: u64,
    children: u64,
}

/// Times and flags of one process (None if it is gone).
fn process_stat(pid: u32) -> Option<(Times, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // Past the name and the state (fields 2 and 3), field N is fields[N - 4].
    let field = |n: usize| fields.get(n - 4).copied();
    Some((
        Times {
            own: field(14)? + field(15)?,
            children: field(16)? + field(17)?,
        },
        field(9)?,
    ))
}

/// CPU ticks of this process's reaped children.
fn children_ticks() -> anyhow::Result<u64> {
    process_stat(std::process::id())
        .map(|(t, _)| t.children)
        .context("reading /proc/self/stat")
}

/// CPU ticks of every process on the machine, by whom it belongs to.
#[derive(Clone, Copy, Debug, Default)]
struct ProcTicks {
    relay: u64,
    server: u64,
    kernel: u64,
    others: u64,
    /// This process itself (its reaped children are counted apart).
    me: u64,
}

impl ProcTicks {
    /// Walks `/proc`; `relay` holds the relay namespace's pids.
    fn read(relay: &[u32], server_pid: u32) -> anyhow::Result<ProcTicks> {
        let me = std::process::id();
        let mut ticks = ProcTicks::default();
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Gone meanwhile: its time is now in its parent's cutime.
            let Some((t, flags)) = process_stat(pid) else {
                continue;
            };
            let all = t.own + t.children;
            if pid == me {
                ticks.me += t.own;
            } else if relay.contains(&pid) {
                ticks.relay += all;
            } else if pid == server_pid {
                ticks.server += all;
            } else if flags & PF_KTHREAD != 0 {
                ticks.kernel += all;
            } else {
                ticks.others += all;
            }
        }
        Ok(ticks)
    }
}

/// The 1-, 5- and 15-minute load averages.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What iperf3 reported.
#[derive(Clone, Copy, Debug)]
pub(super) struct Iperf {
    /// Receiver side, all streams.
    pub(super) bits_per_second: f64,
    /// Bytes the server received.
    pub(super) bytes: u64,
    /// Bytes the client wrote into its socket.
    pub(super) sent_bytes: u64,
    /// TCP retransmissions at the sender.
    pub(super) retransmits: u64,
}

/// Everything measured in one run (CPU in seconds).
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) iperf: Iperf,
    pub(super) wall: Duration,
    /// The gateway's processes (relay namespace).
    pub(super) relay_cpu: f64,
    /// iperf3 client + server.
    pub(super) endpoints_cpu: f64,
    /// Kernel threads.
    pub(super) kernel_threads_cpu: f64,
    /// Every other process (and this one).
    pub(super) others_cpu: f64,
    /// Machine busy time charged to no process (may be slightly negative:
    /// tick sampling).
    pub(super) unattributed_cpu: f64,
    /// Whole machine busy.
    pub(super) machine_cpu: f64,
    /// Whole machine softirq (part of `machine_cpu`).
    pub(super) softirq_cpu: f64,
}

/// Runs `iperf3 -c TARGET -t SECS -P STREAMS -J` in the client namespace and
/// measures CPU around it. `server_pid` is the iperf3 server's. The JSON goes
/// to `raw` (kept for inspection), iperf3's stderr beside it.
pub(super) fn iperf_run(
    net: &BenchNet,
    target: std::net::SocketAddrV4,
    secs: u32,
    streams: u32,
    server_pid: u32,
    tck: u64,
    raw: &Path,
) -> anyhow::Result<Run> {
    let spec = RunSpec {
        client_ns: &net.client,
        gateway_ns: &[&net.relay],
        target,
        secs,
        streams,
        reverse: false,
        server_pid,
    };
    iperf_run_in(&spec, tck, raw)
}

/// Where and how one iperf3 run goes.
pub(super) struct RunSpec<'a> {
    /// Namespace of the iperf3 client.
    pub(super) client_ns: &'a str,
    /// Namespaces whose processes are "the gateway" (the relay, or both
    /// gateways of a pair).
    pub(super) gateway_ns: &'a [&'a str],
    /// Where the client connects.
    pub(super) target: std::net::SocketAddrV4,
    /// iperf3 -t.
    pub(super) secs: u32,
    /// iperf3 -P.
    pub(super) streams: u32,
    /// iperf3 -R: the server sends, the client receives.
    pub(super) reverse: bool,
    /// The iperf3 server's pid.
    pub(super) server_pid: u32,
}

/// The pids of every process in `namespaces`.
fn gateway_pids(namespaces: &[&str]) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for ns in namespaces {
        pids.extend(topo::ns_pids(ns)?);
    }
    Ok(pids)
}

/// [`iperf_run`] for any topology: iperf3 in `spec.client_ns`, the gateway's
/// CPU from every process in `spec.gateway_ns`.
pub(super) fn iperf_run_in(spec: &RunSpec<'_>, tck: u64, raw: &Path) -> anyhow::Result<Run> {
    let (target, secs, streams, server_pid) =
        (spec.target, spec.secs, spec.streams, spec.server_pid);
    let what = || format!("iperf3 -P {streams} to {target}");
    let out = File::create(raw).with_context(|| format!("creating {}", raw.display()))?;
    let stderr_path = raw.with_extension("stderr");
    let err = File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut cmd = topo::ns_command(spec.client_ns, "iperf3");
    cmd.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
    ])
    .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
    .args(["-J", "--connect-timeout", "3000"])
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    if spec.reverse {
        cmd.arg("-R");
    }

    let relay_pids = gateway_pids(spec.gateway_ns)?;
    let procs_before = ProcTicks::read(&relay_pids, server_pid)?;
    let machine_before = MachineTicks::read()?;
    let children_before = children_ticks()?;
    let start = Instant::now();

    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", what()))?;
    let limit = Duration::from_secs(u64::from(secs) + 20);
    let status = loop {
        if let Some(status) = child.try_wait().with_context(what)? {
            break status;
        }
        if start.elapsed() > limit || super::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            if super::interrupted() {
                bail!("interrupted");
            }
            bail!("{} still running after {limit:?}: killed", what());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let client = children_ticks()?.saturating_sub(children_before);
    // Relays that fork per connection (socat) reap their children once the
    // connections close: wait for that, so their time is in the parent's.
    let settle = Instant::now();
    let mut relay_now = gateway_pids(spec.gateway_ns)?;
    while relay_now.len() > relay_pids.len() && settle.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        relay_now = gateway_pids(spec.gateway_ns)?;
    }
    let procs_after = ProcTicks::read(&relay_now, server_pid)?;
    let machine = MachineTicks::read()?.since(machine_before);
    let wall = start.elapsed();

    let json =
        std::fs::read_to_string(raw).with_context(|| format!("reading {}", raw.display()))?;
    let iperf = parse_iperf(&json).with_context(|| {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        format!(
            "{} ({status}); output in {}; stderr: {}",
            what(),
            raw.display(),
            stderr.trim()
        )
    })?;
    let secs = |ticks: u64| ticks as f64 / tck as f64;
    let delta = |f: fn(&ProcTicks) -> u64| f(&procs_after).saturating_sub(f(&procs_before));
    let relay = delta(|t| t.relay);
    let endpoints = client + delta(|t| t.server);
    let kernel = delta(|t| t.kernel);
    let others = delta(|t| t.others) + delta(|t| t.me);
    let attributed = relay + endpoints + kernel + others;
    Ok(Run {
        iperf,
        wall,
        relay_cpu: secs(relay),
        endpoints_cpu: secs(endpoints),
        kernel_threads_cpu: secs(kernel),
        others_cpu: secs(others),
        unattributed_cpu: (machine.busy as f64 - attributed as f64) / tck as f64,
        machine_cpu: secs(machine.busy),
        softirq_cpu: secs(machine.softirq),
    })
}

/// Reads the receiver's total and the sender's retransmissions from
/// `iperf3 -J` output.
fn parse_iperf(json: &str) -> anyhow::Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 output is not JSON")?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 failed: {err}");
    }
    let received = v
        .pointer("/end/sum_received")
        .context("iperf3 output has no end.sum_received")?;
    let bits_per_second = received
        .get("bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("end.sum_received.bits_per_second")?;
    let bytes = received
        .get("bytes")
        .and_then(serde_json::Value::as_u64)
        .context("end.sum_received.bytes")?;
    let sent_bytes = v
        .pointer("/end/sum_sent/bytes")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let retransmits = v
        .pointer("/end/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Ok(Iperf {
        bits_per_second,
        bytes,
        sent_bytes,
        retransmits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bytes":100,"retransmits":3},
            "sum_received":{"bytes":99,"bits_per_second":1.5e10}}}"#;
        let got = parse_iperf(json).expect("valid");
        assert_eq!((got.bytes, got.sent_bytes, got.retransmits), (99, 100, 3));
        assert!((got.bits_per_second - 1.5e10).abs() < 1.0);
        let err = parse_iperf(r#"{"error":"unable to connect to server"}"#).expect_err("error");
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }

    #[test]
    fn reads_and_classifies_process_times() {
        let (_, flags) = process_stat(std::process::id()).expect("own stat");
        assert_eq!(flags & PF_KTHREAD, 0);
        let (_, flags) = process_stat(2).expect("kthreadd is pid 2");
        assert_ne!(flags & PF_KTHREAD, 0);
        children_ticks().expect("own stat");
        MachineTicks::read().expect("/proc/stat");
        ProcTicks::read(&[], 0).expect("walking /proc");
    }
}
