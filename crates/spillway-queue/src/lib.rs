//! The queue contract of Spillway, and the backends that keep it.
//!
//! Ingest and the consumer runtime only ever see the traits in this crate. Which
//! broker sits behind them is decided once, from configuration, by [`connect`].
//! SQS is the model: at-least-once delivery, a visibility timeout, a receive
//! count, and a dead-letter queue after `max_receive_count` failed receives.
//!
//! # Layout
//!
//! - [`error`]: [`QueueError`], split by what the caller must do next (retry later,
//!   reject the message, or fix the configuration).
//! - [`message`]: what goes in ([`OutgoingMessage`]) and what comes out
//!   ([`Delivery`], [`DeadLetter`], [`QueueStats`]).
//! - [`spec`]: [`QueueSpec`] and [`DeadLetterPolicy`]: a queue, its DLQ and its limits.
//! - [`traits`]: [`Producer`], [`Consumer`], [`Admin`] and [`Backend`], with the
//!   guarantee each method gives, backend by backend.
//! - [`clock`]: [`Clock`], where the embedded engine reads the time; tests
//!   inject tokio's paused clock.
//! - [`config`]: [`BackendConfig`], the tagged enum that selects a backend, and [`connect`].
//! - [`embedded`]: SQLite in WAL mode with
//!   `synchronous=FULL`; one writer thread group-commits every pending operation.
//! - [`memory`]: the embedded engine on an in-memory database.
//!   Same semantics, **not durable**.
//! - `rabbitmq` (feature `rabbitmq`): durable quorum queues with publisher
//!   confirms; the count carried in headers across republishes.
//! - `kafka` (feature `kafka`): `acks=all` and consumer groups; the count
//!   carried in headers across republishes, crashes counted in the commit.
//! - `sqs` (feature `sqs`): AWS SQS or any server with its API; standard
//!   and FIFO queues, the count carried in an attribute across re-sends.
//! - `spool` (with every broker): the embedded engine in front of a broker,
//!   so a broker outage is spooled locally instead of answered 503.
//! - `testkit` (feature `testkit`): the conformance suite, plain async functions
//!   over a [`testkit::Harness`], that every backend's tests run.
// One audited exception: `kafka::committed` reads commit metadata as bytes,
// because rdkafka's own accessor panics on bytes that are not UTF-8.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod clock;
pub mod config;
pub mod error;
#[cfg(any(feature = "rabbitmq", feature = "sqs", feature = "kafka"))]
mod fault;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
pub mod spec;
#[cfg(any(feature = "rabbitmq", feature = "sqs", feature = "kafka"))]
mod task;
pub mod traits;

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "spool")]
pub mod spool;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use clock::Clock;
pub use config::{connect, BackendConfig};
pub use error::QueueError;
pub use message::{DeadLetter, Delivery, OutgoingMessage, QueueAge, QueueStats, Receipt, ReceivedMessage};
pub use spec::{DeadLetterPolicy, QueueSpec};
pub use traits::{Admin, Backend, Consumer, Nacked, Producer, PurgeTarget};
