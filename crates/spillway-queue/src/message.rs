//! What goes into a queue and what comes out of it.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A message to send. The id is assigned by the caller (ingest uses a ULID) so
/// that the answer to the client, the queue and the sink all name it the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: Bytes,
    /// Small string metadata. Backends map it to native attributes or headers.
    pub attributes: BTreeMap<String, String>,
    /// Messages with the same key are delivered in send order, one at a time,
    /// where the backend can (see `docs/backends.md`).
    pub ordering_key: Option<String>,
    /// A second send with the same key, while the first is still queued, is
    /// accepted and dropped.
    pub dedup_key: Option<String>,
    /// Not visible to consumers before this delay has passed.
    pub delay: Duration,
}

impl OutgoingMessage {
    /// A message with no attributes, keys or delay.
    pub fn new(id: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            id: id.into(),
            body: body.into(),
            attributes: BTreeMap::new(),
            ordering_key: None,
            dedup_key: None,
            delay: Duration::ZERO,
        }
    }

    /// The size the queue limit is checked against: body plus attributes.
    pub fn size(&self) -> usize {
        size(&self.body, &self.attributes)
    }

    /// `TooLarge` if the message exceeds `limit`: the one check every
    /// producer (and ingest's publisher) runs before any I/O.
    pub fn check_size(&self, limit: usize) -> Result<(), crate::QueueError> {
        let size = self.size();
        if size > limit {
            return Err(crate::QueueError::TooLarge { size, limit });
        }
        Ok(())
    }
}

/// Body plus attributes, keys and values: what a size limit counts.
fn size(body: &[u8], attributes: &BTreeMap<String, String>) -> usize {
    body.len() + attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The message as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    pub body: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: Option<String>,
    pub enqueued_at: OffsetDateTime,
}

impl ReceivedMessage {
    /// Body plus attributes, as [`OutgoingMessage::size`] counts them.
    pub fn size(&self) -> usize {
        size(&self.body, &self.attributes)
    }
}

/// A backend's handle on one receive of one message. Opaque to callers; a
/// receipt from an earlier receive of the same message is stale, and acking
/// or nacking with it does nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt(pub String);

/// One receive of one message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: String,
    pub message: ReceivedMessage,
    /// 1 on the first delivery, counting every receive that was not released.
    pub receive_count: u32,
    pub first_received_at: OffsetDateTime,
    pub receipt: Receipt,
}

/// A message in a dead-letter queue, with why and when it got there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub source_queue: String,
    pub receive_count: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_received_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_received_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_lettered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub enqueued_at: OffsetDateTime,
    #[serde(skip)]
    pub body: Bytes,
    pub attributes: BTreeMap<String, String>,
}

/// Counts for one queue, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Ready to be received now.
    pub visible: u64,
    /// Sent with a delay or nacked with a backoff, not yet visible.
    pub delayed: u64,
    /// Received and not yet acked, nacked or timed out.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// How close a backlog is to being lost to the broker's retention: how long
/// the queue keeps a message nobody consumed, and how old its oldest
/// message still to be delivered is. An alert on the second nearing the
/// first (docs/operations.md) comes before the broker deletes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueAge {
    /// The broker deletes a message nobody consumed after this long; `None`
    /// where it keeps it until consumed (the embedded queue, RabbitMQ
    /// without a `message-ttl`).
    pub retention: Option<Duration>,
    /// The age of the oldest message still to be delivered (not dead):
    /// zero when there is none, `None` where the backend cannot tell
    /// (docs/backends.md says where).
    pub oldest: Option<Duration>,
}

impl QueueStats {
    /// Everything that is still to be delivered (not dead).
    pub fn pending(&self) -> u64 {
        self.visible + self.delayed + self.in_flight
    }
}
