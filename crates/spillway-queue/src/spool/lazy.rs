//! A broker backend that connects when it can: what a gateway with a spool
//! runs on, so it starts (and takes messages into its spool) while the
//! broker is down, and uses the broker from the moment it answers.
//!
//! Without it a gateway restarted during an outage could not start at all
//! (opening the backend and ensuring its queues needs the broker), which
//! the spool drill found: 135 restarts in a row, every request in between
//! refused at the socket.
//!
//! Each call first gets the connected backend. Until there is one, the
//! call starts a connection attempt in the background (the backend opened
//! and every configured queue ensured; at most one per [`RETRY_EVERY`],
//! never two at once) and fails at once with `Unavailable`, which the
//! gateway answers from the spool: no request waits for an attempt (a
//! Kafka admin call to a cluster that is down takes its full timeout,
//! about 20 s, which the Kafka spool drill found as 20 s of refused
//! connections after each gateway restart). Producers made before the
//! broker answered connect on their first send after it does.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{
    config::connect, Admin, Backend, BackendConfig, Consumer, DeadLetter, OutgoingMessage, Producer,
    PurgeTarget, QueueAge, QueueError, QueueSpec, QueueStats,
};

/// The least time between two connection attempts.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A backend connected on first use; see the module doc.
pub struct LazyBackend {
    shared: Arc<Shared>,
}

struct Shared {
    config: BackendConfig,
    specs: Vec<QueueSpec>,
    connected: OnceCell<Arc<dyn Backend>>,
    /// Whether an attempt runs, and when the last one started.
    attempt: Mutex<(bool, Option<tokio::time::Instant>)>,
    /// Told when an attempt ends.
    ended: tokio::sync::Notify,
    /// Why the last attempt failed, for the errors meanwhile.
    last_error: Mutex<Option<String>>,
}

impl LazyBackend {
    /// `specs`: the queues to ensure once connected.
    pub fn new(config: BackendConfig, specs: Vec<QueueSpec>) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                specs,
                connected: OnceCell::new(),
                attempt: Mutex::new((false, None)),
                ended: tokio::sync::Notify::new(),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Starts connecting and waits for it, at most `within`, so a broker
    /// that is up at start is used from the first request. The attempt
    /// goes on in the background past `within`.
    ///
    /// # Cancel safety
    ///
    /// Only waits: dropped, the attempt goes on.
    pub async fn try_connect(&self, within: Duration) -> Result<(), QueueError> {
        // Registered before the attempt starts, so its end is not missed.
        let ended = self.shared.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if self.shared.get().await.is_ok() {
            return Ok(());
        }
        let _ = tokio::time::timeout(within, ended).await;
        self.shared.get().await.map(|_| ())
    }
}

impl Shared {
    /// The connected backend, or `Unavailable` at once (an attempt started
    /// in the background when none runs and the last is old enough).
    async fn get(self: &Arc<Self>) -> Result<Arc<dyn Backend>, QueueError> {
        if let Some(b) = self.connected.get() {
            return Ok(b.clone());
        }
        self.kick();
        Err(self.not_yet())
    }

    fn kick(self: &Arc<Self>) {
        {
            let mut a = self.attempt.lock().unwrap_or_else(PoisonError::into_inner);
            let (running, last) = &mut *a;
            if *running || last.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
                return;
            }
            *running = true;
            *last = Some(tokio::time::Instant::now());
        }
        let shared = self.clone();
        tokio::spawn(async move {
            match shared.open().await {
                Ok(b) => {
                    let _ = shared.connected.set(b);
                    tracing::info!(backend = shared.config.kind(), "connected to the queue backend");
                }
                Err(e) => {
                    let first = shared
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .replace(e.to_string());
                    if first.is_none() {
                        tracing::warn!(error = %e, "the queue backend does not answer; trying again every second");
                    }
                }
            }
            shared.attempt.lock().unwrap_or_else(PoisonError::into_inner).0 = false;
            shared.ended.notify_waiters();
        });
    }

    async fn open(&self) -> Result<Arc<dyn Backend>, QueueError> {
        let b = connect(&self.config).await?;
        for spec in &self.specs {
            b.ensure(spec).await?;
        }
        Ok(b)
    }

    fn not_yet(&self) -> QueueError {
        let why = self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone();
        QueueError::unavailable_msg(format!(
            "not connected to the queue backend yet{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        ))
    }

    fn spec(&self, queue: &str) -> QueueSpec {
        self.specs.iter().find(|s| s.name == queue).cloned().unwrap_or_else(|| QueueSpec::new(queue))
    }
}

#[async_trait]
impl Admin for LazyBackend {
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        self.shared.get().await?.ensure(spec).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.shared.get().await?.stats(queue).await
    }
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError> {
        self.shared.get().await?.age(queue).await
    }
    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.shared.get().await?.peek_dead(queue, max).await
    }
    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
        self.shared.get().await?.redrive(queue, max).await
    }
    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
        self.shared.get().await?.purge(queue, target).await
    }
}

#[async_trait]
impl Backend for LazyBackend {
    fn kind(&self) -> &'static str {
        self.shared.config.kind()
    }

    /// A producer that connects on its first send after the broker answers.
    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
        let max_message_bytes = self.shared.spec(queue).max_message_bytes;
        Ok(Arc::new(LazyProducer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            max_message_bytes,
            inner: OnceCell::new(),
        }))
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
        self.shared.get().await?.consumer(queue).await
    }

    async fn ready(&self) -> Result<(), QueueError> {
        self.shared.get().await?.ready().await
    }
}

struct LazyProducer {
    shared: Arc<Shared>,
    queue: String,
    max_message_bytes: usize,
    inner: OnceCell<Arc<dyn Producer>>,
}

impl LazyProducer {
    async fn inner(&self) -> Result<Arc<dyn Producer>, QueueError> {
        if let Some(p) = self.inner.get() {
            return Ok(p.clone());
        }
        let p = self.shared.get().await?.producer(&self.queue).await?;
        let _ = self.inner.set(p.clone());
        Ok(p)
    }
}

#[async_trait]
impl Producer for LazyProducer {
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        self.inner().await?.send_batch(msgs).await
    }

    async fn send_each(
        &self,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        match self.inner().await {
            Ok(p) => p.send_each(msgs, report).await,
            Err(e) => (0..msgs.len()).for_each(|i| report(i, Err(e.clone()))),
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// As the broker's own producer answers (the publisher asks once, at
    /// start, possibly before the broker answered).
    fn confirms_each(&self) -> bool {
        match &self.shared.config {
            #[cfg(feature = "rabbitmq")]
            BackendConfig::Rabbitmq(_) => true,
            #[cfg(feature = "kafka")]
            BackendConfig::Kafka(_) => true,
            _ => false,
        }
    }

    fn max_batches_in_flight(&self) -> Option<usize> {
        match &self.shared.config {
            #[cfg(feature = "rabbitmq")]
            BackendConfig::Rabbitmq(c) => Some(c.publisher_channels),
            _ => None,
        }
    }
}
