//! The results: one row per case and stream count with throughput and CPU
//! per GB, ratios against HAProxy and direct, the goals of
//! `shared/reference/baselines.md` checked, rendered as a text table, a
//! Markdown table and JSON.
use std::fmt::Write as _;

use serde_json::json;

/// One case measured with one stream count.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// Short name (`direct`, `s2cs-sockmap`, `haproxy`, ...).
    pub case: String,
    /// Human-readable name.
    pub label: String,
    /// iperf3 -P.
    pub streams: u32,
    /// Receiver throughput, Gbit/s.
    pub gbit_per_s: f64,
    /// Bytes the server received.
    pub bytes: u64,
    /// Bytes the client wrote: more than `bytes` by what was still buffered
    /// between them when the test ended (GBs when a relay does not push back).
    pub sent_bytes: u64,
    /// TCP retransmissions at the sender.
    pub retransmits: u64,
    /// Wall time of the measurement window, seconds.
    pub wall_s: f64,
    /// CPU of the relay's processes (everything in the relay namespace).
    pub relay_cpu_s: f64,
    /// CPU of the iperf3 client and server processes.
    pub endpoints_cpu_s: f64,
    /// Kernel threads (the sockmap redirect's transmit worker, ksoftirqd...).
    pub kernel_threads_cpu_s: f64,
    /// Machine busy time charged to no process (softirq on idle CPUs).
    pub unattributed_cpu_s: f64,
    /// Every other process on the machine (other people's work): noise.
    pub others_cpu_s: f64,
    /// Busy CPU of the whole machine.
    pub machine_cpu_s: f64,
    /// softirq part of `machine_cpu_s`.
    pub softirq_cpu_s: f64,
}

impl CaseResult {
    fn gb(&self) -> f64 {
        (self.bytes as f64 / 1e9).max(1e-9)
    }

    /// The relay's processes, CPU seconds per GB relayed.
    pub fn relay_cpu_per_gb(&self) -> f64 {
        self.relay_cpu_s / self.gb()
    }

    /// Everything the relaying cost the machine, CPU seconds per GB: the
    /// relay's processes, kernel threads and busy time charged to no process,
    /// i.e. the machine's busy time minus the endpoints and everyone else.
    /// This holds the kernel work outside the relay process (the sockmap
    /// transmit worker, softirq on idle CPUs); for "direct", the forwarding.
    pub fn relay_all_in_cpu_per_gb(&self) -> f64 {
        (self.relay_cpu_s + self.kernel_threads_cpu_s + self.unattributed_cpu_s).max(0.0)
            / self.gb()
    }

    /// What the client had written but the server not received when the
    /// test ended, MiB (socket buffers; more means the relay queued it).
    pub fn backlog_mib(&self) -> f64 {
        self.sent_bytes.saturating_sub(self.bytes) as f64 / f64::from(1 << 20)
    }

    /// Other processes' busy cores during the run (noise from the machine).
    pub fn others_cores(&self) -> f64 {
        self.others_cpu_s / self.wall_s.max(1e-9)
    }

    /// Whole-machine busy time per GB (endpoints and other processes included).
    pub fn machine_cpu_per_gb(&self) -> f64 {
        self.machine_cpu_s / self.gb()
    }
}

