//! A broker backend that connects when it can: what a gateway with a spool
//! runs on, so it starts (and takes messages into its spool) while the
//! broker is down, and uses the broker from the moment it answers.
//!
//! Without it a gateway restarted during an outage could not start at all
//! (opening the backend and ensuring its queues needs the broker), which
//! the spool drill found: 135 restarts in a row, every request in between
//! refused at the socket.
//!
//! Each call first gets the connected backend: connected already, or
//! connected now (the backend opened and every configured queue ensured),
//! at most one attempt per [`RETRY_EVERY`] and never two at once. Until it
//! connects, every call fails at once with `Unavailable`, which the gateway
//! answers from the spool. Producers made before the broker answered
//! connect on their first send after it does.

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
    /// Held while an attempt runs; when the last one started.
    attempt: tokio::sync::Mutex<Option<tokio::time::Instant>>,
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
                attempt: tokio::sync::Mutex::new(None),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Tries to connect now (within the pacing), so a broker that is up at
    /// start is used from the first request.
    pub async fn try_connect(&self) -> Result<(), QueueError> {
        self.shared.get().await.map(|_| ())
    }
}

impl Shared {
    async fn get(&self) -> Result<Arc<dyn Backend>, QueueError> {
        if let Some(b) = self.connected.get() {
            return Ok(b.clone());
        }
        // Another attempt in progress: fail now rather than queue behind it.
        let Ok(mut last) = self.attempt.try_lock() else { return Err(self.not_yet()) };
        if let Some(b) = self.connected.get() {
            return Ok(b.clone());
        }
        if last.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
            return Err(self.not_yet());
        }
        *last = Some(tokio::time::Instant::now());
        match self.open().await {
            Ok(b) => {
                let _ = self.connected.set(b.clone());
                tracing::info!(backend = self.config.kind(), "connected to the queue backend");
                Ok(b)
            }
            Err(e) => {
                let first =
                    self.last_error.lock().unwrap_or_else(PoisonError::into_inner).replace(e.to_string());
                if first.is_none() {
                    tracing::warn!(error = %e, "the queue backend does not answer; trying again every second");
                }
                Err(e)
            }
        }
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
