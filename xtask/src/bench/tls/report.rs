//! The results of `bench tls`: rows per pair and stream count, ratios against
//! the stunnel pair, the 2.5x goal, the session setup time, rendered as a text
//! table, Markdown and JSON.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::super::report::{CaseResult, Goal, goals_and_failures_json, measured_json};
use super::{BASELINE, CEILING, GOAL_RATIO, OURS, SUITE};

/// The median of `values` (0 when empty).
pub(super) fn median(values: &[f64]) -> f64 {
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
    /// One core's cost of the userspace record layer's suite, when the pair
    /// ran it (for the bound on its share of the ceiling).
    pub record_cost: Option<RecordCost>,
    pub duration_s: u32,
    /// Where it ran and how busy the machine was.
    pub machine: super::super::Machine,
    pub json_path: PathBuf,
    pub markdown_path: PathBuf,
}

/// One core's speed sealing and opening records with one suite, as `s2cs
/// check --json` measured it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordCost {
    pub suite: String,
    pub seal_gb_per_s: f64,
    pub open_gb_per_s: f64,
}

impl RecordCost {
    /// The `record_speed` entry of `suite` in an `s2cs check --json` report.
    pub fn from_check(check: &serde_json::Value, suite: &str) -> anyhow::Result<Self> {
        let entry = check["record_speed"]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["suite"] == suite))
            .with_context(|| {
                format!(
                    "s2cs check measured no {suite} (errors: {})",
                    check["record_speed_errors"]
                )
            })?;
        let rate = |side: &str| {
            entry[side]
                .as_f64()
                .filter(|r| *r > 0.0 && r.is_finite())
                .with_context(|| format!("s2cs check: {suite} has no valid {side}"))
        };
        Ok(RecordCost {
            suite: suite.to_owned(),
            seal_gb_per_s: rate("seal_gb_per_s")?,
            open_gb_per_s: rate("open_gb_per_s")?,
        })
    }

    /// CPU seconds per GB through a pair: one gateway seals, the other opens.
    pub fn pair_cpu_s_per_gb(&self) -> f64 {
        1.0 / self.seal_gb_per_s + 1.0 / self.open_gb_per_s
    }

    /// The most any userspace record layer could move, in Gbit/s and as a
    /// share of the ceiling: the ceiling's machine CPU per GB plus this
    /// suite's own, on `cpus` busy cores (before the layer's copies).
    pub fn bound(&self, ceiling: &CaseResult, cpus: usize) -> (f64, f64) {
        let per_gb = ceiling.machine_cpu_per_gb() + self.pair_cpu_s_per_gb();
        let gbit = cpus as f64 / per_gb * 8.0;
        let share = (gbit / ceiling.gbit_per_s.max(1e-9)).min(1.0);
        (gbit.min(ceiling.gbit_per_s), share)
    }
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
    pub(super) fn check_goals(&mut self) {
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
        for ours in self.results.iter().filter(|r| r.case == OURS) {
            if let Some(ceiling) = self.find(CEILING, ours.streams) {
                let share = ours.gbit_per_s / ceiling.gbit_per_s.max(1e-9);
                let mut line = format!(
                    "P{}: the s2cs TLS pair moves {:.0}% of what the same pair moves without \
                     cryptography ({:.2} of {:.2} Gbit/s)",
                    ours.streams,
                    share * 100.0,
                    ours.gbit_per_s,
                    ceiling.gbit_per_s,
                );
                if let Some(stunnel) = self.find(BASELINE, ours.streams) {
                    let _ = write!(
                        line,
                        "; {GOAL_RATIO}x stunnel would need {:.2}",
                        stunnel.gbit_per_s * GOAL_RATIO
                    );
                }
                lines.push(line);
                if let Some(cost) = self.record_cost.as_ref().filter(|_| self.machine.cpus > 0) {
                    let (gbit, share) = cost.bound(ceiling, self.machine.cpus);
                    lines.push(format!(
                        "P{}: bound: {} alone costs {:.2} s of CPU per GB through the pair (one core \
                         seals {:.2}, opens {:.2} GB/s); with the ceiling's {:.2} s/GB on {} cores, \
                         no userspace record layer moves more than {:.2} Gbit/s = {:.0}% of the \
                         ceiling, before its copies",
                        ours.streams,
                        cost.suite,
                        cost.pair_cpu_s_per_gb(),
                        cost.seal_gb_per_s,
                        cost.open_gb_per_s,
                        ceiling.machine_cpu_per_gb(),
                        self.machine.cpus,
                        gbit,
                        share * 100.0
                    ));
                }
            }
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
            self.duration_s,
            self.machine.cpus,
            self.machine.kernel,
            self.machine.loadavg_before,
            self.machine.loadavg_after
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
            self.machine.cpus
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
            self.duration_s,
            self.machine.cpus,
            self.machine.kernel,
            self.machine.loadavg_before,
            self.machine.loadavg_after
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
                let mut row = measured_json(r);
                row.extend([
                    ("pair_cpu_s".to_owned(), json!(r.relay_cpu_s)),
                    ("pair_cpu_s_per_gb".to_owned(), json!(r.relay_cpu_per_gb())),
                    ("throughput_vs_stunnel".to_owned(), json!(tput)),
                    ("cpu_per_gb_vs_stunnel".to_owned(), json!(cpu)),
                ]);
                serde_json::Value::Object(row)
            })
            .collect();
        let (goals, failures) = goals_and_failures_json(&self.goals, &self.failures);
        json!({
            "bench": "tls",
            "duration_s": self.duration_s,
            "kernel": self.machine.kernel,
            "cpus": self.machine.cpus,
            "loadavg_before": self.machine.loadavg_before,
            "loadavg_after": self.machine.loadavg_after,
            "setup_time_s": {
                "median": (!self.setup_times_s.is_empty()).then(|| median(&self.setup_times_s)),
                "sessions": self.setup_times_s,
            },
            "s2cs_channel": self.ktls,
            "record_cost": self.record_cost.as_ref().map(|c| json!({
                "suite": c.suite,
                "seal_gb_per_s": c.seal_gb_per_s,
                "open_gb_per_s": c.open_gb_per_s,
                "pair_cpu_s_per_gb": c.pair_cpu_s_per_gb(),
            })),
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

    fn row(case: &str, streams: u32, gbit: f64) -> CaseResult {
        crate::bench::report::tests::row(case, streams, gbit, 2.0, 6.0)
    }

    #[test]
    fn goal_against_stunnel_and_share_of_the_ceiling() {
        let mut report = TlsReport {
            results: vec![
                row(OURS, 1, 6.0),
                row(CEILING, 1, 8.0),
                row(BASELINE, 1, 4.0),
            ],
            ..TlsReport::default()
        };
        report.check_goals();
        assert_eq!(report.goals.len(), 1);
        assert!((report.goals[0].value - 1.5).abs() < 1e-9);
        assert!(!report.goals_met(), "1.5x is below the 2.5x goal");
        let text = report.table();
        assert!(text.contains("NOT met"), "{text}");
        assert!(
            text.contains("moves 75% of what the same pair moves without cryptography"),
            "{text}"
        );
        assert!(text.contains("2.5x stunnel would need 10.00"), "{text}");
        report.results[0].gbit_per_s = 10.0;
        report.check_goals();
        assert!(report.goals_met());
    }

    /// The bound adds the suite's cost to the ceiling's machine CPU per GB:
    /// 8 Gbit/s in 5 s is 5 GB for 6 s of CPU (1.2 s/GB); sealing and opening
    /// at 5 GB/s add 0.4 s/GB, so 2 cores move at most 2 / 1.6 GB/s = 10
    /// Gbit/s, capped at the ceiling itself; 1 core at most 5 Gbit/s (62%).
    #[test]
    fn record_cost_from_check_and_the_bound_it_gives() {
        let check = json!({
            "record_speed": [
                {"suite": "TLS13_AES_128_GCM_SHA256", "seal_gb_per_s": 5.0, "open_gb_per_s": 5.0},
                {"suite": "TLS13_CHACHA20_POLY1305_SHA256", "seal_gb_per_s": 1.0, "open_gb_per_s": 1.0}
            ],
            "record_speed_errors": []
        });
        let cost = RecordCost::from_check(&check, "TLS13_AES_128_GCM_SHA256").expect("cost");
        assert!((cost.pair_cpu_s_per_gb() - 0.4).abs() < 1e-9);
        let ceiling = row(CEILING, 1, 8.0);
        let (gbit, share) = cost.bound(&ceiling, 2);
        assert!((gbit - 8.0).abs() < 1e-9 && (share - 1.0).abs() < 1e-9);
        let (gbit, share) = cost.bound(&ceiling, 1);
        assert!((gbit - 5.0).abs() < 1e-9 && (share - 0.625).abs() < 1e-9);

        let missing = RecordCost::from_check(&check, "TLS13_AES_256_GCM_SHA384").unwrap_err();
        assert!(format!("{missing:#}").contains("measured no TLS13_AES_256_GCM_SHA384"));
        let broken =
            json!({"record_speed": [{"suite": "X", "seal_gb_per_s": 0.0, "open_gb_per_s": 1.0}]});
        let err = RecordCost::from_check(&broken, "X").unwrap_err();
        assert!(
            format!("{err:#}").contains("no valid seal_gb_per_s"),
            "{err:#}"
        );

        let mut report = TlsReport {
            results: vec![row(OURS, 1, 5.0), ceiling],
            record_cost: Some(cost),
            ..TlsReport::default()
        };
        report.machine.cpus = 1;
        let text = report.table();
        assert!(
            text.contains("P1: bound: TLS13_AES_128_GCM_SHA256 alone costs 0.40 s"),
            "{text}"
        );
        assert!(
            text.contains("no userspace record layer moves more than 5.00 Gbit/s = 62%"),
            "{text}"
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert_eq!(median(&[]), 0.0);
    }
}
