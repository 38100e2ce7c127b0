//! One consumer of a queue: a handle on the process's group member, which
//! keeps what this handle holds apart from the others'.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::member::Member;
use crate::{Consumer, Delivery, Nacked, QueueError};

pub(crate) struct KafkaConsumer {
    member: Arc<Member>,
    owner: u64,
}

impl KafkaConsumer {
    pub(crate) fn new(member: Arc<Member>) -> Self {
        let owner = member.owner();
        Self { member, owner }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    /// Returns once the holds are committed: a process that dies holding
    /// these records gets them counted by the next reader.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.member.receive(self.owner, max, wait).await
    }

    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        self.member.ack_batch(&[&d.receipt]).await
    }

    /// One commit for the whole batch.
    async fn ack_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        let receipts: Vec<_> = ds.iter().map(|d| &d.receipt).collect();
        self.member.ack_batch(&receipts).await
    }

    /// Republishes the message with its failures, to the source topic or to
    /// the retry tier the delay rounds up to, then settles the original; or
    /// dead-letters it on its `max_receive_count`-th failure.
    async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
        self.member.nack(&d.receipt, delay, reason).await
    }

    /// Uncounted. Without a delay the record is handed out again from
    /// memory; with one it is republished to its tier, as a nack is.
    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.member.release(&d.receipt, delay).await
    }

    async fn extend(&self, d: &Delivery, timeout: Duration) -> Result<(), QueueError> {
        self.member.extend(&d.receipt, timeout);
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.member.dead_letter(&d.receipt, reason).await
    }

    async fn close(&self) -> Result<(), QueueError> {
        self.member.close(self.owner).await
    }

    fn visibility_timeout(&self) -> Duration {
        self.member.visibility_timeout()
    }
}
