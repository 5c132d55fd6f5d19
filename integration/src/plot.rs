//! etcdsql-bench's charts: throughput per target as bars, and latency
//! CDFs, as PNG files. Text is drawn with DejaVu Sans (Debian's
//! fonts-dejavu-core), registered once.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use plotters::prelude::*;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("{FONT}: {e} (Debian package fonts-dejavu-core)"))?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT}: not a font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

const COLORS: [RGBColor; 7] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Bars: `(target, rate)` in `unit`/s, each labelled with its ratio to
/// the target named "etcd" where there is one.
pub fn bars(path: &Path, title: &str, unit: &str, rows: &[(String, f64)]) -> anyhow::Result<()> {
    font()?;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..rows.len() as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(format!("{unit}/s"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let etcd = rows.iter().find(|r| r.0 == "etcd").map(|r| r.1);
    for (i, (name, rate)) in rows.iter().enumerate() {
        let x = i as f64;
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, *rate)],
            color.filled(),
        )))?;
        let ratio = etcd
            .filter(|e| *e > 0.0)
            .map_or(String::new(), |e| format!(" ({:.2}x)", rate / e));
        chart.draw_series(std::iter::once(Text::new(
            format!("{rate:.0}{ratio}"),
            (x + 0.2, rate + top * 0.02),
            ("sans-serif", 14),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (x + 0.35, -top * 0.04),
            ("sans-serif", 15),
        )))?;
    }
    root.present().context("writing the chart")?;
    Ok(())
}

/// Latency CDFs, one line per `(target, sorted latencies)`.
pub fn cdf(path: &Path, title: &str, rows: &[(String, &[Duration])]) -> anyhow::Result<()> {
    font()?;
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let max = rows
        .iter()
        .filter_map(|r| r.1.last())
        .map(ms)
        .fold(0.0, f64::max)
        .max(0.01);
    let min = rows
        .iter()
        .filter_map(|r| r.1.first())
        .map(ms)
        .fold(f64::MAX, f64::min)
        .clamp(0.001, max);
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min..max * 1.1).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|v| {
            if *v < 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .light_line_style(WHITE)
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of requests")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, lat)) in rows.iter().enumerate() {
        if lat.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let n = lat.len() as f64;
        // At most 1,000 points per line.
        let step = lat.len().div_ceil(1000);
        let points = lat
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == lat.len())
            .map(|(k, d)| (ms(d).max(min), (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present().context("writing the chart")?;
    Ok(())
}
