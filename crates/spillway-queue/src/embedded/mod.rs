//! The embedded backend: a durable queue in a SQLite file, no broker needed.
//!
//! - Durability: WAL mode with `synchronous=FULL` (see [`schema`]). A send is
//!   answered `Ok` only after the transaction holding it committed.
//! - Throughput: one writer thread group-commits every pending operation in
//!   one transaction (see [`writer`]), so concurrent requests share an fsync.
//! - Semantics: those of SQS, implemented in plain SQL (see [`ops`]).
//! - Long poll: receivers in this process wake on a [`Notify`] when a send
//!   commits; a consumer in another process sharing the file polls every
//!   [`CROSS_PROCESS_POLL`].
//! - Time: read from the backend's [`Clock`] by the caller and passed to the
//!   writer with each job, so tests drive it with a paused tokio clock.

mod durability;
mod ops;
mod schema;
mod writer;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::{sync::Notify, time::Instant};

pub use self::durability::{Durability, CHECKPOINT_EVERY};
use self::{durability::Checkpointer, ops::Handle, writer::Writer};
use crate::{
    Admin, Backend, Clock, Consumer, DeadLetter, Delivery, Nacked, OutgoingMessage, Producer, PurgeTarget,
    QueueAge, QueueError, QueueSpec, QueueStats,
};

/// How often a long poll looks again when nothing in this process wakes it:
/// the bound on latency for a consumer running in another process.
pub const CROSS_PROCESS_POLL: Duration = Duration::from_millis(100);

/// The database's file name in its folder.
pub const FILE: &str = "queue.db";

/// A handle on one embedded database. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBackend {
    shared: Arc<Shared>,
}

struct Shared {
    writer: Writer,
    /// A read-only connection for `stats`, so counting never waits for the
    /// writer nor holds it up. `None` for the memory backend, whose database
    /// only its one connection can see.
    reader: Option<Arc<Mutex<Connection>>>,
    /// `process_crash` only: checkpoints every 100 ms, which fsyncs the WAL
    /// and so bounds what a power cut takes back. Stops when dropped.
    _checkpointer: Option<Checkpointer>,
    kind: &'static str,
    clock: Clock,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Shared {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        wakers.entry(queue.to_owned()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        self.waker(queue).notify_waiters();
    }
}

impl EmbeddedBackend {
    /// Opens (or creates) the database `queue.db` in the folder `dir`, with
    /// the default [`Durability`].
    pub async fn open(dir: &Path) -> Result<Self, QueueError> {
        Self::open_with(dir, Durability::default(), Clock::system()).await
    }

    /// [`EmbeddedBackend::open`] with the time read from `clock`.
    pub async fn open_with_clock(dir: &Path, clock: Clock) -> Result<Self, QueueError> {
        Self::open_with(dir, Durability::default(), clock).await
    }

