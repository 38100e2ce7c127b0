//! Sending to SQS: every limit checked before any call, then
//! `SendMessageBatch` in chunks of at most 10 entries and 1 MiB, several
//! chunks in flight, each message's outcome reported as its chunk's call
//! returns. An entry is `Ok` only when SQS listed it as successful; entries
//! SQS failed on its side are retried, entries it refused (sender fault)
//! are `Rejected`.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    ceil_secs, send_entry, wire, QueueInfo, Shared, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_DELAY_SECS,
};
use crate::{OutgoingMessage, Producer, QueueError};

pub(crate) struct SqsProducer {
    shared: Arc<Shared>,
    info: Arc<QueueInfo>,
    max_message_bytes: usize,
}

impl SqsProducer {
    pub(crate) fn new(shared: Arc<Shared>, info: Arc<QueueInfo>, max_message_bytes: usize) -> Self {
        Self { shared, info, max_message_bytes }
    }

    /// The entry for one message, or why SQS would refuse it.
    fn entry(
        &self,
        index: usize,
        m: &OutgoingMessage,
        now_ms: i64,
    ) -> Result<(aws_sdk_sqs::types::SendMessageBatchRequestEntry, usize), QueueError> {
        m.check_size(self.max_message_bytes)?;
        let info = &self.info;
        if info.fifo && m.delay > Duration::ZERO {
            return Err(QueueError::Invalid(
                "a FIFO queue takes no per-message delay (SQS sets delays per FIFO queue)".into(),
            ));
        }
        if m.delay > Duration::from_secs(MAX_DELAY_SECS) {
            return Err(QueueError::Invalid(format!(
                "a delay of {:?} is longer than SQS's 15 minutes",
                m.delay
            )));
        }
        let meta = wire::Meta {
            id: m.id.clone(),
            enq: now_ms,
            key: m.ordering_key.clone(),
            ..wire::Meta::default()
        };
        let w = wire::encode(&m.body, &m.attributes, meta)?;
        if w.size > info.max_wire_bytes {
            return Err(QueueError::TooLarge { size: w.size, limit: info.max_wire_bytes });
        }
        let size = w.size;
        // Without an ordering key each message is its own group: no order
        // to keep, nothing held back behind another message.
        let group = m.ordering_key.as_deref().unwrap_or(&m.id);
        // The message id unless the route set a dedup key, also on a queue
        // with content-based deduplication: there SQS would otherwise drop
        // a second message whose body equals the first's within 5 minutes
        // (a raw route, two clients sending the same event), though each
        // got its own 2xx and id.
        let dedup = Some(m.dedup_key.clone().unwrap_or_else(|| m.id.clone()));
        let entry = send_entry(
            info.fifo,
            index.to_string(),
            w,
            ceil_secs(m.delay, MAX_DELAY_SECS),
            Some(group),
            dedup,
        )?;
        Ok((entry, size))
    }
}

#[async_trait]
impl Producer for SqsProducer {
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let mut outcomes: Vec<Option<Result<(), QueueError>>> = vec![None; msgs.len()];
        self.send_each(msgs, &mut |i, r| {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(r);
            }
        })
        .await;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(QueueError::unavailable_msg("sqs returned no outcome for the message"))
                })
            })
            .collect())
    }

    /// Each `SendMessageBatch` of 10 is its own call with its own answer,
    /// so a request is answered when its chunk's call returns, not when the
    /// slowest chunk of the batch does.
    ///
    /// # Cancel safety
    ///
    /// Dropped mid-way, the chunks already answered are stored (and were
    /// reported); those in flight may be stored or not, and were not
    /// reported `Ok`.
    async fn send_each(
        &self,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        let now = self.shared.now_ms();
        let mut reported = vec![false; msgs.len()];
        let mut chunks: Vec<Vec<aws_sdk_sqs::types::SendMessageBatchRequestEntry>> = Vec::new();
        let mut chunk_bytes = 0;
        for (i, m) in msgs.iter().enumerate() {
            match self.entry(i, m, now) {
                Err(e) => {
                    reported[i] = true;
                    report(i, Err(e));
                }
                Ok((entry, size)) => {
                    let fits = chunks.last().is_some_and(|c| {
                        c.len() < MAX_BATCH_ENTRIES && chunk_bytes + size <= MAX_BATCH_BYTES
                    });
                    if !fits {
                        chunks.push(Vec::new());
                        chunk_bytes = 0;
                    }
                    chunk_bytes += size;
                    if let Some(c) = chunks.last_mut() {
                        c.push(entry);
                    }
                }
            }
        }
        let (queue, url) = (&self.info.name, &self.info.url);
        let mut sent = futures::stream::iter(chunks)
            .map(|c| self.shared.send_entries(queue, url, c))
            .buffer_unordered(self.shared.batches_in_flight);
        while let Some(results) = sent.next().await {
            for (id, r) in results {
                if let Some(i) = id.parse::<usize>().ok().filter(|i| reported.get(*i) == Some(&false)) {
                    reported[i] = true;
                    report(i, r);
                }
            }
        }
        for (i, done) in reported.iter().enumerate() {
            if !done {
                report(i, Err(QueueError::unavailable_msg("sqs returned no outcome for the message")));
            }
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}
