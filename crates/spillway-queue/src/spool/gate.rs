//! Per queue: whether a message goes to the spool, and how full it may get.
//!
//! `pending` counts what is in the spool or on its way in (a write counts
//! from before it starts), so the gate leaves spooling only once every
//! spooled message was forwarded and nothing is being written: a message
//! sent after that goes straight to the broker, behind everything spooled.

use std::sync::{Arc, Mutex, PoisonError};

use super::{SpoolWhen, DEDUP_ATTRIBUTE};
use crate::{OutgoingMessage, Producer, QueueError};

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
    /// New messages go to the spool (`on = "unavailable"`): set by the first
    /// one the broker did not take, cleared when the spool is empty.
    spooling: bool,
    /// In the spool, or being written to it.
    pending: u64,
    /// Their bytes (bodies and attributes).
    bytes: u64,
}

impl Gate {
    pub(crate) fn new(
        queue: &str,
        when: SpoolWhen,
        max_bytes: u64,
        local: Arc<dyn Producer>,
        pending: u64,
        bytes: u64,
    ) -> Self {
        if pending > 0 {
            tracing::warn!(
                queue,
                pending,
                bytes,
                "spool: messages left by an earlier run; spooling until they are forwarded"
            );
        }
        let gate = Self {
            queue: queue.to_owned(),
            when,
            max_bytes,
            local,
            state: Mutex::new(State { spooling: pending > 0, pending, bytes }),
        };
        gate.publish_gauges(pending, bytes);
        gate
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a new message goes to the spool without trying the broker.
    pub fn spooling(&self) -> bool {
        self.when == SpoolWhen::Always || self.state().spooling
    }

    /// Stores `msg` in the spool: `Ok` once it is fsync'd. `cause` is why
    /// (the broker's error), for the log line that says spooling started.
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
        {
            let mut s = self.state();
            if s.bytes.saturating_add(size) > self.max_bytes {
                metrics::counter!(SPOOL_FULL, "queue" => self.queue.clone()).increment(1);
                return Err(QueueError::unavailable_msg(format!(
                    "spool of `{}` is full ({} of queue.spool.max_bytes {} bytes)",
                    self.queue, s.bytes, self.max_bytes
                )));
            }
            s.bytes += size;
            s.pending += 1;
            if !s.spooling && self.when == SpoolWhen::Unavailable {
                s.spooling = true;
                let cause = cause.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(queue = %self.queue, cause, "spool: the broker does not take messages; spooling");
            }
            self.publish_gauges(s.pending, s.bytes);
        }
        let gate = self.clone();
        let write = tokio::spawn(async move {
            let outcome = gate.local.send(msg).await;
            match &outcome {
                Ok(()) => metrics::counter!(SPOOLED, "queue" => gate.queue.clone()).increment(1),
                Err(_) => gate.settled(1, size),
            }
            outcome
        });
        write.await.unwrap_or_else(|e| Err(QueueError::unavailable("spool: the write task failed", e)))
    }

    /// `n` messages of `bytes` left the spool (forwarded, or dead-lettered
    /// there). At none pending, spooling stops.
    pub(crate) fn settled(&self, n: u64, bytes: u64) {
        let mut s = self.state();
        s.pending = s.pending.saturating_sub(n);
        // Bytes counted at start are an estimate: exact again at empty.
        s.bytes = if s.pending == 0 { 0 } else { s.bytes.saturating_sub(bytes) };
        if s.pending == 0 && s.spooling {
            s.spooling = false;
            tracing::info!(queue = %self.queue, "spool: empty; messages go to the broker again");
        }
        self.publish_gauges(s.pending, s.bytes);
    }

    /// Messages in the spool, or on their way in, and their bytes.
    pub fn fill(&self) -> (u64, u64) {
        let s = self.state();
        (s.pending, s.bytes)
    }

    /// Whether the spool has room for more (what readiness asks while the
    /// broker is down): below `max_bytes`.
    pub fn has_room(&self) -> bool {
        self.state().bytes < self.max_bytes
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
