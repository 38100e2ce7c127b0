//! [`QueueError`]: one enum, split by what the caller does next.
//!
//! | variant                      | what it means                               | ingest answers |
//! |------------------------------|---------------------------------------------|----------------|
//! | `Unavailable`, `Timeout`     | the backend could not store or serve it now | 503 + Retry-After |
//! | `TooLarge`                   | over the queue's size limit, checked before any I/O | 413 |
//! | `Rejected`, `Invalid`        | the backend refused this message itself     | 422 / 400      |
//! | `NotFound`                   | the queue does not exist: the operator's to fix | 503 + Retry-After |
//!
//! The error is `Clone` because one backend failure is fanned out to every request
//! of the batch that hit it; sources are kept behind an `Arc` so the cause chain
//! survives the fan-out.

use std::{error::Error as StdError, sync::Arc, time::Duration};

/// A boxed, shareable cause.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What went wrong in a queue operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The backend is down, unreachable or refused to work (disk full, broker
    /// closed the connection). Nothing was stored. Retry later.
    #[error("queue backend unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<Source>,
    },
    /// The backend did not answer in time. The outcome is unknown: the message
    /// may or may not be stored, so the caller must not answer 2xx.
    #[error("queue backend did not answer within {after:?}")]
    Timeout { after: Duration },
    /// The message is larger than the queue accepts. Checked before any I/O.
    #[error("message of {size} bytes exceeds the queue limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The backend refused this message (not the connection): retrying the
    /// same message will fail the same way.
    #[error("message rejected by the queue: {0}")]
    Rejected(String),
    /// The message breaks a rule of the contract (an attribute name, say).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The queue does not exist. A configuration error: run `queue ensure`.
    #[error("queue `{0}` does not exist")]
    NotFound(String),
}

impl QueueError {
    /// An `Unavailable` with its cause.
    pub fn unavailable(reason: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Unavailable { reason: reason.into(), source: Some(Arc::new(source)) }
    }

    /// An `Unavailable` without a cause.
    pub fn unavailable_msg(reason: impl Into<String>) -> Self {
        Self::Unavailable { reason: reason.into(), source: None }
    }

    /// Whether the same call may succeed later without changing the message.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. })
    }

    /// The variant as a metric label: who must act is in the module doc's
    /// table, and in docs/operations.md.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout { .. } => "timeout",
            Self::TooLarge { .. } => "too_large",
            Self::Rejected(_) => "rejected",
            Self::Invalid(_) => "invalid",
            Self::NotFound(_) => "not_found",
        }
    }
}
