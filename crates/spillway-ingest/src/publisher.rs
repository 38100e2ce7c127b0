//! The publisher: one task per queue that turns concurrent requests into
//! batches, and answers each request with its own message's outcome.
//!
//! A request hands its message over and waits. The task takes whatever is
//! waiting (up to `max_batch`) as soon as one of its `max_in_flight` slots is
//! free, so under load a batch is everything that arrived while the previous
//! batch was being stored: group commit, without a timer. `linger` adds a wait
//! for brokers that prefer fuller batches. Each request is answered on its
//! own message's outcome as soon as the backend knows it
//! (`Producer::send_each`): on Kafka and RabbitMQ, not when the batch's
//! slowest confirm arrives.
//!
//! # Guarantees
//!
//! - `publish` returns `Ok` only when the backend reported that message durable.
//! - It never waits longer than `send_timeout`; then it is `Timeout` (503),
//!   because the outcome is unknown. The task keeps the deadlines: a request
//!   still waiting for a slot is answered when its own passes (and is never
//!   sent), and a batch the backend has not confirmed by its first deadline
//!   is answered for the rest. That is one timer per batch, not one per
//!   request. The slot stays taken until the backend is done, so a stalled
//!   backend never holds more than `max_in_flight` batches.
//! - A full backlog is `Unavailable` at once: a slow queue gives fast 503s,
//!   not a pile of waiting connections.
//! - A message over the queue's size limit is `TooLarge` before it is queued.
//! - Shutdown needs no step of its own: every request awaits its outcome, so
//!   once the HTTP server has drained, no batch is left without an answer. The
//!   task ends when the last `Publisher` handle is dropped, after its batches.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use spillway_queue::{OutgoingMessage, Producer, QueueError};
use tokio::{
    sync::{mpsc, oneshot, Semaphore, TryAcquireError},
    time::Instant,
};

use crate::{config::PublisherConfig, metrics::PublishMetrics};

type Reply = oneshot::Sender<Result<(), QueueError>>;

struct Pending {
    msg: OutgoingMessage,
    reply: Reply,
    /// `send_timeout` after `publish` was called: the answer is due by then.
    deadline: Instant,
}

/// The sending side for one queue. Cheap to share behind an `Arc`.
pub struct Publisher {
    tx: mpsc::Sender<Pending>,
    max_message_bytes: usize,
    send_timeout: Duration,
    queue: String,
}

/// Messages the queue did not store, by queue and by [`QueueError::kind`]:
/// `unavailable`, `timeout` and `not_found` are the operator's or the
/// broker's (the client got a 503), the others the message's.
pub const PUBLISH_ERRORS: &str = "spillway_publish_errors_total";

impl Publisher {
    /// Starts the batching task for `producer`.
    pub fn spawn(queue: impl Into<String>, producer: Arc<dyn Producer>, cfg: &PublisherConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.backlog.max(1));
        let max_message_bytes = producer.max_message_bytes();
        let queue = queue.into();
        tokio::spawn(run(queue.clone(), producer, rx, cfg.clone()));
        Self { tx, max_message_bytes, send_timeout: cfg.send_timeout, queue }
    }

    /// Stores one message; `Ok` once it is durable. See the module doc.
    ///
    /// The wait has no timer of its own: the publisher task answers
    /// `Timeout` when the deadline passes, whether the message is still
    /// waiting for a slot or in a batch the backend has not confirmed. One
    /// timer per batch instead of one per request (see `docs/benchmarks.md`).
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<(), QueueError> {
        let outcome = self.store(msg).await;
        if let Err(e) = &outcome {
            metrics::counter!(PUBLISH_ERRORS, "queue" => self.queue.clone(), "kind" => e.kind()).increment(1);
        }
        outcome
    }

    /// `TooLarge` if the queue would refuse `msg` for its size.
    pub fn check_size(&self, msg: &OutgoingMessage) -> Result<(), QueueError> {
        msg.check_size(self.max_message_bytes)
    }

    async fn store(&self, msg: OutgoingMessage) -> Result<(), QueueError> {
        self.check_size(&msg)?;
        let (reply, outcome) = oneshot::channel();
        let deadline = Instant::now() + self.send_timeout;
        self.tx.try_send(Pending { msg, reply, deadline }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::unavailable_msg("publisher backlog is full"),
            mpsc::error::TrySendError::Closed(_) => QueueError::unavailable_msg("publisher is shut down"),
        })?;
        outcome.await.unwrap_or_else(|_| Err(QueueError::unavailable_msg("publisher dropped the message")))
    }
}

