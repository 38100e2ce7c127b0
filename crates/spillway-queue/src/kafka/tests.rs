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

#[async_trait]
impl crate::testkit::RefusingDlq for Kafka {
    /// The DLQ topic's `max.message.bytes` at 1 KiB: the broker refuses a
    /// larger record with RECORD_TOO_LARGE, which no retry fixes.
    async fn refuse_dead_letters(&self, queue: &str) {
        set_topic_setting(&self.0, &super::topics::dlq(queue), "max.message.bytes", Some("1024")).await;
    }
    async fn accept_dead_letters(&self, queue: &str) {
        set_topic_setting(&self.0, &super::topics::dlq(queue), "max.message.bytes", None).await;
    }
}

crate::refusing_dlq_tests!(Kafka);

/// Sets (or, with `None`, removes) one setting of a topic, keeping the
/// others that were set on it: `AlterConfigs` replaces the whole set.
async fn set_topic_setting(b: &KafkaBackend, topic: &str, name: &str, value: Option<&str>) {
    use rdkafka::admin::{AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
    let described = b
        .shared
        .admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described.into_iter().next().expect("one result").expect("the topic's settings");
    let mut set: Vec<(String, String)> = resource
        .entries
        .into_iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && e.name != name)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    if let Some(v) = value {
        set.push((name.to_owned(), v.to_owned()));
    }
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in &set {
        alter = alter.set(k, v);
    }
    let altered = b.shared.admin.alter_configs(&[alter], &AdminOptions::new()).await.expect("alter configs");
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");
}

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
    // What the retention alert divides by (`spillway_queue_retention_seconds`).
    let age = crate::Admin::age(&b, &name).await.expect("age");
    assert_eq!(age.retention, Some(Duration::from_secs(14 * 24 * 3600)));
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

/// Waits until `check` holds, or fails naming `what`.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another process joining and leaving the group ten times, while this one
/// holds every record, moves partitions back and forth. None of it is a
/// crash: each record comes back (where its partition moved) with its
/// count unchanged, and nothing reaches the DLQ. With holds committed on
/// revoke, the fifth round has walked every moved record to its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_are_not_counted_as_crashes() {
    use crate::{Admin as _, Backend as _, DeadLetterPolicy, OutgoingMessage, QueueSpec};
    // Members learn of a rebalance at their next heartbeat: a short one
    // keeps ten rounds quick.
    let mut cfg = config();
    cfg.options.insert("heartbeat.interval.ms".into(), "200".into());
    let connect = async || KafkaBackend::connect(&cfg).await.expect("kafka clients");
    let a = connect().await;
    let name = format!("kafka-rebalance-{:08x}", rand::random::<u32>());
    let spec = QueueSpec {
        name: name.clone(),
        // Long enough that no hold expires during the test: only a
        // rebalance could count one.
        dead_letter: DeadLetterPolicy { max_receive_count: 5, visibility_timeout: Duration::from_secs(300) },
        max_message_bytes: 64 * 1024,
    };
    a.ensure(&spec).await.expect("ensure");
    let p = a.producer(&name).await.expect("producer");
    let sent: Vec<_> = (0..8)
        .map(|i| OutgoingMessage {
            ordering_key: Some(format!("k{i}")),
            ..OutgoingMessage::new(format!("r{i}"), "x")
        })
        .collect();
    for outcome in p.send_batch(sent).await.expect("send") {
        outcome.expect("stored");
    }
    let c = a.consumer(&name).await.expect("consumer");
    let mut held = Vec::new();
    until("this process holds all 8", Duration::from_secs(30), async || {
        held.extend(c.receive(8, Duration::from_millis(200)).await.expect("receive"));
        held.len() == 8
    })
    .await;
    assert!(held.iter().all(|d| d.receive_count == 1));
    let member = a.members.lock().await.get(&name).cloned().expect("member");
    let all = member.assignment_len();
    assert!(all >= 2, "the member reads every partition: {all}");
    assert!(member.cooperative(), "a join moves only what must move (cooperative-sticky)");

    for round in 0..10 {
        let b = connect().await;
        b.ensure(&spec).await.expect("ensure in the other process");
        let cb = b.consumer(&name).await.expect("a consumer joins");
        let other = b.members.lock().await.get(&name).cloned().expect("member");
        until(&format!("round {round}: the joiner gets partitions"), Duration::from_secs(60), async || {
            other.assignment_len() > 0 && member.assignment_len() < all
        })
        .await;
        drop((cb, other, b));
        until(&format!("round {round}: the partitions come back"), Duration::from_secs(60), async || {
            member.assignment_len() == all
        })
        .await;
    }

    // Records still held here are acked; those whose partition moved come
    // back, uncounted.
    c.ack_batch(&held).await.expect("ack what is still held");
    let mut seen: std::collections::BTreeMap<String, u32> =
        held.iter().map(|d| (d.message.id.clone(), d.receive_count)).collect();
    let mut settled = held.len();
    until("every record is back and acked", Duration::from_secs(30), async || {
        let got = c.receive(8, Duration::from_millis(500)).await.expect("receive");
        for d in &got {
            assert_eq!(d.receive_count, 1, "{} came back counted after clean rebalances", d.message.id);
            seen.insert(d.message.id.clone(), d.receive_count);
        }
        c.ack_batch(&got).await.expect("ack");
        settled += got.len();
        seen.len() == 8 && a.stats(&name).await.is_ok_and(|s| s.pending() == 0)
    })
    .await;
    assert!(settled >= 8);
    let dead = a.peek_dead(&name, 10).await.expect("peek dead");
    assert!(dead.is_empty(), "dead-lettered by rebalances alone: {dead:?}");
}

