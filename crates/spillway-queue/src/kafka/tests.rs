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
