//! The memory backend: **not durable**. Everything is lost when the process
//! exits. For examples, unit tests and benchmarks that want the queue's
//! semantics without a disk.
//!
//! It is the embedded engine on an in-memory SQLite database, not a second
//! implementation: the dead-letter, visibility and ordering rules are the same
//! code, so the two cannot drift apart. What differs is only that nothing is
//! fsynced and nothing survives the process.

use crate::{embedded::EmbeddedBackend, Clock, QueueError};

/// A fresh, empty, in-memory queue backend.
pub fn memory_backend() -> Result<EmbeddedBackend, QueueError> {
    memory_backend_with_clock(Clock::system())
}

/// [`memory_backend`] with the time read from `clock` (tests pass tokio's).
pub fn memory_backend_with_clock(clock: Clock) -> Result<EmbeddedBackend, QueueError> {
    EmbeddedBackend::open_in_memory(clock)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::{
        embedded::EmbeddedBackend,
        testkit::{Capabilities, Harness},
        Backend, Clock,
    };

    struct Memory(EmbeddedBackend);

    #[async_trait]
    impl Harness for Memory {
        fn capabilities() -> Capabilities {
            Capabilities { durable: false, ..Capabilities::embedded() }
        }
        async fn new() -> Self {
            Self(super::memory_backend_with_clock(Clock::tokio()).expect("memory backend"))
        }
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.0.clone())
        }
        /// A process restart: a new, empty memory backend.
        async fn reopen(&self) -> Arc<dyn Backend> {
            Arc::new(super::memory_backend_with_clock(Clock::tokio()).expect("memory backend"))
        }
    }

    crate::conformance_tests!(Memory);
}
