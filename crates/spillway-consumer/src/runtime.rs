//! The receive loop.
//!
//! `concurrency` workers each receive up to `batch_size` deliveries and hand
//! them to the sink one by one. While a worker holds a batch, a keeper
//! extends every delivery it has not settled yet, every third of the
//! visibility timeout, so a slow sink never lets the tail of a batch expire
//! and come back to another worker (a duplicate, and a step toward the DLQ
//! for a message the sink already took).
//!
//! Each answer decides the message's fate through [`decide`] (see
//! [`crate::outcome`]). While the [`Circuit`] is open, workers do not
//! receive; one of them probes: after a backoff it receives one message and
//! tries it. A probe that fails with `Down` or `Transient` releases its
//! message (the sink is to blame, not the message) with a delay, so the next
//! probe tends to try another one; one that gets any answer from the sink
//! closes it. An empty queue proves nothing, so it leaves the circuit open.
//!
//! A `Down` answer is the sink's fault only while nothing suggests otherwise.
//! When the sink took other messages since this one last failed `Down`, the
//! message is to blame (one payload that hangs the endpoint, say), and the
//! receive is counted like any other failure. A first `Down` is never
//! blamed, so a real outage costs a message at most one counted receive
//! (when it had failed `Down` in an earlier outage).
//!
//! # Shutdown
//!
//! When `shutdown` is cancelled, workers stop receiving, finish the delivery
//! in hand, release the rest of their batch, and [`run`] returns once every
//! worker has stopped. The consumer's `close` then gives back anything held,
//! including what a receive dropped by the shutdown took.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use spillway_queue::{Consumer, Delivery, Nacked, QueueError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    circuit::Circuit,
    config::ConsumerConfig,
    outcome::{decide, Action, Health, Mode},
    sink::Sink,
    SinkError,
};

/// How long to wait before receiving again after the queue itself failed.
const QUEUE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// The keeper extends held deliveries this many times per visibility timeout.
const EXTENDS_PER_VISIBILITY: u32 = 3;
/// Messages remembered as having failed `Down`; past this the memory is
/// cleared, which only delays blaming one of them.
const MAX_SUSPECTS: usize = 10_000;

/// Messages settled, by queue and outcome (`acked`, `retried`, `dead_lettered`, `released`, `stale`).
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
    /// Nacks whose receipt no longer held the message.
    pub stale: u64,
    /// Workers that ended by a panic: a bug, and `consume` exits non-zero.
    pub panicked: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    stale: AtomicU64,
}

/// Metric handles, registered once per run.
struct Meters {
    acked: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    released: metrics::Counter,
    stale: metrics::Counter,
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
            stale: metrics::counter!(MESSAGES, "queue" => q(), "outcome" => "stale"),
            circuit_open: metrics::gauge!(CIRCUIT_OPEN, "queue" => q()),
            sink: metrics::histogram!(SINK_DURATION, "queue" => q()),
        }
    }
}

/// Which messages failed `Down`, and how many sink successes there had been
/// by then: a later success means the sink was up while they failed.
#[derive(Default)]
struct Suspects {
    successes: AtomicU64,
    failed_down_at: Mutex<HashMap<String, u64>>,
}

impl Suspects {
    fn successes(&self) -> u64 {
        self.successes.load(Ordering::SeqCst)
    }

    fn success(&self, id: &str) {
        self.successes.fetch_add(1, Ordering::SeqCst);
        self.forget(id);
    }

    /// Whether the sink took others since `id` last failed `Down`. Only a
    /// second `Down` can be blamed: successes during a first one may just
    /// straddle the start of a real outage.
    fn blamed(&self, id: &str) -> bool {
        let now = self.successes();
        let map = self.failed_down_at.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(id).is_some_and(|&at| now > at)
    }

    fn failed_down(&self, id: &str) {
        let mut map = self.failed_down_at.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_SUSPECTS {
            map.clear();
        }
        map.insert(id.to_owned(), self.successes());
    }