    /// [`EmbeddedBackend::open`] with what a commit survives, and the time
    /// read from `clock`.
    pub async fn open_with(dir: &Path, durability: Durability, clock: Clock) -> Result<Self, QueueError> {
        let dir = dir.to_owned();
        let conn = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                QueueError::unavailable(format!("embedded queue: cannot create {}", dir.display()), e)
            })?;
            let path = dir.join(FILE);
            let conn = Connection::open(&path).map_err(|e| {
                QueueError::unavailable(format!("embedded queue: cannot open {}", path.display()), e)
            })?;
            schema::prepare(&conn, Some(durability))?;
            let reader = schema::open_reader(&path)?;
            let checkpointer = match durability {
                Durability::PowerLoss => None,
                Durability::ProcessCrash => Some(Checkpointer::spawn(&path, durability)?),
            };
            Ok::<_, QueueError>((conn, reader, checkpointer))
        })
        .await
        .map_err(|e| QueueError::unavailable("embedded queue: open task failed", e))??;
        let (conn, reader, checkpointer) = conn;
        Self::start(conn, Some((reader, checkpointer)), "embedded", clock)
    }

    /// The same engine on an in-memory database: **not durable**. Used by the
    /// memory backend.
    pub(crate) fn open_in_memory(clock: Clock) -> Result<Self, QueueError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| QueueError::unavailable("memory queue: cannot open database", e))?;
        schema::prepare(&conn, None)?;
        Self::start(conn, None, "memory", clock)
    }

    /// `file`: the read connection and the checkpoint thread (if any) of a
    /// database on disk.
    fn start(
        conn: Connection,
        file: Option<(Connection, Option<Checkpointer>)>,
        kind: &'static str,
        clock: Clock,
    ) -> Result<Self, QueueError> {
        let writer = Writer::spawn(conn, kind, clock.is_tokio())?;
        let (reader, checkpointer) = match file {
            Some((r, c)) => (Some(Arc::new(Mutex::new(r))), c),
            None => (None, None),
        };
        let wakers = Mutex::default();
        Ok(Self {
            shared: Arc::new(Shared { writer, reader, _checkpointer: checkpointer, kind, clock, wakers }),
        })
    }

    /// Runs `f` in one read transaction (one snapshot) on the read
    /// connection, beside the writer; on the writer where there is none
    /// (the memory backend).
    async fn read<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        let Some(reader) = self.shared.reader.clone() else {
            return self.shared.writer.run(f).await;
        };
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            let begin = conn.execute_batch("BEGIN");
            let out = begin
                .map_err(|e| QueueError::unavailable("embedded queue: cannot begin a read", e))
                .and_then(|()| f(&conn));
            let _ = conn.execute_batch("COMMIT");
            out
        })
        .await
        .map_err(|e| QueueError::unavailable("embedded queue: read task failed", e))?
    }

    /// The bytes of `queue`'s live messages, bodies and attributes as
    /// stored (a scan: run once, where a spool is opened again).
    pub async fn live_bytes(&self, queue: &str) -> Result<u64, QueueError> {
        let queue = queue.to_owned();
        self.read(move |c| ops::live_bytes(c, &queue)).await
    }

    /// How many live messages of `queue` each ordering key has (a scan:
    /// run once, where a spool is opened again).
    pub async fn live_keys(&self, queue: &str) -> Result<Vec<(String, u64)>, QueueError> {
        let queue = queue.to_owned();
        self.read(move |c| ops::live_keys(c, &queue)).await
    }

    /// `journal_mode` and `synchronous` as the writer's connection reports
    /// them: what durability rests on, read back rather than assumed.
    pub async fn durability_pragmas(&self) -> Result<(String, i64), QueueError> {
        self.shared.writer.run(schema::read_durability).await
    }
}

#[async_trait]
impl Admin for EmbeddedBackend {
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        if spec.dead_letter.max_receive_count == 0 {
            return Err(QueueError::Invalid("max_receive_count must be at least 1".into()));
        }
        // Every command opens the backend and ensures its queues; a queue
        // that is already as configured is left alone, read beside the
        // writer, so a CLI command next to a busy gateway takes no write lock.
        let name = spec.name.clone();
        if let Ok(current) = self.read(move |c| ops::policy(c, &name)).await {
            if current.matches(spec) {
                return Ok(());
            }
        }
        let spec = spec.clone();
        self.shared.writer.run(move |c| ops::ensure(c, &spec)).await
    }

    /// O(1) in the backlog, and on the read connection: it neither waits for
    /// the writer nor holds it up (see [`ops::stats`]).
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let (queue, now) = (queue.to_owned(), self.shared.now());
        self.read(move |c| ops::stats(c, &queue, now)).await
    }

    /// Kept until consumed; the oldest message's age on the read
    /// connection (see [`ops::oldest_enqueued`] for its cost).
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError> {
        let (q, now) = (queue.to_owned(), self.shared.now());
        let oldest = self.read(move |c| ops::oldest_enqueued(c, &q)).await?;
        let age = oldest.map_or(0, |at| now.saturating_sub(at).max(0));
        Ok(QueueAge { retention: None, oldest: Some(Duration::from_millis(u64::try_from(age).unwrap_or(0))) })
    }

    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let queue = queue.to_owned();
        self.shared.writer.run(move |c| ops::peek_dead(c, &queue, max)).await
    }

    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
        let (q, now) = (queue.to_owned(), self.shared.now());
        let moved = self.shared.writer.run(move |c| ops::redrive(c, &q, max, now)).await?;
        self.shared.wake(queue);
        Ok(moved)
    }

    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
        let queue = queue.to_owned();
        self.shared.writer.run(move |c| ops::purge(c, &queue, target)).await
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        self.shared.kind
    }

    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
        let q = queue.to_owned();
        let policy = self.read(move |c| ops::policy(c, &q)).await?;
        Ok(Arc::new(EmbeddedProducer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            max_message_bytes: policy.max_message_bytes,
        }))
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
        let q = queue.to_owned();
        let policy = self.read(move |c| ops::policy(c, &q)).await?;
        Ok(Arc::new(EmbeddedConsumer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            held: Arc::default(),
            visibility_timeout: Duration::from_millis(
                u64::try_from(policy.visibility_timeout_ms).unwrap_or(0),
            ),
        }))
    }

    async fn ready(&self) -> Result<(), QueueError> {
        self.shared.writer.run(ops::ping).await
    }
}

