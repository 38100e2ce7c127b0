//! `stdout`: one JSON line per message. For debugging and for piping into
//! another tool. Never `Down`: if standard output is gone, so is the process.

use std::io::Write;

use async_trait::async_trait;
use spillway_queue::Delivery;

use super::{body_as_json, Sink};
use crate::SinkError;

/// Writes `{"id", "queue", "receive_count", "attributes", "body"}` lines.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl StdoutSink {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let line = serde_json::json!({
            "id": d.message.id,
            "queue": d.queue,
            "receive_count": d.receive_count,
            "attributes": d.message.attributes,
            "body": body_as_json(&d.message.body),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Down(format!("stdout: {e}")))
    }
}