/// An idempotent producer's fatal error (librdkafka's test hook fabricates
/// one, as no broker can be made to) leaves that producer refusing every
/// send: the backend replaces it, and sends succeed again without a
/// restart.
///
/// The one `unsafe` in the workspace: librdkafka's test hook has no safe
/// wrapper, and no real broker can be made to fence an idempotent producer
/// on demand.
#[tokio::test]
#[allow(unsafe_code)]
async fn a_fatal_producer_error_is_recovered_by_a_new_producer() {
    use rdkafka::producer::Producer as _;

    use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
    let b = connect().await;
    let name = format!("kafka-fatal-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    let p = b.producer(&name).await.expect("producer");
    p.send(OutgoingMessage::new("before", "x")).await.expect("send before");
    let old = b.shared.producer();
    let reason = c"spillway test: fabricated fatal error";
    // SAFETY: a live client handle and a NUL-terminated reason, as the
    // function documents; it only marks the client as fatally failed.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            old.client().native_ptr(),
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    assert_eq!(code, rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    assert!(old.client().fatal_error().is_some(), "the hook made the producer fail fatally");
    drop(old);
    // The fatal error reaches the context through the producer's poll
    // thread; sends succeed again once the producer is replaced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match p.send(OutgoingMessage::new("after", "x")).await {
            Ok(()) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "still refused after 10 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.shared.producer().client().fatal_error().is_none());
    b.ready().await.expect("ready with the new producer");
}

/// The DLQ cursor is the offset of a group with no members, which the
/// broker drops `offsets.retention.minutes` after its last commit. Dead
/// letters redriven or purged before that must not come back then: the
/// group is deleted here, as the expiry would, and the DLQ stays as the
/// cursor left it.
#[tokio::test]
async fn redriven_dead_letters_stay_gone_when_the_broker_drops_the_cursor() {
    use rdkafka::admin::AdminOptions;

    use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
    let b = connect().await;
    let name = format!("kafka-cursor-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    let p = b.producer(&name).await.expect("producer");
    for i in 0..3 {
        p.send(OutgoingMessage::new(format!("d{i}"), "x")).await.expect("send");
    }
    let c = b.consumer(&name).await.expect("consumer");
    let mut killed = 0;
    while killed < 3 {
        for d in c.receive(3, Duration::from_secs(1)).await.expect("receive") {
            c.dead_letter(&d, "bad").await.expect("dead letter");
            killed += 1;
        }
    }
    c.close().await.expect("close");
    drop(c);
    assert_eq!(b.peek_dead(&name, 10).await.expect("peek").len(), 3);
    assert_eq!(b.redrive(&name, 2).await.expect("redrive two"), 2);
    let group = b.shared.config.dlq_group(&name);
    let deleted =
        b.shared.admin.delete_groups(&[&group], &AdminOptions::new()).await.expect("delete the cursor group");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let dead = b.peek_dead(&name, 10).await.expect("peek after the cursor is gone");
    assert_eq!(dead.len(), 1, "redriven dead letters came back: {dead:?}");
    assert_eq!(b.stats(&name).await.expect("stats").dead, 1);
}

/// A broker that keeps a group's offsets for less than the configured
/// retention is named: here a retention of 60 days against the broker's
/// offsets.retention.minutes (14 days as `services.sh` sets it, 7 by
/// Kafka's default). One equal to it is not.
#[tokio::test]
async fn a_broker_that_drops_offsets_before_the_retention_is_named() {
    let long = KafkaConfig { retention: Duration::from_secs(60 * 24 * 3600), ..config() };
    let b = KafkaBackend::connect(&long).await.expect("kafka clients");
    let findings = b.check_broker().await;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].contains("offsets.retention.minutes"), "{findings:?}");
    let short = KafkaConfig { retention: Duration::from_secs(3600), ..config() };
    let b = KafkaBackend::connect(&short).await.expect("kafka clients");
    assert_eq!(b.check_broker().await, Vec::<String>::new());
}

/// A foreign record's headers reach the DLQ as its producer wrote them,
/// through a retry and a dead letter: bytes that are not UTF-8, a null
/// value and a repeated key included. Read as text, they came out as
/// replacement characters, an empty string and one value.
#[tokio::test]
async fn foreign_headers_survive_retries_and_dead_letters_byte_for_byte() {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer as _},
        message::{Header, Headers as _, OwnedHeaders},
        producer::{FutureProducer, FutureRecord},
        Message as _,
    };

    use crate::{Admin as _, Backend as _, QueueSpec};
    let b = connect().await;
    let name = format!("kafka-headers-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    let written: Vec<(&str, Option<&[u8]>)> =
        vec![("trace", Some(&[0xff, 0xfe, 0x00])), ("empty", None), ("dup", Some(b"a")), ("dup", Some(b"b"))];
    let mut headers = OwnedHeaders::new();
    for (key, value) in &written {
        headers = headers.insert(Header { key, value: *value });
    }
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    producer
        .send(FutureRecord::<(), [u8]>::to(&name).payload(b"x").headers(headers), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("foreign record stored");
    let c = b.consumer(&name).await.expect("consumer");
    let receive = || async {
        loop {
            if let Some(d) = c.receive(1, Duration::from_secs(1)).await.expect("receive").pop() {
                return d;
            }
        }
    };
    let d = receive().await;
    c.nack(&d, Duration::ZERO, "once").await.expect("nack: a retry copy");
    let d = receive().await;
    c.dead_letter(&d, "then dead").await.expect("dead letter");
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{name}-reader"))
        .create()
        .expect("reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&super::topics::dlq(&name), 0, rdkafka::Offset::Beginning).expect("tpl");
    reader.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        assert!(std::time::Instant::now() < deadline, "no dead letter in the DLQ topic");
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            break m.expect("dead letter").detach();
        }
    };
    let got: Vec<(String, Option<Vec<u8>>)> = dead
        .headers()
        .map(|h| {
            h.iter()
                .filter(|h| !h.key.starts_with("spillway-"))
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(String, Option<Vec<u8>>)> =
        written.iter().map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec))).collect();
    assert_eq!(got, want);
}

