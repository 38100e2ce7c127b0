//! Kafka interop: a plain Kafka client (python `confluent-kafka` in the test
//! venv) reads what Spillway produced, with the key, headers and value
//! `docs/backends.md` documents, and Spillway consumes what it produced.
//! Against the tansu broker `deploy/local/services.sh` starts.

use std::time::Duration;

use spillway_e2e::kafka_client;
use spillway_queue::{
    kafka::{KafkaBackend, KafkaConfig},
    Admin, Backend, OutgoingMessage, QueueSpec,
};

fn brokers() -> String {
    std::env::var("SPILLWAY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn python(args: &[&str]) -> String {
    kafka_client(&brokers(), args)
}

async fn backend() -> (KafkaBackend, String) {
    let b = KafkaBackend::connect(&KafkaConfig { partitions: 1, ..KafkaConfig::new(brokers()) })
        .await
        .expect("kafka clients");
    if let Err(e) = b.ready().await {
        panic!("no Kafka broker at {} ({e}): start one with `deploy/local/services.sh up`", brokers());
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("interop-{}-{nanos:08x}", std::process::id());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    (b, name)
}

#[tokio::test]
async fn a_plain_kafka_client_reads_what_spillway_produced() {
    let (b, name) = backend().await;
    let mut m = OutgoingMessage::new("01JINTEROP", r#"{"event":"signup"}"#);
    m.attributes.insert("content-type".into(), "application/json".into());
    m.ordering_key = Some("customer-7".into());
    b.producer(&name).await.expect("producer").send(m).await.expect("send");
    let got: serde_json::Value = serde_json::from_str(&python(&["read", &name])).expect("json");
    assert_eq!(got["value"], r#"{"event":"signup"}"#);
    assert_eq!(got["key"], "customer-7", "the ordering key is the Kafka key");
    assert_eq!(got["headers"]["spillway-id"], "01JINTEROP");
    assert_eq!(got["headers"]["content-type"], "application/json");
    assert!(
        got["headers"]["spillway-enqueued-at"].as_str().is_some_and(|t| t.parse::<i64>().is_ok()),
        "{got}"
    );
}

#[tokio::test]
async fn spillway_consumes_what_a_plain_kafka_client_produced() {
    let (b, name) = backend().await;
    let c = b.consumer(&name).await.expect("consumer");
    python(&["send", &name, "order-1", "hello from python", "source=pos", "lang=py"]);
    let mut got = Vec::new();
    for _ in 0..10 {
        got = c.receive(1, Duration::from_secs(2)).await.expect("receive");
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1, "the record did not arrive");
    let d = &got[0];
    assert_eq!(d.message.body.as_ref(), b"hello from python");
    assert_eq!(d.message.ordering_key.as_deref(), Some("order-1"));
    assert_eq!(d.message.attributes.get("source").map(String::as_str), Some("pos"));
    assert_eq!(d.message.attributes.get("lang").map(String::as_str), Some("py"));
    assert_eq!(d.receive_count, 1);
    // No `spillway-id`: the id names the record itself.
    assert_eq!(d.message.id, format!("{name}-0-0"));
    c.ack(d).await.expect("ack");
}
