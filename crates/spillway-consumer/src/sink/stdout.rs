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

fn line(d: &Delivery) -> serde_json::Value {
    serde_json::json!({
        "id": d.message.id,
        "queue": d.queue,
        "receive_count": d.receive_count,
        "attributes": d.message.attributes,
        "body": body_as_json(&d.message.body),
    })
}

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", line(d))
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Down(format!("stdout: {e}")))
    }

    fn batches(&self) -> bool {
        true
    }

    /// One lock, one flush for the batch.
    async fn deliver_batch(&self, ds: &[Delivery]) -> Vec<Result<(), SinkError>> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = ds.iter().try_for_each(|d| writeln!(out, "{}", line(d))).and_then(|()| out.flush());
        let answer = written.map_err(|e| SinkError::Down(format!("stdout: {e}")));
        ds.iter().map(|_| answer.clone()).collect()
    }
}
