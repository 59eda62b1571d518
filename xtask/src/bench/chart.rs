//! The benchmark's chart: one SVG with, for each suite (relay, TLS pairs),
//! a panel of throughput and a panel of CPU seconds per GB, one horizontal
//! bar per case and stream count, ours in blue beside the peers in grey.
use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One bar pair (throughput, CPU per GB) of a suite.
#[derive(Clone, Debug)]
pub struct Bar {
    /// What the axis shows, e.g. "s2cs splice P4".
    pub label: String,
    pub gbit_per_s: f64,
    /// The relay's (or the pair's) processes, CPU seconds per GB.
    pub cpu_s_per_gb: f64,
    /// One of our data paths (drawn in blue).
    pub ours: bool,
}

/// One suite: a title and its bars, top to bottom.
#[derive(Clone, Debug)]
pub struct Suite {
    pub title: String,
    /// What the CPU panel measures (whose processes).
    pub cpu_of: String,
    pub bars: Vec<Bar>,
}

const OURS: RGBColor = RGBColor(31, 119, 180);
const PEER: RGBColor = RGBColor(150, 150, 150);
const FONT: &str = "sans-serif";

/// Writes the chart of `suites` (one row of two panels each) to `path`.
pub fn write_svg(path: &Path, title: &str, suites: &[Suite]) -> anyhow::Result<()> {
    if suites.is_empty() {
        return Err(anyhow!("no suite to draw"));
    }
    let rows = suites.iter().map(|s| s.bars.len().max(1)).sum::<usize>();
    let height = 160 + 28 * u32::try_from(rows).unwrap_or(u32::MAX / 64) + 90 * suites.len() as u32;
    let root = SVGBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let root = root.titled(title, (FONT, 22)).map_err(draw_error)?;
    // Each suite's height in proportion to its bar count.
    let mut rest = root;
    for (i, suite) in suites.iter().enumerate() {
        let area = if i + 1 == suites.len() {
            rest.clone()
        } else {
            let remaining: usize = suites[i..].iter().map(|s| s.bars.len().max(1) + 3).sum();
            let share = (suite.bars.len().max(1) + 3) as f64 / remaining as f64;
            let (_, h) = rest.dim_in_pixel();
            let split = (f64::from(h) * share) as i32;
            let (top, bottom) = rest.split_vertically(split);
            rest = bottom;
            top
        };
        let (left, right) = area.split_horizontally(700);
        panel(
            &left,
            &format!("{}: throughput, Gbit/s", suite.title),
            suite,
            |b| b.gbit_per_s,
        )?;
        panel(
            &right,
            &format!("{}: CPU s per GB ({})", suite.title, suite.cpu_of),
            suite,
            |b| b.cpu_s_per_gb,
        )?;
    }
    Ok(())
}

/// One panel: a horizontal bar per entry of `suite`, valued by `value`.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    suite: &Suite,
    value: impl Fn(&Bar) -> f64,
) -> anyhow::Result<()> {
    let n = suite.bars.len();
    let max = suite
        .bars
        .iter()
        .map(&value)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let x_max = if max > 0.0 { max * 1.18 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(250)
        // A discrete 0..k range holds k + 1 values: one segment per bar (a
        // lone bar gets an empty segment above it: 0..0 is not a range).
        .build_cartesian_2d(0.0..x_max, (0..n.saturating_sub(1).max(1)).into_segmented())
        .map_err(draw_error)?;
    // Row 0 at the top: bar i sits in segment n-1-i.
    let row = |i: usize| n.saturating_sub(1 + i);
    let labels: Vec<String> = suite.bars.iter().map(|b| b.label.clone()).collect();
    let formatter = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(s) if *s < n => labels[row(*s)].clone(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n.max(1))
        .y_label_formatter(&formatter)
        .x_labels(8)
        .label_style((FONT, 13))
        .draw()
        .map_err(draw_error)?;
    chart
        .draw_series(suite.bars.iter().enumerate().map(|(i, b)| {
            let v = value(b);
            let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
            let color = if b.ours { OURS } else { PEER };
            let mut rect = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row(i))),
                    (v, SegmentValue::Exact(row(i) + 1)),
                ],
                color.filled(),
            );
            rect.set_margin(3, 3, 0, 0);
            rect
        }))
        .map_err(draw_error)?;
    chart
        .draw_series(suite.bars.iter().enumerate().map(|(i, b)| {
            let v = value(b);
            let text = if v.is_finite() {
                format!("{v:.2}")
            } else {
                "-".into()
            };
            let x = if v.is_finite() { v.max(0.0) } else { 0.0 };
            Text::new(
                text,
                (x + x_max * 0.01, SegmentValue::CenterOf(row(i))),
                (FONT, 12).into_font().color(&BLACK),
            )
        }))
        .map_err(draw_error)?;
    Ok(())
}

fn draw_error<E: std::error::Error + Send + Sync>(
    e: plotters::drawing::DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_bar_and_label() {
        let dir = std::env::temp_dir().join(format!("s2bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chart.svg");
        let bar = |label: &str, gbit: f64, cpu: f64, ours: bool| Bar {
            label: label.into(),
            gbit_per_s: gbit,
            cpu_s_per_gb: cpu,
            ours,
        };
        let suites = [
            Suite {
                title: "relay".into(),
                cpu_of: "relay process".into(),
                bars: vec![
                    bar("s2cs splice P1", 12.9, 0.31, true),
                    bar("HAProxy tcp mode P1", 9.5, 0.82, false),
                ],
            },
            Suite {
                title: "TLS pairs".into(),
                cpu_of: "both gateways".into(),
                bars: vec![bar("stunnel pair P1", 4.6, f64::NAN, false)],
            },
        ];
        write_svg(&path, "bench", &suites).expect("chart written");
        let svg = std::fs::read_to_string(&path).expect("svg");
        for text in [
            "s2cs splice P1",
            "HAProxy tcp mode P1",
            "stunnel pair P1",
            "12.90",
            "0.82",
            "relay: throughput, Gbit/s",
            "TLS pairs: CPU s per GB (both gateways)",
        ] {
            assert!(svg.contains(text), "{text:?} missing from the chart");
        }
        // Our bar in blue, the peers' in grey.
        assert!(
            svg.contains("#1F77B4") || svg.contains("#1f77b4"),
            "no blue bar"
        );
        assert!(svg.contains("#969696"), "no grey bar");
        assert!(write_svg(&path, "bench", &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