/// A group coordinator that cannot say where the group left off in one
/// partition must not stop the others: the record that asked is put back
/// (its partition seeks to it) and taken once the coordinator answers,
/// uncounted. Before, the fetch loop retried that read until it succeeded,
/// and every other partition's records waited behind it.
#[tokio::test]
async fn a_partition_whose_committed_offset_cannot_be_read_does_not_stop_the_others() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use crate::{Admin as _, Backend as _, QueueSpec};
    let b = connect().await;
    let name = format!("kafka-coordinator-{:08x}", rand::random::<u32>());
    b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    let produce = |partition: i32, body: &'static str| {
        let producer = producer.clone();
        let name = name.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), str>::to(&name).partition(partition).payload(body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("record stored");
        }
    };
    let blind = format!("{name}/0");
    crate::fault::arm("kafka.committed", &blind, 0, u32::MAX);
    produce(0, "zero").await;
    let c = b.consumer(&name).await.expect("consumer");
    // The member starts and fetches "zero" first; its partition cannot start.
    assert!(c.receive(10, Duration::from_secs(2)).await.expect("receive").is_empty());
    produce(1, "one").await;
    let mut got = Vec::new();
    until("partition 1's record while partition 0 cannot start", Duration::from_secs(10), async || {
        got.extend(c.receive(10, Duration::from_millis(200)).await.expect("receive"));
        !got.is_empty()
    })
    .await;
    assert_eq!(got.iter().map(|d| &d.message.body[..]).collect::<Vec<_>>(), [&b"one"[..]]);
    crate::fault::disarm("kafka.committed", &blind);
    let mut zero = Vec::new();
    until(
        "partition 0's record once its committed offset can be read",
        Duration::from_secs(15),
        async || {
            zero.extend(c.receive(10, Duration::from_millis(200)).await.expect("receive"));
            !zero.is_empty()
        },
    )
    .await;
    assert_eq!(zero.len(), 1);
    assert_eq!(&zero[0].message.body[..], b"zero");
    assert_eq!(zero[0].receive_count, 1, "put back is not a failed receive");
    for d in got.iter().chain(&zero) {
        c.ack(d).await.expect("ack");
    }
}
