//! `--chart out.svg`: p99 latency over time, one panel per strategy, with the
//! reloads of the hottest key marked, so a reader can see what each expiry
//! costs the callers under each strategy.
//!
//! plotters is built with only its SVG backend and line series (no font
//! files, no bitmap codecs): SVG text is left to the viewer's fonts.

use plotters::prelude::*;
use std::path::Path;

use crate::Res;
use crate::report::Report;

const PANEL_HEIGHT: u32 = 230;

pub fn write_svg(path: &Path, report: &Report) -> Res<()> {
    let bucket_ms = report.settings.bucket_ms;
    let panels = report.strategies.len().max(1);
    let end_ms = report
        .strategies
        .iter()
        .flat_map(|r| r.timeline.last().map(|p| p.t_ms + bucket_ms))
        .max()
        .unwrap_or(bucket_ms)
        .max(1);
    // Short (cold) runs read better in ms, long ones in seconds.
    let (unit, per_ms) = if end_ms < 2_000 {
        ("ms", 1.0)
    } else {
        ("s", 1000.0)
    };
    let x_end = end_ms as f64 / per_ms;
    // One log-scale y range for all panels, so they compare at a glance.
    let p99s = report
        .strategies
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.p99_ms));
    let y_hi = p99s.clone().fold(0.01f64, f64::max) * 2.0;
    let y_lo = (p99s.fold(f64::INFINITY, f64::min) / 2.0).clamp(0.001, y_hi / 10.0);

    let root = SVGBackend::new(path, (1100, 50 + PANEL_HEIGHT * panels as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "p99 latency per {bucket_ms} ms of request completion ({}); red: loads of the hottest key",
            if report.settings.duration_ms.is_some() {
                "steady load"
            } else {
                "cold-key stampede"
            }
        ),
        ("sans-serif", 20),
    )?;
    for (i, (area, r)) in root
        .split_evenly((panels, 1))
        .iter()
        .zip(&report.strategies)
        .enumerate()
    {
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: {} loader calls, p99 {:.3} ms overall",
                    r.strategy.name(),
                    r.loader_calls,
                    r.latency.p99_ms
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_end, (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(format!("{unit} since release"))
            .y_desc("p99 ms")
            .draw()?;
        // Loads of one expiry (many, under `none`) land close together:
        // one line per bucket is enough and keeps the SVG small.
        let mut marks: Vec<u64> = r
            .hot_key_loads_ms
            .iter()
            .map(|t| t / bucket_ms * bucket_ms)
            .collect();
        marks.dedup();
        chart.draw_series(marks.iter().map(|&t| {
            let x = t as f64 / per_ms;
            PathElement::new(vec![(x, y_lo), (x, y_hi)], RED.mix(0.35))
        }))?;
        chart.draw_series(LineSeries::new(
            r.timeline.iter().map(|p| {
                (
                    (p.t_ms as f64 + bucket_ms as f64 / 2.0) / per_ms,
                    p.p99_ms.max(y_lo),
                )
            }),
            Palette99::pick(i).stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}
