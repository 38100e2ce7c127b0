//! Retry delays: exponential, capped, with jitter. Pure functions, so the
//! schedule is unit-tested without a broker or a clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Each retry waits twice as long as the one before.
pub const GROWTH: u32 = 2;
/// Exponents above this would only overflow; the cap is reached long before.
const MAX_EXPONENT: u32 = 30;

/// An exponential schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The delay after the first failure.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No delay is longer.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Each delay is spread by ± this fraction (0.0 to 1.0), so retries of
    /// many messages that failed together do not come back together.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), max: Duration::from_secs(300), jitter: 0.2 }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry),
    /// without jitter: `base × 2^(attempt-1)`, at most `max`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(MAX_EXPONENT);
        self.base.saturating_mul(GROWTH.saturating_pow(exp)).min(self.max)
    }

    /// The delay with jitter; `unit` is a random number in `[0, 1)`. Never
    /// panics, whatever the values (a NaN jitter counts as none): the config
    /// check refuses such values, but a panic here would kill a worker.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let jitter = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.5 };
        let factor = 1.0 - jitter + 2.0 * jitter * unit;
        let nominal = self.nominal(attempt);
        Duration::try_from_secs_f64(nominal.as_secs_f64() * factor).unwrap_or(nominal).min(self.max)
    }

    /// Checks the values; the error names the key under `prefix`.
    pub fn check(&self, prefix: &str) -> Result<(), crate::config::ConfigError> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(crate::config::ConfigError::new(
                format!("{prefix}.jitter"),
                "must be a number from 0.0 to 1.0",
            ));
        }
        if self.base > self.max {
            return Err(crate::config::ConfigError::new(format!("{prefix}.base"), "must not exceed max"));
        }
        Ok(())
    }

    /// The delay with jitter from the thread's random generator.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_and_stops_at_max() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1), jitter: 0.0 };
        let got: Vec<_> = (1..=6).map(|n| b.nominal(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn extreme_values_never_panic() {
        for jitter in [f64::NAN, f64::INFINITY, -1.0, 2.0] {
            let b = Backoff { base: Duration::MAX, max: Duration::MAX, jitter };
            for unit in [0.0, 0.999, f64::NAN] {
                let _ = b.delay(u32::MAX, unit);
            }
            assert!(b.check("consumer.retry").expect_err("refused").key.ends_with("jitter"));
        }
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff { base: Duration::from_secs(10), max: Duration::from_secs(100), jitter: 0.2 };
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(8));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(10));
        assert!(b.delay(1, 0.999_999) <= Duration::from_secs(12));
        assert!(b.delay(10, 1.0) <= b.max, "jitter never exceeds the cap");
    }
}
