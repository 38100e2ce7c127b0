//! The conformance kit against two SQS-compatible servers, both started by
//! `deploy/local/services.sh`: ElasticMQ (fast, persistent, the one the
//! drills use) and moto (what only it checks), each on standard and on FIFO
//! queues. Each scenario makes its own queues (random names) and deletes
//! them when it passed. Where the two servers differ from each other or
//! from SQS, docs/backends.md says so.
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

/// `SPILLWAY_TEST_ELASTICMQ`, or the ElasticMQ server `deploy/local/services.sh` starts.
pub(crate) fn elasticmq_endpoint() -> String {
    std::env::var("SPILLWAY_TEST_ELASTICMQ").unwrap_or_else(|_| "http://127.0.0.1:9324".to_owned())
}

pub(crate) async fn connect() -> SqsBackend {
    connect_to(&endpoint(), "SPILLWAY_TEST_SQS").await
}

async fn connect_to(endpoint: &str, variable: &str) -> SqsBackend {
    let cfg = SqsConfig::local(endpoint);
    let b = SqsBackend::connect(&cfg).await.expect("sqs client");
    if let Err(e) = b.ready().await {
        panic!(
            "no SQS server answers at {endpoint} ({e}): start one with `deploy/local/services.sh up`, \
             or point {variable} at one"
        );
    }
    b
}

/// Which SQS-compatible server a harness runs the kit on.
trait Server: Send + Sync + 'static {
    fn connect() -> impl std::future::Future<Output = SqsBackend> + Send;
}

/// moto (with deploy/local/sqs_server.py's fix).
struct Moto;

impl Server for Moto {
    async fn connect() -> SqsBackend {
        connect().await
    }
}

/// ElasticMQ, with its queues and messages persisted.
struct ElasticMq;

impl Server for ElasticMq {
    async fn connect() -> SqsBackend {
        connect_to(&elasticmq_endpoint(), "SPILLWAY_TEST_ELASTICMQ").await
    }
}

/// What standard and FIFO queues share.
fn sqs_capabilities() -> Capabilities {
    Capabilities {
        time: TimeSource::Wall,
        // SQS takes whole seconds; 2 s leaves room on a loaded machine.
        visibility: Duration::from_secs(2),
        stats: StatsAccuracy::Converges { within: Duration::from_secs(5) },
        // SQS tells the oldest message's age only to CloudWatch.
        oldest_age: false,
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
        Capabilities {
            dedup: false,
            key_order: KeyOrder::None,
            key_single_flight: false,
            ..sqs_capabilities()
        }
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

struct Sqs<K, S>(SqsBackend, std::marker::PhantomData<(K, S)>);

#[async_trait]
impl<K: Kind, S: Server> Harness for Sqs<K, S> {
    fn capabilities() -> Capabilities {
        K::capabilities()
    }
    fn queue_suffix() -> &'static str {
        K::suffix()
    }
    async fn new() -> Self {
        Self(S::connect().await, std::marker::PhantomData)
    }
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
    async fn reopen(&self) -> Arc<dyn Backend> {
        Arc::new(S::connect().await)
    }
    async fn cleanup(&self) {
        if let Err(e) = self.0.delete_ensured().await {
            eprintln!("could not delete the test queues: {e}");
        }
    }
}

#[async_trait]
impl<K: Kind, S: Server> crate::testkit::ForeignProducer for Sqs<K, S> {
    /// As any SQS client would: a body and nothing else (on a FIFO queue,
    /// the group and deduplication ids SQS requires).
    async fn publish_foreign(&self, queue: &str, body: &[u8]) {
        let client = &self.0.shared.client;
        let url = client.get_queue_url().queue_name(queue).send().await.expect("queue url");
        let mut send = client
            .send_message()
            .queue_url(url.queue_url().unwrap_or_default())
            .message_body(String::from_utf8_lossy(body));
        if queue.ends_with(".fifo") {
            send = send
                .message_group_id("foreign")
                .message_deduplication_id(format!("{:016x}", rand::random::<u64>()));
        }
        send.send().await.expect("the server stored the foreign message");
    }
}

#[async_trait]
impl<K: Kind> crate::testkit::RefusingDlq for Sqs<K, Moto> {
    /// A DLQ whose `MaximumMessageSize` is 1 KiB, which moto enforces on
    /// every send (ElasticMQ ignores the attribute, so it does not run this).
    async fn refuse_dead_letters(&self, queue: &str) {
        self.set_dlq_max_size(queue, crate::testkit::REFUSED_BODY / 2).await;
    }
    async fn accept_dead_letters(&self, queue: &str) {
        self.set_dlq_max_size(queue, 256 * 1024).await;
    }
}

impl<K: Kind, S: Server> Sqs<K, S> {
    async fn set_dlq_max_size(&self, queue: &str, bytes: usize) {
        let s = &self.0.shared;
        let url = s.url_of(&super::dlq_name(queue)).await.expect("the DLQ's url");
        s.client
            .set_queue_attributes()
            .queue_url(url)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize, bytes.to_string())
            .send()
            .await
            .expect("set the DLQ's MaximumMessageSize");
    }
}

