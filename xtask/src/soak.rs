//! `cargo xtask soak --minutes N [--seed S]`: the long soak of the gateway
//! pair (tests/tests/soak.rs, ignored in `cargo test`), then its report:
//! `target/soak/soak.json` (written by the test) and a chart over time,
//! `target/soak/soak.svg` (gateways' memory and descriptors, sessions, and
//! verified streams). Not part of `cargo xtask test`, which runs the short
//! `soak_smoke` instead.
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

use crate::cmd;

/// Runs the soak for `minutes` with `seed` and writes its chart.
pub fn run(root: &Path, minutes: f64, seed: u64) -> anyhow::Result<()> {
    if !(minutes.is_finite() && minutes > 0.0) {
        bail!("--minutes must be a positive number, got {minutes}");
    }
    if !cmd::is_root() {
        bail!("the soak builds network namespaces and loads eBPF programs: run it as root");
    }
    cmd::run(
        Command::new("cargo")
            .args(["build", "--bins"])
            .current_dir(root),
    )?;
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("soak.json");
    let _ = std::fs::remove_file(&json);
    // The soak restarts gateways for its whole length: it runs copies of
    // the binaries, so a build meanwhile cannot swap them under it.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in ["s2cs", "s2uc"] {
        let from = root.join("target/debug").join(name);
        std::fs::copy(&from, bin.join(name))
            .with_context(|| format!("copying {} to {}", from.display(), bin.display()))?;
    }
    let seconds = (minutes * 60.0).round() as u64;
    println!(
        "xtask soak: {minutes} min, seed {seed}; report in {}",
        json.display()
    );
    let status = Command::new("cargo")
        .args([
            "test",
            "-p",
            "e2e",
            "--test",
            "soak",
            "--",
            "--ignored",
            "--exact",
            "soak",
            "--nocapture",
        ])
        .env("SOAK_SECONDS", seconds.to_string())
        .env("SOAK_SEED", seed.to_string())
        .env("SOAK_OUT", &json)
        .env("S2CS_BIN", bin.join("s2cs"))
        .env("S2UC_BIN", bin.join("s2uc"))
        .current_dir(root)
        .status()
        .context("starting cargo test for the soak")?;
    // The report is drawn even when the soak failed: it shows where.
    if json.is_file() {
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?,
        )
        .with_context(|| format!("parsing {}", json.display()))?;
        let svg = dir.join("soak.svg");
        write_chart(&svg, &report)?;
        println!("xtask soak: chart in {}", svg.display());
        println!(
            "xtask soak: {}",
            serde_json::to_string_pretty(&report["summary"]).unwrap_or_default()
        );
    }
    if !status.success() {
        bail!(
            "the soak failed ({status}); see its output and {}",
            json.display()
        );
    }
    Ok(())
}

/// One line of the chart: its name and (minutes, value) points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

fn series(samples: &[Value], key: &str, scale: f64) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter_map(|s| Some((s["secs"].as_f64()? / 60.0, s[key].as_f64()? * scale)))
        .collect()
}

/// Three panels over time: memory (RSS MiB), descriptors, and sessions with
/// verified streams.
fn write_chart(path: &Path, report: &Value) -> anyhow::Result<()> {
    let samples = report["samples"]
        .as_array()
        .ok_or_else(|| anyhow!("the report has no samples"))?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let panels: [(&str, Vec<Line>); 3] = [
        (
            "gateway memory (RSS, MiB)",
            vec![
                (
                    "PROD gateway",
                    blue,
                    series(samples, "gwa_rss_kib", 1.0 / 1024.0),
                ),
                (
                    "CONS gateway",
                    orange,
                    series(samples, "gwb_rss_kib", 1.0 / 1024.0),
                ),
            ],
        ),
        (
            "open descriptors",
            vec![
                ("PROD gateway", blue, series(samples, "gwa_fds", 1.0)),
                ("CONS gateway", orange, series(samples, "gwb_fds", 1.0)),
            ],
        ),
        (
            "sessions, and verified streams (cumulative / 10)",
            vec![
                ("sessions", blue, series(samples, "sessions", 1.0)),
                (
                    "verified streams / 10",
                    green,
                    series(samples, "streams_verified", 0.1),
                ),
            ],
        ),
    ];
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let summary = &report["summary"];
    let title = format!(
        "s2cs soak, seed {}: {} streams verified ({:.1} GB), {} cut by faults, {} failed; {} kills, {} restarts, {} partitions",
        report["seed"],
        summary["streams_verified"],
        summary["bytes_verified"].as_f64().unwrap_or(0.0) / 1e9,
        summary["streams_cut_by_faults"],
        summary["streams_failed"],
        summary["kills"],
        summary["graceful_restarts"],
        summary["partitions"],
    );
    let root = root
        .titled(&title, ("sans-serif", 16))
        .map_err(draw_error)?;
    let minutes = samples
        .last()
        .and_then(|s| s["secs"].as_f64())
        .unwrap_or(1.0)
        / 60.0;
    for (area, (name, lines)) in root.split_evenly((3, 1)).iter().zip(panels) {
        let top = lines
            .iter()
            .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..minutes.max(0.1), 0.0..top)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .light_line_style(WHITE)
            .draw()
            .map_err(draw_error)?;
        for (label, colour, points) in lines {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(draw_error)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_error)?;
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

fn draw_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the soak chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_chart_from_a_report() {
        let dir = std::env::temp_dir().join(format!("soak-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let report = serde_json::json!({
            "seed": 3,
            "summary": {"streams_verified": 2, "bytes_verified": 1e9, "streams_cut_by_faults": 1,
                        "streams_failed": 0, "kills": 1, "graceful_restarts": 0, "partitions": 1},
            "samples": [
                {"secs": 0.0, "gwa_rss_kib": 20480, "gwb_rss_kib": 10240, "gwa_fds": 20, "gwb_fds": 21, "sessions": 0, "streams_verified": 0},
                {"secs": 60.0, "gwa_rss_kib": 22000, "gwb_rss_kib": 11000, "gwa_fds": 30, "gwb_fds": 25, "sessions": 3, "streams_verified": 2}
            ]
        });
        let svg = dir.join("soak.svg");
        write_chart(&svg, &report).expect("chart");
        let text = std::fs::read_to_string(&svg).expect("svg");
        assert!(
            text.contains("<svg") && text.contains("open descriptors"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
