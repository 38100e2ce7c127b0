//! What a sink answers, and what that means for the message.
//!
//! | sink answer            | example                                   | runtime does                           |
//! |------------------------|-------------------------------------------|----------------------------------------|
//! | `Ok`                   | row inserted, HTTP 2xx                    | ack                                    |
//! | `Down`                 | refused, timeout, lock wait, no table, 503 | release (not counted), open the circuit |
//! | `Transient`            | HTTP 500/502/504, 408, 429                | nack with backoff (counted); N in a row open the circuit |
//! | `Rejected { dead_letter: false }` | constraint violation, HTTP 4xx (retry) | nack with backoff (counted)      |
//! | `Rejected { dead_letter: true }`  | HTTP 4xx (dead-letter), body the sink can never take | dead-letter now |

/// Why a sink did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The sink itself is down; the message is not to blame.
    #[error("sink unavailable: {0}")]
    Down(String),
    /// Either the sink or the message; retried, and counted.
    #[error("sink failed: {0}")]
    Transient(String),
    /// The sink refused this message.
    #[error("sink rejected the message: {reason}")]
    Rejected { reason: String, dead_letter: bool },
}