/// The figures every suite reports for a row, as a JSON object; each suite
/// adds the CPU of what it measured (relay or pair) and its ratios.
pub(super) fn measured_json(r: &CaseResult) -> serde_json::Map<String, serde_json::Value> {
    [
        ("case", json!(r.case)),
        ("label", json!(r.label)),
        ("streams", json!(r.streams)),
        ("gbit_per_s", json!(r.gbit_per_s)),
        ("bytes", json!(r.bytes)),
        ("sent_bytes", json!(r.sent_bytes)),
        ("retransmits", json!(r.retransmits)),
        ("wall_s", json!(r.wall_s)),
        ("endpoints_cpu_s", json!(r.endpoints_cpu_s)),
        ("machine_cpu_s", json!(r.machine_cpu_s)),
        ("kernel_threads_cpu_s", json!(r.kernel_threads_cpu_s)),
        ("unattributed_cpu_s", json!(r.unattributed_cpu_s)),
        ("others_cpu_s", json!(r.others_cpu_s)),
        ("softirq_cpu_s", json!(r.softirq_cpu_s)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// `goals` and `failures` as JSON arrays (both suites report them alike).
pub(super) fn goals_and_failures_json(
    goals: &[Goal],
    failures: &[(String, String)],
) -> (serde_json::Value, serde_json::Value) {
    let goals = goals
        .iter()
        .map(|g| {
            json!({
                "streams": g.streams,
                "what": g.what,
                "value": g.value,
                "target": g.target,
                "met": g.met,
            })
        })
        .collect();
    let failures = failures
        .iter()
        .map(|(case, why)| json!({ "case": case, "error": why }))
        .collect();
    (
        serde_json::Value::Array(goals),
        serde_json::Value::Array(failures),
    )
}

/// One goal from baselines.md, checked for one stream count.
#[derive(Clone, Debug)]
pub struct Goal {
    pub streams: u32,
    /// What is compared, e.g. "sockmap throughput / HAProxy's".
    pub what: String,
    /// The measured ratio.
    pub value: f64,
    /// The bound, e.g. ">= 1.50".
    pub target: String,
    pub met: bool,
}

/// Everything one `bench relay` run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub results: Vec<CaseResult>,
    pub goals: Vec<Goal>,
    /// Cases that could not be measured, with the reason.
    pub failures: Vec<(String, String)>,
    pub duration_s: u32,
    /// Where it ran and how busy the machine was.
    pub machine: super::Machine,
    /// Where the JSON and Markdown were written.
    pub json_path: std::path::PathBuf,
    pub markdown_path: std::path::PathBuf,
}

const BASELINE: &str = super::peers::BASELINE;
const DIRECT: &str = super::peers::DIRECT;
const SOCKMAP: &str = "s2cs-sockmap";

impl BenchReport {
    fn find(&self, case: &str, streams: u32) -> Option<&CaseResult> {
        self.results
            .iter()
            .find(|r| r.case == case && r.streams == streams)
    }

    /// Throughput / HAProxy's and CPU per GB (process, all-in) / HAProxy's.
    fn ratios(&self, r: &CaseResult) -> (Option<f64>, Option<f64>, Option<f64>) {
        let Some(base) = self.find(BASELINE, r.streams) else {
            return (None, None, None);
        };
        let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        (
            div(r.gbit_per_s, base.gbit_per_s),
            div(r.relay_cpu_per_gb(), base.relay_cpu_per_gb()),
            div(r.relay_all_in_cpu_per_gb(), base.relay_all_in_cpu_per_gb()),
        )
    }

    fn of_direct(&self, r: &CaseResult) -> Option<f64> {
        let direct = self.find(DIRECT, r.streams)?;
        (direct.gbit_per_s > 0.0).then(|| r.gbit_per_s / direct.gbit_per_s)
    }

    /// Checks the goals for every stream count where sockmap, HAProxy and
    /// direct were all measured.
    pub(super) fn check_goals(&mut self) {
        let mut goals = Vec::new();
        let mut streams: Vec<u32> = self.results.iter().map(|r| r.streams).collect();
        streams.sort_unstable();
        streams.dedup();
        for p in streams {
            let (Some(s), Some(h)) = (self.find(SOCKMAP, p), self.find(BASELINE, p)) else {
                continue;
            };
            let mut goal = |what: &str, value: f64, target: &str, met: bool| {
                goals.push(Goal {
                    streams: p,
                    what: what.into(),
                    value,
                    target: target.into(),
                    met,
                });
            };
            let thr = s.gbit_per_s / h.gbit_per_s.max(1e-9);
            goal("sockmap throughput / HAProxy's", thr, ">= 1.50", thr >= 1.5);
            let cpu = s.relay_cpu_per_gb() / h.relay_cpu_per_gb().max(1e-9);
            goal(
                "sockmap process CPU per GB / HAProxy's",
                cpu,
                "<= 0.50",
                cpu <= 0.5,
            );
            let all_in = s.relay_all_in_cpu_per_gb() / h.relay_all_in_cpu_per_gb().max(1e-9);
            goal(
                "sockmap all-in CPU per GB / HAProxy's",
                all_in,
                "<= 0.50",
                all_in <= 0.5,
            );
            if let Some(d) = self.find(DIRECT, p) {
                let of = s.gbit_per_s / d.gbit_per_s.max(1e-9);
                goal("sockmap throughput / direct", of, ">= 0.60", of >= 0.6);
            }
        }
        self.goals = goals;
    }

    /// Whether every goal that could be checked was met (false if none could).
    pub fn goals_met(&self) -> bool {
        !self.goals.is_empty() && self.goals.iter().all(|g| g.met)
    }

    /// Mean busy cores of other processes during the runs (machine noise).
    pub fn others_cores_mean(&self) -> f64 {
        let n = self.results.len().max(1) as f64;
        self.results
            .iter()
            .map(CaseResult::others_cores)
            .sum::<f64>()
            / n
    }

    fn header(&self) -> String {
        format!(
            "kernel {}, {} CPUs, iperf3 -t {}, veth MTU 1500; load average before {} / after {}; \
             other processes used {:.2} cores on average during the runs",
            self.machine.kernel,
            self.machine.cpus,
            self.duration_s,
            self.machine.loadavg_before,
            self.machine.loadavg_after,
            self.others_cores_mean()
        )
    }

    fn cells(&self, r: &CaseResult) -> Vec<String> {
        let (thr, cpu, all_in) = self.ratios(r);
        let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        vec![
            r.label.clone(),
            r.streams.to_string(),
            format!("{:.2}", r.gbit_per_s),
            ratio(thr),
            self.of_direct(r)
                .map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
            format!("{:.3}", r.relay_cpu_per_gb()),
            ratio(cpu),
            format!("{:.3}", r.relay_all_in_cpu_per_gb()),
            ratio(all_in),
            format!("{:.3}", r.machine_cpu_per_gb()),
            format!("{:.0}", r.backlog_mib()),
            format!("{:.2}", r.others_cores()),
            r.retransmits.to_string(),
        ]
    }

    const COLUMNS: [&'static str; 13] = [
        "case",
        "P",
        "Gbit/s",
        "x HAProxy",
        "of direct",
        "relay proc CPU s/GB",
        "x HAProxy",
        "relay all-in CPU s/GB",
        "x HAProxy",
        "machine CPU s/GB",
        "unsent MiB",
        "others' cores",
        "retr",
    ];

    /// The results as an aligned text table, with the goals below.
    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self.results.iter().map(|r| self.cells(r)).collect();
        let widths: Vec<usize> = (0..Self::COLUMNS.len())
            .map(|i| {
                rows.iter()
                    .map(|row| row[i].len())
                    .chain([Self::COLUMNS[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "{cell:<w$}", w = widths[i]);
                } else {
                    let _ = write!(out, "  {cell:>w$}", w = widths[i]);
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n\n", self.header());
        let names: Vec<String> = Self::COLUMNS.iter().map(|c| (*c).to_owned()).collect();
        out.push_str(&line(&names));
        out.push('\n');
        for row in &rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out.push_str(&self.goals_text());
        out
    }

    fn goals_text(&self) -> String {
        let mut out = String::from("\nGoals (shared/reference/baselines.md):\n");
        if self.goals.is_empty() {
            out.push_str("  not checked: sockmap and HAProxy were not both measured\n");
        }
        for g in &self.goals {
            let _ = writeln!(
                out,
                "  [{}] P{}: {} = {:.2} (goal {})",
                if g.met { "met" } else { "NOT met" },
                g.streams,
                g.what,
                g.value,
                g.target
            );
        }
        for (case, why) in &self.failures {
            let _ = writeln!(out, "  FAILED case {case}: {why}");
        }
        out
    }

    /// The results as a Markdown table, with the goals below.
    pub fn markdown(&self) -> String {
        let mut out = format!("# Relay benchmark\n\n{}\n\n", self.header());
        let _ = writeln!(out, "| {} |", Self::COLUMNS.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            Self::COLUMNS
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for r in &self.results {
            let _ = writeln!(out, "| {} |", self.cells(r).join(" | "));
        }
        out.push_str(
            "\n\"relay proc\": CPU of the relay's processes (utime+stime from /proc/PID/stat). \
             \"relay all-in\": the relay's processes plus kernel threads plus busy time charged to \
             no process, i.e. whole-machine busy time (/proc/stat) minus the iperf3 endpoints and \
             every other process; it holds the kernel work outside the relay process (the sockmap \
             transmit worker, softirq on idle CPUs), which is where the sockmap path spends. \
             \"unsent MiB\": written by the client but not received by the server when the test \
             ended (socket buffers, or a relay queueing without pushing back). \
             \"others' cores\": what other processes on the machine used meanwhile (noise). \
             Ratios are against HAProxy tcp mode with the same number of streams.\n",
        );
        out.push_str(&self.goals_text().replace("\n  ", "\n- "));
        out
    }

    /// The report as JSON (raw figures and derived ones).
    pub fn to_json(&self) -> serde_json::Value {
        let results: Vec<serde_json::Value> = self
            .results
            .iter()
            .map(|r| {
                let (thr, cpu, all_in) = self.ratios(r);
                let mut row = measured_json(r);
                row.extend([
                    ("relay_cpu_s".to_owned(), json!(r.relay_cpu_s)),
                    ("relay_cpu_s_per_gb".to_owned(), json!(r.relay_cpu_per_gb())),
                    (
                        "relay_all_in_cpu_s_per_gb".to_owned(),
                        json!(r.relay_all_in_cpu_per_gb()),
                    ),
                    (
                        "machine_cpu_s_per_gb".to_owned(),
                        json!(r.machine_cpu_per_gb()),
                    ),
                    ("throughput_vs_haproxy".to_owned(), json!(thr)),
                    ("relay_cpu_per_gb_vs_haproxy".to_owned(), json!(cpu)),
                    (
                        "relay_all_in_cpu_per_gb_vs_haproxy".to_owned(),
                        json!(all_in),
                    ),
                    ("throughput_vs_direct".to_owned(), json!(self.of_direct(r))),
                ]);
                serde_json::Value::Object(row)
            })
            .collect();
        let (goals, failures) = goals_and_failures_json(&self.goals, &self.failures);
        json!({
            "bench": "relay",
            "kernel": self.machine.kernel,
            "cpus": self.machine.cpus,
            "duration_s": self.duration_s,
            "mtu": super::topo::MTU,
            "loadavg_before": self.machine.loadavg_before,
            "loadavg_after": self.machine.loadavg_after,
            "others_cores_mean": self.others_cores_mean(),
            "results": results,
            "goals": goals,
            "goals_met": self.goals_met(),
            "failures": failures,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A made-up row (also used by the TLS suite's report tests).
    pub(in crate::bench) fn row(
        case: &str,
        streams: u32,
        gbit: f64,
        relay_cpu: f64,
        machine: f64,
    ) -> CaseResult {
        CaseResult {
            case: case.into(),
            label: case.into(),
            streams,
            gbit_per_s: gbit,
            bytes: (gbit * 1e9 / 8.0 * 5.0) as u64,
            sent_bytes: (gbit * 1e9 / 8.0 * 5.0) as u64 + (1 << 20),
            retransmits: 0,
            wall_s: 5.0,
            relay_cpu_s: relay_cpu,
            endpoints_cpu_s: 4.0,
            kernel_threads_cpu_s: 0.1,
            unattributed_cpu_s: machine - relay_cpu - 4.0 - 0.1 - 0.5,
            others_cpu_s: 0.5,
            machine_cpu_s: machine,
            softirq_cpu_s: 1.0,
        }
    }

    #[test]
    fn goals_and_ratios() {
        let mut report = BenchReport {
            results: vec![
                row("direct", 1, 20.0, 0.0, 5.0),
                row("s2cs-sockmap", 1, 15.0, 0.2, 6.0),
                row("haproxy", 1, 6.0, 4.9, 9.5),
            ],
            ..BenchReport::default()
        };
        report.check_goals();
        assert_eq!(report.goals.len(), 4);
        assert!(report.goals_met(), "{:#?}", report.goals);
        let (thr, _, _) = report.ratios(&report.results[1]);
        assert!((thr.expect("ratio") - 2.5).abs() < 1e-9);
        let table = report.table();
        assert!(
            table.contains("s2cs-sockmap") && table.contains("2.50x"),
            "{table}"
        );
        let md = report.markdown();
        assert!(md.contains("| s2cs-sockmap | 1 | 15.00 | 2.50x |"), "{md}");
        assert_eq!(report.to_json()["goals_met"], true);

        report.results[1].gbit_per_s = 7.0;
        report.check_goals();
        assert!(!report.goals_met());
    }
}
