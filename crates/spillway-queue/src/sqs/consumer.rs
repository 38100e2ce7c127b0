//! Receiving from SQS with the contract's semantics.
//!
//! - `receive` is one long poll (`WaitTimeSeconds`: the wait rounded up to
//!   whole seconds, at most 20). It runs in a task of its own that records
//!   each delivery in `held` before handing it over, so a receive whose
//!   caller went away still leaves its deliveries for `close` to release.
//! - The count of a delivery is the failures carried in the `spillway`
//!   attribute plus SQS's `ApproximateReceiveCount` of this copy. A message
//!   whose count already passed `max_receive_count` (its last receive was
//!   never settled) is dead-lettered instead of delivered.
//! - `nack` lets SQS's count stand and sets the visibility to the delay;
//!   on the `max_receive_count`-th receive it dead-letters instead.
//! - `release` on a standard queue re-sends the message with the failures it
//!   had and deletes the original, so the receive does not count. On FIFO it
//!   sets the visibility, and the receive counts (declared).
//! - A receipt is SQS's receipt handle. This consumer knows which receipt of
//!   a message is the latest it holds; an older one is stale and changes
//!   nothing (SQS-compatible servers do not all refuse old handles).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::{
    ceil_secs, is_stale, send_entry, wire, QueueInfo, Shared, MAX_BATCH_ENTRIES, MAX_DELAY_SECS,
    MAX_VISIBILITY_SECS, MAX_WAIT_SECS,
};
use crate::{
    clock::ms_time, task::run_to_end, Consumer, DeadLetterPolicy, Delivery, Nacked, QueueError, Receipt,
    ReceivedMessage,
};

/// How many chunks of 10 `close` releases at a time.
const CLOSE_CHUNKS_AT_ONCE: usize = 4;

/// A delivery this consumer holds: what it takes to settle or re-send it.
struct Held {
    /// SQS's id of this copy: a newer receive of it makes this one stale.
    sqs_id: String,
    decoded: wire::Decoded,
    /// This receive's count: carried failures + SQS's count of this copy.
    count: u32,
    first_ms: i64,
    received_ms: i64,
}

struct Inner {
    shared: Arc<Shared>,
    info: Arc<QueueInfo>,
    policy: DeadLetterPolicy,
    held: Mutex<HashMap<String, Held>>,
    /// Read-held by every receive in progress; `close` takes it for writing,
    /// so it sees what they took.
    receiving: Arc<tokio::sync::RwLock<()>>,
}

pub(crate) struct SqsConsumer {
    inner: Arc<Inner>,
}

