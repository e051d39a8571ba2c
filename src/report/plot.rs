//! `NAME_results.svg`: throughput against latency, one point per cell for p50 and one for p99,
//! labelled with the cell's number in the table.

use plotters::prelude::*;

use super::results::{Results, MIN_SAMPLES_P99};

/// Renders the plot as an SVG document.
pub fn svg(results: &Results) -> Result<String, String> {
    // (cell number, QPS, p50, p99 when enough requests were measured for it)
    let points: Vec<(usize, f64, f64, Option<f64>)> = results
        .cells
        .iter()
        .enumerate()
        .filter(|(_, c)| c.row.requests > 0)
        .map(|(i, c)| {
            let p99 = (c.row.requests >= MIN_SAMPLES_P99).then_some(c.row.latency_ms.p99);
            (i + 1, c.row.qps, c.row.latency_ms.p50, p99)
        })
        .collect();
    let xmax = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let ymax = points
        .iter()
        .map(|p| p.3.unwrap_or(p.2).max(p.2))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!("{}: throughput vs latency", results.provenance.name);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("throughput (pairs/s)")
            .y_desc("latency (ms)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, color, p99) in [("p50", BLUE, false), ("p99", RED, true)] {
            let series = points
                .iter()
                .filter_map(move |p| if p99 { p.3 } else { Some(p.2) }.map(|y| (p.1, y)))
                .map(move |xy| Circle::new(xy, 5, color.filled()));
            chart
                .draw_series(series)
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        }
        chart
            .draw_series(points.iter().map(|p| {
                let y = p.3.unwrap_or(p.2);
                Text::new(format!("{}", p.0), (p.1, y), ("sans-serif", 13).into_font())
            }))
            .map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
