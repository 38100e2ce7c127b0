//! The topics behind one Spillway queue, and where a retry goes.
//!
//! For a queue `q`:
//!
//! | topic | what it holds | partitions |
//! |---|---|---|
//! | `q` | the messages | `partitions` |
//! | `q.retry.<ms>` | retries and delayed sends due in about `<ms>` | `partitions` |
//! | `q.dlq` | dead letters, with their metadata in headers | 1 (oldest first) |
//!
//! Why retry tiers: a log delivers in order, so a record that is not due
//! yet holds back every record behind it in its partition. A tier takes one
//! delay only, so the records of a partition of a tier fall due in the
//! order they were written, and its head is always the first due: no retry
//! waits behind a longer one, and retries never hold back the source
//! topic. A delay is rounded **up** to the next tier (never hidden for less
//! than asked); delays past the last tier wait for the last tier
//! ([`MAX_DELAY`]).

use std::time::Duration;

use crate::QueueError;

/// Retry tiers, in milliseconds: fewer than on RabbitMQ, because each is a
/// topic with partitions that every member fetches from.
pub(crate) const TIERS_MS: [u64; 10] =
    [250, 1_000, 2_000, 5_000, 15_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000];

/// The longest delay a retry or a delayed send can have here.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

pub(crate) fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}

pub(crate) fn tier(queue: &str, tier_ms: u64) -> String {
    format!("{queue}.retry.{tier_ms}")
}

/// The topics a member of the queue's group reads: the source and the tiers.
pub(crate) fn consumed(queue: &str) -> Vec<String> {
    std::iter::once(queue.to_owned()).chain(TIERS_MS.iter().map(|t| tier(queue, *t))).collect()
}

/// Every topic of the queue.
pub(crate) fn all(queue: &str) -> Vec<String> {
    let mut t = consumed(queue);
    t.push(dlq(queue));
    t
}

/// The topic a message with `delay` goes to: the source, or the smallest
/// tier at least as long as the delay.
pub(crate) fn route_for(queue: &str, delay: Duration) -> String {
    crate::spec::tier_for(&TIERS_MS, delay).map_or_else(|| queue.to_owned(), |t| tier(queue, t))
}

/// Kafka topic names: ASCII letters, digits, `.`, `_`, `-`, and short
/// enough to leave room for the tier suffix.
pub(crate) fn check_name(queue: &str) -> Result<(), QueueError> {
    let longest = tier(queue, TIERS_MS[TIERS_MS.len() - 1]);
    if queue.is_empty()
        || longest.len() > 249
        || !queue.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(QueueError::Invalid(format!(
            "queue name {queue:?}: Kafka topics take ASCII letters, digits, `.`, `_` and `-`, \
             at most {} characters here",
            249 - (longest.len() - queue.len())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_rounds_up_to_its_tier() {
        assert_eq!(route_for("q", Duration::ZERO), "q");
        assert_eq!(route_for("q", Duration::from_millis(1)), "q.retry.250");
        assert_eq!(route_for("q", Duration::from_millis(800)), "q.retry.1000");
        assert_eq!(route_for("q", Duration::from_millis(1000)), "q.retry.1000");
        assert_eq!(route_for("q", Duration::from_secs(7200)), "q.retry.3600000");
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(check_name("orders-v1.events_x").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(240)).is_err());
    }
}
