//! The publisher: one task per queue that turns concurrent requests into
//! batches, and answers each request with its own message's outcome.
//!
//! A request hands its message over and waits. The task takes whatever is
//! waiting (up to `max_batch`) as soon as one of its `max_in_flight` slots is
//! free, so under load a batch is everything that arrived while the previous
//! batch was being stored: group commit, without a timer. `linger` adds a wait
//! for brokers that prefer fuller batches.
//!
//! # Guarantees
//!
//! - `publish` returns `Ok` only when the backend reported that message durable.
//! - It never waits longer than `send_timeout`; then it is `Timeout` (503),
//!   because the outcome is unknown.
//! - A full backlog is `Unavailable` at once: a slow queue gives fast 503s,
//!   not a pile of waiting connections.
//! - A message over the queue's size limit is `TooLarge` before it is queued.
//! - Shutdown needs no step of its own: every request awaits its outcome, so
//!   once the HTTP server has drained, no batch is left without an answer. The
//!   task ends when the last `Publisher` handle is dropped, after its batches.

use std::{sync::Arc, time::Duration};

use spillway_queue::{OutgoingMessage, Producer, QueueError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{config::PublisherConfig, metrics::PublishMetrics};

struct Pending {
    msg: OutgoingMessage,
    reply: oneshot::Sender<Result<(), QueueError>>,
}

/// The sending side for one queue. Cheap to share behind an `Arc`.
pub struct Publisher {
    tx: mpsc::Sender<Pending>,
    max_message_bytes: usize,
    send_timeout: Duration,
}

impl Publisher {
    /// Starts the batching task for `producer`.
    pub fn spawn(queue: impl Into<String>, producer: Arc<dyn Producer>, cfg: &PublisherConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.backlog.max(1));
        let max_message_bytes = producer.max_message_bytes();
        tokio::spawn(run(queue.into(), producer, rx, cfg.clone()));
        Self { tx, max_message_bytes, send_timeout: cfg.send_timeout }
    }

    /// Stores one message; `Ok` once it is durable. See the module doc.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<(), QueueError> {
        msg.check_size(self.max_message_bytes)?;
        let (reply, outcome) = oneshot::channel();
        self.tx.try_send(Pending { msg, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::unavailable_msg("publisher backlog is full"),
            mpsc::error::TrySendError::Closed(_) => QueueError::unavailable_msg("publisher is shut down"),
        })?;
        match tokio::time::timeout(self.send_timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(QueueError::unavailable_msg("publisher dropped the message")),
            Err(_) => Err(QueueError::Timeout { after: self.send_timeout }),
        }
    }
}

async fn run(
    queue: String,
    producer: Arc<dyn Producer>,
    mut rx: mpsc::Receiver<Pending>,
    cfg: PublisherConfig,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    let metrics = Arc::new(PublishMetrics::new(&queue));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: meanwhile, more requests queue up and
        // join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        if !cfg.linger.is_zero() {
            tokio::time::sleep(cfg.linger).await;
        }
        let mut batch = vec![first];
        while batch.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (producer, metrics) = (producer.clone(), metrics.clone());
        tokio::spawn(async move {
            let (msgs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.msg, p.reply)).unzip();
            let n = msgs.len();
            let started = std::time::Instant::now();
            let sent = producer.send_batch(msgs).await;
            metrics.batch_sent(n, started.elapsed());
            match sent {
                Ok(outcomes) if outcomes.len() == n => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Ok(outcomes) => {
                    let e = QueueError::unavailable_msg(format!(
                        "backend answered {} outcomes for {n}",
                        outcomes.len()
                    ));
                    replies.into_iter().for_each(|r| drop(r.send(Err(e.clone()))));
                }
                Err(e) => replies.into_iter().for_each(|r| drop(r.send(Err(e.clone())))),
            }
            drop(slot);
        });
    }
    // Every sender is gone: wait for the batches still in flight.
    let _ = slots.acquire_many(u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;

    /// Counts batches; stores nothing. Slow enough that requests pile up.
    struct Counting {
        batches: AtomicUsize,
        fail: bool,
    }

    #[async_trait]
    impl Producer for Counting {
        async fn send_batch(
            &self,
            msgs: Vec<OutgoingMessage>,
        ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail {
                return Err(QueueError::unavailable_msg("down"));
            }
            Ok(msgs.iter().map(|_| Ok(())).collect())
        }
        fn max_message_bytes(&self) -> usize {
            100
        }
    }

    fn cfg() -> PublisherConfig {
        PublisherConfig { max_in_flight: 1, ..PublisherConfig::default() }
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches() {
        let producer = Arc::new(Counting { batches: AtomicUsize::new(0), fail: false });
        let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.publish(OutgoingMessage::new(format!("{i}"), "x")).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("stored");
        }
        let batches = producer.batches.load(Ordering::SeqCst);
        assert!(batches < 200, "200 concurrent sends took {batches} batches");
    }

    #[tokio::test]
    async fn a_backend_failure_reaches_every_request_of_the_batch() {
        let producer = Arc::new(Counting { batches: AtomicUsize::new(0), fail: true });
        let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg()));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.publish(OutgoingMessage::new(format!("{i}"), "x")).await })
            })
            .collect();
        for t in tasks {
            let err = t.await.expect("task").expect_err("every request of a failed batch fails");
            assert!(err.is_retryable(), "{err:?}");
        }
        let batches = producer.batches.load(Ordering::SeqCst);
        assert!(batches < 20, "the requests shared batches: {batches} for 20");
    }

    #[tokio::test]
    async fn too_large_is_refused_before_any_send() {
        let producer = Arc::new(Counting { batches: AtomicUsize::new(0), fail: false });
        let p = Publisher::spawn("q", producer.clone(), &cfg());
        let err = p.publish(OutgoingMessage::new("1", vec![0u8; 101])).await.expect_err("too large");
        assert!(matches!(err, QueueError::TooLarge { size: 101, limit: 100 }));
        assert_eq!(producer.batches.load(Ordering::SeqCst), 0);
    }
}
