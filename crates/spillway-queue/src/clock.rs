//! [`Clock`]: where the embedded engine reads the time.
//!
//! Every time the engine stores (enqueued, visible at, received at) is read
//! by the async caller and handed to the writer thread with the job, never
//! read on the writer thread itself. That makes the clock injectable: tests
//! run on a paused tokio runtime (`tokio::time::pause`, as mini-redis does)
//! and drive visibility timeouts, delays and expiry with `advance` or with
//! sleeps that take no real time, instead of racing a 1 s timeout on a loaded
//! machine.

use std::time::{SystemTime, UNIX_EPOCH};

/// The source of "now", in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    System,
    Tokio { anchor_ms: i64, anchor: tokio::time::Instant },
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The wall clock. What every real deployment uses: a consumer in another
    /// process reads the same file, so times must agree across processes.
    pub fn system() -> Self {
        Self { kind: Kind::System }
    }

    /// Tokio's clock, anchored at the wall clock when this is called. Under
    /// `tokio::time::pause` it moves only when the test advances it, and the
    /// engine then waits for its writer thread in a way that keeps tokio
    /// from auto-advancing meanwhile. For tests.
    pub fn tokio() -> Self {
        Self { kind: Kind::Tokio { anchor_ms: system_ms(), anchor: tokio::time::Instant::now() } }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self.kind {
            Kind::System => system_ms(),
            Kind::Tokio { anchor_ms, anchor } => {
                let since = anchor.elapsed().as_millis();
                anchor_ms.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
            }
        }
    }

    /// Whether time is tokio's (possibly paused) clock.
    pub(crate) fn is_tokio(&self) -> bool {
        matches!(self.kind, Kind::Tokio { .. })
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A time from milliseconds since the Unix epoch, as brokers report it; the
/// epoch itself for a value out of range.
#[cfg(any(feature = "rabbitmq", feature = "sqs", feature = "kafka"))]
pub(crate) fn ms_time(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Clock;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_when_time_is_advanced() {
        let c = Clock::tokio();
        let t0 = c.now_ms();
        assert_eq!(c.now_ms(), t0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_ms(), t0 + 1500);
    }
}
