//! What the Kafka baselines (`raw_rdkafka`, `bridge_rdkafka`) share, so
//! they cannot drift apart: the topic, the backend's producer settings,
//! and the headers the gateway's records carry.

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::FutureProducer,
    ClientConfig,
};

/// Creates `topic` (six partitions, as the backend's `queue ensure` makes,
/// and the broker's default replication, -1 by KIP-464: 3 on the
/// three-node cluster, as the gateway's topics get there; one that exists
/// is kept) and a producer with the backend's settings: `acks=all`,
/// idempotent, `linger.ms` 2.
pub async fn topic_and_producer(brokers: &str, topic: &str) -> Result<FutureProducer, KafkaError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    let admin: AdminClient<DefaultClientContext> = cfg.create()?;
    let _ = admin
        .create_topics(&[NewTopic::new(topic, 6, TopicReplication::Fixed(-1))], &AdminOptions::new())
        .await?;
    cfg.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.size", "1048576")
        .set("message.timeout.ms", "10000")
        .create()
}

/// The four headers a gateway record carries (`spillway-id`,
/// `-enqueued-at`, `-route`, `-format`): a broker that stores headers row
/// by row pays for them, and a baseline should too.
pub fn headers(id: &str, format: &str) -> OwnedHeaders {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header { key: "spillway-id", value: Some(id.as_bytes()) })
        .insert(Header { key: "spillway-enqueued-at", value: Some(now.as_bytes()) })
        .insert(Header { key: "spillway-route", value: Some(b"ingest".as_slice()) })
        .insert(Header { key: "spillway-format", value: Some(format.as_bytes()) })
}
