//! The four traits a backend implements.
//!
//! A [`Producer`] and a [`Consumer`] are bound to one queue; [`Admin`] takes
//! the queue by name. [`Backend`] hands them out. Callers hold them as
//! `Arc<dyn …>`: no crate but this one knows which broker is behind them.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{DeadLetter, Delivery, OutgoingMessage, QueueAge, QueueError, QueueSpec, QueueStats};

/// What a [`Consumer::nack`] did with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nacked {
    /// It will be delivered again after the delay.
    Retried,
    /// That was its `max_receive_count`-th failed receive: it is in the DLQ now.
    DeadLettered,
    /// The receipt no longer held the message (it was acked, or its
    /// visibility timeout passed and it was received again): nothing changed.
    Stale,
}

/// Sends messages to one queue.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Sends a batch and reports each message's outcome, in order.
    ///
    /// # Returns
    ///
    /// `Ok(outcomes)` with one entry per message. An `Ok(())` entry means the
    /// message is durable in the backend and will be delivered at least once:
    ///
    /// - **embedded**: the SQLite transaction that holds it has committed in WAL
    ///   mode with `synchronous=FULL`, so it survives `kill -9` and power loss;
    /// - **memory**: it is in the process's memory. Not durable;
    /// - **sqs**: `SendMessageBatch` answered success for that entry;
    /// - **rabbitmq**: the broker's publisher-confirm ack (and no `basic.return`), on a durable quorum queue;
    /// - **kafka**: the delivery report, with `acks=all`.
    ///
    /// A message over the queue's size limit gets `Err(TooLarge)` without any
    /// I/O, and the rest of the batch is still sent. `Err(_)` for the whole
    /// call means no message of the batch may be assumed stored.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: a dropped call may or may not have stored its
    /// messages. Callers must not answer 2xx for a message whose send they
    /// did not see return `Ok`.
    async fn send_batch(&self, msgs: Vec<OutgoingMessage>)
        -> Result<Vec<Result<(), QueueError>>, QueueError>;

    /// Sends a batch like [`Producer::send_batch`], handing each message's
    /// outcome to `report` (with its index in `msgs`) as soon as it is known,
    /// instead of all of them once the slowest is.
    ///
    /// Why: behind the gateway, a request waits for its message's outcome. A
    /// backend whose messages are confirmed one by one (Kafka's delivery
    /// reports, RabbitMQ's confirms) would otherwise hold every request of a
    /// batch until its slowest confirm, so a latency-bound broker serves
    /// fewer requests than its own client does at the same concurrency.
    ///
    /// # Contract
    ///
    /// `report` is called exactly once for every index, with the same
    /// meaning as `send_batch`'s outcomes (`Ok(())` is durable); a failure of
    /// the whole call is reported to every index it did not report yet.
    /// The default waits for `send_batch`: right for a backend whose batch is
    /// one unit (the embedded queue's commit, SQS's `SendMessageBatch`).
    ///
    /// # Cancel safety
    ///
    /// As `send_batch`: indexes not yet reported when the call is dropped
    /// may or may not be stored, and must not be answered 2xx.
    async fn send_each(
        &self,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        let n = msgs.len();
        match self.send_batch(msgs).await {
            Ok(outcomes) if outcomes.len() == n => {
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    report(i, outcome);
                }
            }
            Ok(outcomes) => {
                let e = QueueError::unavailable_msg(format!(
                    "backend answered {} outcomes for {n}",
                    outcomes.len()
                ));
                (0..n).for_each(|i| report(i, Err(e.clone())));
            }
            Err(e) => (0..n).for_each(|i| report(i, Err(e.clone()))),
        }
    }

    /// Sends one message. `Ok` means durable, as for [`Producer::send_batch`].
    ///
    /// # Cancel safety
    ///
    /// As `send_batch`: dropped, the message may or may not be stored.
    async fn send(&self, msg: OutgoingMessage) -> Result<(), QueueError> {
        let mut outcomes = self.send_batch(vec![msg]).await?;
        outcomes.pop().unwrap_or_else(|| Err(QueueError::unavailable_msg("backend returned no outcome")))
    }

    /// The largest message (body plus attributes) this queue accepts.
    fn max_message_bytes(&self) -> usize;

    /// Whether the backend confirms message by message (and overrides
    /// [`Producer::send_each`] to say so as each confirm arrives), rather
    /// than storing a batch as one unit. The gateway keeps more batches in
    /// flight for such a backend.
    fn confirms_each(&self) -> bool {
        false
    }

    /// The most batches the backend publishes at once, where it has such a
    /// bound (RabbitMQ: one confirm channel per batch, `publisher_channels`
    /// of them): the gateway keeps no more in flight, so a request waits
    /// in a fuller batch rather than in a small one queued for a channel.
    fn max_batches_in_flight(&self) -> Option<usize> {
        None
    }
}

