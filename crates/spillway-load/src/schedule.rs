//! When each request is due: the open-loop schedule.
//!
//! Open loop means the schedule, not the server, decides when a request is
//! sent: a stalled server does not slow the senders down, and each
//! request's latency is measured from the time it was *due*, so a stall
//! shows in the percentiles instead of hiding in fewer samples
//! (coordinated omission).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the request rate develops over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Schedule {
    /// `rate` requests per second for `duration`.
    Constant {
        rate: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Each rate in turn, each for `step`.
    Steps {
        rates: Vec<f64>,
        #[serde(with = "humantime_serde")]
        step: Duration,
    },
    /// From `from` to `to` requests per second, linearly over `duration`.
    Ramp {
        from: f64,
        to: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

impl Schedule {
    /// How long the schedule runs.
    pub(crate) fn duration(&self) -> Duration {
        match self {
            Self::Constant { duration, .. } | Self::Ramp { duration, .. } => *duration,
            Self::Steps { rates, step } => {
                step.saturating_mul(u32::try_from(rates.len()).unwrap_or(u32::MAX))
            }
        }
    }

    /// Why the schedule cannot run, if it cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        match self {
            Self::Constant { rate, .. } if !rate_ok(*rate) => Err(format!("rate {rate} is not a rate")),
            Self::Steps { rates, .. } if rates.is_empty() => Err("steps need at least one rate".into()),
            Self::Steps { rates, .. } if !rates.iter().all(|r| rate_ok(*r)) => {
                Err(format!("rates {rates:?} hold a value that is not a rate"))
            }
            Self::Ramp { from, to, .. } if !rate_ok(*from) || !rate_ok(*to) => {
                Err(format!("ramp {from}..{to} holds a value that is not a rate"))
            }
            _ => Ok(()),
        }
    }

    /// Every request's due time, as an offset from the start, in order.
    pub(crate) fn due_times(&self) -> Box<dyn Iterator<Item = Duration> + Send> {
        match self.clone() {
            Self::Constant { rate, duration } => Box::new(evenly(Duration::ZERO, rate, duration)),
            Self::Steps { rates, step } => {
                Box::new(rates.into_iter().enumerate().flat_map(move |(i, r)| {
                    evenly(step.saturating_mul(u32::try_from(i).unwrap_or(0)), r, step)
                }))
            }
            Self::Ramp { from, to, duration } => {
                // Requests due by t: N(t) = from·t + (to − from)·t² / (2·D).
                // The i-th is due where N(t) = i.
                let d = duration.as_secs_f64();
                let a = if d > 0.0 { (to - from) / (2.0 * d) } else { 0.0 };
                Box::new(
                    (0u64..)
                        .map(move |i| {
                            let i = i as f64;
                            if a.abs() < 1e-12 {
                                if from > 0.0 {
                                    i / from
                                } else {
                                    f64::INFINITY
                                }
                            } else {
                                (-from + (from * from + 4.0 * a * i).max(0.0).sqrt()) / (2.0 * a)
                            }
                        })
                        .take_while(move |t| t.is_finite() && *t < d)
                        .map(Duration::from_secs_f64),
                )
            }
        }
    }
}

/// `rate` per second, evenly spaced, from `start` for `length`.
fn evenly(start: Duration, rate: f64, length: Duration) -> impl Iterator<Item = Duration> {
    let n = if rate > 0.0 { (rate * length.as_secs_f64()).ceil() as u64 } else { 0 };
    (0..n).map(move |i| start + Duration::from_secs_f64(i as f64 / rate)).filter(move |t| *t < start + length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_in(times: &[Duration], from: f64, to: f64) -> usize {
        times.iter().filter(|t| t.as_secs_f64() >= from && t.as_secs_f64() < to).count()
    }

    #[test]
    fn constant_rate_gives_rate_times_duration_evenly_spaced() {
        let s = Schedule::Constant { rate: 100.0, duration: Duration::from_secs(3) };
        let t: Vec<_> = s.due_times().collect();
        assert_eq!(t.len(), 300);
        assert_eq!(t[0], Duration::ZERO);
        assert_eq!(t[1], Duration::from_millis(10));
        assert!(t.windows(2).all(|w| w[1] - w[0] == Duration::from_millis(10)));
        for sec in 0..3 {
            assert_eq!(count_in(&t, sec as f64, sec as f64 + 1.0), 100);
        }
    }

    #[test]
    fn steps_change_the_rate_at_each_step() {
        let s = Schedule::Steps { rates: vec![10.0, 50.0, 0.0, 20.0], step: Duration::from_secs(2) };
        let t: Vec<_> = s.due_times().collect();
        assert_eq!(count_in(&t, 0.0, 2.0), 20);
        assert_eq!(count_in(&t, 2.0, 4.0), 100);
        assert_eq!(count_in(&t, 4.0, 6.0), 0);
        assert_eq!(count_in(&t, 6.0, 8.0), 40);
        assert_eq!(t.len(), 160);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "in order");
        assert_eq!(s.duration(), Duration::from_secs(8));
    }

    #[test]
    fn a_ramp_grows_linearly() {
        let s = Schedule::Ramp { from: 0.0, to: 100.0, duration: Duration::from_secs(10) };
        let t: Vec<_> = s.due_times().collect();
        // ∫ rate = 100 · 10 / 2 = 500 requests; each second ~10 more than the last.
        assert!((499..=501).contains(&t.len()), "{}", t.len());
        for sec in 0..10 {
            let n = count_in(&t, sec as f64, sec as f64 + 1.0) as f64;
            let expected = 10.0 * sec as f64 + 5.0;
            assert!((n - expected).abs() <= 1.0, "second {sec}: {n} requests, expected {expected}");
        }
        let flat = Schedule::Ramp { from: 20.0, to: 20.0, duration: Duration::from_secs(2) };
        assert_eq!(flat.due_times().count(), 40);
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(Schedule::Constant { rate: f64::NAN, duration: Duration::from_secs(1) }.check().is_err());
        assert!(Schedule::Steps { rates: vec![], step: Duration::from_secs(1) }.check().is_err());
        assert!(Schedule::Ramp { from: -1.0, to: 5.0, duration: Duration::from_secs(1) }.check().is_err());
        assert!(Schedule::Constant { rate: 0.0, duration: Duration::from_secs(1) }.check().is_ok());
    }
}
