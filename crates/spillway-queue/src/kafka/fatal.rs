//! What a fatal producer error means to the caller, and how often a failed
//! producer is replaced.
//!
//! An idempotent producer fails for good ("fatal") on an out-of-order
//! sequence or a fenced epoch, which a new producer cures, and on a
//! principal that may write no topic at all: the broker refuses its
//! `InitProducerId` with `ClusterAuthorizationFailed`, and a new producer
//! fails the same way until the operator grants Write. Replacing the
//! producer on every send would then log in and ask for a producer id once
//! per HTTP request, a load on the broker that grows with the traffic
//! refused. So a failed producer is replaced at most once per
//! [`REPLACE_EVERY`]; sends in between fail fast, each with the cause.

use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;

use crate::QueueError;

/// The least time between two replacements of a failed producer: how long
/// an ACL granted takes at most to be noticed.
pub(crate) const REPLACE_EVERY: Duration = Duration::from_secs(5);

/// When the failed producer was last replaced.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    last: Option<Instant>,
}

impl Pacing {
    /// Whether a failed producer may be replaced at `now`; if so, `now` is
    /// remembered as the last replacement. The first one is never held.
    pub(crate) fn may_replace(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < REPLACE_EVERY) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// A send refused because its producer failed for good: `Unavailable`, as
/// a new producer (or the operator) may cure it. The text carries
/// librdkafka's reason and, for a refusal of the principal, what to grant.
pub(crate) fn produce_error(topic: &str, code: RDKafkaErrorCode, reason: &str) -> QueueError {
    let hint = if is_authorization(code) {
        format!(
            "; the principal may not write: grant it Write on topic {topic} (brokers before Kafka 3.0 also \
             want IdempotentWrite on the cluster). Sends are refused until then"
        )
    } else {
        String::new()
    };
    QueueError::unavailable_msg(format!("kafka: produce to {topic}: the producer failed: {reason}{hint}"))
}

/// The codes that say "this principal may not", which only the operator
/// can change.
pub(crate) fn is_authorization(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_producer_is_replaced_at_most_once_per_period() {
        let mut p = Pacing::default();
        let t0 = Instant::now();
        assert!(p.may_replace(t0), "the first replacement is not held");
        assert!(!p.may_replace(t0 + Duration::from_millis(10)));
        assert!(!p.may_replace(t0 + REPLACE_EVERY - Duration::from_millis(1)));
        assert!(p.may_replace(t0 + REPLACE_EVERY));
        assert!(!p.may_replace(t0 + REPLACE_EVERY + Duration::from_secs(1)));
    }

    #[test]
    fn a_refused_principal_is_told_what_to_grant_and_may_retry() {
        let e = produce_error(
            "orders",
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            "Cluster authorization failed",
        );
        assert!(e.is_retryable(), "the operator's to fix, not the message's: {e}");
        let text = e.to_string();
        assert!(
            text.contains("Write on topic orders") && text.contains("Cluster authorization failed"),
            "{text}"
        );
        let e = produce_error("orders", RDKafkaErrorCode::OutOfOrderSequenceNumber, "out of order");
        assert!(e.is_retryable() && !e.to_string().contains("grant"), "{e}");
    }
}