type Standard = Sqs<StandardQueues, Moto>;
type Fifo = Sqs<FifoQueues, Moto>;
type ElasticMqStandard = Sqs<StandardQueues, ElasticMq>;
type ElasticMqFifo = Sqs<FifoQueues, ElasticMq>;

mod standard {
    use super::Standard;
    crate::conformance_tests!(Standard);
    crate::foreign_producer_tests!(Standard);
    crate::refusing_dlq_tests!(Standard);
}

mod fifo {
    use super::Fifo;
    crate::conformance_tests!(Fifo);
    crate::foreign_producer_tests!(Fifo);
    crate::refusing_dlq_tests!(Fifo);
}

mod elasticmq_standard {
    use super::ElasticMqStandard;
    crate::conformance_tests!(ElasticMqStandard);
    crate::foreign_producer_tests!(ElasticMqStandard);
}

mod elasticmq_fifo {
    use super::ElasticMqFifo;
    crate::conformance_tests!(ElasticMqFifo);
    crate::foreign_producer_tests!(ElasticMqFifo);
}

/// An adopted FIFO queue with content-based deduplication keeps two
/// messages with equal bodies and different ids: the id is the
/// deduplication id, not the body's hash.
#[tokio::test]
async fn content_based_dedup_does_not_drop_equal_bodies_with_other_ids() {
    for b in [connect().await, connect_to(&elasticmq_endpoint(), "SPILLWAY_TEST_ELASTICMQ").await] {
        let name = format!("conf-cbd-{:08x}.fifo", rand::random::<u32>());
        b.shared
            .client
            .create_queue()
            .queue_name(&name)
            .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
            .attributes(aws_sdk_sqs::types::QueueAttributeName::ContentBasedDeduplication, "true")
            .send()
            .await
            .expect("create a queue with content-based deduplication");
        let spec = crate::QueueSpec::new(&name);
        crate::Admin::ensure(&b, &spec).await.expect("adopt it");
        let p = b.producer(&name).await.expect("producer");
        let sent = p
            .send_batch(vec![
                crate::OutgoingMessage::new("first-id", "the same body"),
                crate::OutgoingMessage::new("second-id", "the same body"),
            ])
            .await
            .expect("send");
        assert!(sent.iter().all(Result::is_ok), "{sent:?}");
        let c = b.consumer(&name).await.expect("consumer");
        let mut ids = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ids.len() < 2 && tokio::time::Instant::now() < deadline {
            for d in c.receive(10, Duration::from_secs(1)).await.expect("receive") {
                ids.push(d.message.id.clone());
                c.ack(&d).await.expect("ack");
            }
        }
        ids.sort();
        assert_eq!(ids, ["first-id", "second-id"], "both messages were kept");
        let _ =
            b.shared.client.delete_queue().queue_url(b.shared.url_of(&name).await.expect("url")).send().await;
        let _ = b.delete_ensured().await;
    }
}

