//! Charts of a run, as SVG (plotters; SVG needs no fonts on the machine):
//! accepted throughput, latency percentiles and answers by status, over
//! time, with each injected fault marked on the time axis.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::Results;

type Series<'a> = Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>;

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: Series<'_>,
    results: &Results,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let x_last = series.iter().flat_map(|(_, _, pts)| pts.iter().map(|p| p.0)).fold(0.0_f64, f64::max);
    let x_max = (results.timeline.len() as f64).max(x_last).max(1.0);
    let y_max =
        series.iter().flat_map(|(_, _, pts)| pts.iter().map(|p| p.1)).fold(0.0_f64, f64::max).max(1.0) * 1.1;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.configure_mesh().x_desc("seconds").y_desc(y_label).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, color, pts) in series {
        c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    for f in &results.faults {
        c.draw_series(LineSeries::new(vec![(f.at, 0.0), (f.at, y_max)], RED.mix(0.6).stroke_width(1)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.draw_series(std::iter::once(Text::new(f.what.clone(), (f.at, y_max * 0.97), ("sans-serif", 11))))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes `throughput.svg`, `latency.svg` and `statuses.svg` into `dir`,
/// and `watch-<metric>.svg` for each metric a drill watched.
pub(crate) fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    let t = |s: &crate::record::Second| s.t as f64 + 0.5;
    chart(
        &dir.join("throughput.svg"),
        "accepted requests per second",
        "requests/s",
        vec![("accepted", BLUE, r.timeline.iter().map(|s| (t(s), s.accepted as f64)).collect())],
        r,
    )?;
    let lat = |f: fn(&crate::record::Latency) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().filter(|s| s.latency.count > 0).map(|s| (t(s), f(&s.latency))).collect()
    };
    chart(
        &dir.join("latency.svg"),
        "latency from the due time (ms)",
        "ms",
        vec![
            ("p50", GREEN, lat(|l| l.p50_ms)),
            ("p99", BLUE, lat(|l| l.p99_ms)),
            ("p99.9", MAGENTA, lat(|l| l.p999_ms)),
            ("max", BLACK, lat(|l| l.max_ms)),
        ],
        r,
    )?;
    let palette = [GREEN, RED, BLUE, MAGENTA, CYAN, BLACK];
    let mut keys: Vec<&String> = r.statuses.keys().collect();
    keys.sort();
    let series: Series<'_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let pts =
                r.timeline.iter().map(|s| (t(s), s.statuses.get(*k).copied().unwrap_or(0) as f64)).collect();
            (k.as_str(), palette[i % palette.len()], pts)
        })
        .collect();
    chart(&dir.join("statuses.svg"), "answers per second, by status", "answers/s", series, r)?;
    for (name, samples) in &r.watched {
        let title = format!("{name} (sum over labels), to the end of verification");
        let series = vec![(name.as_str(), BLUE, samples.clone())];
        chart(&dir.join(format!("watch-{name}.svg")), &title, name, series, r)?;
    }
    Ok(())
}
