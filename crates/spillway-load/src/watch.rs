//! A drill's `[watch]`: named metrics read from a process's Prometheus
//! `/metrics` every second, from the start of the load until verification
//! ends, so the report can say what the load's answers cannot (how big the
//! gateway's spool grew, and when it was empty again).
//!
//! A scrape that fails (the process being killed and started again) is a
//! gap in the series, not an error: the drill goes on.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch as signal, time::Instant};

/// `[watch]` of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchSpec {
    /// The Prometheus text endpoint (`http://127.0.0.1:18181/metrics`).
    pub(crate) url: String,
    /// Metric names; each sample is the sum over the metric's label sets.
    pub(crate) metrics: Vec<String>,
    #[serde(default = "default_every", with = "humantime_serde")]
    pub(crate) every: Duration,
}

fn default_every() -> Duration {
    Duration::from_secs(1)
}

/// Samples by metric: `(seconds from the load's start, value)`.
pub(crate) type Watched = BTreeMap<String, Vec<(f64, f64)>>;

/// What a watched metric did, for the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Summary {
    pub(crate) peak: f64,
    pub(crate) peak_at: f64,
    pub(crate) last: f64,
    /// From when on the metric stayed 0 after its peak (a gauge that went
    /// back to empty), if it did.
    pub(crate) zero_from: Option<f64>,
}

/// Scrapes `spec` every `spec.every` from `start` until `stop` turns true.
pub(crate) async fn run(spec: WatchSpec, start: Instant, mut stop: signal::Receiver<bool>) -> Watched {
    let http = match reqwest::Client::builder().timeout(Duration::from_millis(800)).build() {
        Ok(c) => c,
        Err(_) => return Watched::new(),
    };
    let mut out: Watched = spec.metrics.iter().map(|m| (m.clone(), Vec::new())).collect();
    let mut tick = tokio::time::interval(spec.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let t = start.elapsed().as_secs_f64();
        let Ok(r) = http.get(&spec.url).send().await else { continue };
        let Ok(text) = r.text().await else { continue };
        for (name, samples) in &mut out {
            if let Some(v) = sum(&text, name) {
                samples.push((t, v));
            }
        }
    }
    out
}

/// The sum of `name` over its label sets in Prometheus text, or `None`
/// where the text has no sample of it.
pub(crate) fn sum(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // another metric that starts with this name
        }
        let value = rest.rsplit_once('}').map_or(rest, |(_, v)| v).split_whitespace().next();
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Peak, last value, and when the series was 0 again for good after it.
pub(crate) fn summarize(samples: &[(f64, f64)]) -> Option<Summary> {
    let (peak_at, peak) =
        samples.iter().copied().fold(None, |best: Option<(f64, f64)>, (t, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((t, v)),
        })?;
    let last = samples.last().map_or(0.0, |s| s.1);
    let zero_from = if last == 0.0 && peak > 0.0 {
        samples.iter().rev().take_while(|s| s.1 == 0.0).last().map(|s| s.0)
    } else {
        None
    };
    Some(Summary { peak, peak_at, last, zero_from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_label_sets_and_skips_longer_names() {
        let text = "# TYPE spillway_spool_messages gauge\n\
                    spillway_spool_messages{queue=\"a\"} 3\n\
                    spillway_spool_messages{queue=\"b\"} 4.5\n\
                    spillway_spool_messages_total 100\n\
                    spillway_up 1\n";
        assert_eq!(sum(text, "spillway_spool_messages"), Some(7.5));
        assert_eq!(sum(text, "spillway_up"), Some(1.0));
        assert_eq!(sum(text, "spillway_missing"), None);
    }

    #[test]
    fn a_gauge_back_at_zero_says_from_when() {
        let s = [(1.0, 0.0), (2.0, 5.0), (3.0, 9.0), (4.0, 0.0), (5.0, 2.0), (6.0, 0.0), (7.0, 0.0)];
        let got = summarize(&s).expect("a summary");
        assert_eq!(got, Summary { peak: 9.0, peak_at: 3.0, last: 0.0, zero_from: Some(6.0) });
        let never = summarize(&[(1.0, 0.0), (2.0, 3.0)]).expect("a summary");
        assert_eq!(never.zero_from, None, "still 3 at the end");
        assert!(summarize(&[]).is_none());
    }
}