/// The source queue `queue ensure` creates keeps messages for the
/// configured retention (14 days by default, not SQS's 4), and an adopted
/// queue that keeps them for less is named. On moto: ElasticMQ neither
/// keeps nor reports `MessageRetentionPeriod`.
#[tokio::test]
async fn created_queues_keep_messages_for_the_retention_and_short_adopted_ones_are_named() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let b = connect().await;
    let name = format!("conf-retention-{:08x}", rand::random::<u32>());
    crate::Admin::ensure(&b, &crate::QueueSpec::new(&name)).await.expect("ensure");
    let url = b.shared.url_of(&name).await.expect("url");
    let attrs = b.shared.attributes(&name, &url).await.expect("attributes");
    assert_eq!(attrs.get(&QueueAttributeName::MessageRetentionPeriod).map(String::as_str), Some("1209600"));
    assert_eq!(super::short_retention(&name, &attrs, Duration::from_secs(1_209_600)), None);
    // What the retention alert divides by (`spillway_queue_retention_seconds`).
    let age = crate::Admin::age(&b, &name).await.expect("age");
    assert_eq!(age.retention, Some(Duration::from_secs(1_209_600)));
    let adopted = format!("conf-adopted-{:08x}", rand::random::<u32>());
    let made = b
        .shared
        .client
        .create_queue()
        .queue_name(&adopted)
        .attributes(QueueAttributeName::MessageRetentionPeriod, "345600")
        .send()
        .await
        .expect("a queue with SQS's default retention");
    let attrs =
        b.shared.attributes(&adopted, made.queue_url().unwrap_or_default()).await.expect("attributes");
    let finding = super::short_retention(&adopted, &attrs, Duration::from_secs(1_209_600));
    assert!(finding.as_deref().is_some_and(|f| f.contains("345600 s")), "{finding:?}");
    let _ = b.shared.client.delete_queue().queue_url(made.queue_url().unwrap_or_default()).send().await;
    let _ = b.delete_ensured().await;
}

/// An ElasticMQ of the test's own (`deploy/local/services.sh
/// elasticmq-node`), on a free port with its data in a folder of its own,
/// so the test may `kill -9` and restart it. Killed when dropped.
struct OwnElasticMq {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<std::process::Child>,
}

