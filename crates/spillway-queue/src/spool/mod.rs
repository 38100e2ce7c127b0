//! The spool: the embedded engine in front of a broker, so a broker outage
//! costs clients nothing but a header.
//!
//! When the broker cannot take a message (down, its circuit open, a
//! timeout), the gateway stores the message in a local spool instead, with
//! the embedded backend's durability (fsync'd before the 2xx), and answers
//! as it would have. A forwarder per queue drains the spool into the broker
//! as soon as it takes messages again: **confirmed send first, then delete
//! from the spool**, so a crash in between gives a duplicate, never a loss.
//!
//! - [`SpoolConfig`]: `queue.spool` (off unless set): where, how big, and
//!   when to spool (`on = "unavailable"` or `"always"`).
//! - [`gate`]: per queue, whether a message goes to the spool, and the
//!   fill it may not pass.
//! - [`forward`]: the forwarder.
//! - [`lazy`]: the broker backend a gateway with a spool runs on, which
//!   connects when it can, so the gateway starts while the broker is down.
//!
//! # Order
//!
//! The spool is the embedded engine, which hands out only the oldest live
//! message of each ordering key: a message with a key is forwarded only
//! after every earlier message with that key was confirmed by the broker
//! (the forwarders run several batches at once; a key's next message is
//! not handed out while its previous one is on its way). While a key has
//! messages in the spool, every new message with that key goes through the
//! spool too ([`gate`]). So a client that sends a keyed message after
//! another's answer sees the two in that order on the broker, whether
//! either was spooled. Messages without a key have no order: once the
//! broker confirms forwards again, new ones go straight to it while the
//! spool drains. (Each backend then keeps the order it keeps:
//! docs/backends.md.)

pub mod forward;
pub mod gate;
pub mod lazy;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::gate::Gate;
use crate::{
    embedded::{Durability, EmbeddedBackend},
    Admin as _, Backend as _, Clock, DeadLetterPolicy, Producer, QueueError, QueueSpec,
};

/// `queue.spool`: a local durable spool in front of a broker backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Folder of the spool's database (`queue.db`), on storage of the
    /// process's own (one per pod). Created if missing.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// The most bytes of messages (bodies and attributes) the spool holds
    /// per queue; past it, requests get 503 with `Retry-After`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// When a message goes to the spool.
    #[serde(default)]
    pub on: SpoolWhen,
    /// At shutdown, after the last request is answered, how long `serve`
    /// keeps forwarding to empty the spool before it exits (what is left
    /// stays in the spool for the next run).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            max_bytes: default_max_bytes(),
            on: SpoolWhen::default(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("./spillway-spool")
}

fn default_max_bytes() -> u64 {
    1 << 30
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// When the gateway spools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolWhen {
    /// Only when the broker does not take a message (and until the spool
    /// is empty again): the 2xx means the broker's confirm, or the local
    /// fsync during an outage.
    #[default]
    Unavailable,
    /// Every message: the 2xx means the local fsync; the forwarder
    /// confirms each to the broker.
    Always,
}

/// Whether the broker's refusal is one the spool waits out: the broker
/// down or slow (retryable), or the queue missing (the operator's to
/// ensure). Not a refusal of the message itself, which no wait cures.
pub fn spoolable(e: &QueueError) -> bool {
    e.is_retryable() || matches!(e, QueueError::NotFound(_))
}

/// The attribute that carries a message's dedup key through the spool (the
/// spool itself dedups nothing: see [`gate::Gate::spool`]).
pub(crate) const DEDUP_ATTRIBUTE: &str = "spillway-spool-dedup-key";

/// How long a forwarded message stays hidden in the spool: longer than any
/// broker send (the publisher's send timeout is seconds). After a crash,
/// what the forwarder held is forwarded again this long after.
pub(crate) const SPOOL_VISIBILITY: Duration = Duration::from_secs(30);

/// An open spool: one embedded database, a queue in it per broker queue.
pub struct Spool {
    local: EmbeddedBackend,
    cfg: SpoolConfig,
    stop: CancellationToken,
    forwarders: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    gates: std::sync::Mutex<Vec<Arc<Gate>>>,
}

