//! The baseline for the SQS backend: aws-sdk-sqs sending straight to a
//! queue, no HTTP and no Spillway. The SDK has no batching of its own, so
//! the baseline batches as well as a client can: `IN_FLIGHT` messages in
//! flight as `IN_FLIGHT / 10` senders, each sending a `SendMessageBatch` of
//! 10 and waiting for its answer before the next (the gateway's
//! `send_batch` makes the same calls from the requests it holds). A
//! message counts once SQS listed it as successful. Each carries a
//! `spillway-id` attribute, as the gateway's do. Prints `msgs/s
//! cpu_us_per_msg` on the last line.
//!
//! ```text
//! raw_sqs ENDPOINT QUEUE IN_FLIGHT SECONDS BODY_BYTES
//! ```

use aws_sdk_sqs::{
    config::{BehaviorVersion, Credentials, Region},
    types::{MessageAttributeValue, SendMessageBatchRequestEntry},
    Client,
};

/// SQS's limit of entries per `SendMessageBatch`.
const BATCH: usize = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, queue, in_flight, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_sqs ENDPOINT QUEUE IN_FLIGHT SECONDS BODY_BYTES".into());
    };
    let (in_flight, seconds, body_bytes): (usize, u64, usize) =
        (in_flight.parse()?, seconds.parse()?, body_bytes.parse()?);
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "raw_sqs"))
        .build();
    let client = Client::from_conf(conf);
    let url = client.create_queue().queue_name(queue).send().await?.queue_url.ok_or("no queue url")?;
    let body = "x".repeat(body_bytes);
    let senders = in_flight.div_ceil(BATCH);
    let per_batch = in_flight.min(BATCH);
    let run = spillway_benches::closed_loop(senders, seconds, |_, handle| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            while handle.running() {
                let entries: Vec<SendMessageBatchRequestEntry> = (0..per_batch)
                    .filter_map(|i| {
                        let meta = format!(r#"{{"id":"{}","enq":{}}}"#, ulid::Ulid::new(), now_ms());
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(&body)
                            .message_attributes("spillway", text(meta)?)
                            .message_attributes("spillway-format", text("envelope".to_owned())?)
                            .message_attributes("spillway-route", text("/ingest".to_owned())?)
                            .build()
                            .ok()
                    })
                    .collect();
                let sent =
                    client.send_message_batch().queue_url(&url).set_entries(Some(entries)).send().await;
                let Ok(out) = sent else { continue };
                for _ in out.successful() {
                    handle.stored();
                }
            }
        }
    })
    .await?;
    run.report(&format!("sent by {senders} batch senders ({in_flight} in flight)"));
    // The server keeps every message in memory: leave none behind for the
    // next round to pay for.
    let _ = client.delete_queue().queue_url(&url).send().await;
    Ok(())
}

fn text(value: String) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder().data_type("String").string_value(value).build().ok()
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