impl OwnElasticMq {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut s = Self { port, dir: tempfile::tempdir().expect("data folder"), process: None };
        s.restart().await;
        s
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/services.sh");
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).expect("log");
        let child = std::process::Command::new("bash")
            .arg(script)
            .arg("elasticmq-node")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start deploy/local/services.sh elasticmq-node");
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "ElasticMQ did not start; see its stdout.log");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for OwnElasticMq {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// ElasticMQ `kill -9`ed while a consumer holds messages, and started again
/// on its data: what was acked stays gone, what was held comes back counted
/// (receive 2), what was never received comes back once, and nothing is
/// lost. The backend goes on without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticmq_killed_mid_receive_keeps_what_was_not_acked() {
    let mut server = OwnElasticMq::start().await;
    let b = connect_to(&server.endpoint(), "SPILLWAY_TEST_ELASTICMQ").await;
    let name = format!("conf-restart-{:08x}", rand::random::<u32>());
    let mut spec = crate::QueueSpec::new(&name);
    spec.dead_letter.visibility_timeout = Duration::from_secs(2);
    crate::Admin::ensure(&b, &spec).await.expect("ensure");
    let p = b.producer(&name).await.expect("producer");
    let msgs: Vec<_> =
        (0..10).map(|i| crate::OutgoingMessage::new(format!("m{i}"), format!("body {i}"))).collect();
    assert!(p.send_batch(msgs).await.expect("send").iter().all(Result::is_ok));
    let c = b.consumer(&name).await.expect("consumer");
    let mut held = Vec::new();
    while held.len() < 5 {
        held.extend(c.receive(5 - held.len(), Duration::from_secs(2)).await.expect("receive"));
    }
    let acked: std::collections::BTreeSet<String> = held[..2].iter().map(|d| d.message.id.clone()).collect();
    for d in &held[..2] {
        c.ack(d).await.expect("ack");
    }
    let unacked: std::collections::BTreeSet<String> =
        held[2..].iter().map(|d| d.message.id.clone()).collect();

    server.kill9();
    server.restart().await;

    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 8 && tokio::time::Instant::now() < deadline {
        match c.receive(10, Duration::from_secs(1)).await {
            Ok(got) => {
                for d in got {
                    seen.insert(d.message.id.clone(), d.receive_count);
                    c.ack(&d).await.expect("ack");
                }
            }
            Err(e) => eprintln!("receive while the server comes back: {e}"),
        }
    }
    assert_eq!(seen.len(), 8, "every message not acked came back: {seen:?}");
    assert!(acked.iter().all(|id| !seen.contains_key(id)), "an acked message came back: {seen:?}");
    for (id, count) in &seen {
        let want = if unacked.contains(id) { 2 } else { 1 };
        assert_eq!(*count, want, "{id}: held across the restart counts 2, never received counts 1");
    }
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

/// The SQS server the tests use hands a message to one receive at a time.
/// Plain moto 5.2.5 does not: its ReceiveMessage checks visibility, then
/// marks the message, with nothing held in between, so receives at once can
/// share a message (`deploy/local/sqs_server.py` explains and fixes it).
/// Without this test that race shows up as a rare, misleading failure of
/// `concurrent_consumers_never_share_a_message`; with it, a server that
/// lacks the fix is named at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_never_hands_one_message_to_two_receives() {
    use std::collections::HashMap;

    use crate::{Admin, OutgoingMessage, QueueSpec};
    const MESSAGES: usize = 300;
    const RECEIVERS: usize = 16;
    let b = connect().await;
    for suffix in ["", ".fifo"] {
        let name = format!("conf-server-race-{:08x}{suffix}", rand::random::<u32>());
        // Nothing is acked: within the visibility timeout every message is
        // received exactly once, or the server shared it.
        let mut spec = QueueSpec::new(&name);
        spec.dead_letter.visibility_timeout = Duration::from_secs(120);
        b.ensure(&spec).await.expect("ensure");
        let p = b.producer(&name).await.expect("producer");
        let batch: Vec<_> = (0..MESSAGES).map(|i| OutgoingMessage::new(format!("r{i:04}"), "x")).collect();
        for chunk in batch.chunks(10) {
            for r in p.send_batch(chunk.to_vec()).await.expect("send") {
                r.expect("sent");
            }
        }
        let mut tasks = Vec::new();
        for _ in 0..RECEIVERS {
            let c = b.consumer(&name).await.expect("consumer");
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let got = c.receive(10, Duration::from_secs(1)).await.expect("receive");
                    if got.is_empty() {
                        return ids;
                    }
                    ids.extend(got.into_iter().map(|d| d.message.id));
                }
            }));
        }
        let mut times: HashMap<String, usize> = HashMap::new();
        for t in tasks {
            for id in t.await.expect("receiver") {
                *times.entry(id).or_default() += 1;
            }
        }
        let shared: Vec<_> = times.iter().filter(|(_, &n)| n > 1).collect();
        assert!(
            shared.is_empty(),
            "the SQS server at {} gave {} of {MESSAGES} messages on `{name}` to more than one receive \
             within their visibility timeout: it is not deploy/local/sqs_server.py (plain moto_server has \
             this race); restart it with `deploy/local/services.sh up`",
            endpoint(),
            shared.len()
        );
        assert_eq!(times.len(), MESSAGES, "every message received on `{name}`");
    }
    b.delete_ensured().await.expect("cleanup");
}

