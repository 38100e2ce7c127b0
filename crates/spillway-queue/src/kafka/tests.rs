//! The conformance kit against Apache Kafka (a single KRaft node, started
//! by `deploy/local/services.sh`). Each scenario makes its own topics
//! (random names).
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{KafkaBackend, KafkaConfig};
use crate::{
    testkit::{Capabilities, Harness, KeyOrder, StatsAccuracy, TimeSource},
    Backend,
};

/// `SPILLWAY_TEST_KAFKA`, or the broker `deploy/local/services.sh` starts.
pub(crate) fn brokers() -> String {
    std::env::var("SPILLWAY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub(crate) fn config() -> KafkaConfig {
    KafkaConfig { partitions: 2, ..KafkaConfig::new(brokers()) }
}

pub(crate) async fn connect() -> KafkaBackend {
    let b = KafkaBackend::connect(&config()).await.expect("kafka clients");
    if let Err(e) = b.ready().await {
        panic!(
            "no Kafka broker answers at {} ({e}): start one with `deploy/local/services.sh up`, \
             or point SPILLWAY_TEST_KAFKA at one",
            brokers()
        );
    }
    b
}

struct Kafka(Arc<KafkaBackend>);

#[async_trait]
impl Harness for Kafka {
    /// What a log cannot do as the embedded queue does: drop a repeated
    /// dedup key, and keep a key's order past a retry (the retry is
    /// republished behind the rest).
    fn capabilities() -> Capabilities {
        Capabilities {
            time: TimeSource::Wall,
            visibility: Duration::from_secs(2),
            stats: StatsAccuracy::Converges { within: Duration::from_secs(5) },
            dedup: false,
            key_order: KeyOrder::UntilRetried,
            ..Capabilities::embedded()
        }
    }
    async fn new() -> Self {
        Self(Arc::new(connect().await))
    }
    async fn backend(&self) -> Arc<dyn Backend> {
        self.0.clone()
    }
    async fn reopen(&self) -> Arc<dyn Backend> {
        Arc::new(connect().await)
    }
    // No cleanup: the topics have random names, and the test command
    // starts each run on an emptied broker (`services.sh fresh-kafka`).
}

crate::conformance_tests!(Kafka);

#[async_trait]
impl crate::testkit::ForeignProducer for Kafka {
    /// As any Kafka client would: a value, no key, no headers.
    async fn publish_foreign(&self, queue: &str, body: &[u8]) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("acks", "all")
            .create()
            .expect("a plain Kafka producer");
        producer
            .send(FutureRecord::<(), [u8]>::to(queue).payload(body), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker stored the foreign record");
    }
}

crate::foreign_producer_tests!(Kafka);

/// The settings of a topic, as the broker reports them.
async fn topic_settings(b: &KafkaBackend, topic: &str) -> std::collections::BTreeMap<String, String> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let spec = [ResourceSpecifier::Topic(topic)];
    let described =
        b.shared.admin.describe_configs(&spec, &AdminOptions::new()).await.expect("describe configs");
    let resource = described.into_iter().next().expect("one result").expect("the topic's settings");
    resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
}

/// What `queue ensure` creates is set, not left to the broker's defaults:
/// delete (never compact), the configured retention, and the in-sync
/// minimum, on the source, each tier and the DLQ.
#[tokio::test]
async fn created_topics_carry_retention_cleanup_and_min_insync() {
    let b = connect().await;
    let name = format!("conf-retention-{:08x}", rand::random::<u32>());
    crate::Admin::ensure(&b, &crate::QueueSpec::new(&name)).await.expect("ensure");
    for topic in super::topics::all(&name) {
        let got = topic_settings(&b, &topic).await;
        assert_eq!(got.get("cleanup.policy").map(String::as_str), Some("delete"), "{topic}");
        assert_eq!(got.get("retention.ms").map(String::as_str), Some("1209600000"), "{topic}: 14 days");
        assert_eq!(got.get("min.insync.replicas").map(String::as_str), Some("1"), "{topic}: replication 1");
    }
}

/// A topic Spillway adopts (made by someone else) is checked: compaction
/// and a retention shorter than configured are named, and left as they are.
#[tokio::test]
async fn an_adopted_compacted_or_short_lived_topic_is_named() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let b = connect().await;
    let name = format!("conf-adopt-{:08x}", rand::random::<u32>());
    let made = b
        .shared
        .admin
        .create_topics(
            &[NewTopic::new(&name, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
                .set("retention.ms", "3600000")],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    crate::Admin::ensure(&b, &crate::QueueSpec::new(&name)).await.expect("ensure adopts it");
    let findings = b.check_adopted(&name, std::slice::from_ref(&name)).await;
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert!(findings[0].contains("cleanup.policy=compact"), "{findings:#?}");
    assert!(findings[1].contains("3600000 ms"), "{findings:#?}");
    let got = topic_settings(&b, &name).await;
    assert_eq!(got.get("cleanup.policy").map(String::as_str), Some("compact"), "left as it was");
}
