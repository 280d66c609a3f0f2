//! `--chart out.svg` for `--scenario seckill`: units sold over time, one
//! line per strategy, the stock as a grey horizontal line (a line above it
//! is an oversell) and each strategy's sell-out (its last accepted answer)
//! as a vertical line in its colour. The time axis is logarithmic: the
//! strategies sell out tens to hundreds of times apart (`watch` in
//! seconds, the others in tens of ms), and on a linear axis all but the
//! slowest would be squeezed against the left edge.

use plotters::prelude::*;
use std::path::Path;

use crate::Res;
use crate::lock::report::fmt_ms;
use crate::seckill::report::Report;

pub fn write_svg(path: &Path, report: &Report) -> Res<()> {
    let stock = report.settings.stock as f64;
    let x_end = report
        .strategies
        .iter()
        .filter_map(|r| r.sold_out_ms)
        .fold(1.0f64, f64::max)
        * 1.5;
    // From a little before the first sale of any strategy.
    let x_lo = report
        .strategies
        .iter()
        .filter_map(|r| r.sold_timeline.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .clamp(0.1, x_end / 10.0)
        / 2.0;
    let y_end = report
        .strategies
        .iter()
        .map(|r| r.sold as f64)
        .fold(stock, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1100, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Flash sale: units sold over time (stock {}, {} buyers, {} processes x {} tasks); \
                 vertical lines: sold out",
                report.settings.stock,
                report.settings.buyers,
                report.settings.processes,
                report.settings.tasks
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_end).log_scale(), 0f64..y_end)?;
    chart
        .configure_mesh()
        .x_desc("ms since release, log scale (by answer)")
        .y_desc("units sold")
        .draw()?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x_lo, stock), (x_end, stock)],
            BLACK.mix(0.4).stroke_width(1),
        )))?
        .label(format!("stock: {}", report.settings.stock))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (i, r) in report.strategies.iter().enumerate() {
        let colour = Palette99::pick(i);
        let mut points = vec![(x_lo, 0.0)];
        points.extend(
            r.sold_timeline
                .iter()
                .map(|&(t, n)| (t.max(x_lo), n as f64)),
        );
        let label = match r.sold_out_ms {
            Some(t) => format!(
                "{}: {} sold ({} over), sold out at {} ms",
                r.strategy.name(),
                r.sold,
                r.oversold,
                fmt_ms(t)
            ),
            None => format!("{}: nothing sold", r.strategy.name()),
        };
        let legend_colour = colour.to_rgba();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], legend_colour.stroke_width(2))
            });
        if let Some(t) = r.sold_out_ms {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, 0.0), (t, y_end)],
                colour.mix(0.6).stroke_width(1),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}
