//! The memory backend: **not durable**. Everything is lost when the process
//! exits. For examples, unit tests and benchmarks that want the queue's
//! semantics without a disk.
//!
//! It is the embedded engine on an in-memory SQLite database, not a second
//! implementation: the dead-letter, visibility and ordering rules are the same
//! code, so the two cannot drift apart. What differs is only that nothing is
//! fsynced and nothing survives the process.

use crate::{embedded::EmbeddedBackend, QueueError};

/// A fresh, empty, in-memory queue backend.
pub fn memory_backend() -> Result<EmbeddedBackend, QueueError> {
    EmbeddedBackend::open_in_memory()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::{embedded::EmbeddedBackend, testkit::Harness, Backend};

    struct Memory(EmbeddedBackend);

    #[async_trait]
    impl Harness for Memory {
        async fn new() -> Self {
            Self(super::memory_backend().expect("memory backend"))
        }
        async fn backend(&self) -> Arc<dyn Backend> {
            Arc::new(self.0.clone())
        }
        async fn reopen(&self) -> Option<Arc<dyn Backend>> {
            None
        }
    }

    crate::conformance_tests!(Memory);
}
