//! The forwarder: drains one queue's spool into the broker.
//!
//! Each round receives a batch from the spool, sends it to the broker, and
//! only then deletes (acks) what the broker confirmed: a crash between the
//! two sends those messages again (a duplicate, never a loss; the message
//! keeps its id, which SQS FIFO dedups on). What the broker did not take
//! is released back into the spool uncounted, and the forwarder waits
//! before the next round, doubling the wait up to [`MAX_BACKOFF`] while the
//! broker keeps refusing. A message the broker refuses for good (its
//! content: SQS `InvalidMessageContents`, say) is moved to the spool's own
//! dead-letter queue with the reason, logged and counted: it was accepted
//! with a 2xx and is kept, not dropped.
//!
//! [`WORKERS`] rounds run at once, so the broker's confirm latency is
//! paid once per several batches, not per batch. The spool hands out only
//! the oldest message of each ordering key, and not the next one while it
//! is held, so a keyed message is sent only after the one before it was
//! confirmed, whichever worker holds it.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{gate::Gate, DEDUP_ATTRIBUTE};
use crate::{
    embedded::EmbeddedBackend, Admin as _, Consumer, Delivery, OutgoingMessage, Producer, QueueError,
};

/// Messages forwarded to the broker (confirmed, then deleted from the
/// spool), by queue.
pub const FORWARDED: &str = "spillway_spool_forwarded_total";
/// Forward attempts the broker refused, by queue and error kind.
pub const FORWARD_ERRORS: &str = "spillway_spool_forward_errors_total";
/// Messages the broker refused for good, kept in the spool's DLQ.
pub const DEAD: &str = "spillway_spool_dead_lettered_total";
/// The age of the oldest message in the spool (0 when empty), by queue.
pub const OLDEST: &str = "spillway_spool_oldest_age_seconds";

/// How often the oldest message's age is read.
const AGE_EVERY: Duration = Duration::from_secs(1);

/// Messages per round: one broker batch.
const BATCH: usize = 100;
/// Rounds at once. One round at a time forwarded about 2,700 msg/s into
/// RabbitMQ (docs/benchmarks.md, the spool drill), barely above a 2,000/s
/// load; the round's time is mostly waiting for the broker's confirm.
pub(crate) const WORKERS: usize = 4;
/// How long a round waits for the spool when it is empty.
const WAIT: Duration = Duration::from_millis(500);
/// The first wait after a refused round, and the most.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Forwards until `stop` with [`WORKERS`] workers, then gives back what
/// they hold.
pub(crate) async fn run(
    gate: Arc<Gate>,
    local: EmbeddedBackend,
    spool: Arc<dyn Consumer>,
    broker: Arc<dyn Producer>,
    stop: CancellationToken,
) {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        workers.spawn(work(gate.clone(), spool.clone(), broker.clone(), stop.clone()));
    }
    while !stop.is_cancelled() {
        if let Ok(age) = local.age(gate.queue()).await {
            let secs = age.oldest.unwrap_or_default().as_secs_f64();
            metrics::gauge!(OLDEST, "queue" => gate.queue().to_owned()).set(secs);
        }
        pause(&stop, AGE_EVERY).await;
    }
    while workers.join_next().await.is_some() {}
    if let Err(e) = spool.close().await {
        tracing::warn!(queue = gate.queue(), error = %e, "spool: could not give back what the forwarder held");
    }
}

/// One worker: a round after another, waiting after a refused one.
async fn work(gate: Arc<Gate>, spool: Arc<dyn Consumer>, broker: Arc<dyn Producer>, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    while !stop.is_cancelled() {
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = spool.receive(BATCH, WAIT) => r,
        };
        let deliveries = match received {
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                tracing::error!(queue = gate.queue(), error = %e, "spool: cannot read the spool");
                pause(&stop, MAX_BACKOFF).await;
                continue;
            }
        };
        let refused = round(&gate, spool.as_ref(), broker.as_ref(), deliveries).await;
        if refused {
            pause(&stop, backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = MIN_BACKOFF;
        }
    }
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// One round: send, then delete what was confirmed. Returns whether the
/// broker refused anything (the caller then waits).
async fn round(gate: &Gate, spool: &dyn Consumer, broker: &dyn Producer, deliveries: Vec<Delivery>) -> bool {
    let queue = gate.queue().to_owned();
    let msgs: Vec<OutgoingMessage> = deliveries.iter().map(outgoing).collect();
    let outcomes = match broker.send_batch(msgs).await {
        Ok(o) if o.len() == deliveries.len() => o,
        Ok(o) => {
            let e = QueueError::unavailable_msg(format!(
                "broker answered {} outcomes for {}",
                o.len(),
                deliveries.len()
            ));
            deliveries.iter().map(|_| Err(e.clone())).collect()
        }
        Err(e) => deliveries.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut confirmed = Vec::new();
    let mut refused = false;
    let mut dead = Vec::new();
    for (d, outcome) in deliveries.iter().zip(outcomes) {
        match outcome {
            Ok(()) => confirmed.push(d.clone()),
            Err(e) if super::spoolable(&e) => {
                if !refused {
                    tracing::debug!(queue, error = %e, "spool: the broker refused a forward; trying again");
                }
                metrics::counter!(FORWARD_ERRORS, "queue" => queue.clone(), "kind" => e.kind()).increment(1);
                refused = true;
                if let Err(e) = spool.release(d, Duration::ZERO).await {
                    tracing::warn!(queue, error = %e, "spool: release failed; the message comes back after the visibility timeout");
                }
            }
            Err(e) => {
                let reason = format!("the broker refused it for good: {e}");
                tracing::error!(queue, id = %d.message.id, %reason, "spool: message kept in the spool's dead-letter queue");
                metrics::counter!(DEAD, "queue" => queue.clone()).increment(1);
                match spool.dead_letter(d, &reason).await {
                    Ok(()) => dead.push(d.clone()),
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "spool: could not dead-letter; it comes back")
                    }
                }
            }
        }
    }
    // Confirmed by the broker: only now out of the spool.
    if !confirmed.is_empty() {
        gate.broker_took();
        match spool.ack_batch(&confirmed).await {
            Ok(()) => {
                metrics::counter!(FORWARDED, "queue" => queue.clone()).increment(confirmed.len() as u64);
                gate.settled(&confirmed);
            }
            // They come back and are sent again: duplicates, not losses.
            Err(e) => {
                tracing::warn!(queue, error = %e, "spool: could not delete forwarded messages; they are sent again")
            }
        }
    }
    if !dead.is_empty() {
        gate.settled(&dead);
    }
    refused
}

/// A spooled message as it goes to the broker: its id, body, attributes
/// and ordering key, its dedup key given back. Any delay passed in the
/// spool already (a delayed message is not received before it is due).
fn outgoing(d: &Delivery) -> OutgoingMessage {
    let mut attributes = d.message.attributes.clone();
    let dedup_key = attributes.remove(DEDUP_ATTRIBUTE);
    OutgoingMessage {
        id: d.message.id.clone(),
        body: d.message.body.clone(),
        attributes,
        ordering_key: d.message.ordering_key.clone(),
        dedup_key,
        delay: Duration::ZERO,
    }
}