/// SQS's own answers to a receipt that no longer holds its message, as AWS
/// sends them (neither test server does): each is stale, so a late ack or
/// extend is not an error. A bad value for another parameter is not.
#[test]
fn every_way_sqs_says_a_receipt_is_stale_is_recognised() {
    use super::stale_receipt;
    let expired =
        "Value AQEB4Th3 for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.";
    let moved = "Value AQEB1r2G for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.";
    assert!(stale_receipt("InvalidParameterValue", expired));
    assert!(stale_receipt("InvalidParameterValue", moved));
    assert!(stale_receipt("AWS.SimpleQueueService.MessageNotInflight", ""));
    assert!(stale_receipt("ReceiptHandleIsInvalid", "The input receipt handle is invalid."));
    let too_long = "Value 43200 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]";
    assert!(!stale_receipt("InvalidParameterValue", too_long), "a visibility past 12 hours is a real error");
    assert!(!stale_receipt("AccessDenied", ""));
}

/// Only a refusal of the message itself is the client's fault (422): the
/// operator's errors — IAM, credentials, KMS, clock skew, quotas — are
/// 503s the client retries, never a 4xx that tells it to drop its data.
/// (The codes and texts are AWS's; no test server here sends them.)
#[test]
fn only_a_refusal_of_the_message_itself_is_the_clients_fault() {
    use super::message_at_fault;
    for (code, msg) in [
        (
            "InvalidParameterValue",
            "One or more parameters are invalid. Reason: Message must be shorter than 262144 bytes.",
        ),
        ("AWS.SimpleQueueService.BatchRequestTooLong", "Batch requests cannot be longer than 262144 bytes"),
        ("InvalidMessageContents", "Invalid binary character '#x1B' was found in the message body"),
    ] {
        assert!(message_at_fault(code, msg), "{code}");
    }
    for (code, msg) in [
        ("AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/ingest/i-0 is not authorized to perform: sqs:sendmessage on resource: arn:aws:sqs:eu-west-1:123456789012:my-queue because no identity-based policy allows the sqs:sendmessage action"),
        ("ExpiredToken", "The security token included in the request is expired"),
        ("InvalidClientTokenId", "The security token included in the request is invalid."),
        ("SignatureDoesNotMatch", "Signature expired: 20261207T080000Z is now earlier than 20261207T081500Z"),
        ("RequestExpired", "Request has expired."),
        ("KmsAccessDenied", "The ciphertext refers to a customer master key that does not exist"),
        ("KMS.DisabledException", "arn:aws:kms:eu-west-1:123456789012:key/1 is disabled."),
        ("InvalidParameterValue", "Value 43200 for parameter VisibilityTimeout is invalid."),
        ("RequestThrottled", "Rate exceeded"),
        ("OverLimit", "too many in flight"),
    ] {
        assert!(!message_at_fault(code, msg), "{code} is the operator's");
    }
}

