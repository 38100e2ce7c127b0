//! The consumer's settings, and the sink's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// The shortest visibility timeout a consumer works with: the keeper extends
/// held messages every third of it, and must get each extend in on time.
pub const MIN_VISIBILITY: Duration = Duration::from_secs(1);

/// A consumer setting that cannot work, with its key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// How the runtime drains a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The queue to drain.
    pub queue: String,
    /// Workers; each receives a batch and delivers it message by message.
    pub concurrency: usize,
    /// Most messages per receive. Unset: [`BATCHED_SINK_BATCH`] for a sink
    /// that takes a batch in one call (PostgreSQL, stdout) and
    /// [`ONE_BY_ONE_BATCH`] for one that delivers one by one (HTTP). Why not
    /// always the larger: a consumer that crashes counts a receive against
    /// every message its workers hold, so a worker holds no more at once
    /// than its sink tries at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Long-poll wait of one receive.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Delay before a failed message is retried, by its receive count.
    pub retry: Backoff,
    /// Delay between probes while the circuit is open.
    pub probe: Backoff,
    /// `Transient` sink answers in a row that open the circuit.
    pub circuit_threshold: u32,
    /// One sink call that takes longer counts as `Down`.
    #[serde(with = "humantime_serde")]
    pub sink_timeout: Duration,
    pub sink: SinkConfig,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            queue: "ingest".to_owned(),
            concurrency: 4,
            batch_size: None,
            wait: Duration::from_secs(5),
            retry: Backoff::default(),
            probe: Backoff { base: Duration::from_secs(1), max: Duration::from_secs(30), jitter: 0.2 },
            circuit_threshold: 5,
            sink_timeout: Duration::from_secs(30),
            sink: SinkConfig::default(),
        }
    }
}

/// The default `batch_size` for a sink that takes a batch in one call: at
/// 4 workers it drained 3.1× what 10 did (docs/benchmarks.md), more than
/// the embedded gateway accepts on the same machine.
pub const BATCHED_SINK_BATCH: usize = 100;
/// The default `batch_size` for a sink that delivers one by one.
pub const ONE_BY_ONE_BATCH: usize = 10;

impl ConsumerConfig {
    /// `batch_size`, or its default for a sink that does (or does not) take
    /// a batch in one call.
    pub fn batch_size_for(&self, sink_batches: bool) -> usize {
        self.batch_size.unwrap_or(if sink_batches { BATCHED_SINK_BATCH } else { ONE_BY_ONE_BATCH }).max(1)
    }

    /// Checks every value but the sink's (see [`crate::sink::check`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("concurrency", self.concurrency as u64),
            ("batch_size", self.batch_size.map_or(1, |b| b as u64)),
            ("circuit_threshold", u64::from(self.circuit_threshold)),
        ];
        for (key, n) in positive {
            if n == 0 {
                return Err(ConfigError::new(format!("consumer.{key}"), "must be at least 1"));
            }
        }
        if self.concurrency > 4096 {
            return Err(ConfigError::new("consumer.concurrency", "must be at most 4096"));
        }
        for (key, d) in
            [("wait", self.wait), ("sink_timeout", self.sink_timeout), ("probe.base", self.probe.base)]
        {
            if d.is_zero() {
                return Err(ConfigError::new(format!("consumer.{key}"), "must be more than 0"));
            }
        }
        self.retry.check("consumer.retry")?;
        self.probe.check("consumer.probe")
    }
}

/// What `http` does with a 4xx other than 408 and 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On4xx {
    /// Retry with backoff; the DLQ after `max_receive_count`.
    #[default]
    Retry,
    /// To the DLQ at once: the endpoint will never take this message.
    DeadLetter,
}

/// Where messages go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// One JSON line per message on standard output.
    #[default]
    Stdout,
    /// POST each message to a URL.
    Http {
        /// Required where a consumer runs; see [`SinkConfig::url`].
        #[serde(default)]
        url: String,
        #[serde(default)]
        on_4xx: On4xx,
        /// Extra request headers (an `authorization` value is masked in `config check`).
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    },
    /// INSERT each message into a table, `ON CONFLICT (id) DO NOTHING`.
    Postgres {
        /// `postgres://user:password@host/db`. Required where a consumer
        /// runs; see [`SinkConfig::url`].
        #[serde(default)]
        url: String,
        /// `events` or `schema.events`.
        #[serde(default = "default_table")]
        table: String,
        /// Create the table if it is missing.
        #[serde(default = "default_true")]
        create_table: bool,
        /// A statement waiting for a lock longer than this fails as `Down`.
        #[serde(default = "default_lock_timeout", with = "humantime_serde")]
        lock_timeout: Duration,
    },
}

impl SinkConfig {
    /// The sink's URL, if it has one and it is set. It may be left unset
    /// where no consumer runs: the URL is often the consumer's secret
    /// alone, which the gateway's pods do not get. A consumer refuses to
    /// start without it ([`crate::check_sink`]).
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Stdout => None,
            Self::Http { url, .. } | Self::Postgres { url, .. } => {
                Some(url.as_str()).filter(|u| !u.is_empty())
            }
        }
    }
}

fn default_table() -> String {
    "spillway_events".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unset, a worker receives as many as its sink takes in one call: 100
    /// for a batching sink, 10 for one that delivers one by one. Set, it
    /// is what was set; 0 is refused by name.
    #[test]
    fn batch_size_follows_the_sink_unless_set() {
        let unset = ConsumerConfig::default();
        assert_eq!(unset.batch_size_for(true), BATCHED_SINK_BATCH);
        assert_eq!(unset.batch_size_for(false), ONE_BY_ONE_BATCH);
        let set = ConsumerConfig { batch_size: Some(7), ..ConsumerConfig::default() };
        assert_eq!((set.batch_size_for(true), set.batch_size_for(false)), (7, 7));
        let zero = ConsumerConfig { batch_size: Some(0), ..ConsumerConfig::default() };
        assert_eq!(zero.check().expect_err("0 is refused").key, "consumer.batch_size");
    }
}
