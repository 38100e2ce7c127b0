//! What the run saw, second by second and overall: HDR histograms of
//! latency (hdrhistogram), accepted answers, status codes, the ids of the
//! 2xx answers.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::Outcome;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3
/// significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, 600_000_000)
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of the run (by answer time).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Second {
    pub(crate) t: u64,
    pub(crate) accepted: u64,
    /// Answers by status; `error` for transport errors and timeouts.
    pub(crate) statuses: BTreeMap<String, u64>,
    pub(crate) latency: Latency,
}

/// Collects outcomes as they come.
pub(crate) struct Recorder {
    all: Histogram<u64>,
    seconds: Vec<(Histogram<u64>, u64, BTreeMap<String, u64>)>,
    pub(crate) accepted: HashSet<String>,
    pub(crate) statuses: BTreeMap<String, u64>,
    pub(crate) sent: u64,
    /// Two 2xx answers that named the same id: the gateway's bug, not the
    /// consumer's duplicate.
    pub(crate) repeated_ids: u64,
}

fn status_key(status: Option<u16>) -> String {
    status.map_or_else(|| "error".to_owned(), |s| s.to_string())
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            all: histogram(),
            seconds: Vec::new(),
            accepted: HashSet::new(),
            statuses: BTreeMap::new(),
            sent: 0,
            repeated_ids: 0,
        }
    }

    pub(crate) fn record(&mut self, o: Outcome) {
        let latency = micros(o.done.saturating_sub(o.due));
        let _ = self.all.record(latency);
        let second = usize::try_from(o.done.as_secs()).unwrap_or(usize::MAX).min(86_400);
        while self.seconds.len() <= second {
            self.seconds.push((histogram(), 0, BTreeMap::new()));
        }
        let (h, accepted, statuses) = &mut self.seconds[second];
        let _ = h.record(latency);
        let key = status_key(o.status);
        *statuses.entry(key.clone()).or_default() += 1;
        *self.statuses.entry(key).or_default() += 1;
        self.sent += 1;
        if o.status.is_some_and(|s| (200..300).contains(&s)) {
            *accepted += 1;
            if let Some(id) = o.id {
                if !self.accepted.insert(id) {
                    self.repeated_ids += 1;
                }
            }
        }
    }

    pub(crate) fn latency(&self) -> Latency {
        Latency::of(&self.all)
    }

    pub(crate) fn accepted_count(&self) -> u64 {
        self.seconds.iter().map(|(_, a, _)| a).sum()
    }

    pub(crate) fn timeline(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, (h, accepted, statuses))| Second {
                t: t as u64,
                accepted: *accepted,
                statuses: statuses.clone(),
                latency: Latency::of(h),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(due_ms: u64, done_ms: u64, status: Option<u16>, id: Option<&str>) -> Outcome {
        Outcome {
            due: Duration::from_millis(due_ms),
            done: Duration::from_millis(done_ms),
            status,
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn latency_counts_from_the_due_time_and_seconds_by_answer() {
        let mut r = Recorder::new();
        r.record(outcome(0, 10, Some(202), Some("a")));
        r.record(outcome(100, 2100, Some(202), Some("b")));
        r.record(outcome(200, 300, Some(503), None));
        r.record(outcome(300, 1300, None, None));
        assert_eq!(r.sent, 4);
        assert_eq!(r.accepted_count(), 2);
        assert_eq!(r.accepted.len(), 2);
        assert_eq!(r.statuses.get("503"), Some(&1));
        assert_eq!(r.statuses.get("error"), Some(&1));
        let t = r.timeline();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].accepted, 1);
        assert_eq!(t[2].accepted, 1);
        assert!((r.latency().max_ms - 2000.0).abs() < 2.0, "{:?}", r.latency());
    }
}
