//! The queues behind one Spillway queue, and their arguments.
//!
//! For a queue `q`, all durable **quorum** queues:
//!
//! | queue | what it holds | arguments |
//! |---|---|---|
//! | `q` | the messages | `x-delivery-limit` (the backstop), dead-letters to `q.dlq` at least once |
//! | `q.dlq` | dead letters, with their metadata in headers | none |
//! | `q.retry.<ms>` | messages waiting `<ms>` before they go back to `q` | `x-message-ttl = <ms>`, dead-letters to `q` at least once |
//!
//! Why retry tiers: a per-message `expiration` only expires at the head of a
//! queue, so a 500 ms retry waits behind a 5 s one. A tier holds one TTL
//! only, so its head always expires first. A delay is rounded **up** to the
//! next tier, so a message is never hidden for less than asked; delays past
//! the last tier wait for the last tier ([`MAX_DELAY`]).

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Retry tiers, in milliseconds.
pub(crate) const TIERS_MS: [u64; 14] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

/// The longest delay a retry or a delayed send can have here.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

pub(crate) fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}

pub(crate) fn tier_queue(queue: &str, tier_ms: u64) -> String {
    format!("{queue}.retry.{tier_ms}")
}

/// The queue a message with `delay` goes to: the source, or the smallest tier
/// at least as long as the delay.
pub(crate) fn route_for(queue: &str, delay: Duration) -> String {
    crate::spec::tier_for(&TIERS_MS, delay).map_or_else(|| queue.to_owned(), |t| tier_queue(queue, t))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(ShortString::from("x-queue-type"), text("quorum"));
    t
}

/// Dead-letters to `target` through the default exchange, at least once:
/// the broker keeps a dead letter until the target queue confirmed it.
fn dead_letters_to(t: &mut FieldTable, target: &str) {
    t.insert(ShortString::from("x-dead-letter-exchange"), text(""));
    t.insert(ShortString::from("x-dead-letter-routing-key"), text(target));
    t.insert(ShortString::from("x-dead-letter-strategy"), text("at-least-once"));
    t.insert(ShortString::from("x-overflow"), text("reject-publish"));
}

/// The source queue. `x-delivery-limit` is one more than
/// `max_receive_count`: Spillway dead-letters by its own count (with
/// metadata) on the receive after the last allowed one; the broker's limit
/// only catches a message whose consumers kept crashing before Spillway
/// could see it (the broker dead-letters on delivery N+1).
pub(crate) fn source_args(queue: &str, max_receive_count: u32) -> FieldTable {
    let mut t = quorum();
    t.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(i64::from(max_receive_count) + 1));
    dead_letters_to(&mut t, &dlq(queue));
    t
}

pub(crate) fn dlq_args() -> FieldTable {
    quorum()
}

pub(crate) fn tier_args(queue: &str, tier_ms: u64) -> FieldTable {
    let mut t = quorum();
    t.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(i64::try_from(tier_ms).unwrap_or(i64::MAX)),
    );
    dead_letters_to(&mut t, queue);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_is_rounded_up_to_a_tier_and_capped() {
        assert_eq!(route_for("q", Duration::ZERO), "q");
        assert_eq!(route_for("q", Duration::from_millis(1)), "q.retry.100");
        assert_eq!(route_for("q", Duration::from_millis(800)), "q.retry.1000");
        assert_eq!(route_for("q", Duration::from_secs(1)), "q.retry.1000");
        assert_eq!(route_for("q", Duration::from_secs(60 * 60 * 24)), "q.retry.3600000");
    }
}
