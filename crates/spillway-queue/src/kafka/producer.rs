//! Sends to one queue: each message `Ok` only on its delivery report, with
//! `acks=all` and the idempotent producer, so a report means every in-sync
//! replica has it and a retried produce was not written twice.

use std::sync::Arc;

use async_trait::async_trait;

use super::{topics, wire, Shared};
use crate::{OutgoingMessage, Producer, QueueError};

pub(crate) struct KafkaProducer {
    shared: Arc<Shared>,
    queue: String,
    max_bytes: usize,
}

impl KafkaProducer {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str) -> Self {
        let max_bytes = shared.spec(queue).max_message_bytes;
        Self { shared, queue: queue.to_owned(), max_bytes }
    }

    async fn send_one(&self, m: OutgoingMessage) -> Result<(), QueueError> {
        m.check_size(self.max_bytes)?;
        if m.delay > topics::MAX_DELAY {
            return Err(QueueError::Invalid(format!(
                "a delay of {:?} is longer than the {:?} Kafka retry tiers allow",
                m.delay,
                topics::MAX_DELAY
            )));
        }
        let headers = wire::headers_for(&m, self.shared.now_ms())?;
        // A delayed send waits in the tier its delay rounds up to, so it never
        // holds back the source topic; its due time is in its headers.
        let topic = topics::route_for(&self.queue, m.delay);
        let key = m.ordering_key.as_deref().map(str::as_bytes);
        self.shared.produce(&self.queue, &topic, key, &m.body, headers).await
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    /// Every message of the batch is handed to librdkafka at once, which
    /// batches per partition (`linger`, `batch_bytes`); each outcome is its
    /// own delivery report.
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        Ok(futures::future::join_all(msgs.into_iter().map(|m| self.send_one(m))).await)
    }

    /// Each outcome as its delivery report arrives: the reports of one
    /// batch come back per partition, at different times.
    async fn send_each(
        &self,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        use futures::StreamExt as _;
        let mut pending: futures::stream::FuturesUnordered<_> =
            msgs.into_iter().enumerate().map(|(i, m)| async move { (i, self.send_one(m).await) }).collect();
        while let Some((i, outcome)) = pending.next().await {
            report(i, outcome);
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_bytes
    }

    fn confirms_each(&self) -> bool {
        true
    }
}