/// Receives from one queue. At-least-once: a delivery that is not acked comes
/// back, after its nack delay, its visibility timeout or a release.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Up to `max` deliveries, waiting at most `wait` for the first one (long
    /// poll). An empty `Vec` is not an error. A message whose failed receives
    /// already reached `max_receive_count` is moved to the dead-letter queue
    /// instead of being returned.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the sense that matters for at-least-once: a receive
    /// dropped after the backend took messages for it costs them nothing
    /// once [`Consumer::close`] runs. `close` releases them uncounted
    /// (embedded, memory), so a shutdown that drops a pending receive does
    /// not walk a message toward the DLQ or hide it for a visibility timeout.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Removes the message for good. Acking twice, or with a stale receipt, is
    /// harmless and returns `Ok`.
    ///
    /// # Cancel safety
    ///
    /// A dropped ack may or may not have removed the message; if not, it is
    /// delivered again (at-least-once).
    async fn ack(&self, d: &Delivery) -> Result<(), QueueError>;

    /// Acks several deliveries; the same as acking each, in one round trip
    /// where the backend can (embedded: one writer job, one commit).
    ///
    /// # Cancel safety
    ///
    /// As `ack`, for each delivery: a dropped call may have removed some of
    /// them; the others are delivered again.
    async fn ack_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        for d in ds {
            self.ack(d).await?;
        }
        Ok(())
    }

    /// A failed receive: the message is visible again after `delay`, or moved
    /// to the dead-letter queue if this was its `max_receive_count`-th receive.
    /// `reason` is kept as the dead letter's `last_error`.
    ///
    /// # Returns
    ///
    /// What happened to the message ([`Nacked`]), so callers count dead
    /// letters where they happen instead of guessing.
    ///
    /// # Cancel safety
    ///
    /// A dropped nack may or may not have happened; if not, the message comes
    /// back after its visibility timeout, its receive counted either way.
    /// Never stranded: a backend whose nack is more than one step (a copy
    /// republished, then the original settled: Kafka, RabbitMQ) runs it to
    /// its end in a task of its own (kit: `a_dropped_settle_strands_nothing`).
    async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError>;

    /// Gives the message back without blaming it: visible again after `delay`,
    /// and this receive does not count toward the dead-letter queue where the
    /// backend can undo the count (embedded, memory; see `docs/backends.md`).
    /// Used when the sink, not the message, failed, and on shutdown.
    ///
    /// # Cancel safety
    ///
    /// As `nack`: a dropped release may or may not have happened, and never
    /// strands the message; if not, it comes back after its visibility
    /// timeout (counted, as a crash is).
    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError>;

    /// Keeps the message hidden for `timeout` from now, for work that takes
    /// longer than the visibility timeout. A stale receipt is a no-op.
    ///
    /// # Cancel safety
    ///
    /// A dropped extend may or may not have moved the deadline; the message
    /// then comes back at the old one at worst.
    async fn extend(&self, d: &Delivery, timeout: Duration) -> Result<(), QueueError>;

    /// Moves the message to the dead-letter queue now, whatever its count:
    /// for a failure that no retry can fix.
    ///
    /// # Cancel safety
    ///
    /// As `nack`: dropped, the message is in the DLQ or comes back, never
    /// stranded.
    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError>;

    /// Releases every delivery this consumer still holds, so another consumer
    /// gets them at once rather than after the visibility timeout. That
    /// includes what a dropped [`Consumer::receive`] took.
    ///
    /// # Cancel safety
    ///
    /// A dropped close may have released some deliveries; the rest come back
    /// as after a crash (after the visibility timeout, or when the channel
    /// closes), counted.
    async fn close(&self) -> Result<(), QueueError>;

    /// How long a receive hides a message from other consumers. The runtime
    /// extends deliveries it still holds well before this runs out.
    fn visibility_timeout(&self) -> Duration;
}

/// What [`Admin::purge`] empties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeTarget {
    /// The queue's live messages (visible, delayed, in flight).
    Source,
    /// The queue's dead-letter queue.
    Dead,
}

/// Creates and inspects queues.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Creates the queue and its dead-letter queue, or updates their policy.
    /// Idempotent.
    ///
    /// # Cancel safety
    ///
    /// Dropped, some of the queues may exist: run it again (it is
    /// idempotent).
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError>;
    /// Counts for the queue and its dead-letter queue.
    ///
    /// # Cancel safety
    ///
    /// Safe: it only reads.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;
    /// How long the queue keeps what is not consumed, and how old its
    /// oldest message still to be delivered is.
    ///
    /// # Cancel safety
    ///
    /// Safe: it only reads.
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError>;
    /// Up to `max` dead letters, oldest first, without removing them.
    ///
    /// # Cancel safety
    ///
    /// Safe: a dropped peek leaves the DLQ as it was (RabbitMQ returns what
    /// it took when its channel closes).
    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Moves up to `max` dead letters (oldest first) back into the queue with
    /// their receive count reset. Returns how many moved. Callers loop over
    /// small batches to show progress and to limit the rate.
    ///
    /// # Cancel safety
    ///
    /// A dropped redrive may have sent some dead letters back without
    /// removing them from the DLQ: a later redrive sends them again
    /// (duplicates, never a loss).
    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError>;
    /// Deletes every message of the target. Returns how many.
    ///
    /// # Cancel safety
    ///
    /// Dropped, part of the target may be deleted.
    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError>;
}

/// One connection to a backend, handing out producers and consumers.
#[async_trait]
pub trait Backend: Admin {
    /// The backend's name as configured (`embedded`, `memory`, …).
    fn kind(&self) -> &'static str;
    /// A producer for an existing queue.
    ///
    /// # Cancel safety
    ///
    /// Safe: nothing is sent.
    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError>;
    /// A consumer for an existing queue.
    ///
    /// # Cancel safety
    ///
    /// Safe: nothing is received until its first `receive`.
    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError>;
    /// Whether the backend can take writes now. Drives `/readyz`.
    ///
    /// # Cancel safety
    ///
    /// Safe: it only asks.
    async fn ready(&self) -> Result<(), QueueError>;
}
