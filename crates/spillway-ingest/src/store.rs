//! Where an accepted message goes: to the queue through its publisher,
//! or, where `queue.spool` is set, into the local spool in front of it
//! (`spillway_queue::spool`).
//!
//! With a spool, a message goes to the spool while the broker is taken to
//! be down or its ordering key has spooled messages (so it queues behind
//! them: `spool::gate`), and when the broker does not take it: unavailable,
//! a timeout (the broker may have stored it too: a duplicate, never a
//! loss), or the queue missing. A direct publish that was slow while the
//! spool drains sends the next ones to the spool for a while
//! (`spool::gate::SLOW`). A message the
//! broker refuses for its content is refused to the client as before.

use std::sync::Arc;

use spillway_queue::{
    spool::{self, Gate},
    OutgoingMessage, QueueError,
};

use crate::Publisher;

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The queue confirmed it.
    Queue,
    /// The local spool fsync'd it; the forwarder takes it to the queue.
    Spool,
}

/// One queue's way in.
pub struct Store {
    publisher: Arc<Publisher>,
    gate: Option<Arc<Gate>>,
}

impl Store {
    pub fn new(publisher: Arc<Publisher>, gate: Option<Arc<Gate>>) -> Self {
        Self { publisher, gate }
    }

    /// Stores `msg`; `Ok` once it is durable, in the queue or the spool.
    ///
    /// # Cancel safety
    ///
    /// As [`Publisher::publish`] and [`Gate::spool`]: dropped, the message
    /// may or may not be stored.
    pub async fn store(&self, msg: OutgoingMessage) -> Result<Stored, QueueError> {
        let Some(gate) = &self.gate else {
            return self.publisher.publish(msg).await.map(|()| Stored::Queue);
        };
        if gate.spools(&msg) {
            self.publisher.check_size(&msg)?;
            return gate.spool(msg, None).await.map(|()| Stored::Spool);
        }
        let started = std::time::Instant::now();
        match self.publisher.publish(msg.clone()).await {
            Ok(()) => {
                gate.published_in(started.elapsed());
                Ok(Stored::Queue)
            }
            Err(e) if spool::spoolable(&e) => gate.spool(msg, Some(&e)).await.map(|()| Stored::Spool),
            Err(e) => Err(e),
        }
    }

    /// Whether this queue has a spool with room (readiness while the
    /// broker is down).
    pub fn can_take_while_down(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.has_room())
    }
}
