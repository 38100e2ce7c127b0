//! Per queue: whether a message goes to the spool, and how full it may get.
//!
//! A message goes to the spool (`on = "unavailable"`) while the broker is
//! taken to be down, or while its ordering key has messages in the spool,
//! so a key's messages reach the broker in send order. The broker is taken
//! to be down from the first message it did not take until the forwarder
//! gets a confirm from it (or the spool is empty): from then on, messages
//! whose key has nothing spooled go straight to the broker again while the
//! forwarder drains the rest, rather than queueing behind a long spool.
//!
//! A broker that takes messages but slowly (at its limit, draining the
//! spool beside the new traffic) is treated as down for [`SLOW_HOLD`]:
//! a direct publish that took longer than [`SLOW`] while the spool is not
//! empty sends new messages to the spool again, so clients keep fast
//! answers and the broker's capacity goes to the forwarder.
//!
//! `pending` counts what is in the spool or on its way in (a write counts
//! from before it starts), per key too, so a key leaves the spool's way
//! only once every spooled message with it was forwarded and none is being
//! written.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::{SpoolWhen, DEDUP_ATTRIBUTE};
use crate::{Delivery, OutgoingMessage, Producer, QueueError};

/// A direct publish slower than this, while the spool is not empty, takes
/// the broker for saturated.
pub const SLOW: Duration = Duration::from_millis(250);
/// How long a saturated broker is treated as down: new messages spooled,
/// whatever the forwarder's confirms say.
pub const SLOW_HOLD: Duration = Duration::from_secs(5);

/// Messages written to the spool, by queue.
pub const SPOOLED: &str = "spillway_spool_written_total";
/// Messages and bytes in the spool, by queue.
pub const SPOOL_MESSAGES: &str = "spillway_spool_messages";
pub const SPOOL_BYTES: &str = "spillway_spool_bytes";
/// Requests refused because the spool was full, by queue.
pub const SPOOL_FULL: &str = "spillway_spool_full_total";

/// The spool of one queue, as the gateway sees it.
pub struct Gate {
    queue: String,
    when: SpoolWhen,
    max_bytes: u64,
    local: Arc<dyn Producer>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The broker is taken to be down: every new message goes to the spool
    /// (`on = "unavailable"`). Set by a message the broker did not take;
    /// cleared by a forward the broker confirmed, or the spool empty.
    down: bool,
    /// In the spool, or being written to it.
    pending: u64,
    /// Their bytes (bodies and attributes).
    bytes: u64,
    /// Of them, how many per ordering key (keys with none are removed).
    keys: HashMap<String, u64>,
    /// A message was refused for want of room, and nothing left the spool
    /// since: full, though `bytes` may be a little below `max_bytes`.
    full: bool,
    /// Until then `down` stays set: the broker was found saturated.
    hold_until: Option<Instant>,
}