/// An adopted queue whose visibility timeout is 0: a message one consumer
/// holds is not handed to another at once (the receive hides it itself),
/// on both servers.
#[tokio::test]
async fn a_zero_visibility_queue_does_not_hand_a_held_message_to_another_consumer() {
    use aws_sdk_sqs::types::QueueAttributeName;
    for endpoint in [endpoint(), elasticmq_endpoint()] {
        let b = connect_to(&endpoint, "SPILLWAY_TEST_SQS or SPILLWAY_TEST_ELASTICMQ").await;
        let name = format!("conf-zerovis-{:08x}", rand::random::<u32>());
        crate::Admin::ensure(&b, &crate::QueueSpec::new(&name)).await.expect("ensure");
        let url = b.shared.url_of(&name).await.expect("url");
        b.shared
            .client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::VisibilityTimeout, "0")
            .send()
            .await
            .expect("an operator sets the visibility timeout to 0");
        // Fresh clients: what they learn of the queue is its visibility of 0.
        let (one, two) = (connect_to(&endpoint, "").await, connect_to(&endpoint, "").await);
        let p = one.producer(&name).await.expect("producer");
        p.send(crate::OutgoingMessage::new("held", "body")).await.expect("send");
        let first = one.consumer(&name).await.expect("consumer");
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.is_empty() && tokio::time::Instant::now() < deadline {
            got = first.receive(10, Duration::from_secs(1)).await.expect("receive");
        }
        assert_eq!(got.len(), 1, "{endpoint}: the message arrives");
        let second = two.consumer(&name).await.expect("consumer");
        let other = second.receive(10, Duration::from_secs(1)).await.expect("receive");
        assert!(other.is_empty(), "{endpoint}: a held message went to a second consumer at once: {other:?}");
        first.ack(&got[0]).await.expect("ack");
        let _ = b.delete_ensured().await;
    }
}

/// A DLQ deleted behind Spillway's back (an operator's cleanup) is made
/// again by the next `ensure`, so dead letters can be stored again; before,
/// `ensure` saw the source queue's RedrivePolicy and never looked at the
/// DLQ, and every dead letter failed until someone made it by hand.
#[tokio::test]
async fn ensure_makes_a_deleted_dlq_again() {
    use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
    let b = connect().await;
    let name = format!("conf-dlqgone-{:08x}", rand::random::<u32>());
    let spec = QueueSpec::new(&name);
    b.ensure(&spec).await.expect("ensure");
    let dlq_url = b.shared.url_of(&super::dlq_name(&name)).await.expect("the DLQ exists");
    b.shared.client.delete_queue().queue_url(&dlq_url).send().await.expect("delete the DLQ");
    assert!(matches!(b.shared.url_of(&super::dlq_name(&name)).await, Err(crate::QueueError::NotFound(_))));
    b.ensure(&spec).await.expect("ensure again");
    b.shared.url_of(&super::dlq_name(&name)).await.expect("the DLQ made again");
    b.producer(&name).await.expect("producer").send(OutgoingMessage::new("x", "x")).await.expect("send");
    let c = b.consumer(&name).await.expect("consumer");
    let d = loop {
        if let Some(d) = c.receive(1, Duration::from_secs(1)).await.expect("receive").pop() {
            break d;
        }
    };
    c.dead_letter(&d, "bad").await.expect("a dead letter is stored again");
    assert_eq!(b.peek_dead(&name, 1).await.expect("peek")[0].id, "x");
}

/// Held messages as many as `n`, received on `c` (several receives: SQS
/// hands out at most 10 a call).
async fn hold(c: &Arc<dyn crate::Consumer>, n: usize) -> Vec<crate::Delivery> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {n} received", got.len());
        got.extend(c.receive(10, Duration::from_secs(1)).await.expect("receive"));
    }
    got
}

