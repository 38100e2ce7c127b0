//! A queue, its dead-letter queue and its limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default of the setup Spillway replaces: SQS `maxReceiveCount = 5`.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;
/// SQS's default visibility timeout.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQS's classic limit. Kept as the default so a config moves between backends.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// When a message goes to the dead-letter queue, and how long a receive hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterPolicy {
    /// After this many failed receives the message is dead-lettered: a nack of
    /// the `max_receive_count`-th receive moves it, and so does the next receive
    /// of a message whose `max_receive_count`-th receive timed out.
    pub max_receive_count: u32,
    /// How long a received message stays hidden before it is delivered again.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        Self { max_receive_count: DEFAULT_MAX_RECEIVE_COUNT, visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT }
    }
}

/// Everything a backend needs to create a queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub name: String,
    #[serde(default)]
    pub dead_letter: DeadLetterPolicy,
    /// Larger messages are refused with `QueueError::TooLarge` before any I/O.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

impl QueueSpec {
    /// A queue with the default policy and limits.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dead_letter: DeadLetterPolicy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The policies of the queues a broker backend ensured in this process: a
/// broker keeps no Spillway policy of its own, so producers and consumers
/// read it here (the defaults for a queue this process did not ensure).
#[cfg(any(feature = "rabbitmq", feature = "sqs", feature = "kafka"))]
#[derive(Debug, Default)]
pub(crate) struct Specs(std::sync::Mutex<std::collections::HashMap<String, QueueSpec>>);

#[cfg(any(feature = "rabbitmq", feature = "sqs", feature = "kafka"))]
impl Specs {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, QueueSpec>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queue's policy as ensured, or the defaults.
    pub(crate) fn get(&self, queue: &str) -> QueueSpec {
        self.map().get(queue).cloned().unwrap_or_else(|| QueueSpec::new(queue))
    }

    pub(crate) fn insert(&self, spec: &QueueSpec) {
        self.map().insert(spec.name.clone(), spec.clone());
    }

    /// The names of every queue ensured.
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
}

/// The retry tier a delay goes to: the smallest of `tiers_ms` at least as
/// long as the delay (never hidden for less than asked), the last one for
/// longer delays; `None` for no delay. Shared by the broker backends that
/// build delays from fixed-delay tiers (RabbitMQ queues, Kafka topics).
#[cfg(any(feature = "rabbitmq", feature = "kafka"))]
pub(crate) fn tier_for(tiers_ms: &[u64], delay: Duration) -> Option<u64> {
    if delay.is_zero() {
        return None;
    }
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    tiers_ms.iter().copied().find(|&t| t >= ms).or_else(|| tiers_ms.last().copied())
}
