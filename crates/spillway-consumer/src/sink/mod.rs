//! Sinks: where a message goes after the queue.
//!
//! A sink answers each delivery with `Ok` or a [`SinkError`] that says whose
//! fault it was (see [`crate::outcome`]). It must be idempotent by message id,
//! because delivery is at least once: the PostgreSQL sink inserts with
//! `ON CONFLICT (id) DO NOTHING`, the HTTP sink sends the id in a header.

mod http;
mod postgres;
mod stdout;

use std::sync::Arc;

use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use spillway_queue::Delivery;

pub use self::{http::HttpSink, postgres::PostgresSink, stdout::StdoutSink};
use crate::{config::SinkConfig, SinkError};

/// A destination for messages.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers one message. `Ok` means the sink has it for good.
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError>;

    /// Whether [`Sink::deliver_batch`] takes a batch in one call. If not,
    /// the runtime hands messages over one by one, each with its own
    /// `sink_timeout`.
    fn batches(&self) -> bool {
        false
    }

    /// Delivers a batch: one answer per delivery, in order, each meaning
    /// what [`Sink::deliver`]'s would. A sink that can take many messages
    /// in one call overrides this (PostgreSQL: one statement; stdout: one
    /// write), and must still answer for each message on its own, so one
    /// bad message fails alone. The default delivers one by one.
    async fn deliver_batch(&self, ds: &[Delivery]) -> Vec<Result<(), SinkError>> {
        let mut out = Vec::with_capacity(ds.len());
        for d in ds {
            out.push(self.deliver(d).await);
        }
        out
    }
}

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkSetupError {
    #[error("invalid configuration at `consumer.sink.{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("sink unavailable at start-up: {0}")]
    Unavailable(String),
}

/// Checks the sink's settings without connecting to anything: what
/// `config check` and start-up run, so a bad URL or table name is refused
/// before a consumer starts. The error names the key.
pub fn check(cfg: &SinkConfig) -> Result<(), SinkSetupError> {
    if cfg.url().is_none() && !matches!(cfg, SinkConfig::Stdout) {
        return Err(SinkSetupError::Config {
            key: "url",
            message: "not set: a consumer needs it (in the file, or SPILLWAY_CONSUMER__SINK__URL)".into(),
        });
    }
    match cfg {
        SinkConfig::Stdout => Ok(()),
        SinkConfig::Http { url, on_4xx, headers } => HttpSink::new(url, *on_4xx, headers).map(|_| ()),
        SinkConfig::Postgres { url, table, lock_timeout, .. } => {
            PostgresSink::check(url, table, *lock_timeout)
        }
    }
}

/// Builds the configured sink, after [`check`].
pub async fn build_sink(cfg: &SinkConfig) -> Result<Arc<dyn Sink>, SinkSetupError> {
    check(cfg)?;
    Ok(match cfg {
        SinkConfig::Stdout => Arc::new(StdoutSink::new()),
        SinkConfig::Http { url, on_4xx, headers } => Arc::new(HttpSink::new(url, *on_4xx, headers)?),
        SinkConfig::Postgres { url, table, create_table, lock_timeout } => {
            Arc::new(PostgresSink::connect(url, table, *create_table, *lock_timeout).await?)
        }
    })
}

/// The message body as JSON text when it is JSON, else as a JSON string of
/// its UTF-8 text or base64. Used by `stdout`.
pub(crate) fn body_as_json(body: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "base64": BASE64.encode(body) }),
    }
}