/// An `ack_batch` whose second `DeleteMessageBatch` of three fails deletes
/// the first and the third, and keeps the second chunk's messages held, so
/// acking them again deletes them. Before, the batch forgot every receipt
/// before deleting (the second acks found nothing to delete, and those
/// messages came back) and stopped at the failed chunk (the third came
/// back too).
#[tokio::test]
async fn ack_batch_keeps_a_failed_chunk_held_and_deletes_the_rest() {
    use crate::{Admin as _, Backend as _, DeadLetterPolicy, OutgoingMessage, QueueSpec};
    let b = connect().await;
    let name = format!("conf-ackchunk-{:08x}", rand::random::<u32>());
    let spec = QueueSpec {
        name: name.clone(),
        dead_letter: DeadLetterPolicy { max_receive_count: 5, visibility_timeout: Duration::from_secs(2) },
        max_message_bytes: 64 * 1024,
    };
    b.ensure(&spec).await.expect("ensure");
    let p = b.producer(&name).await.expect("producer");
    let msgs: Vec<OutgoingMessage> = (0..25).map(|i| OutgoingMessage::new(format!("m{i:02}"), "x")).collect();
    for outcome in p.send_batch(msgs).await.expect("send") {
        outcome.expect("stored");
    }
    let c = b.consumer(&name).await.expect("consumer");
    let held = hold(&c, 25).await;
    crate::fault::arm("sqs.delete_batch", &name, 1, 1);
    c.ack_batch(&held).await.expect_err("the second chunk's delete failed");
    crate::fault::disarm("sqs.delete_batch", &name);
    for d in &held[10..20] {
        c.ack(d).await.expect("ack again");
    }
    // Past the visibility timeout nothing comes back: all 25 are deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back = c.receive(10, Duration::from_secs(1)).await.expect("receive");
    assert!(back.is_empty(), "came back: {:?}", back.iter().map(|d| &d.message.id).collect::<Vec<_>>());
    let _ = b.delete_ensured().await;
}

/// `close` of a consumer holding 45 messages gives each back at once, as
/// a release (uncounted on standard queues), in batches (standard: copies sent 10 a call and the
/// originals deleted 10 a call; FIFO: visibility 0, 10 a call). Before, it
/// released each message alone, all at once.
#[tokio::test]
async fn close_gives_back_many_held_messages_uncounted() {
    use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
    let b = connect().await;
    for suffix in ["", ".fifo"] {
        let name = format!("conf-closemany-{:08x}{suffix}", rand::random::<u32>());
        b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
        let p = b.producer(&name).await.expect("producer");
        // No ordering key: on FIFO each message is a group of its own, so
        // one consumer can hold them all at once.
        let msgs: Vec<OutgoingMessage> =
            (0..45).map(|i| OutgoingMessage::new(format!("m{i:02}"), "x")).collect();
        for chunk in msgs.chunks(10) {
            for outcome in p.send_batch(chunk.to_vec()).await.expect("send") {
                outcome.expect("stored");
            }
        }
        let c = b.consumer(&name).await.expect("consumer");
        let held = hold(&c, 45).await;
        c.close().await.expect("close");
        let c = b.consumer(&name).await.expect("another consumer");
        let back = hold(&c, 45).await;
        let mut ids: Vec<&str> = back.iter().map(|d| d.message.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 45, "{name}: every held message once");
        // FIFO declares `release_counts`: SQS's count cannot be undone.
        let count = if suffix.is_empty() { 1 } else { 2 };
        assert!(
            back.iter().all(|d| d.receive_count == count),
            "{name}: a close costs nothing more than a release"
        );
        c.ack_batch(&back).await.expect("ack");
        drop(held);
    }
    let _ = b.delete_ensured().await;
}

/// A move task the server never lists (its list is eventually consistent,
/// or another task hides it) ends the redrive with an error after 30 s,
/// not a wait forever. ElasticMQ: moto has no move tasks.
#[tokio::test]
async fn a_move_task_never_listed_is_an_error_not_a_wait_forever() {
    use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
    let b = connect_to(&elasticmq_endpoint(), "SPILLWAY_TEST_ELASTICMQ").await;
    let name = format!("conf-movetask-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    b.producer(&name).await.expect("producer").send(OutgoingMessage::new("x", "x")).await.expect("send");
    let c = b.consumer(&name).await.expect("consumer");
    let d = hold(&c, 1).await.remove(0);
    c.dead_letter(&d, "bad").await.expect("dead letter");
    crate::fault::arm("sqs.move_task_listed", &name, 0, u32::MAX);
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(45), b.redrive(&name, 100)).await;
    crate::fault::disarm("sqs.move_task_listed", &name);
    let err = got.expect("the redrive ended").expect_err("a task never listed");
    assert!(err.to_string().contains("did not list"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(30), "gave up before its 30 s");
    let _ = b.delete_ensured().await;
}