struct EmbeddedProducer {
    shared: Arc<Shared>,
    queue: String,
    max_message_bytes: usize,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let limit = self.max_message_bytes;
        let outcomes: Vec<Result<(), QueueError>> = msgs.iter().map(|m| m.check_size(limit)).collect();
        let fits: Vec<OutgoingMessage> =
            msgs.into_iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(m, _)| m).collect();
        if !fits.is_empty() {
            let (queue, now) = (self.queue.clone(), self.shared.now());
            self.shared.writer.run_without_savepoint(move |c| ops::send(c, &queue, &fits, now)).await?;
            self.shared.wake(&self.queue);
        }
        Ok(outcomes)
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

/// Deliveries received and not yet settled, by `seq`, with their receipt
/// generation. Shared with the writer thread: a receive records what it took
/// there, inside its own job, so a receive whose caller went away (a dropped
/// future) still leaves its deliveries here for `close` to release.
type Held = Arc<Mutex<HashMap<i64, i64>>>;

struct EmbeddedConsumer {
    shared: Arc<Shared>,
    queue: String,
    held: Held,
    visibility_timeout: Duration,
}

impl EmbeddedConsumer {
    fn settle(&self, d: &Delivery) -> Result<Handle, QueueError> {
        let h = Handle::parse(&d.receipt)?;
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(&h.seq) == Some(&h.receipt) {
            held.remove(&h.seq);
        }
        Ok(h)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        let waker = self.shared.waker(&self.queue);
        loop {
            // Register for a wake-up before looking, so a send that commits
            // between the look and the wait is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (queue, held, now) = (self.queue.clone(), self.held.clone(), self.shared.now());
            let got = self
                .shared
                .writer
                .run(move |c| {
                    let got = ops::receive(c, &queue, max, now)?;
                    let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
                    held.extend(got.deliveries.iter().map(|(h, _)| (h.seq, h.receipt)));
                    Ok(got)
                })
                .await?;
            if !got.deliveries.is_empty() {
                return Ok(got.deliveries.into_iter().map(|(_, d)| d).collect());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake_at = deadline.min(now + CROSS_PROCESS_POLL);
            if let Some(at) = got.next_visible_at {
                let in_ms = u64::try_from(at.saturating_sub(self.shared.now())).unwrap_or(0);
                wake_at = wake_at.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        let h = self.settle(d)?;
        let queue = self.queue.clone();
        let unblocked = self.shared.writer.run(move |c| ops::ack(c, &queue, h)).await?;
        if unblocked {
            self.shared.wake(&self.queue);
        }
        Ok(())
    }

    /// One writer job for the whole batch: one commit, not one per message.
    async fn ack_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        let handles = ds.iter().map(|d| self.settle(d)).collect::<Result<Vec<_>, _>>()?;
        let queue = self.queue.clone();
        let unblocked = self
            .shared
            .writer
            .run(move |c| {
                handles
                    .into_iter()
                    .try_fold(false, |any, h| Ok::<_, QueueError>(ops::ack(c, &queue, h)? || any))
            })
            .await?;
        if unblocked {
            self.shared.wake(&self.queue);
        }
        Ok(())
    }

    async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
        let h = self.settle(d)?;
        let (queue, reason, now) = (self.queue.clone(), reason.to_owned(), self.shared.now());
        let nacked = self.shared.writer.run(move |c| ops::nack(c, &queue, h, delay, &reason, now)).await?;
        // Back at once, or dead-lettered (which may unblock the next message
        // of its key, as an ack does): either way a waiting receive may
        // find something now.
        if delay.is_zero() || nacked == Nacked::DeadLettered {
            self.shared.wake(&self.queue);
        }
        Ok(nacked)
    }

    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let h = self.settle(d)?;
        let now = self.shared.now();
        self.shared.writer.run(move |c| ops::release(c, h, delay, now)).await?;
        if delay.is_zero() {
            self.shared.wake(&self.queue);
        }
        Ok(())
    }

