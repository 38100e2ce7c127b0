//! The receive loop.
//!
//! `concurrency` workers each receive up to `batch_size` deliveries and hand
//! them to the sink one by one. Each answer decides the message's fate (see
//! [`crate::outcome`]). While the [`Circuit`] is open, workers do not receive;
//! one of them probes: after a backoff it receives one message and tries it.
//! A probe that fails with `Down` or `Transient` releases its message (the
//! sink is to blame, not the message) with a delay, so the next probe tends
//! to try another one; one that gets any answer from the sink closes it.
//! An empty queue proves nothing, so it leaves the circuit open.
//!
//! # Shutdown
//!
//! When `shutdown` is cancelled, workers stop receiving, finish the delivery
//! in hand, release the rest of their batch, and [`run`] returns once every
//! worker has stopped. The consumer's `close` then gives back anything held.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use spillway_queue::{Consumer, Delivery, QueueError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{circuit::Circuit, config::ConsumerConfig, sink::Sink, SinkError};

/// How long to wait before receiving again after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Messages settled, by queue and outcome (`acked`, `retried`, `dead_lettered`, `released`).
pub const MESSAGES: &str = "spillway_consumer_messages_total";
/// 1 while the circuit is open (the sink is down), by queue.
pub const CIRCUIT_OPEN: &str = "spillway_consumer_circuit_open";
/// How long one sink call took, by queue.
pub const SINK_DURATION: &str = "spillway_sink_duration_seconds";

/// Counts from one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub released: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
}

/// Metric handles, registered once per run.
struct Meters {
    acked: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    released: metrics::Counter,
    circuit_open: metrics::Gauge,
    sink: metrics::Histogram,
}

impl Meters {
    fn new(queue: &str) -> Self {
        let q = || queue.to_owned();
        Self {
            acked: metrics::counter!(MESSAGES, "queue" => q(), "outcome" => "acked"),
            retried: metrics::counter!(MESSAGES, "queue" => q(), "outcome" => "retried"),
            dead_lettered: metrics::counter!(MESSAGES, "queue" => q(), "outcome" => "dead_lettered"),
            released: metrics::counter!(MESSAGES, "queue" => q(), "outcome" => "released"),
            circuit_open: metrics::gauge!(CIRCUIT_OPEN, "queue" => q()),
            sink: metrics::histogram!(SINK_DURATION, "queue" => q()),
        }
    }
}

struct Worker {
    meters: Arc<Meters>,
    consumer: Arc<dyn Consumer>,
    sink: Arc<dyn Sink>,
    cfg: ConsumerConfig,
    circuit: Arc<Circuit>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
}

/// Drains the queue into the sink until `shutdown` is cancelled.
pub async fn run(
    consumer: Arc<dyn Consumer>,
    sink: Arc<dyn Sink>,
    cfg: ConsumerConfig,
    shutdown: CancellationToken,
) -> RunReport {
    let circuit = Arc::new(Circuit::new(cfg.circuit_threshold));
    let counters = Arc::new(Counters::default());
    let mut workers = JoinSet::new();
    let meters = Arc::new(Meters::new(&cfg.queue));
    meters.circuit_open.set(0.0);
    for _ in 0..cfg.concurrency.max(1) {
        let w = Worker {
            meters: meters.clone(),
            consumer: consumer.clone(),
            sink: sink.clone(),
            cfg: cfg.clone(),
            circuit: circuit.clone(),
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        };
        workers.spawn(async move { w.run().await });
    }
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "consumer worker ended abnormally");
        }
    }
    if let Err(e) = consumer.close().await {
        tracing::warn!(error = %e, "could not release held messages on shutdown");
    }
    RunReport {
        delivered: counters.delivered.load(Ordering::Relaxed),
        retried: counters.retried.load(Ordering::Relaxed),
        dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
        released: counters.released.load(Ordering::Relaxed),
    }
}