impl SqsConsumer {
    pub(crate) fn new(shared: Arc<Shared>, info: Arc<QueueInfo>, policy: DeadLetterPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                info,
                policy,
                held: Mutex::default(),
                receiving: Arc::default(),
            }),
        }
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_held(&self, r: &Receipt) -> Option<Held> {
        self.held().remove(&r.0)
    }

    fn queue(&self) -> &str {
        &self.info.name
    }

    async fn receive_now(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let wait_secs = ceil_secs(wait, MAX_WAIT_SECS);
        let got = self
            .shared
            .take(self.queue(), &self.info.url, max, wait_secs, self.info.receive_hide_secs)
            .await?;
        let now = self.shared.now_ms();
        let mut out = Vec::with_capacity(got.len());
        // A dead letter that cannot be stored (the DLQ gone, say) fails the
        // receive only when nothing else came: the others are handed over
        // rather than left hidden until their visibility timeout, counted;
        // the failed one stays hidden and is tried again after it.
        let mut failed = None;
        for m in got {
            let (Some(receipt), Some(sqs_id)) = (m.receipt_handle(), m.message_id()) else { continue };
            let mut decoded = match wire::decode(&m) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(queue = self.queue(), error = %e, "a message that does not decode goes to the DLQ");
                    let raw = wire::Decoded {
                        meta: wire::Meta { id: sqs_id.to_owned(), enq: now, ..wire::Meta::default() },
                        body: m.body().unwrap_or_default().as_bytes().to_vec().into(),
                        attributes: Default::default(),
                        approximate_receive_count: 1,
                        first_receive_ms: None,
                        group: None,
                    };
                    let held = Held {
                        sqs_id: sqs_id.to_owned(),
                        decoded: raw,
                        count: 1,
                        first_ms: now,
                        received_ms: now,
                    };
                    if let Err(e) = self.dead_letter_held(receipt, &held, 1, Some(now), &e.to_string()).await
                    {
                        failed = Some(e);
                    }
                    continue;
                }
            };
            // A dead letter moved back by SQS's own redrive carries its old
            // count: it starts afresh, as a redrive promises.
            if decoded.meta.dl.is_some() {
                decoded.meta = decoded.meta.reset();
            }
            let count = decoded.meta.fail.saturating_add(decoded.approximate_receive_count);
            let first_ms = decoded.meta.first.or(decoded.first_receive_ms).unwrap_or(now);
            let held = Held { sqs_id: sqs_id.to_owned(), decoded, count, first_ms, received_ms: now };
            if count > self.policy.max_receive_count {
                let reason = held.decoded.meta.err.clone().unwrap_or_else(|| {
                    "its last receive was never settled (the consumer stopped, or the visibility timeout passed)"
                        .to_owned()
                });
                // When that last receive happened is not known.
                if let Err(e) = self.dead_letter_held(receipt, &held, count - 1, None, &reason).await {
                    failed = Some(e);
                }
                continue;
            }
            let d = &held.decoded;
            out.push(Delivery {
                queue: self.queue().to_owned(),
                message: ReceivedMessage {
                    id: d.meta.id.clone(),
                    body: d.body.clone(),
                    attributes: d.attributes.clone(),
                    ordering_key: d.meta.key.clone(),
                    enqueued_at: ms_time(d.meta.enq),
                },
                receive_count: count,
                first_received_at: ms_time(first_ms),
                receipt: Receipt(receipt.to_owned()),
            });
            let mut all = self.held();
            all.retain(|_, h| h.sqs_id != sqs_id);
            all.insert(receipt.to_owned(), held);
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Sends the message to the DLQ with its metadata (`count` failed
    /// receives, the last at `last_received_ms` if known, `reason`), then
    /// deletes it from the queue.
    async fn dead_letter_held(
        &self,
        receipt: &str,
        h: &Held,
        count: u32,
        last_received_ms: Option<i64>,
        reason: &str,
    ) -> Result<(), QueueError> {
        let now = self.shared.now_ms();
        let mut meta = h.decoded.meta.clone();
        meta.fail = 0;
        meta.src = Some(self.queue().to_owned());
        meta.rc = Some(count);
        meta.first = Some(h.first_ms);
        meta.last = last_received_ms.map(|ms| ms.max(h.first_ms));
        meta.dl = Some(now);
        meta.set_error(reason);
        let group = h.decoded.group.clone().or_else(|| meta.key.clone()).unwrap_or_else(|| meta.id.clone());
        let dedup = format!("{}.d{now}", meta.id);
        let w = wire::encode(&h.decoded.body, &h.decoded.attributes, meta)?;
        let entry = send_entry(self.info.fifo, "0".into(), w, 0, Some(&group), Some(dedup))?;
        self.shared.send_one(self.queue(), &self.info.dlq_url, entry).await?;
        self.shared.delete(self.queue(), &self.info.url, receipt).await
    }

    /// Sets the visibility of a held receipt. `Ok(false)` if it was stale.
    async fn set_visibility(&self, receipt: &str, secs: i32) -> Result<bool, QueueError> {
        let changed = self
            .shared
            .client
            .change_message_visibility()
            .queue_url(&self.info.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await;
        match changed {
            Ok(_) => Ok(true),
            Err(e) if is_stale(&e) => Ok(false),
            Err(e) => Err(self.shared.err("change visibility", self.queue(), e)),
        }
    }

    /// Gives a held message back without counting the receive (standard
    /// queues: a re-send with the failures it had, then a delete of this
    /// copy), or with it counted (FIFO: the visibility).
    async fn release_held(&self, receipt: &str, h: &Held, delay: Duration) -> Result<(), QueueError> {
        if self.info.fifo {
            self.set_visibility(receipt, ceil_secs(delay, MAX_VISIBILITY_SECS)).await?;
            return Ok(());
        }
        let entry = self.release_entry("0", h, delay)?;
        self.shared.send_one(self.queue(), &self.info.url, entry).await?;
        self.shared.delete(self.queue(), &self.info.url, receipt).await
    }

    /// The copy a release sends: the message with its count unchanged.
    fn release_entry(
        &self,
        id: &str,
        h: &Held,
        delay: Duration,
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        let mut meta = h.decoded.meta.clone();
        meta.fail = h.count.saturating_sub(1);
        meta.first = Some(h.first_ms);
        let w = wire::encode(&h.decoded.body, &h.decoded.attributes, meta)?;
        // A release longer than SQS's longest delay comes back sooner; the
        // runtime then releases it again, uncounted.
        send_entry(false, id.to_owned(), w, ceil_secs(delay, MAX_DELAY_SECS), None, None)
    }

    /// Releases up to 10 held messages at once: one `SendMessageBatch` of
    /// their copies and one `DeleteMessageBatch` of those sent (FIFO: one
    /// `ChangeMessageVisibilityBatch` to 0). What could not be released is
    /// returned with the first error, still held.
    async fn release_chunk(
        &self,
        chunk: Vec<(String, Held)>,
    ) -> Result<(), (QueueError, Vec<(String, Held)>)> {
        let receipts: Vec<String> = chunk.iter().map(|(r, _)| r.clone()).collect();
        if self.info.fifo {
            return self
                .shared
                .show_again(self.queue(), &self.info.url, &receipts)
                .await
                .map_err(|e| (e, chunk));
        }
        let mut entries = Vec::with_capacity(chunk.len());
        for (i, (_, h)) in chunk.iter().enumerate() {
            match self.release_entry(&i.to_string(), h, Duration::ZERO) {
                Ok(e) => entries.push(e),
                Err(e) => return Err((e, chunk)),
            }
        }
        let sent = self.shared.send_entries(self.queue(), &self.info.url, entries).await;
        let mut first_error = None;
        let mut sent_ok = vec![false; chunk.len()];
        for (id, outcome) in sent {
            match (id.parse::<usize>().ok().filter(|i| *i < chunk.len()), outcome) {
                (Some(i), Ok(())) => sent_ok[i] = true,
                (_, Err(e)) => {
                    first_error.get_or_insert(e);
                }
                (None, Ok(())) => {}
            }
        }
        let (copied, kept): (Vec<_>, Vec<_>) = chunk.into_iter().zip(sent_ok).partition(|(_, ok)| *ok);
        let copied: Vec<(String, Held)> = copied.into_iter().map(|(c, _)| c).collect();
        let kept: Vec<(String, Held)> = kept.into_iter().map(|(c, _)| c).collect();
        let receipts: Vec<String> = copied.iter().map(|(r, _)| r.clone()).collect();
        if !receipts.is_empty() {
            if let Err(e) = self.shared.delete_batch(self.queue(), &self.info.url, &receipts).await {
                // The copies are stored: the originals come back after
                // their visibility timeout as duplicates, never lost.
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err((e, kept)),
        }
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let guard = self.inner.receiving.clone().read_owned().await;
        let inner = self.inner.clone();
        run_to_end("sqs: receive", async move {
            let _receiving = guard;
            inner.receive_now(max, wait).await
        })
        .await
    }

    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        let Some(h) = self.inner.take_held(&d.receipt) else { return Ok(()) };
        let deleted = self.inner.shared.delete(self.inner.queue(), &self.inner.info.url, &d.receipt.0).await;
        if deleted.is_err() {
            self.inner.held().insert(d.receipt.0.clone(), h);
        }
        deleted
    }

    /// `DeleteMessageBatch`, 10 receipts a call.
    /// Every chunk of 10 is tried, also after one failed; the deliveries of
    /// a failed chunk stay held (the visibility keeper goes on extending
    /// them and a later ack or close still finds them), and the first
    /// error is returned.
    async fn ack_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        let inner = &self.inner;
        let mut taken: Vec<(String, Held)> =
            ds.iter().filter_map(|d| inner.take_held(&d.receipt).map(|h| (d.receipt.0.clone(), h))).collect();
        let mut first_error = None;
        while !taken.is_empty() {
            let chunk: Vec<(String, Held)> = taken.drain(..taken.len().min(MAX_BATCH_ENTRIES)).collect();
            let receipts: Vec<String> = chunk.iter().map(|(r, _)| r.clone()).collect();
            if let Err(e) = inner.shared.delete_batch(inner.queue(), &inner.info.url, &receipts).await {
                inner.held().extend(chunk);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
        let inner = &self.inner;
        let Some(h) = inner.take_held(&d.receipt) else { return Ok(Nacked::Stale) };
        let done = if h.count >= inner.policy.max_receive_count {
            inner
                .dead_letter_held(&d.receipt.0, &h, h.count, Some(h.received_ms), reason)
                .await
                .map(|()| Nacked::DeadLettered)
        } else {
            inner.set_visibility(&d.receipt.0, ceil_secs(delay, MAX_VISIBILITY_SECS)).await.map(|fresh| {
                if fresh {
                    Nacked::Retried
                } else {
                    Nacked::Stale
                }
            })
        };
        if done.is_err() {
            inner.held().insert(d.receipt.0.clone(), h);
        }
        done
    }

    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let inner = &self.inner;
        let Some(h) = inner.take_held(&d.receipt) else { return Ok(()) };
        let done = inner.release_held(&d.receipt.0, &h, delay).await;
        if done.is_err() {
            inner.held().insert(d.receipt.0.clone(), h);
        }
        done
    }

    async fn extend(&self, d: &Delivery, timeout: Duration) -> Result<(), QueueError> {
        if !self.inner.held().contains_key(&d.receipt.0) {
            return Ok(());
        }
        self.inner.set_visibility(&d.receipt.0, ceil_secs(timeout, MAX_VISIBILITY_SECS)).await.map(|_| ())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let inner = &self.inner;
        let Some(h) = inner.take_held(&d.receipt) else { return Ok(()) };
        let done = inner.dead_letter_held(&d.receipt.0, &h, h.count, Some(h.received_ms), reason).await;
        if done.is_err() {
            inner.held().insert(d.receipt.0.clone(), h);
        }
        done
    }

    /// Waits for receives in progress, then releases everything held, 10
    /// messages a call and at most [`CLOSE_CHUNKS_AT_ONCE`] calls at a
    /// time (a consumer holding thousands must not open thousands of
    /// connections at once). Every chunk is tried; what could not be
    /// released stays held and the first error is returned.
    async fn close(&self) -> Result<(), QueueError> {
        use futures::StreamExt as _;
        let _no_receives = self.inner.receiving.write().await;
        let mut held: Vec<(String, Held)> = self.inner.held().drain().collect();
        let mut chunks = Vec::new();
        while !held.is_empty() {
            chunks.push(held.drain(..held.len().min(MAX_BATCH_ENTRIES)).collect::<Vec<_>>());
        }
        let inner = &self.inner;
        let outcomes: Vec<_> = futures::stream::iter(chunks)
            .map(|chunk| inner.release_chunk(chunk))
            .buffer_unordered(CLOSE_CHUNKS_AT_ONCE)
            .collect()
            .await;
        let mut first_error = None;
        for outcome in outcomes {
            if let Err((e, kept)) = outcome {
                inner.held().extend(kept);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.info.visibility
    }
}
