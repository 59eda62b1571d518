//! `cargo xtask bench`: both suites in one go (the relay suite, then the TLS
//! pair suite with the session setup time), then one JSON file, one Markdown
//! file and one SVG chart of throughput and CPU per GB for all of them.
//!
//! Builds the release binaries once and installs every suite's peers first,
//! so a missing package or a failed build stops the run before anything is
//! measured. A suite that fails as a whole is reported and the other still
//! runs; the command fails at the end if either did.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

use super::chart::{self, Bar, Suite};
use super::report::{BenchReport, CaseResult};
use super::tls::{TlsOpts, TlsReport};
use super::{BenchOpts, RunOpts, run_relay_bench, run_tls_bench};

/// Options of `cargo xtask bench` (both suites).
#[derive(Clone, Debug, clap::Args)]
pub struct AllOpts {
    #[command(flatten)]
    pub run: RunOpts,
    /// `s2uc connect` sessions whose setup time is measured (median reported).
    #[arg(long, default_value_t = 5)]
    pub sessions: u32,
}

/// Where the combined results went.
pub struct AllPaths {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub svg: PathBuf,
}

/// Runs both suites and writes `bench.json`, `bench.md` and `bench.svg`.
pub fn run_all(workspace: &Path, opts: &AllOpts) -> anyhow::Result<AllPaths> {
    super::require_root()?;
    opts.run.validate()?;
    opts.run
        .release_binaries(workspace, &[("gateway", "s2cs"), ("control", "s2uc")])?;
    super::peers::ensure_installed(opts.run.no_install)?;
    super::tls::ensure_installed(opts.run.no_install)?;
    let out_dir = opts.run.out_dir(workspace);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // The suites find everything built and installed.
    let run = RunOpts {
        no_build: true,
        no_install: true,
        out_dir: Some(out_dir.clone()),
        ..opts.run.clone()
    };

    let relay = run_relay_bench(
        workspace,
        &BenchOpts {
            run: run.clone(),
            cases: Vec::new(),
        },
    );
    if super::interrupted() {
        bail!("interrupted");
    }
    let tls = run_tls_bench(
        workspace,
        &TlsOpts {
            run,
            cases: Vec::new(),
            sessions: opts.sessions,
        },
    );
    if super::interrupted() {
        bail!("interrupted");
    }

    let paths = AllPaths {
        json: out_dir.join("bench.json"),
        markdown: out_dir.join("bench.md"),
        svg: out_dir.join("bench.svg"),
    };
    let combined = json!({
        "relay": relay.as_ref().map(BenchReport::to_json).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        "tls": tls.as_ref().map(TlsReport::to_json).unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
    });
    let text = serde_json::to_string_pretty(&combined).context("serializing the results")?;
    std::fs::write(&paths.json, text + "\n")
        .with_context(|| format!("writing {}", paths.json.display()))?;
    std::fs::write(
        &paths.markdown,
        markdown(relay.as_ref().ok(), tls.as_ref().ok(), &paths.svg),
    )
    .with_context(|| format!("writing {}", paths.markdown.display()))?;
    let mut suites = Vec::new();
    if let Ok(r) = &relay {
        suites.push(relay_suite(r));
    }
    if let Ok(t) = &tls {
        suites.push(tls_suite(t));
    }
    if !suites.is_empty() {
        chart::write_svg(
            &paths.svg,
            "s2cs (blue) against its peers (grey), measured in one run",
            &suites,
        )?;
    }
    println!(
        "\nbench: wrote {}, {} and {}",
        paths.json.display(),
        paths.markdown.display(),
        paths.svg.display()
    );
    match (relay, tls) {
        (Ok(_), Ok(_)) => Ok(paths),
        (Err(e), _) => Err(e.context("the relay suite failed")),
        (_, Err(e)) => Err(e.context("the TLS pair suite failed")),
    }
}

fn bar(r: &CaseResult) -> Bar {
    Bar {
        label: format!("{} P{}", r.label, r.streams),
        gbit_per_s: r.gbit_per_s,
        cpu_s_per_gb: r.relay_cpu_per_gb(),
        ours: r.case.starts_with("s2cs"),
    }
}

fn relay_suite(report: &BenchReport) -> Suite {
    Suite {
        title: "Plaintext relay".into(),
        cpu_of: "relay processes".into(),
        bars: report.results.iter().map(bar).collect(),
    }
}

fn tls_suite(report: &TlsReport) -> Suite {
    Suite {
        title: "Encrypted gateway pairs".into(),
        cpu_of: "both gateways".into(),
        bars: report.results.iter().map(bar).collect(),
    }
}

/// Both suites' Markdown under one heading, with the chart linked.
fn markdown(relay: Option<&BenchReport>, tls: Option<&TlsReport>, svg: &Path) -> String {
    let mut out = String::from("# cargo xtask bench\n\n");
    let chart = svg.file_name().map_or_else(
        || svg.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let _ = writeln!(out, "![throughput and CPU per GB]({chart})\n");
    for (name, md) in [
        ("relay", relay.map(BenchReport::markdown)),
        ("TLS pair", tls.map(TlsReport::markdown)),
    ] {
        match md {
            // Each suite's own title becomes a second-level heading.
            Some(md) => {
                let _ = writeln!(out, "#{}\n", md.trim_end());
            }
            None => {
                let _ = writeln!(out, "## {name} suite\n\nfailed: see the run's output.\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_holds_both_suites_or_says_which_failed() {
        let relay = BenchReport::default();
        let md = markdown(Some(&relay), None, Path::new("/x/bench.svg"));
        assert!(
            md.contains("![throughput and CPU per GB](bench.svg)"),
            "{md}"
        );
        assert!(md.contains("## Relay benchmark"), "{md}");
        assert!(md.contains("## TLS pair suite\n\nfailed"), "{md}");
    }
}