impl Worker {
    async fn run(self) {
        while !self.shutdown.is_cancelled() {
            if self.circuit.is_open() {
                match self.circuit.try_become_prober() {
                    Some(_guard) => self.probe().await,
                    None => {
                        tokio::select! {
                            () = self.circuit.wait_closed() => {}
                            () = self.shutdown.cancelled() => {}
                        }
                    }
                }
                continue;
            }
            let batch = tokio::select! {
                got = self.consumer.receive(self.cfg.batch_size.max(1), self.cfg.wait) => got,
                () = self.shutdown.cancelled() => break,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; pausing");
                    self.pause(QUEUE_ERROR_PAUSE).await;
                    continue;
                }
            };
            for d in batch {
                if self.shutdown.is_cancelled() || self.circuit.is_open() {
                    self.release(&d, Duration::ZERO).await;
                    continue;
                }
                self.handle(&d).await;
            }
        }
    }

    fn circuit_gauge(&self, open: bool) {
        self.meters.circuit_open.set(if open { 1.0 } else { 0.0 });
    }

    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let started = tokio::time::Instant::now();
        let answer = match tokio::time::timeout(self.cfg.sink_timeout, self.sink.deliver(d)).await {
            Ok(answer) => answer,
            Err(_) => Err(SinkError::Down(format!("sink did not answer within {:?}", self.cfg.sink_timeout))),
        };
        self.meters.sink.record(started.elapsed().as_secs_f64());
        answer
    }

    /// One delivery while the circuit is closed.
    async fn handle(&self, d: &Delivery) {
        match self.deliver(d).await {
            Ok(()) => {
                self.circuit.record_up();
                self.ack(d).await;
            }
            Err(SinkError::Down(reason)) => {
                if self.circuit.open() {
                    self.circuit_gauge(true);
                    tracing::warn!(%reason, "sink is down: circuit open, receiving stops until a probe succeeds");
                }
                self.release(d, Duration::ZERO).await;
            }
            Err(SinkError::Transient(reason)) => {
                if self.circuit.record_transient() {
                    self.circuit_gauge(true);
                    tracing::warn!(%reason, "sink failed repeatedly: circuit open");
                }
                self.retry(d, &reason).await;
            }
            Err(SinkError::Rejected { reason, dead_letter }) => {
                self.circuit.record_up();
                if dead_letter {
                    self.dead_letter(d, &reason).await;
                } else {
                    self.retry(d, &reason).await;
                }
            }
        }
    }

    /// Tries the sink with one message after a backoff, until it answers.
    /// With nothing to try it with, the circuit stays open (the sink was
    /// last seen down) and the prober looks again after `probe.base`.
    async fn probe(&self) {
        let mut attempt = 1;
        let mut delay = self.cfg.probe.delay_random(attempt);
        while self.pause(delay).await {
            let got = match self.consumer.receive(1, Duration::ZERO).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(error = %e, "probe: receive failed");
                    continue;
                }
            };
            let Some(d) = got.into_iter().next() else {
                delay = self.cfg.probe.base;
                continue;
            };
            match self.deliver(&d).await {
                Err(SinkError::Down(reason) | SinkError::Transient(reason)) => {
                    tracing::info!(%reason, attempt, "probe: sink still down");
                    attempt += 1;
                    delay = self.cfg.probe.delay_random(attempt);
                    // Hidden a little longer than the next probe, so that probe
                    // tries another message: one bad message cannot keep the
                    // circuit open while the sink takes the others.
                    self.release(&d, self.cfg.probe.nominal(attempt) * 2).await;
                }
                answer => {
                    tracing::info!(attempt, "probe: sink answered, circuit closed");
                    self.circuit.close();
                    self.circuit_gauge(false);
                    match answer {
                        Ok(()) => self.ack(&d).await,
                        Err(SinkError::Rejected { reason, dead_letter: true }) => {
                            self.dead_letter(&d, &reason).await
                        }
                        Err(e) => self.retry(&d, &e.to_string()).await,
                    }
                    return;
                }
            }
        }
    }

    /// Sleeps unless shut down; returns false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    async fn ack(&self, d: &Delivery) {
        self.settled(self.consumer.ack(d).await, d, "ack");
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.meters.acked.increment(1);
    }

    async fn retry(&self, d: &Delivery, reason: &str) {
        let delay = self.cfg.retry.delay_random(d.receive_count);
        tracing::debug!(id = %d.message.id, receive_count = d.receive_count, ?delay, %reason, "retrying later");
        self.settled(self.consumer.nack(d, delay, reason).await, d, "nack");
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        self.meters.retried.increment(1);
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) {
        tracing::warn!(id = %d.message.id, %reason, "dead-lettering");
        self.settled(self.consumer.dead_letter(d, reason).await, d, "dead-letter");
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.meters.dead_lettered.increment(1);
    }

    async fn release(&self, d: &Delivery, delay: Duration) {
        self.settled(self.consumer.release(d, delay).await, d, "release");
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        self.meters.released.increment(1);
    }

    /// A failed ack or nack is logged: the message comes back after its
    /// visibility timeout, which at-least-once allows.
    fn settled(&self, r: Result<(), QueueError>, d: &Delivery, what: &str) {
        if let Err(e) = r {
            tracing::warn!(id = %d.message.id, error = %e, "{what} failed; the message will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{atomic::AtomicBool, Mutex},
    };

    use async_trait::async_trait;
    use spillway_queue::{memory::memory_backend, Backend, DeadLetterPolicy, OutgoingMessage, QueueSpec};

    use super::*;
    use crate::backoff::Backoff;

    /// A sink that is down while `down` is set, rejects bodies that say
    /// "poison", and records what it took.
    #[derive(Default)]
    struct Scripted {
        down: AtomicBool,
        transient: AtomicBool,
        taken: Mutex<HashMap<String, u32>>,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError::Down("connection refused".into()));
            }
            if self.transient.load(Ordering::SeqCst) {
                return Err(SinkError::Transient("HTTP 500".into()));
            }
            if d.message.body.as_ref() == b"poison" {
                return Err(SinkError::Rejected { reason: "constraint violated".into(), dead_letter: false });
            }
            self.taken.lock().expect("lock").insert(d.message.id.clone(), d.receive_count);
            Ok(())
        }
    }

    impl Scripted {
        /// Whether `n` messages have been taken (async, to serve as a `run_until` condition).
        async fn taken_count(&self, n: usize) -> bool {
            self.taken.lock().expect("lock").len() == n
        }
    }

    /// Sets the sink's failure switch now and clears it after `outage`.
    fn fail_for(sink: &Arc<Scripted>, switch: fn(&Scripted) -> &AtomicBool, outage: Duration) {
        switch(sink).store(true, Ordering::SeqCst);
        let sink = sink.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            switch(&sink).store(false, Ordering::SeqCst);
        });
    }

    fn fast() -> ConsumerConfig {
        let quick = Backoff { base: Duration::from_millis(20), max: Duration::from_millis(100), jitter: 0.1 };
        ConsumerConfig {
            queue: "q".into(),
            concurrency: 3,
            batch_size: 5,
            wait: Duration::from_millis(50),
            retry: quick,
            probe: quick,
            circuit_threshold: 3,
            ..ConsumerConfig::default()
        }
    }

    async fn setup(n: usize, poison: bool) -> Arc<dyn Backend> {
        let b: Arc<dyn Backend> = Arc::new(memory_backend().expect("memory"));
        let spec = QueueSpec {
            name: "q".into(),
            dead_letter: DeadLetterPolicy {
                max_receive_count: 5,
                visibility_timeout: Duration::from_secs(5),
            },
            max_message_bytes: 1024,
        };
        b.ensure(&spec).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        for i in 0..n {
            p.send(OutgoingMessage::new(format!("m{i}"), "ok")).await.expect("send");
        }
        if poison {
            p.send(OutgoingMessage::new("poison", "poison")).await.expect("send");
        }
        b
    }

    /// Runs the consumer until `done` holds (or 10 s pass), then shuts it down.
    async fn run_until<F, Fut>(b: &Arc<dyn Backend>, sink: Arc<Scripted>, done: F) -> RunReport
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let stop = CancellationToken::new();
        let consumer = b.consumer("q").await.expect("consumer");
        let task = tokio::spawn(run(consumer, sink, fast(), stop.clone()));
        for _ in 0..400 {
            if done().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        task.await.expect("runtime")
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_retry_budget_sends_nothing_to_the_dlq() {
        let b = setup(30, false).await;
        let sink = Arc::new(Scripted::default());
        // The retry budget is 5 receives × ≤100 ms; the outage lasts far longer.
        fail_for(&sink, |s| &s.down, Duration::from_millis(1500));
        let report = run_until(&b, sink.clone(), || sink.taken_count(30)).await;
        let stats = b.stats("q").await.expect("stats");
        assert_eq!(stats.dead, 0, "{report:?}");
        assert_eq!(sink.taken.lock().expect("lock").len(), 30);
        assert_eq!(report.retried, 0, "an outage must not count against messages: {report:?}");
        let taken = sink.taken.lock().expect("lock");
        assert!(taken.values().all(|&n| n == 1), "a receive that hit the outage was counted: {taken:?}");
    }

    #[tokio::test]
    async fn a_poison_message_walks_to_the_dlq_while_the_rest_is_delivered() {
        let b = setup(10, true).await;
        let sink = Arc::new(Scripted::default());
        run_until(&b, sink.clone(), || async {
            sink.taken_count(10).await && b.stats("q").await.expect("stats").dead == 1
        })
        .await;
        let dead = b.peek_dead("q", 10).await.expect("peek");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, "poison");
        assert_eq!(dead[0].receive_count, 5);
        assert_eq!(dead[0].last_error.as_deref(), Some("constraint violated"));
    }

    #[tokio::test]
    async fn five_hundreds_on_every_call_open_the_circuit_and_cost_at_most_one_receive() {
        let b = setup(20, false).await;
        let sink = Arc::new(Scripted::default());
        fail_for(&sink, |s| &s.transient, Duration::from_millis(1500));
        let report = run_until(&b, sink.clone(), || sink.taken_count(20)).await;
        assert_eq!(b.stats("q").await.expect("stats").dead, 0);
        // Only the failures before the circuit opened were counted: one per
        // worker's message in flight at most, far below 5 per message.
        assert!(report.retried <= 20, "{report:?}");
        let taken = sink.taken.lock().expect("lock");
        assert!(taken.values().all(|&n| n < 5), "a message came near the DLQ: {taken:?}");
    }
}