    async fn extend(&self, d: &Delivery, timeout: Duration) -> Result<(), QueueError> {
        let h = Handle::parse(&d.receipt)?;
        let now = self.shared.now();
        self.shared.writer.run(move |c| ops::extend(c, h, timeout, now)).await
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let h = self.settle(d)?;
        let (queue, reason, now) = (self.queue.clone(), reason.to_owned(), self.shared.now());
        self.shared.writer.run(move |c| ops::dead_letter(c, &queue, h, &reason, now)).await?;
        // The next message of its key, if any, is receivable now.
        self.shared.wake(&self.queue);
        Ok(())
    }

    /// Drains `held` on the writer thread, after every receive sent before it
    /// has recorded what it took: jobs run in the order they were sent.
    async fn close(&self) -> Result<(), QueueError> {
        let (held, now) = (self.held.clone(), self.shared.now());
        let released = self
            .shared
            .writer
            .run(move |c| {
                let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
                let n = held.len();
                for (seq, receipt) in held.drain() {
                    ops::release(c, Handle { seq, receipt }, Duration::ZERO, now)?;
                }
                Ok(n)
            })
            .await?;
        if released > 0 {
            self.shared.wake(&self.queue);
        }
        Ok(())
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::EmbeddedBackend;
    use crate::{
        testkit::{Capabilities, Harness},
        Admin, Backend, Clock,
    };

    /// Each scenario gets its own database folder, kept until the harness
    /// drops, and runs on tokio's paused clock.
    struct Embedded {
        dir: tempfile::TempDir,
        backend: EmbeddedBackend,
    }

    #[async_trait]
    impl Harness for Embedded {
        fn capabilities() -> Capabilities {
            Capabilities::embedded()
        }
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let backend = EmbeddedBackend::open_with_clock(dir.path(), Clock::tokio())
                .await
                .expect("open embedded queue");
            Self { dir, backend }
        }
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.backend.clone())
        }
        async fn reopen(&self) -> Arc<dyn Backend> {
            Arc::new(EmbeddedBackend::open_with_clock(self.dir.path(), Clock::tokio()).await.expect("reopen"))
        }
    }

    crate::conformance_tests!(Embedded);

    /// `stats` must not go through the writer: with another connection
    /// holding the write lock, a writer job would wait for it (and fail after
    /// the busy handler's patience), while a read in WAL mode goes ahead.
    #[tokio::test]
    async fn stats_answer_while_another_connection_holds_the_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        b.ensure(&crate::QueueSpec::new("q")).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        p.send(crate::OutgoingMessage::new("a", "x")).await.expect("send");
        let locker = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        let stats = b.stats("q").await;
        locker.execute_batch("ROLLBACK").expect("release");
        assert_eq!(stats.expect("stats while the writer is locked out").visible, 1);
    }

    /// A second process that opens the queue, ensures it as configured and
    /// reads its counts (`spillway queue stats` beside a busy gateway) takes
    /// no write lock: with another connection holding it, it still answers,
    /// instead of queueing behind the gateway's writer.
    #[tokio::test]
    async fn opening_ensuring_and_counting_need_no_write_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = crate::QueueSpec::new("q");
        {
            let b = EmbeddedBackend::open(dir.path()).await.expect("open");
            b.ensure(&spec).await.expect("ensure");
        }
        let locker = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        let second = async {
            let b = EmbeddedBackend::open(dir.path()).await?;
            b.ensure(&spec).await?;
            b.stats("q").await
        };
        let stats = tokio::time::timeout(std::time::Duration::from_secs(3), second).await;
        locker.execute_batch("ROLLBACK").expect("release");
        let stats = stats.expect("waited for the write lock").expect("open, ensure and stats");
        assert_eq!(stats.visible, 0);
    }

    /// A send waits out a write lock another process holds for a while (a
    /// consumer's commit beside the gateway) instead of failing at once, and
    /// waits in Spillway's busy handler (polls every 250 µs), not in the
    /// 5 s `busy_timeout` rusqlite sets on every connection (backs off to
    /// 100 ms between tries).
    #[tokio::test]
    async fn a_send_waits_for_a_lock_another_connection_holds_briefly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        b.ensure(&crate::QueueSpec::new("q")).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        let locker = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
        let polls = super::schema::BUSY_CALLS.load(std::sync::atomic::Ordering::Relaxed);
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            locker.execute_batch("ROLLBACK").expect("release");
        });
        p.send(crate::OutgoingMessage::new("a", "x")).await.expect("the send waited for the lock");
        release.join().expect("locker");
        assert!(
            super::schema::BUSY_CALLS.load(std::sync::atomic::Ordering::Relaxed) > polls,
            "the wait went through Spillway's busy handler"
        );
        assert_eq!(b.stats("q").await.expect("stats").visible, 1);
    }

    /// Dead-lettering a key's head wakes a receive that is waiting, as an
    /// ack does: the next message of the key is receivable at once, not at
    /// the next [`super::CROSS_PROCESS_POLL`].
    #[tokio::test(start_paused = true)]
    async fn dead_lettering_a_head_wakes_a_waiting_receive() {
        use std::time::Duration;

        use crate::{OutgoingMessage, QueueSpec};
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open_with_clock(dir.path(), Clock::tokio()).await.expect("open");
        b.ensure(&QueueSpec::new("q")).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        for id in ["k0", "k1"] {
            let mut m = OutgoingMessage::new(id, "x");
            m.ordering_key = Some("k".into());
            p.send(m).await.expect("send");
        }
        let c = b.consumer("q").await.expect("consumer");
        let head = c.receive(10, Duration::ZERO).await.expect("receive");
        assert_eq!(head.len(), 1, "only the head");
        let waiting = b.consumer("q").await.expect("consumer");
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move {
            let got = waiting.receive(10, Duration::from_secs(10)).await.expect("receive");
            (got.into_iter().map(|d| d.message.id).collect::<Vec<_>>(), started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.dead_letter(&head[0], "poison").await.expect("dead-letter");
        let (ids, waited) = waiter.await.expect("waiter");
        assert_eq!(ids, ["k1"]);
        assert!(waited < super::CROSS_PROCESS_POLL, "the receive waited {waited:?}");
    }

    /// The counters agree with a full scan after every kind of operation.
    #[tokio::test(start_paused = true)]
    async fn counters_agree_with_a_full_scan() {
        use std::time::Duration;

        use crate::{DeadLetterPolicy, OutgoingMessage, PurgeTarget, QueueSpec};
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open_with_clock(dir.path(), Clock::tokio()).await.expect("open");
        let spec = QueueSpec {
            name: "q".into(),
            dead_letter: DeadLetterPolicy {
                max_receive_count: 2,
                visibility_timeout: Duration::from_secs(1),
            },
            max_message_bytes: 1024,
        };
        b.ensure(&spec).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        let c = b.consumer("q").await.expect("consumer");
        let check = |what: &'static str| {
            let b = b.clone();
            async move {
                let now = b.shared.now();
                let scanned = b.shared.writer.run(move |c| super::ops::stats_by_scan(c, "q", now)).await;
                assert_eq!(b.stats("q").await.expect("stats"), scanned.expect("scan"), "after {what}");
            }
        };
        for i in 0..20 {
            let mut m = OutgoingMessage::new(format!("m{i}"), "x");
            m.dedup_key = Some(format!("k{}", i % 15));
            m.delay = Duration::from_millis(if i % 4 == 0 { 5000 } else { 0 });
            p.send(m).await.expect("send");
        }
        check("sends with dedup and delays").await;
        let got = c.receive(8, Duration::ZERO).await.expect("receive");
        check("a receive").await;
        c.ack(&got[0]).await.expect("ack");
        c.ack(&got[0]).await.expect("double ack");
        c.nack(&got[1], Duration::from_secs(3), "x").await.expect("nack");
        c.release(&got[2], Duration::ZERO).await.expect("release");
        c.dead_letter(&got[3], "poison").await.expect("dead-letter");
        check("ack, nack, release, dead-letter").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = c.receive(20, Duration::ZERO).await.expect("receive after expiry");
        for d in &again {
            let _ = c.nack(d, Duration::ZERO, "again").await.expect("nack");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ =
            c.receive(20, Duration::ZERO).await.expect("receive: expired last receives are dead-lettered");
        check("nacks to the DLQ and expiry").await;
        assert_eq!(b.redrive("q", 3).await.expect("redrive"), 3);
        check("redrive").await;
        b.purge("q", PurgeTarget::Dead).await.expect("purge dead");
        check("purge dead").await;
        b.purge("q", PurgeTarget::Source).await.expect("purge");
        check("purge").await;
        c.close().await.expect("close");
    }

    /// A queue folder whose file holds `messages` as layouts 0 and 1 had it,
    /// then `sql` (the `queues` table of that layout, rows, the version).
    fn old_database(sql: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        conn.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, id TEXT NOT NULL,
                 body BLOB NOT NULL, attributes TEXT NOT NULL, ordering_key TEXT, dedup_key TEXT,
                 enqueued_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
                 receive_count INTEGER NOT NULL DEFAULT 0, receipt_gen INTEGER NOT NULL DEFAULT 0,
                 receipt INTEGER, first_received_at INTEGER, last_received_at INTEGER, last_error TEXT,
                 dead_at INTEGER);",
        )
        .expect("old messages table");
        conn.execute_batch(sql).expect("old layout");
        dir
    }

    /// A database written before the counters existed is counted once on open.
    #[tokio::test]
    async fn an_old_database_gets_its_counters_on_open() {
        let dir = old_database(
            "CREATE TABLE queues (name TEXT PRIMARY KEY, max_receive_count INTEGER NOT NULL,
                                  visibility_timeout_ms INTEGER NOT NULL, max_message_bytes INTEGER NOT NULL);
             INSERT INTO queues VALUES ('q', 5, 30000, 1024);
             INSERT INTO messages (queue, id, body, attributes, enqueued_at, visible_at) VALUES
                 ('q', 'a', x'00', '{}', 0, 0), ('q', 'b', x'00', '{}', 0, 0);
             INSERT INTO messages (queue, id, body, attributes, enqueued_at, visible_at, dead_at) VALUES
                 ('q', 'c', x'00', '{}', 0, 0, 1);",
        );
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        let s = b.stats("q").await.expect("stats");
        assert_eq!((s.visible, s.dead), (2, 1));
    }

    /// A database of layout 1 (before `blocked`) gets the flag on open: each
    /// key's oldest live message leads, the rest wait behind it.
    #[tokio::test]
    async fn a_layout_1_database_gets_its_keys_blocked_on_open() {
        let dir = old_database(
            "CREATE TABLE queues (name TEXT PRIMARY KEY, max_receive_count INTEGER NOT NULL,
                                  visibility_timeout_ms INTEGER NOT NULL, max_message_bytes INTEGER NOT NULL,
                                  live INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX messages_ready ON messages (queue, dead_at, visible_at, seq);
             CREATE INDEX messages_group ON messages (queue, ordering_key, seq) WHERE ordering_key IS NOT NULL;
             INSERT INTO queues VALUES ('q', 5, 30000, 1024, 5, 1);
             INSERT INTO messages (queue, id, body, attributes, ordering_key, enqueued_at, visible_at, dead_at)
             VALUES ('q', 'k-dead', x'00', '{}', 'k', 0, 0, 1), ('q', 'k1', x'00', '{}', 'k', 0, 0, NULL),
                    ('q', 'k2', x'00', '{}', 'k', 0, 0, NULL), ('q', 'j1', x'00', '{}', 'j', 0, 0, NULL),
                    ('q', 'j2', x'00', '{}', 'j', 0, 0, NULL), ('q', 'plain', x'00', '{}', NULL, 0, 0, NULL);
             PRAGMA user_version = 1;",
        );
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        let c = b.consumer("q").await.expect("consumer");
        let got = c.receive(10, std::time::Duration::ZERO).await.expect("receive");
        let ids: Vec<_> = got.iter().map(|d| d.message.id.as_str()).collect();
        assert_eq!(ids, ["k1", "j1", "plain"], "each key's oldest live message, and the one without a key");
        c.ack_batch(&got).await.expect("ack");
        let got = c.receive(10, std::time::Duration::ZERO).await.expect("receive");
        let ids: Vec<_> = got.iter().map(|d| d.message.id.as_str()).collect();
        assert_eq!(ids, ["k2", "j2"]);
    }

    /// Durability rests on these two settings; the `kill -9` test cannot see
    /// them (the page cache outlives a killed process), so read them back.
    #[tokio::test]
    async fn the_database_is_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        let (journal, synchronous) = b.durability_pragmas().await.expect("pragmas");
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL");
    }

    /// The opt-in `process_crash` durability is `synchronous=NORMAL`, in WAL
    /// mode all the same.
    #[tokio::test]
    async fn process_crash_durability_is_wal_with_normal_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b =
            EmbeddedBackend::open_with(dir.path(), super::Durability::ProcessCrash, crate::Clock::system())
                .await
                .expect("open");
        let (journal, synchronous) = b.durability_pragmas().await.expect("pragmas");
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 1, "synchronous=NORMAL");
    }

    /// `process_crash` fsyncs the WAL only at checkpoints, so its thread
    /// runs one every 100 ms: 600 KiB, far below SQLite's own 1,000-page
    /// checkpoint, reach the database file. The default mode keeps SQLite's
    /// in-commit checkpoint (measured best, see `durability.rs`).
    #[tokio::test]
    async fn process_crash_checkpoints_beside_the_writer() {
        use crate::{OutgoingMessage, QueueSpec};
        let pages = |b: EmbeddedBackend| async move {
            b.shared
                .writer
                .run(|c| {
                    c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, u32>(0))
                        .map_err(|e| crate::QueueError::unavailable("pragma", e))
                })
                .await
                .expect("pragma")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let b = EmbeddedBackend::open(dir.path()).await.expect("open");
        assert_eq!(pages(b).await, 1000, "the default keeps SQLite's own checkpoint");
        let dir = tempfile::tempdir().expect("tempdir");
        let b =
            EmbeddedBackend::open_with(dir.path(), super::Durability::ProcessCrash, crate::Clock::system())
                .await
                .expect("open");
        b.ensure(&QueueSpec::new("q")).await.expect("ensure");
        let db = dir.path().join("queue.db");
        let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let p = b.producer("q").await.expect("producer");
        let batch: Vec<_> =
            (0..600).map(|i| OutgoingMessage::new(format!("m{i}"), vec![b'x'; 1024])).collect();
        for r in p.send_batch(batch).await.expect("send") {
            r.expect("sent");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while size() < before + 600 * 1024 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was not copied into the database file ({} bytes, {before} before)",
                size()
            );
            tokio::time::sleep(super::CHECKPOINT_EVERY).await;
        }
    }
}
