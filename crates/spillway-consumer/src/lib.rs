//! The worker runtime: drains a queue into a sink.
//!
//! # Layout
//!
//! - [`config`]: the consumer's settings and the sink's (a tagged enum).
//! - [`backoff`]: retry delays as small pure functions with named constants.
//! - [`outcome`]: what a sink may answer, and what the runtime does with each.
//! - [`circuit`]: the breaker that stops receiving while the sink is down.
//! - [`runtime`]: the receive loop: workers, ack, nack, release, probe, shutdown.
//! - [`sink`]: the sinks: `stdout`, `http`, `postgres`.
//! - [`redrive`]: moving dead letters back, in small batches, at a set rate.
//!
//! # The rule that matters
//!
//! A sink outage is not a poison message. When the sink itself is down
//! (refused, timed out, locked, missing table, 503), the message is released
//! without counting the receive, the circuit opens, and the runtime stops
//! receiving until a probe succeeds. Only a message that fails on its own walks
//! toward the dead-letter queue. See `docs/consumer.md`.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod backoff;
pub mod circuit;
pub mod config;
pub mod outcome;
pub mod redrive;
pub mod runtime;
pub mod sink;

pub use config::{ConsumerConfig, SinkConfig};
pub use outcome::SinkError;
pub use runtime::{run, RunReport};
pub use sink::{build_sink, check as check_sink, Sink};