impl Spool {
    /// Opens (or creates) the spool's database, fsync per commit.
    pub async fn open(cfg: &SpoolConfig) -> Result<Arc<Self>, QueueError> {
        Self::open_with_clock(cfg, Clock::system()).await
    }

    /// [`Spool::open`] with the time read from `clock` (tests).
    pub async fn open_with_clock(cfg: &SpoolConfig, clock: Clock) -> Result<Arc<Self>, QueueError> {
        if cfg.max_bytes == 0 {
            return Err(QueueError::Invalid("queue.spool.max_bytes must be more than 0".into()));
        }
        let local = EmbeddedBackend::open_with(&cfg.path, Durability::PowerLoss, clock).await?;
        Ok(Arc::new(Self {
            local,
            cfg: cfg.clone(),
            stop: CancellationToken::new(),
            forwarders: tokio::sync::Mutex::default(),
            gates: std::sync::Mutex::default(),
        }))
    }

    /// The gate of `queue`, with its forwarder into `broker` started.
    /// Picks up what an earlier process left in the spool: until that is
    /// forwarded, new messages of the queue are spooled behind it.
    pub async fn gate(&self, queue: &str, broker: Arc<dyn Producer>) -> Result<Arc<Gate>, QueueError> {
        // A message is never dead-lettered for its receives here: the
        // forwarder releases what the broker did not take, uncounted.
        let spec = QueueSpec {
            dead_letter: DeadLetterPolicy {
                max_receive_count: u32::MAX,
                visibility_timeout: SPOOL_VISIBILITY,
            },
            // The broker's own limit was checked before a message gets here.
            max_message_bytes: 1 << 40,
            ..QueueSpec::new(queue)
        };
        self.local.ensure(&spec).await?;
        let stats = self.local.stats(queue).await?;
        let pending = stats.visible + stats.delayed + stats.in_flight;
        let (bytes, keys) = if pending == 0 {
            (0, HashMap::new())
        } else {
            (self.local.live_bytes(queue).await?, self.local.live_keys(queue).await?.into_iter().collect())
        };
        let producer = self.local.producer(queue).await?;
        let gate =
            Arc::new(Gate::new(queue, self.cfg.on, self.cfg.max_bytes, producer, pending, bytes, keys));
        let consumer = self.local.consumer(queue).await?;
        let task =
            tokio::spawn(forward::run(gate.clone(), self.local.clone(), consumer, broker, self.stop.clone()));
        self.forwarders.lock().await.push(task);
        self.gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(gate.clone());
        Ok(gate)
    }

    /// Waits until every queue's spool is empty, at most `within`, while
    /// the forwarders work. Returns what is left, by queue (empty: drained).
    ///
    /// # Cancel safety
    ///
    /// Only waits: dropped, nothing changes.
    pub async fn drain(&self, within: Duration) -> Vec<(String, u64)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = self.left();
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages left in each queue's spool, where any are.
    pub fn left(&self) -> Vec<(String, u64)> {
        let gates = self.gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        gates.iter().map(|g| (g.queue().to_owned(), g.fill().0)).filter(|(_, n)| *n > 0).collect()
    }

    /// Stops every forwarder and waits for it: what one held goes back to
    /// the spool at once (not after the visibility timeout), for the next
    /// process to forward.
    ///
    /// # Cancel safety
    ///
    /// Dropped, the forwarders still stop; what they held comes back after
    /// [`SPOOL_VISIBILITY`] instead.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.forwarders.lock().await);
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Whether a spool was ever opened at `cfg.path` (a read that must not
    /// create one asks this first).
    pub fn exists(cfg: &SpoolConfig) -> bool {
        cfg.path.join(crate::embedded::FILE).is_file()
    }

    /// The spool's own backend, for stats and tests.
    pub fn local(&self) -> &EmbeddedBackend {
        &self.local
    }
}

#[cfg(test)]
mod tests;
