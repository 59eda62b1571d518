//! What every suite of the benchmark shares: the run options, the release
//! binaries, the machine a run happened on, one result row from a
//! measurement, and writing a report's JSON and Markdown.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::measure::{self, Run};
use super::report::CaseResult;

/// Options every suite takes.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOpts {
    /// Seconds per iperf3 run (iperf3 -t).
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// Parallel streams (iperf3 -P), one run per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    pub streams: Vec<u32>,
    /// Use the existing target/release binaries instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Fail instead of installing missing peers with apt-get.
    #[arg(long)]
    pub no_install: bool,
    /// Where to write the results [default: <workspace>/target/bench].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

impl Default for RunOpts {
    fn default() -> Self {
        RunOpts {
            duration: 5,
            streams: vec![1, 4],
            no_build: false,
            no_install: false,
            out_dir: None,
        }
    }
}

impl RunOpts {
    /// Distinct positive stream counts and a positive duration.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut streams = self.streams.clone();
        streams.sort_unstable();
        streams.dedup();
        if streams.is_empty()
            || streams.len() != self.streams.len()
            || streams.contains(&0)
            || self.duration == 0
        {
            bail!("--streams needs distinct positive counts and --duration a positive number");
        }
        Ok(())
    }

    /// `--out-dir`, or `<workspace>/target/bench`.
    pub fn out_dir(&self, workspace: &Path) -> PathBuf {
        self.out_dir
            .clone()
            .unwrap_or_else(|| workspace.join("target/bench"))
    }

    /// Builds `bins` (package, binary) in release, or with `--no-build`
    /// checks that they are there.
    pub fn release_binaries(&self, workspace: &Path, bins: &[(&str, &str)]) -> anyhow::Result<()> {
        if !self.no_build {
            return super::build_release(workspace, bins);
        }
        let dir = super::s2cs_binary(workspace);
        for (_, bin) in bins {
            let path = dir.with_file_name(bin);
            if !path.is_file() {
                bail!(
                    "{} is missing (drop --no-build to build it)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// The machine a run happened on, and how busy it was.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    /// /proc/loadavg (1, 5, 15 min) before and after the run.
    pub loadavg_before: String,
    pub loadavg_after: String,
}

impl Machine {
    /// This machine, with the load average now as "before".
    pub fn now() -> Machine {
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_before: measure::loadavg(),
            loadavg_after: String::new(),
        }
    }

    /// Records the load average now as "after".
    pub fn finish(&mut self) {
        self.loadavg_after = measure::loadavg();
    }
}

impl CaseResult {
    /// The row of one measurement of case `case` with `streams` streams.
    pub(super) fn from_run(case: &str, label: &str, streams: u32, run: &Run) -> CaseResult {
        CaseResult {
            case: case.to_owned(),
            label: label.to_owned(),
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
        }
    }
}

/// The items of `all` that `names` asks for, in `all`'s order (every item
/// when `names` is empty); an unknown name is an error listing the known
/// ones (`kind`: "case", "pair").
pub fn select_by_name<T>(
    all: &'static [T],
    names: &[String],
    name: fn(&T) -> &'static str,
    kind: &str,
) -> anyhow::Result<Vec<&'static T>> {
    if let Some(unknown) = names
        .iter()
        .find(|n| !all.iter().any(|item| name(item) == *n))
    {
        let known: Vec<&str> = all.iter().map(name).collect();
        anyhow::bail!("unknown {kind} {unknown:?}; known: {}", known.join(", "));
    }
    Ok(all
        .iter()
        .filter(|item| names.is_empty() || names.iter().any(|n| n == name(item)))
        .collect())
}

/// Writes a suite's JSON and Markdown, prints its table and says where
/// everything went (`work` holds the raw output and logs).
pub fn write_report(
    json: &serde_json::Value,
    (json_path, markdown_path): (&Path, &Path),
    markdown: &str,
    table: &str,
    work: &Path,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(json).context("serializing the report")?;
    std::fs::write(json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(markdown_path, markdown)
        .with_context(|| format!("writing {}", markdown_path.display()))?;
    println!("{table}");
    println!(
        "wrote {} and {} (raw iperf3 output, configs and logs in {})",
        json_path.display(),
        markdown_path.display(),
        work.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_streams_and_duration() {
        let ok = RunOpts::default();
        assert!(ok.validate().is_ok());
        for bad in [
            RunOpts {
                streams: vec![1, 1],
                ..RunOpts::default()
            },
            RunOpts {
                streams: vec![0],
                ..RunOpts::default()
            },
            RunOpts {
                streams: vec![],
                ..RunOpts::default()
            },
            RunOpts {
                duration: 0,
                ..RunOpts::default()
            },
        ] {
            let err = bad.validate().expect_err("refused").to_string();
            assert!(err.contains("--streams"), "{err}");
        }
    }
}
