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

/// Which kind of queue a harness runs the kit on.
trait Kind: Send + Sync + 'static {
    fn capabilities() -> Capabilities;
    fn suffix() -> &'static str;
}

/// Standard queues: no dedup, no order.
struct StandardQueues;

impl Kind for StandardQueues {
    fn capabilities() -> Capabilities {
        Capabilities { dedup: false, key_order: KeyOrder::None, ..sqs_capabilities() }
    }
    fn suffix() -> &'static str {
        ""
    }
}

/// FIFO queues: releases count, no per-message delay, order until retried.
struct FifoQueues;

impl Kind for FifoQueues {
    fn capabilities() -> Capabilities {
        Capabilities {
            key_order: KeyOrder::UntilRetried,
            release_counts: true,
            per_message_delay: false,
            ..sqs_capabilities()
        }
    }
    fn suffix() -> &'static str {
        ".fifo"
    }
}

struct Sqs<K>(SqsBackend, std::marker::PhantomData<K>);

#[async_trait]
impl<K: Kind> Harness for Sqs<K> {
    fn capabilities() -> Capabilities {
        K::capabilities()
    }
    fn queue_suffix() -> &'static str {
        K::suffix()
    }
    async fn new() -> Self {
        Self(connect().await, std::marker::PhantomData)
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

type Standard = Sqs<StandardQueues>;
type Fifo = Sqs<FifoQueues>;

mod standard {
    use super::Standard;
    crate::conformance_tests!(Standard);
}

mod fifo {
    use super::Fifo;
    crate::conformance_tests!(Fifo);
}

/// A queue can be named by its URL as well as by its name.
#[tokio::test]
async fn a_queue_given_by_url_is_the_same_queue() {
    use crate::{Admin, OutgoingMessage, QueueSpec};
    let b = connect().await;
    let name = format!("conf-url-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure by name");
    // moto's URLs: <endpoint>/<account>/<name>.
    let url = format!("{}/123456789012/{name}", endpoint());
    let p = b.producer(&url).await.expect("a producer by URL");
    p.send(OutgoingMessage::new("by-url", "hello")).await.expect("send by URL");
    let c = b.consumer(&name).await.expect("a consumer by name");
    let got = c.receive(1, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.id, "by-url");
    assert_eq!(got[0].queue, name);
    c.ack(&got[0]).await.expect("ack");
    assert_eq!(b.stats(&url).await.expect("stats by URL").pending(), 0);
    b.delete_ensured().await.expect("cleanup");
}
