//! The floor under any HTTP-to-Kafka gateway: the bare server of
//! `ceiling`, whose handler produces the request's body with rdkafka (the
//! settings of `raw_rdkafka` and of the backend: `acks=all`, idempotent,
//! `linger.ms` 2, the four headers the gateway's records carry) and answers
//! 202 only on the delivery report.
//!
//! No routing rules, checks, envelope, retries or dead letters: it is what
//! `benches/publish.sh kafka` compares the gateway with besides the raw
//! producer, because on a machine where HTTP itself costs more CPU than the
//! producer, the raw producer (no HTTP at all) is out of reach of any
//! gateway, and this is not.
//!
//! ```text
//! bridge_rdkafka ADDR BROKERS TOPIC
//! ```
#![forbid(unsafe_code)]

use std::{sync::Arc, time::Duration};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Bridge {
    producer: FutureProducer,
    topic: String,
}

async fn accept(State(b): State<Arc<Bridge>>, body: Bytes) -> (StatusCode, String) {
    let id = ulid::Ulid::new().to_string();
    let headers = spillway_benches::kafka::headers(&id, "raw");
    let rec = FutureRecord::<[u8], [u8]>::to(&b.topic).payload(&body).headers(headers);
    match b.producer.send(rec, Duration::ZERO).await {
        Ok(_) => (StatusCode::ACCEPTED, spillway_benches::accepted_body(&id, body.len())),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, brokers, topic] = args.as_slice() else {
        return Err("usage: bridge_rdkafka ADDR BROKERS TOPIC".into());
    };
    let producer = spillway_benches::kafka::topic_and_producer(brokers, topic).await?;
    let bridge = Arc::new(Bridge { producer, topic: topic.clone() });
    let app = Router::new().route("/ingest", post(accept).put(accept)).with_state(bridge);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("bridge listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