    fn forget(&self, id: &str) {
        self.failed_down_at.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

struct Worker {
    meters: Arc<Meters>,
    consumer: Arc<dyn Consumer>,
    sink: Arc<dyn Sink>,
    cfg: ConsumerConfig,
    circuit: Arc<Circuit>,
    counters: Arc<Counters>,
    suspects: Arc<Suspects>,
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
    let suspects = Arc::new(Suspects::default());
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
            suspects: suspects.clone(),
            shutdown: shutdown.clone(),
        };
        workers.spawn(async move { w.run().await });
    }
    let mut panicked = 0;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            panicked += 1;
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
        stale: counters.stale.load(Ordering::Relaxed),
        panicked,
    }
}

/// The deliveries a worker holds and has not settled, kept visible by
/// [`keep_visible`] until the worker is done with them.
type Unsettled = Arc<Mutex<Vec<Delivery>>>;

/// Extends every unsettled delivery by the visibility timeout, every third
/// of it, until aborted. A failed extend is logged: the message may then be
/// delivered twice, which at-least-once allows.
async fn keep_visible(consumer: Arc<dyn Consumer>, unsettled: Unsettled) {
    let visibility = consumer.visibility_timeout();
    let every = (visibility / EXTENDS_PER_VISIBILITY).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let held: Vec<Delivery> = unsettled.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for d in &held {
            if let Err(e) = consumer.extend(d, visibility).await {
                tracing::warn!(id = %d.message.id, error = %e, "could not extend a held message");
            }
        }
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
            // Dropping this receive on shutdown is safe: `close` releases
            // whatever it took (see `Consumer::receive`, cancel safety).
            let batch = tokio::select! {
                got = self.consumer.receive(self.cfg.batch_size_for(self.sink.batches()), self.cfg.wait) => got,
                () = self.shutdown.cancelled() => break,
            };
            match batch {
                Ok(batch) if !batch.is_empty() => self.handle_batch(batch).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; pausing");
                    self.pause(QUEUE_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Hands a batch to the sink: in one call when the sink takes batches
    /// (one statement for PostgreSQL), else one message at a time, each with
    /// its own `sink_timeout`. Either way each message is settled by its own
    /// answer, and the keeper keeps the unsettled ones hidden meanwhile.
    async fn handle_batch(&self, batch: Vec<Delivery>) {
        let unsettled: Unsettled = Arc::new(Mutex::new(batch.clone()));
        let keeper = tokio::spawn(keep_visible(self.consumer.clone(), unsettled.clone()));
        let settled = |d: &Delivery| {
            unsettled.lock().unwrap_or_else(PoisonError::into_inner).retain(|u| u.receipt != d.receipt);
        };
        if self.sink.batches() && !self.shutdown.is_cancelled() && !self.circuit.is_open() {
            let answers = self.deliver_batch(&batch).await;
            // The acks go to the queue together: one round trip (one commit
            // on the embedded queue) for the batch, not one per message.
            let mut acks = Vec::new();
            for (d, (answer, blamed)) in batch.iter().zip(answers) {
                match self.assess(&answer, blamed) {
                    Action::Ack => acks.push(d.clone()),
                    action => {
                        self.act(d, action, Duration::ZERO).await;
                        settled(d);
                    }
                }
            }
            self.ack_all(&acks).await;
            acks.iter().for_each(settled);
        } else {
            for d in &batch {
                if self.shutdown.is_cancelled() || self.circuit.is_open() {
                    self.release(d, Duration::ZERO).await;
                } else {
                    let (answer, blamed) = self.deliver(d).await;
                    self.settle(d, answer, blamed).await;
                }
                settled(d);
            }
        }
        keeper.abort();
    }

    /// One sink call for the batch, bounded by `sink_timeout`; for each
    /// message its answer and whether it is to blame for a `Down` answer.
    async fn deliver_batch(&self, batch: &[Delivery]) -> Vec<(Result<(), SinkError>, bool)> {
        let started = tokio::time::Instant::now();
        let answers = match tokio::time::timeout(self.cfg.sink_timeout, self.sink.deliver_batch(batch)).await
        {
            Ok(answers) if answers.len() == batch.len() => answers,
            Ok(answers) => {
                let e = format!("the sink answered {} times for {} messages", answers.len(), batch.len());
                batch.iter().map(|_| Err(SinkError::Transient(e.clone()))).collect()
            }
            Err(_) => {
                let e = format!("sink did not answer within {:?}", self.cfg.sink_timeout);
                batch.iter().map(|_| Err(SinkError::Down(e.clone()))).collect()
            }
        };
        self.meters.sink.record(started.elapsed().as_secs_f64());
        batch.iter().zip(answers).map(|(d, answer)| self.judge(d, answer)).collect()
    }

    fn circuit_gauge(&self, open: bool) {
        self.meters.circuit_open.set(if open { 1.0 } else { 0.0 });
    }

    /// One sink call, bounded by `sink_timeout`; returns the answer and
    /// whether the message is to blame for a `Down` answer.
    async fn deliver(&self, d: &Delivery) -> (Result<(), SinkError>, bool) {
        let started = tokio::time::Instant::now();
        let answer = match tokio::time::timeout(self.cfg.sink_timeout, self.sink.deliver(d)).await {
            Ok(answer) => answer,
            Err(_) => Err(SinkError::Down(format!("sink did not answer within {:?}", self.cfg.sink_timeout))),
        };
        self.meters.sink.record(started.elapsed().as_secs_f64());
        self.judge(d, answer)
    }

    /// Whether a `Down` answer is the message's fault (see [`Suspects`]),
    /// remembering the failure for next time.
    fn judge(&self, d: &Delivery, answer: Result<(), SinkError>) -> (Result<(), SinkError>, bool) {
        let down = matches!(answer, Err(SinkError::Down(_)));
        let blamed = down && self.suspects.blamed(&d.message.id);
        if down {
            self.suspects.failed_down(&d.message.id);
        }
        (answer, blamed)
    }

    /// Settles one delivery by its answer while the circuit is closed.
    async fn settle(&self, d: &Delivery, answer: Result<(), SinkError>, blamed: bool) {
        let action = self.assess(&answer, blamed);
        self.act(d, action, Duration::ZERO).await;
    }

    /// What to do with a delivery given its answer, while the circuit is
    /// closed; keeps the circuit's books on the way.
    fn assess(&self, answer: &Result<(), SinkError>, blamed: bool) -> Action {
        let (action, health) = decide(answer, Mode::Normal, blamed);
        match health {
            Health::Up => self.circuit.record_up(),
            Health::Down => {
                if self.circuit.open() {
                    self.circuit_gauge(true);
                    tracing::warn!(reason = %reason(answer), "sink is down: circuit open, receiving stops until a probe succeeds");
                }
            }
            Health::Transient => {
                if self.circuit.record_transient() {
                    self.circuit_gauge(true);
                    tracing::warn!(reason = %reason(answer), "sink failed repeatedly: circuit open");
                }
            }
            Health::Unknown => {}
        }
        action
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
            let (answer, blamed) = self.deliver(&d).await;
            let (action, health) = decide(&answer, Mode::Probe, blamed);
            if health == Health::Up {
                tracing::info!(attempt, "probe: sink answered, circuit closed");
                self.circuit.close();
                self.circuit_gauge(false);
                self.act(&d, action, Duration::ZERO).await;
                return;
            }
            tracing::info!(reason = %reason(&answer), attempt, "probe: sink still down");
            attempt += 1;
            delay = self.cfg.probe.delay_random(attempt);
            // Hidden a little longer than the next probe, so that probe
            // tries another message: one bad message cannot keep the
            // circuit open while the sink takes the others.
            self.act(&d, action, self.cfg.probe.nominal(attempt) * 2).await;
        }
    }

    /// Carries out a decision; `release_delay` is how long a released
    /// message stays hidden.
    async fn act(&self, d: &Delivery, action: Action, release_delay: Duration) {
        match action {
            Action::Ack => self.ack(d).await,
            Action::Retry(reason) => self.retry(d, &reason).await,
            Action::DeadLetter(reason) => self.dead_letter(d, &reason).await,
            Action::Release => self.release(d, release_delay).await,
        }
    }

    /// Sleeps unless shut down; returns false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    async fn ack_all(&self, ds: &[Delivery]) {
        if ds.is_empty() {
            return;
        }
        for d in ds {
            self.suspects.success(&d.message.id);
        }
        if let Err(e) = self.consumer.ack_batch(ds).await {
            tracing::warn!(error = %e, messages = ds.len(), "ack failed; the messages will be redelivered");
        }
        self.counters.delivered.fetch_add(ds.len() as u64, Ordering::Relaxed);
        self.meters.acked.increment(ds.len() as u64);
    }

    async fn ack(&self, d: &Delivery) {
        self.suspects.success(&d.message.id);
        self.settled(self.consumer.ack(d).await, d, "ack");
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.meters.acked.increment(1);
    }

    async fn retry(&self, d: &Delivery, reason: &str) {
        let delay = self.cfg.retry.delay_random(d.receive_count);
        tracing::debug!(id = %d.message.id, receive_count = d.receive_count, ?delay, %reason, "retrying later");
        match self.consumer.nack(d, delay, reason).await {
            Ok(Nacked::Retried) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                self.meters.retried.increment(1);
            }
            Ok(Nacked::DeadLettered) => {
                tracing::warn!(id = %d.message.id, receive_count = d.receive_count, %reason, "dead-lettered after its last allowed receive");
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.meters.dead_lettered.increment(1);
            }
            Ok(Nacked::Stale) => {
                tracing::debug!(id = %d.message.id, "nack of a stale receipt: the message was received again");
                self.counters.stale.fetch_add(1, Ordering::Relaxed);
                self.meters.stale.increment(1);
            }
            Err(e) => self.settled(Err(e), d, "nack"),
        }
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) {
        self.suspects.forget(&d.message.id);
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

fn reason(answer: &Result<(), SinkError>) -> String {
    answer.as_ref().err().map(ToString::to_string).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! On tokio's paused clock with the memory backend reading it: outages,
    //! slow sinks and visibility timeouts pass in virtual time.
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use spillway_queue::{
        memory::memory_backend_with_clock, Backend, Clock, DeadLetterPolicy, OutgoingMessage, QueueSpec,
    };

    use super::*;
    use crate::backoff::Backoff;

    /// A sink that is down while `down` is set, rejects bodies that say
    /// "poison", hangs on bodies that say "hang", takes `slow` per call, and
    /// records how often it took each message.
    #[derive(Default)]
    struct Scripted {
        down: AtomicBool,
        transient: AtomicBool,
        slow: Mutex<Duration>,
        taken: Mutex<HashMap<String, u32>>,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
            let slow = *self.slow.lock().expect("lock");
            tokio::time::sleep(slow).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError::Down("connection refused".into()));
            }
            if self.transient.load(Ordering::SeqCst) {
                return Err(SinkError::Transient("HTTP 500".into()));
            }
            match d.message.body.as_ref() {
                b"poison" => {
                    return Err(SinkError::Rejected {
                        reason: "constraint violated".into(),
                        dead_letter: false,
                    })
                }
                b"hang" => std::future::pending::<()>().await,
                _ => {}
            }
            *self.taken.lock().expect("lock").entry(d.message.id.clone()).or_default() += 1;
            Ok(())
        }
    }

    impl Scripted {
        /// Whether `n` messages have been taken (async, to serve as a `run_until` condition).
        async fn taken_count(&self, n: usize) -> bool {
            self.taken.lock().expect("lock").len() == n
        }

        fn taken(&self) -> HashMap<String, u32> {
            self.taken.lock().expect("lock").clone()
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
            batch_size: Some(5),
            wait: Duration::from_millis(50),
            retry: quick,
            probe: quick,
            circuit_threshold: 3,
            sink_timeout: Duration::from_secs(2),
            ..ConsumerConfig::default()
        }
    }

    const VISIBILITY: Duration = Duration::from_secs(5);

    async fn setup(n: usize, extra: &[&str]) -> Arc<dyn Backend> {
        let b: Arc<dyn Backend> = Arc::new(memory_backend_with_clock(Clock::tokio()).expect("memory"));
        let spec = QueueSpec {
            name: "q".into(),
            dead_letter: DeadLetterPolicy { max_receive_count: 5, visibility_timeout: VISIBILITY },
            max_message_bytes: 1024,
        };
        b.ensure(&spec).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        for i in 0..n {
            p.send(OutgoingMessage::new(format!("m{i}"), "ok")).await.expect("send");
        }
        for body in extra {
            p.send(OutgoingMessage::new(*body, body.as_bytes().to_vec())).await.expect("send");
        }
        b
    }

    /// Runs the consumer until `done` holds (or 60 s of virtual time pass),
    /// then shuts it down.
    async fn run_until<F, Fut>(
        b: &Arc<dyn Backend>,
        sink: Arc<Scripted>,
        cfg: ConsumerConfig,
        done: F,
    ) -> RunReport
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let stop = CancellationToken::new();
        let consumer = b.consumer("q").await.expect("consumer");
        let task = tokio::spawn(run(consumer, sink, cfg, stop.clone()));
        for _ in 0..2400 {
            if done().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        task.await.expect("runtime")
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_retry_budget_sends_nothing_to_the_dlq() {
        let b = setup(30, &[]).await;
        let sink = Arc::new(Scripted::default());
        // The retry budget is 5 receives × ≤100 ms; the outage lasts far longer.
        fail_for(&sink, |s| &s.down, Duration::from_millis(1500));
        let report = run_until(&b, sink.clone(), fast(), || sink.taken_count(30)).await;
        let stats = b.stats("q").await.expect("stats");
        assert_eq!(stats.dead, 0, "{report:?}");
        assert_eq!(sink.taken().len(), 30);
        assert_eq!(report.retried, 0, "an outage must not count against messages: {report:?}");
        let taken = sink.taken();
        assert!(taken.values().all(|&n| n == 1), "a message was delivered twice: {taken:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poison_message_walks_to_the_dlq_while_the_rest_is_delivered() {
        let b = setup(10, &["poison"]).await;
        let sink = Arc::new(Scripted::default());
        let report = run_until(&b, sink.clone(), fast(), || async {
            sink.taken_count(10).await && b.stats("q").await.expect("stats").dead == 1
        })
        .await;
        let dead = b.peek_dead("q", 10).await.expect("peek");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, "poison");
        assert_eq!(dead[0].receive_count, 5);
        assert_eq!(dead[0].last_error.as_deref(), Some("constraint violated"));
        // The fifth nack dead-lettered it: counted as such, not as a retry.
        assert_eq!((report.retried, report.dead_lettered), (4, 1), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn five_hundreds_on_every_call_open_the_circuit_after_the_threshold() {
        let b = setup(20, &[]).await;
        let sink = Arc::new(Scripted::default());
        fail_for(&sink, |s| &s.transient, Duration::from_millis(1500));
        let report = run_until(&b, sink.clone(), fast(), || sink.taken_count(20)).await;
        assert_eq!(b.stats("q").await.expect("stats").dead, 0);
        // The circuit opens after `circuit_threshold` (3) failures in a row;
        // each of the 3 workers may have one more call in flight by then.
        // Without the circuit, the 1.5 s outage would cost far more.
        assert!(report.retried <= 3 + 3, "{report:?}");
        let taken = sink.taken();
        assert!(taken.values().all(|&n| n == 1), "{taken:?}");
    }

    /// A sink slower than the visibility timeout: without the keeper, the
    /// tail of each batch expires, is received again by another worker,
    /// reaches the sink twice and walks toward the DLQ.
    #[tokio::test(start_paused = true)]
    async fn a_sink_slower_than_the_visibility_timeout_gets_each_message_once() {
        let b = setup(12, &[]).await;
        let sink = Arc::new(Scripted::default());
        *sink.slow.lock().expect("lock") = VISIBILITY * 2;
        let cfg = ConsumerConfig { sink_timeout: VISIBILITY * 4, ..fast() };
        let report = run_until(&b, sink.clone(), cfg, || sink.taken_count(12)).await;
        let taken = sink.taken();
        assert_eq!(taken.len(), 12, "{report:?}");
        assert!(taken.values().all(|&n| n == 1), "a message reached the sink twice: {taken:?}");
        let stats = b.stats("q").await.expect("stats");
        assert_eq!((stats.pending(), stats.dead), (0, 0), "{report:?}");
        assert_eq!((report.retried, report.stale), (0, 0), "{report:?}");
    }

    /// Steady traffic: one message every 300 ms, 200 in all.
    fn feed(b: &Arc<dyn Backend>) {
        let b = b.clone();
        tokio::spawn(async move {
            let p = b.producer("q").await.expect("producer");
            for i in 0..200 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                p.send(OutgoingMessage::new(format!("f{i}"), "ok")).await.expect("send");
            }
        });
    }

    /// One payload hangs the endpoint while the others go through: a
    /// timeout is `Down`, but the sink is evidently up, so the message is to
    /// blame and reaches the DLQ after `max_receive_count` receives.
    #[tokio::test(start_paused = true)]
    async fn a_message_that_hangs_the_sink_reaches_the_dlq_while_the_rest_is_delivered() {
        let b = setup(20, &["hang"]).await;
        feed(&b);
        let sink = Arc::new(Scripted::default());
        let report =
            run_until(&b, sink.clone(), fast(), || async { b.stats("q").await.expect("stats").dead == 1 })
                .await;
        let dead = b.peek_dead("q", 10).await.expect("peek");
        assert_eq!(dead.len(), 1, "{report:?}");
        assert_eq!(dead[0].id, "hang");
        assert_eq!(dead[0].receive_count, 5);
        assert!(dead[0].last_error.as_deref().is_some_and(|e| e.contains("did not answer")), "{dead:?}");
        let taken = sink.taken();
        assert!(taken.len() >= 20 && taken.values().all(|&n| n == 1), "{taken:?}");
    }

    /// With one worker nothing else is delivered during the hang: the
    /// circuit opens, a probe proves the sink up with another message, and
    /// from then on the hanging one is blamed.
    #[tokio::test(start_paused = true)]
    async fn with_one_worker_a_hanging_message_is_blamed_once_the_sink_took_others() {
        let b = setup(5, &["hang"]).await;
        feed(&b);
        let sink = Arc::new(Scripted::default());
        let cfg = ConsumerConfig { concurrency: 1, ..fast() };
        run_until(&b, sink.clone(), cfg, || async { b.stats("q").await.expect("stats").dead == 1 }).await;
        let dead = b.peek_dead("q", 10).await.expect("peek");
        assert_eq!(dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec!["hang"]);
    }

    /// Records the `max` of every receive; everything else is the inner consumer's.
    struct Recording {
        inner: Arc<dyn Consumer>,
        maxes: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Consumer for Recording {
        async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
            self.maxes.lock().expect("lock").push(max);
            self.inner.receive(max, wait).await
        }
        async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
            self.inner.ack(d).await
        }
        async fn ack_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
            self.inner.ack_batch(ds).await
        }
        async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
            self.inner.nack(d, delay, reason).await
        }
        async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
            self.inner.release(d, delay).await
        }
        async fn extend(&self, d: &Delivery, timeout: Duration) -> Result<(), QueueError> {
            self.inner.extend(d, timeout).await
        }
        async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
            self.inner.dead_letter(d, reason).await
        }
        async fn close(&self) -> Result<(), QueueError> {
            self.inner.close().await
        }
        fn visibility_timeout(&self) -> Duration {
            self.inner.visibility_timeout()
        }
    }

    /// [`Scripted`], taking batches in one call.
    struct Batching(Arc<Scripted>);

    #[async_trait]
    impl Sink for Batching {
        async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
            self.0.deliver(d).await
        }
        fn batches(&self) -> bool {
            true
        }
    }

    /// With `batch_size` unset, a worker asks for as many as its sink takes
    /// in one call: 100 for a batching sink, 10 for one that goes one by one.
    #[tokio::test(start_paused = true)]
    async fn an_unset_batch_size_follows_the_sink() {
        for (batches, expected) in
            [(true, crate::config::BATCHED_SINK_BATCH), (false, crate::config::ONE_BY_ONE_BATCH)]
        {
            let b = setup(150, &[]).await;
            let scripted = Arc::new(Scripted::default());
            let sink: Arc<dyn Sink> =
                if batches { Arc::new(Batching(scripted.clone())) } else { scripted.clone() };
            let consumer = Arc::new(Recording {
                inner: b.consumer("q").await.expect("consumer"),
                maxes: Mutex::default(),
            });
            let cfg = ConsumerConfig { batch_size: None, ..fast() };
            let stop = CancellationToken::new();
            let task = tokio::spawn(run(consumer.clone(), sink, cfg, stop.clone()));
            for _ in 0..2400 {
                if scripted.taken_count(150).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            stop.cancel();
            task.await.expect("runtime");
            assert_eq!(scripted.taken().len(), 150);
            let maxes = consumer.maxes.lock().expect("lock").clone();
            assert!(
                !maxes.is_empty() && maxes.iter().all(|&m| m == expected),
                "batches={batches}: {maxes:?}"
            );
        }
    }
}