async fn run(
    queue: String,
    producer: Arc<dyn Producer>,
    mut rx: mpsc::Receiver<Pending>,
    cfg: PublisherConfig,
) {
    let in_flight = match (cfg.max_in_flight, producer.max_batches_in_flight()) {
        (None, Some(bound)) => cfg.max_in_flight_for(producer.confirms_each()).min(bound.max(1)),
        _ => cfg.max_in_flight_for(producer.confirms_each()),
    };
    let slots = Arc::new(Semaphore::new(in_flight));
    let metrics = Arc::new(PublishMetrics::new(&queue));
    let timeout = cfg.send_timeout;
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: meanwhile, more requests queue up and
        // join this batch. Not past the first request's deadline, though:
        // behind batches the backend does not confirm, every waiting request
        // is answered on time, one by one, oldest first.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // No timer armed on the usual path, where a slot is free.
            Err(TryAcquireError::NoPermits) => tokio::select! {
                biased;
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(first.deadline) => {
                    time_out(first.reply, timeout);
                    continue;
                }
            },
            Err(TryAcquireError::Closed) => break,
        };
        if !cfg.linger.is_zero() {
            tokio::time::sleep(cfg.linger).await;
        }
        let now = Instant::now();
        let mut batch = Vec::new();
        for p in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            // Answered already, and never sent: its outcome is known.
            if p.deadline <= now {
                time_out(p.reply, timeout);
                continue;
            }
            batch.push(p);
            if batch.len() == cfg.max_batch {
                break;
            }
        }
        // The earliest deadline of what is sent; none if every one expired.
        let Some(deadline) = batch.iter().map(|p| p.deadline).min() else { continue };
        let (producer, metrics) = (producer.clone(), metrics.clone());
        tokio::spawn(async move {
            let (msgs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.msg, Some(p.reply))).unzip();
            let replies = Mutex::new(replies);
            let n = msgs.len();
            let started = std::time::Instant::now();
            {
                // Each request is answered on its own message's outcome, as
                // soon as the backend knows it (see `Producer::send_each`).
                let mut report = |i: usize, outcome| {
                    if let Some(reply) = take(&replies, i) {
                        let _ = reply.send(outcome);
                    }
                };
                let send = producer.send_each(msgs, &mut report);
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    () = &mut send => {}
                    () = tokio::time::sleep_until(deadline) => {
                        // What is still unconfirmed has an unknown outcome:
                        // a 503 now. The slot stays taken until the backend
                        // is done, so a stalled backend is never sent more
                        // than `max_in_flight` batches.
                        for i in 0..n {
                            if let Some(reply) = take(&replies, i) {
                                time_out(reply, timeout);
                            }
                        }
                        send.await;
                    }
                }
            }
            metrics.batch_sent(n, started.elapsed());
            // A reply the backend never reported (a broken contract) is
            // dropped here, which `publish` turns into an error at once: not
            // a wait for the send timeout, and never `Ok`.
            drop(replies);
            drop(slot);
        });
    }
    // Every sender is gone: wait for the batches still in flight.
    let _ = slots.acquire_many(u32::try_from(in_flight).unwrap_or(u32::MAX)).await;
}

fn take(replies: &Mutex<Vec<Option<Reply>>>, i: usize) -> Option<Reply> {
    replies.lock().unwrap_or_else(PoisonError::into_inner).get_mut(i).and_then(Option::take)
}

