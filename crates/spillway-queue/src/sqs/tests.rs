//! The conformance kit against an SQS-compatible server (moto, started by
//! `deploy/local/services.sh`), on standard and on FIFO queues. Each
//! scenario makes its own queues (random names) and deletes them when it
//! passed.
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{SqsBackend, SqsConfig};
use crate::{
    testkit::{Capabilities, Harness, KeyOrder, StatsAccuracy, TimeSource},
    Backend,
};

/// `SPILLWAY_TEST_SQS`, or the moto server `deploy/local/services.sh` starts.
pub(crate) fn endpoint() -> String {
    std::env::var("SPILLWAY_TEST_SQS").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

pub(crate) async fn connect() -> SqsBackend {
    let cfg = SqsConfig::local(&endpoint());
    let b = SqsBackend::connect(&cfg).await.expect("sqs client");
    if let Err(e) = b.ready().await {
        panic!(
            "no SQS server answers at {} ({e}): start one with `deploy/local/services.sh up`, \
             or point SPILLWAY_TEST_SQS at one",
            endpoint()
        );
    }
    b
}

/// What standard and FIFO queues share.
fn sqs_capabilities() -> Capabilities {
    Capabilities {
        time: TimeSource::Wall,
        // SQS takes whole seconds; 2 s leaves room on a loaded machine.
        visibility: Duration::from_secs(2),
        stats: StatsAccuracy::Converges { within: Duration::from_secs(5) },
        ..Capabilities::embedded()
    }
}

struct Standard(SqsBackend);

#[async_trait]
impl Harness for Standard {
    fn capabilities() -> Capabilities {
        Capabilities { dedup: false, key_order: KeyOrder::None, ..sqs_capabilities() }
    }
    async fn new() -> Self {
        Self(connect().await)
    }
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
    async fn reopen(&self) -> Arc<dyn Backend> {
        Arc::new(connect().await)
    }
    async fn cleanup(&self) {
        if let Err(e) = self.0.delete_ensured().await {
            eprintln!("could not delete the test queues: {e}");
        }
    }
}

mod standard {
    use super::Standard;
    crate::conformance_tests!(Standard);
}

struct Fifo(SqsBackend);

#[async_trait]
impl Harness for Fifo {
    fn capabilities() -> Capabilities {
        Capabilities {
            key_order: KeyOrder::UntilRetried,
            release_counts: true,
            per_message_delay: false,
            ..sqs_capabilities()
        }
    }
    fn queue_suffix() -> &'static str {
        ".fifo"
    }
    async fn new() -> Self {
        Self(connect().await)
    }
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
    async fn reopen(&self) -> Arc<dyn Backend> {
        Arc::new(connect().await)
    }
    async fn cleanup(&self) {
        if let Err(e) = self.0.delete_ensured().await {
            eprintln!("could not delete the test queues: {e}");
        }
    }
}

mod fifo {
    use super::Fifo;
    crate::conformance_tests!(Fifo);
}