impl Gate {
    pub(crate) fn new(
        queue: &str,
        when: SpoolWhen,
        max_bytes: u64,
        local: Arc<dyn Producer>,
        pending: u64,
        bytes: u64,
        keys: HashMap<String, u64>,
    ) -> Self {
        if pending > 0 {
            tracing::warn!(
                queue,
                pending,
                bytes,
                "spool: messages left by an earlier run; spooling until the broker takes them"
            );
        }
        let gate = Self {
            queue: queue.to_owned(),
            when,
            max_bytes,
            local,
            state: Mutex::new(State {
                down: pending > 0,
                pending,
                bytes,
                keys,
                full: false,
                hold_until: None,
            }),
        };
        gate.publish_gauges(pending, bytes);
        gate
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `msg` goes to the spool without trying the broker: always
    /// with `on = "always"`; else while the broker is taken to be down, or
    /// while `msg`'s ordering key has messages in the spool.
    pub fn spools(&self, msg: &OutgoingMessage) -> bool {
        if self.when == SpoolWhen::Always {
            return true;
        }
        let s = self.state();
        s.down || msg.ordering_key.as_ref().is_some_and(|k| s.keys.contains_key(k))
    }

    /// Whether the broker is taken to be down (every new message spooled).
    pub fn broker_down(&self) -> bool {
        self.when == SpoolWhen::Always || self.state().down
    }

    /// Stores `msg` in the spool: `Ok` once it is fsync'd. `cause` is the
    /// broker's refusal when the broker did not take it (the broker is then
    /// taken to be down), `None` when [`Gate::spools`] sent it here.
    ///
    /// The message's dedup key travels in an attribute: the spool itself
    /// drops nothing (a dropped duplicate would be counted as pending and
    /// never forwarded), and the forwarder gives the key back to the
    /// broker, which dedups where it can.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the spool holds `max_bytes` already (the client
    /// gets 503 with `Retry-After`: never a silent drop), or when the spool
    /// itself cannot write.
    ///
    /// # Cancel safety
    ///
    /// The write runs in a task of its own: dropped (a client that went
    /// away), the message is spooled all the same and forwarded, and the
    /// gate's count stays true.
    pub async fn spool(
        self: &Arc<Self>,
        mut msg: OutgoingMessage,
        cause: Option<&QueueError>,
    ) -> Result<(), QueueError> {
        if let Some(key) = msg.dedup_key.take() {
            msg.attributes.insert(DEDUP_ATTRIBUTE.to_owned(), key);
        }
        let size = msg.size() as u64;
        let key = msg.ordering_key.clone();
        {
            let mut s = self.state();
            if s.bytes.saturating_add(size) > self.max_bytes {
                s.full = true;
                metrics::counter!(SPOOL_FULL, "queue" => self.queue.clone()).increment(1);
                return Err(QueueError::unavailable_msg(format!(
                    "spool of `{}` is full ({} of queue.spool.max_bytes {} bytes)",
                    self.queue, s.bytes, self.max_bytes
                )));
            }
            s.bytes += size;
            s.pending += 1;
            if let Some(k) = &key {
                *s.keys.entry(k.clone()).or_default() += 1;
            }
            if let Some(cause) = cause {
                if !s.down && self.when == SpoolWhen::Unavailable {
                    s.down = true;
                    tracing::warn!(queue = %self.queue, %cause, "spool: the broker does not take messages; spooling");
                }
            }
            self.publish_gauges(s.pending, s.bytes);
        }
        let gate = self.clone();
        let write = tokio::spawn(async move {
            let outcome = gate.local.send(msg).await;
            match &outcome {
                Ok(()) => metrics::counter!(SPOOLED, "queue" => gate.queue.clone()).increment(1),
                Err(_) => gate.settle(1, size, key.as_deref().into_iter()),
            }
            outcome
        });
        write.await.unwrap_or_else(|e| Err(QueueError::unavailable("spool: the write task failed", e)))
    }

    /// `left` left the spool (forwarded, or dead-lettered there). At none
    /// pending, spooling stops.
    pub(crate) fn settled(&self, left: &[Delivery]) {
        let bytes = left.iter().map(|d| d.message.size() as u64).sum();
        let keys = left.iter().filter_map(|d| d.message.ordering_key.as_deref());
        self.settle(left.len() as u64, bytes, keys);
    }

    fn settle<'k>(&self, n: u64, bytes: u64, keys: impl Iterator<Item = &'k str>) {
        let mut s = self.state();
        s.pending = s.pending.saturating_sub(n);
        if n > 0 {
            s.full = false;
        }
        for k in keys {
            if let Some(count) = s.keys.get_mut(k) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    s.keys.remove(k);
                }
            }
        }
        // Bytes counted at start are an estimate: exact again at empty.
        if s.pending == 0 {
            s.bytes = 0;
            s.keys.clear();
            if s.down {
                s.down = false;
                tracing::info!(queue = %self.queue, "spool: empty; messages go to the broker again");
            }
        } else {
            s.bytes = s.bytes.saturating_sub(bytes);
        }
        self.publish_gauges(s.pending, s.bytes);
    }

    /// The broker confirmed a forward: it is up. Messages whose key has
    /// nothing spooled go to it again (unless it was found saturated less
    /// than [`SLOW_HOLD`] ago).
    pub(crate) fn broker_took(&self) {
        self.broker_took_at(Instant::now());
    }

    /// [`Gate::broker_took`] at `now` (tests).
    pub(crate) fn broker_took_at(&self, now: Instant) {
        let mut s = self.state();
        if s.hold_until.is_some_and(|until| now < until) {
            return;
        }
        if s.down {
            s.down = false;
            tracing::info!(
                queue = %self.queue,
                spooled = s.pending,
                "spool: the broker takes messages again; new messages go to it, but a key with spooled messages stays behind them"
            );
        }
    }

    /// A direct publish took `took`: longer than [`SLOW`] with messages in
    /// the spool, the broker is treated as down for [`SLOW_HOLD`].
    pub fn published_in(&self, took: Duration) {
        self.published_in_at(took, Instant::now());
    }

    /// [`Gate::published_in`] at `now` (tests).
    pub fn published_in_at(&self, took: Duration, now: Instant) {
        if took <= SLOW || self.when == SpoolWhen::Always {
            return;
        }
        let mut s = self.state();
        if s.pending == 0 {
            return;
        }
        s.hold_until = Some(now + SLOW_HOLD);
        if !s.down {
            s.down = true;
            tracing::info!(
                queue = %self.queue,
                took_ms = took.as_millis() as u64,
                spooled = s.pending,
                "spool: the broker is slow while the spool drains; spooling new messages for a while"
            );
        }
    }

    /// Messages in the spool, or on their way in, and their bytes.
    pub fn fill(&self) -> (u64, u64) {
        let s = self.state();
        (s.pending, s.bytes)
    }

    /// Whether the spool has room for more (what readiness asks while the
    /// broker is down): below `max_bytes`, and no message refused for want
    /// of room since the last one left.
    pub fn has_room(&self) -> bool {
        let s = self.state();
        !s.full && s.bytes < self.max_bytes
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    #[allow(clippy::cast_precision_loss)]
    fn publish_gauges(&self, pending: u64, bytes: u64) {
        metrics::gauge!(SPOOL_MESSAGES, "queue" => self.queue.clone()).set(pending as f64);
        metrics::gauge!(SPOOL_BYTES, "queue" => self.queue.clone()).set(bytes as f64);
    }
}
