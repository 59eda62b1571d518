//! `cargo xtask bench flood`: the PROD gateway under connection floods from
//! the WAN, one kind of attacker connection at a time (plain TCP garbage,
//! silent half-open, TLS with a wrong secret, a replayed ClientHello, a
//! one-byte-at-a-time handshake) and the flood test's mix. For each: the
//! gateway's CPU time per refused connection (the flood alone), and a
//! legitimate hash-verified stream's throughput under the flood as a ratio
//! of its throughput without, in the same run. The measurement is the
//! e2e suite's ignored `bench_flood` test (tests/tests/flood.rs, namespaces
//! with an attacker on the WAN); this command runs it and writes
//! `flood.json` and `flood.md` to the output directory.
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// Options of `bench flood`.
#[derive(Clone, Debug, clap::Args)]
pub struct FloodOpts {
    /// Attacker connections per flood.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// MiB of each legitimate stream.
    #[arg(long, default_value_t = 512)]
    pub mib: u64,
    /// Where to write the results [default: <workspace>/target/bench].
    #[arg(long)]
    pub out_dir: Option<std::path::PathBuf>,
}

pub fn run_flood_bench(root: &Path, opts: &FloodOpts) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the flood benchmark builds network namespaces: run it as root");
    }
    let out = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("flood.json");
    let _ = std::fs::remove_file(&json);
    cmd::run(
        Command::new("cargo")
            .args(["build", "--bins"])
            .current_dir(root),
    )?;
    cmd::run(
        Command::new("cargo")
            .args([
                "test",
                "-p",
                "e2e",
                "--test",
                "flood",
                "bench_flood",
                "--",
                "--ignored",
                "--exact",
                "--nocapture",
            ])
            .env("FLOOD_CONNECTIONS", opts.connections.to_string())
            .env("FLOOD_MIB", opts.mib.to_string())
            .env("FLOOD_REPORT", &json)
            .current_dir(root),
    )
    .context("the flood benchmark failed")?;
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?,
    )
    .with_context(|| format!("parsing {}", json.display()))?;
    let table = markdown(&report);
    println!("{table}");
    let md = out.join("flood.md");
    std::fs::write(&md, &table).with_context(|| format!("writing {}", md.display()))?;
    println!("bench flood: {} and {}", json.display(), md.display());
    Ok(())
}

fn markdown(report: &serde_json::Value) -> String {
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let mut text = format!(
        "Legitimate stream without a flood: {:.0} MiB/s ({} MiB a stream).\n\n\
         | flood | connections | flood s | refused | gateway CPU per refused | stream under flood | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        num(report, "baseline_mib_s"),
        report
            .get("stream_mib")
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    );
    for row in report
        .get("floods")
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.0} µs | {:.0} MiB/s | {:.2} |\n",
            row.get("flood").and_then(|x| x.as_str()).unwrap_or("?"),
            num(row, "connections"),
            num(row, "flood_seconds"),
            num(row, "refused"),
            num(row, "gateway_cpu_us_per_refused"),
            num(row, "stream_mib_s"),
            num(row, "ratio"),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_flood() {
        let report = serde_json::json!({
            "stream_mib": 512, "baseline_mib_s": 800.0,
            "floods": [
                {"flood": "silent", "connections": 20000, "flood_seconds": 20.5, "refused": 19000.0,
                 "gateway_cpu_us_per_refused": 41.0, "stream_mib_s": 700.0, "ratio": 0.875},
            ]
        });
        let table = markdown(&report);
        assert!(
            table.contains("| silent | 20000 | 20.5 | 19000 | 41 µs | 700 MiB/s | 0.88 |"),
            "{table}"
        );
        assert!(table.contains("800 MiB/s"));
    }
}