fn time_out(reply: Reply, after: Duration) {
    let _ = reply.send(Err(QueueError::Timeout { after }));
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
        PublisherConfig { max_in_flight: Some(1), ..PublisherConfig::default() }
    }

    /// `n` requests at once, each publishing message `"{i}"`.
    fn publish_at_once(p: &Arc<Publisher>, n: usize) -> Vec<tokio::task::JoinHandle<Result<(), QueueError>>> {
        (0..n)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.publish(OutgoingMessage::new(format!("{i}"), "x")).await })
            })
            .collect()
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches() {
        let producer = Arc::new(Counting { batches: AtomicUsize::new(0), fail: false });
        let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg()));
        let tasks = publish_at_once(&p, 200);
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
        let tasks = publish_at_once(&p, 20);
        for t in tasks {
            let err = t.await.expect("task").expect_err("every request of a failed batch fails");
            assert!(err.is_retryable(), "{err:?}");
        }
        let batches = producer.batches.load(Ordering::SeqCst);
        assert!(batches < 20, "the requests shared batches: {batches} for 20");
    }

    /// Confirms message 0 of every batch at once and the rest after a second.
    struct FirstFast;

    #[async_trait]
    impl Producer for FirstFast {
        async fn send_batch(
            &self,
            msgs: Vec<OutgoingMessage>,
        ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(msgs.iter().map(|_| Ok(())).collect())
        }
        async fn send_each(
            &self,
            msgs: Vec<OutgoingMessage>,
            report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
        ) {
            report(0, Ok(()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            (1..msgs.len()).for_each(|i| report(i, Ok(())));
        }
        fn max_message_bytes(&self) -> usize {
            100
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_answered_on_its_own_outcome_not_its_batchs_slowest() {
        let p = Arc::new(Publisher::spawn("q", Arc::new(FirstFast), &cfg()));
        // Fill the one slot so the next requests wait together for one batch.
        let blocker = tokio::spawn({
            let p = p.clone();
            async move { p.publish(OutgoingMessage::new("blocker", "x")).await }
        });
        tokio::task::yield_now().await;
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.publish(OutgoingMessage::new(format!("{i}"), "x"))
                        .await
                        .map(|()| tokio::time::Instant::now())
                })
            })
            .collect();
        let start = tokio::time::Instant::now();
        blocker.await.expect("task").expect("stored");
        let mut waited = Vec::new();
        for t in tasks {
            waited.push(t.await.expect("task").expect("stored") - start);
        }
        waited.sort();
        // The batch of five: its first message at once (after the blocker's
        // second), the other four a second later.
        assert!(waited[0] < Duration::from_millis(1500), "the first message waited {:?}", waited[0]);
        assert!(waited[4] >= Duration::from_secs(2), "the slow ones took {:?}", waited[4]);
    }

    /// Reports nothing at all: a broken backend.
    struct Silent;

    #[async_trait]
    impl Producer for Silent {
        async fn send_batch(
            &self,
            msgs: Vec<OutgoingMessage>,
        ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
            Ok(msgs.iter().map(|_| Ok(())).collect())
        }
        async fn send_each(
            &self,
            _msgs: Vec<OutgoingMessage>,
            _report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
        ) {
        }
        fn max_message_bytes(&self) -> usize {
            100
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_the_backend_never_reported_is_a_fast_error_not_ok() {
        let p = Publisher::spawn("q", Arc::new(Silent), &cfg());
        let started = tokio::time::Instant::now();
        let err = p.publish(OutgoingMessage::new("1", "x")).await.expect_err("no outcome is no Ok");
        assert!(err.is_retryable(), "{err:?}");
        assert!(started.elapsed() < cfg().send_timeout, "it waited for the send timeout");
    }

    /// Holds every batch for `hold` and records how many were in flight.
    struct Peak {
        each: bool,
        /// What the backend says of its own bound.
        bound: Option<usize>,
        hold: Duration,
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Peak {
        fn new(each: bool, hold: Duration) -> Arc<Self> {
            Arc::new(Self { each, bound: None, hold, now: AtomicUsize::new(0), peak: AtomicUsize::new(0) })
        }
    }

    #[async_trait]
    impl Producer for Peak {
        async fn send_batch(
            &self,
            msgs: Vec<OutgoingMessage>,
        ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.hold).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(msgs.iter().map(|_| Ok(())).collect())
        }
        fn max_message_bytes(&self) -> usize {
            100
        }
        fn confirms_each(&self) -> bool {
            self.each
        }
        fn max_batches_in_flight(&self) -> Option<usize> {
            self.bound
        }
    }

    /// A backend that publishes at most 8 batches at once (RabbitMQ's
    /// channels) gets no more; a configured `max_in_flight` still wins.
    #[tokio::test(start_paused = true)]
    async fn batches_in_flight_stay_within_the_backends_own_bound() {
        for (configured, expected) in [(None, 8), (Some(16), 16)] {
            let producer = Arc::new(Peak {
                each: true,
                bound: Some(8),
                hold: Duration::from_secs(1),
                now: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            });
            let cfg = PublisherConfig {
                max_batch: 1,
                max_in_flight: configured,
                send_timeout: Duration::from_secs(60),
                ..PublisherConfig::default()
            };
            let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg));
            for t in publish_at_once(&p, 100) {
                t.await.expect("task").expect("stored");
            }
            assert_eq!(producer.peak.load(Ordering::SeqCst), expected, "configured: {configured:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_in_flight_default_to_what_the_backend_confirms() {
        for (each, expected) in [(false, 4), (true, 64)] {
            let producer = Peak::new(each, Duration::from_secs(1));
            // One message per batch, so every request is a batch of its own.
            let cfg = PublisherConfig {
                max_batch: 1,
                send_timeout: Duration::from_secs(60),
                ..PublisherConfig::default()
            };
            let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg));
            let tasks = publish_at_once(&p, 100);
            for t in tasks {
                t.await.expect("task").expect("stored");
            }
            assert_eq!(producer.peak.load(Ordering::SeqCst), expected, "confirms each: {each}");
        }
    }

    #[tokio::test]
    async fn too_large_is_refused_before_any_send() {
        let producer = Arc::new(Counting { batches: AtomicUsize::new(0), fail: false });
        let p = Publisher::spawn("q", producer.clone(), &cfg());
        let err = p.publish(OutgoingMessage::new("1", vec![0u8; 101])).await.expect_err("too large");
        assert!(matches!(err, QueueError::TooLarge { size: 101, limit: 100 }));
        assert_eq!(producer.batches.load(Ordering::SeqCst), 0);
    }

    /// Every request, in a batch the backend does not confirm or waiting for
    /// a slot behind such batches, is answered `Timeout` at its own
    /// `send_timeout`, not later; and the stalled backend is never sent more
    /// batches than `max_in_flight`.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_backend_times_every_request_out_on_time() {
        // Never confirms within the test.
        let producer = Peak::new(false, Duration::from_secs(3600));
        let cfg = PublisherConfig { max_batch: 1, ..cfg() };
        let p = Arc::new(Publisher::spawn("q", producer.clone(), &cfg));
        let timed = |p: Arc<Publisher>, i: usize| {
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let outcome = p.publish(OutgoingMessage::new(format!("{i}"), "x")).await;
                (outcome, started.elapsed())
            })
        };
        // The first takes the one slot; two more wait behind it.
        let first: Vec<_> = (0..3).map(|i| timed(p.clone(), i)).collect();
        // A second wave, arriving while the first still waits.
        tokio::time::sleep(cfg.send_timeout / 2).await;
        let second: Vec<_> = (3..5).map(|i| timed(p.clone(), i)).collect();
        for t in first.into_iter().chain(second) {
            let (outcome, waited) = t.await.expect("task");
            assert!(matches!(outcome, Err(QueueError::Timeout { .. })), "{outcome:?}");
            assert!(waited <= cfg.send_timeout + Duration::from_millis(1), "answered after {waited:?}");
            assert!(waited >= cfg.send_timeout, "answered early, after {waited:?}");
        }
        assert_eq!(producer.peak.load(Ordering::SeqCst), 1, "a stalled backend got more than one batch");
    }

    /// A request that expired before its batch went out does not lend its
    /// past deadline to the batch: the others, with time left, wait for the
    /// backend's answer. Here a long `linger` outlasts the first request.
    #[tokio::test(start_paused = true)]
    async fn an_expired_request_does_not_time_its_batch_out() {
        let producer = Peak::new(false, Duration::from_secs(1));
        let cfg = PublisherConfig { linger: cfg().send_timeout, ..cfg() };
        let p = Arc::new(Publisher::spawn("q", producer, &cfg));
        let expired = tokio::spawn({
            let p = p.clone();
            async move { p.publish(OutgoingMessage::new("early", "x")).await }
        });
        // Arrives during the linger, with most of its send_timeout left.
        tokio::time::sleep(cfg.send_timeout - Duration::from_secs(1)).await;
        let late = p.publish(OutgoingMessage::new("late", "x")).await;
        assert!(late.is_ok(), "stored a second after the batch went out: {late:?}");
        let early = expired.await.expect("task");
        assert!(matches!(early, Err(QueueError::Timeout { .. })), "{early:?}");
    }
}
