//! The Kafka backend: `acks=all` with an idempotent producer, consumer
//! groups, and the same queue contract as every backend, on a log that has
//! no per-message ack.
//!
//! - [`topics`]: the topics behind one Spillway queue (source, retry tiers,
//!   dead letters) and where a retry goes.
//! - [`wire`]: a message as Kafka key, value and headers.
//! - [`ledger`]: the offsets of one partition, settled out of order, and
//!   the commit metadata that carries them (and crashes) to the next reader.
//! - [`member`]: the process's group member for one queue, shared by all
//!   its consumers: fetch, hand out, settle, commit.
//! - [`producer`]: sends, each `Ok` only on its delivery report.
//! - [`committed`]: committed offsets read back, metadata as bytes.
//!
//! # The shape
//!
//! One group member per queue per process, however many consumers the
//! process runs: Kafka scales across processes by partitions, and within a
//! process the member hands records out one by one, as a queue does. Each
//! handed-out record is hidden for the queue's visibility timeout, and
//! comes back (counted) when its consumer neither settles nor extends it.
//!
//! A failed message is **republished** (to the source topic, or to the
//! retry tier its delay rounds up to) with its failures in a header, and
//! only then settled: a crash between the two gives a duplicate, never a
//! loss. An offset is committed only once every record before it is
//! settled, and the commit's metadata names what is settled above it and
//! what was held (see [`ledger`]). `docs/backends.md` has the whole design.

mod committed;
mod consumer;
mod fatal;
mod health;
mod ledger;
mod member;
pub mod oauth;
mod producer;
pub mod topics;
pub(crate) mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    consumer::{BaseConsumer, CommitMode, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer as _},
    Offset, TopicPartitionList,
};
use serde::{Deserialize, Serialize};

use self::{
    health::{Health, ProducerCtx},
    member::Member,
    wire::Record,
};
use crate::{
    spec::Specs, Admin, Backend, Clock, Consumer, DeadLetter, Producer, PurgeTarget, QueueAge, QueueError,
    QueueSpec, QueueStats,
};

/// A group coordinator that is not ready yet: a retry soon succeeds.
fn coordinator_not_ready(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
        )
    )
}

/// `[queue] backend = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// A local durable spool in front of the broker (`queue.spool`; off
    /// unless set): see [`crate::spool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// Consumer groups are `<group_prefix>.<queue>`; the dead-letter
    /// cursor is the group `<group_prefix>.<queue>.dlq`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Partitions of the source topic and of each retry tier, when
    /// `queue ensure` creates them. The DLQ has one (oldest first).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each topic `queue ensure` creates. 1 suits a single
    /// broker; use 3 (with `min.insync.replicas = 2`) in production.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// How long the topics `queue ensure` creates keep a record
    /// (`retention.ms`): the longest sink outage the backlog survives.
    /// Kafka's default is 7 days, and managed clusters often set less;
    /// Spillway sets it on every topic it creates, and warns about a topic
    /// it adopts that keeps records for less, or compacts them.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// `min.insync.replicas` of the topics `queue ensure` creates: how many
    /// replicas must have a record before its `acks=all` send is `Ok`.
    /// Unset: 2 where `replication` is 3 or more, else 1.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// A send without its delivery report by then fails (`message.timeout.ms`):
    /// nothing is acknowledged on the strength of it.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// The largest producer batch per partition, in bytes (`batch.size`).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// How long a fetch waits for data (`fetch.wait.max.ms`). Low, because
    /// it is the floor of delivery latency on brokers that do not answer a
    /// waiting fetch when data arrives.
    #[serde(default = "default_fetch_wait", with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// A member that misses heartbeats this long is taken out of the group,
    /// and its partitions go to the others (`session.timeout.ms`).
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Any other librdkafka property, for every client (TLS, SASL, …).
    /// Values of keys naming a password or secret are masked by `config check`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// SASL/OAUTHBEARER: a JWT in this file, read again before each token
    /// expires ([`oauth`]); `options."sasl.mechanisms"` must be `OAUTHBEARER`.
    #[serde(default)]
    pub oauthbearer_token_file: Option<std::path::PathBuf>,
}

fn default_group_prefix() -> String {
    "spillway".to_owned()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_retention() -> Duration {
    Duration::from_secs(14 * 24 * 3600)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_linger() -> Duration {
    Duration::from_millis(2)
}
fn default_batch_bytes() -> usize {
    1024 * 1024
}
fn default_fetch_wait() -> Duration {
    Duration::from_millis(10)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

impl KafkaConfig {
    /// The defaults, for brokers at `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            spool: None,
            brokers: brokers.into(),
            group_prefix: default_group_prefix(),
            partitions: default_partitions(),
            replication: default_replication(),
            retention: default_retention(),
            min_insync_replicas: None,
            send_timeout: default_send_timeout(),
            linger: default_linger(),
            batch_bytes: default_batch_bytes(),
            fetch_wait: default_fetch_wait(),
            session_timeout: default_session_timeout(),
            options: BTreeMap::new(),
            oauthbearer_token_file: None,
        }
    }

    /// Each file an option names (`ssl.ca.location`, `ssl.key.location`,
    /// …) can be read: librdkafka's own refusal says "ssl.ca.location
    /// failed: system lib", without the path or why.
    fn check_files(&self) -> Result<(), QueueError> {
        for (key, path) in &self.options {
            // `ssl.ca.location = probe` asks librdkafka to find the system's.
            if !key.ends_with(".location") || path == "probe" {
                continue;
            }
            if let Err(e) = std::fs::File::open(path) {
                return Err(QueueError::unavailable_msg(format!(
                    "kafka: options.{key}: cannot read {path}: {e}"
                )));
            }
        }
        Ok(())
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "spillway");
        // librdkafka backs off up to 10 s between reconnects by default: a
        // broker back after a restart would wait that long for traffic.
        c.set("reconnect.backoff.max.ms", "1000");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// What every topic `queue ensure` creates is set to, rather than the
    /// broker's defaults: delete (never compact: records with equal keys
    /// are different messages), the retention, and the in-sync minimum.
    pub(crate) fn topic_settings(&self) -> [(&'static str, String); 3] {
        let min_isr = self.min_insync_replicas.unwrap_or(if self.replication >= 3 { 2 } else { 1 });
        [
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", self.retention.as_millis().to_string()),
            ("min.insync.replicas", min_isr.to_string()),
        ]
    }

    /// `partition.assignment.strategy` of the group members:
    /// `cooperative-sticky` (a join or leave moves only what must move),
    /// unless `options` names another. A group cannot mix cooperative and
    /// eager members, so moving from a release that used librdkafka's
    /// eager default (`range,roundrobin`) stops the consumers once, or
    /// keeps that default through `options` (see docs/backends.md).
    pub(crate) fn assignment_strategy(&self) -> String {
        self.options
            .get("partition.assignment.strategy")
            .cloned()
            .unwrap_or_else(|| "cooperative-sticky".to_owned())
    }

    pub(crate) fn group(&self, queue: &str) -> String {
        format!("{}.{queue}", self.group_prefix)
    }

    fn dlq_group(&self, queue: &str) -> String {
        format!("{}.{queue}.dlq", self.group_prefix)
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Turns a Kafka error into what the caller does next.
pub(crate) fn queue_error(what: &str, queue: &str, e: &KafkaError) -> QueueError {
    // A client librdkafka would not make: its text names the property
    // ("ssl.ca.location failed: …"), which the operator must see.
    if let KafkaError::ClientCreation(why) = e {
        return QueueError::unavailable(format!("kafka: {what}: {why}"), e.clone());
    }
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            QueueError::NotFound(queue.to_owned())
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            QueueError::Rejected(format!("kafka: {what}: {e}"))
        }
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut,
        ) => QueueError::unavailable(format!("kafka: {what}: timed out"), e.clone()),
        Some(code) if fatal::is_authorization(code) => QueueError::unavailable_msg(format!(
            "kafka: {what}: {code:?}: this principal lacks an ACL the operator must grant (docs/tls.md)"
        )),
        _ => QueueError::unavailable(format!("kafka: {what}"), e.clone()),
    }
}

/// The broker asked is not the partition's leader (any more, or yet).
fn leader_moved(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable)
    )
}

/// The idempotent `acks=all` producer every send goes through.
fn new_producer(cfg: &KafkaConfig, health: &Arc<Health>) -> Result<FutureProducer<ProducerCtx>, QueueError> {
    cfg.client()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", ms(cfg.send_timeout))
        .set("linger.ms", ms(cfg.linger))
        .set("batch.size", cfg.batch_bytes.to_string())
        .create_with_context(ProducerCtx(health.clone()))
        .map_err(|e| queue_error("producer", "", &e))
}

/// What every part of the backend shares: clients, config, policies.
pub(crate) struct Shared {
    pub(crate) config: KafkaConfig,
    /// Replaced after a fatal error (see [`Shared::producer`]).
    producer: std::sync::RwLock<Arc<FutureProducer<ProducerCtx>>>,
    /// When it was last replaced (see [`fatal`]).
    replaced: Mutex<fatal::Pacing>,
    /// Whether the brokers answer; sends fail fast while they do not.
    health: Arc<Health>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// OAUTHBEARER tokens for every client, when configured.
    tokens: Option<Arc<oauth::Tokens>>,
    pub(crate) specs: Specs,
    pub(crate) clock: Clock,
    /// Group readers for committed offsets (stats, purge), one per group.
    readers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Runs a blocking librdkafka call off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<Result<T, KafkaError>, QueueError> {
        tokio::task::spawn_blocking(f).await.map_err(|e| QueueError::unavailable("kafka: blocking call", e))
    }

    fn timeout(&self) -> Duration {
        self.config.send_timeout
    }

    /// Gives a long-lived client the OAUTHBEARER token, now and later.
    pub(crate) fn with_token(&self, client: Arc<dyn oauth::Native>) -> Result<(), QueueError> {
        self.tokens.as_ref().map_or(Ok(()), |t| t.register(client))
    }

    /// The producer. An idempotent producer that hit a fatal error (an
    /// out-of-order sequence, a fenced epoch) refuses every send from then
    /// on; it is replaced here, once, by a new one, so the process recovers
    /// without a restart. Sends in flight on the old one fail (no 2xx).
    ///
    /// librdkafka reports a fatal error through the error callback under
    /// its cause's code (it cannot be told from a transient one there), so
    /// the producer is asked directly: an atomic read per call. A failed
    /// producer is replaced at most once per [`fatal::REPLACE_EVERY`] (a
    /// principal that may not write fails every new one); until then the
    /// failed one is returned, and sends on it fail at once.
    pub(crate) fn producer(&self) -> Arc<FutureProducer<ProducerCtx>> {
        let current = self.producer.read().unwrap_or_else(PoisonError::into_inner).clone();
        if current.client().fatal_error().is_none() {
            return current;
        }
        if !self
            .replaced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .may_replace(std::time::Instant::now())
        {
            return current;
        }
        let mut slot = self.producer.write().unwrap_or_else(PoisonError::into_inner);
        let Some((code, reason)) = slot.client().fatal_error() else {
            return slot.clone(); // another caller replaced it already
        };
        match new_producer(&self.config, &self.health) {
            Ok(p) => {
                let p = Arc::new(p);
                if let Err(e) = self.with_token(p.clone()) {
                    tracing::error!(error = %e, "kafka: the new producer has no OAUTHBEARER token");
                }
                *slot = p;
                tracing::error!(%code, reason, "kafka: the producer hit a fatal error; a new one replaced it");
            }
            Err(e) => {
                tracing::error!(%code, reason, error = %e, "kafka: the producer hit a fatal error and could not be replaced");
            }
        }
        slot.clone()
    }

    /// The partitions of `topic`, `NotFound` when it does not exist.
    pub(crate) async fn partitions(
        self: &Arc<Self>,
        queue: &str,
        topic: &str,
    ) -> Result<Vec<i32>, QueueError> {
        let me = self.clone();
        let t = topic.to_owned();
        let md = Self::blocking(move || me.producer().client().fetch_metadata(Some(&t), me.timeout()))
            .await?
            .map_err(|e| queue_error("metadata", queue, &e))?;
        let Some(found) = md.topics().iter().find(|x| x.name() == topic) else {
            return Err(QueueError::NotFound(queue.to_owned()));
        };
        if let Some(err) = found.error() {
            let code = RDKafkaErrorCode::from(err);
            if matches!(code, RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) {
                return Err(QueueError::NotFound(queue.to_owned()));
            }
            return Err(QueueError::unavailable_msg(format!("kafka: metadata of {topic}: {code}")));
        }
        if found.partitions().is_empty() {
            return Err(QueueError::NotFound(queue.to_owned()));
        }
        Ok(found.partitions().iter().map(|p| p.id()).collect())
    }

    /// Waits until every partition of a topic just created has a leader,
    /// polling its metadata until `deadline`.
    async fn await_leaders(
        self: &Arc<Self>,
        queue: &str,
        topic: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), QueueError> {
        loop {
            let me = self.clone();
            let t = topic.to_owned();
            let led = Self::blocking(move || me.producer().client().fetch_metadata(Some(&t), me.timeout()))
                .await?
                .map(|md| {
                    md.topics().iter().any(|x| {
                        x.name() == topic
                            && x.error().is_none()
                            && !x.partitions().is_empty()
                            && x.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if led {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QueueError::unavailable_msg(format!(
                    "kafka: topic {topic} of {queue} was created but has no leader yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Low and high watermarks of one partition.
    ///
    /// A query that reached a broker which no longer (or not yet) leads
    /// the partition is asked again after a short pause, a few times:
    /// librdkafka refreshes its metadata meanwhile. Seen right after topic
    /// creation (CI), and during every leader move.
    pub(crate) async fn watermarks(
        self: &Arc<Self>,
        queue: &str,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), QueueError> {
        const TRIES: u32 = 5;
        let mut tried = 0;
        loop {
            tried += 1;
            let me = self.clone();
            let t = topic.to_owned();
            let got =
                Self::blocking(move || me.producer().client().fetch_watermarks(&t, partition, me.timeout()))
                    .await?;
            match got {
                Err(e) if tried < TRIES && leader_moved(&e) => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(tried))).await;
                }
                other => return other.map_err(|e| queue_error("watermarks", queue, &e)),
            }
        }
    }

    fn reader(&self, group: &str) -> Result<Arc<BaseConsumer>, QueueError> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = readers.get(group) {
            return Ok(r.clone());
        }
        let r: BaseConsumer = self
            .config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| queue_error("group reader", group, &e))?;
        let r = Arc::new(r);
        self.with_token(r.clone())?;
        readers.insert(group.to_owned(), r.clone());
        Ok(r)
    }

    /// A reader of its own, for fetching a few records at given offsets
    /// (dead letters to peek, the oldest record's timestamp): in `group`,
    /// which it never commits to; the broker answers a fetch without
    /// waiting for more data.
    fn one_off_reader(&self, queue: &str, group: String, what: &str) -> Result<BaseConsumer, QueueError> {
        let reader: BaseConsumer = self
            .config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| queue_error(what, queue, &e))?;
        if let Some(tokens) = &self.tokens {
            tokens.set_now(&reader)?;
        }
        Ok(reader)
    }

    /// The committed offset (or `None`) and metadata of each partition.
    pub(crate) async fn committed(
        self: &Arc<Self>,
        queue: &str,
        group: &str,
        parts: Vec<(String, i32)>,
    ) -> Result<HashMap<(String, i32), (Option<i64>, String)>, QueueError> {
        let reader = self.reader(group)?;
        let timeout = self.timeout();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &parts {
            tpl.add_partition(t, *p);
        }
        // A group coordinator still loading (a cluster just started, a
        // coordinator moved) answers NotCoordinator for a few seconds: ask
        // again within the timeout rather than fail a `queue stats` or
        // `queue purge` run right after the cluster came up.
        let deadline = tokio::time::Instant::now() + timeout;
        let got = loop {
            let (reader, tpl) = (reader.clone(), tpl.clone());
            match Self::blocking(move || reader.committed_offsets(tpl, timeout)).await? {
                Ok(got) => break got,
                Err(e) if coordinator_not_ready(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(queue_error("committed offsets", queue, &e)),
            }
        };
        Ok(committed::read(&got)
            .into_iter()
            .map(|c| {
                let off = match c.offset {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                ((c.topic, c.partition), (off, c.metadata))
            })
            .collect())
    }

    /// Commits offsets for a group this process is not a member of (the
    /// DLQ cursor, a purge with no member here).
    pub(crate) async fn commit_as(
        self: &Arc<Self>,
        queue: &str,
        group: &str,
        offsets: Vec<(String, i32, i64, String)>,
    ) -> Result<(), QueueError> {
        let reader = self.reader(group)?;
        let mut tpl = TopicPartitionList::new();
        for (t, p, o, md) in &offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| queue_error("commit", queue, &e))?;
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(md);
            }
        }
        Self::blocking(move || reader.commit(&tpl, CommitMode::Sync))
            .await?
            .map_err(|e| queue_error("commit", queue, &e))
    }

    /// Moves the DLQ cursor of `queue` to `offset`, then deletes the dead
    /// letters below it (Kafka's DeleteRecords). The cursor is the offset
    /// of a group that never has members, and the broker drops such
    /// offsets `offsets.retention.minutes` after their last commit (7 days
    /// by default): without the deletion, a cursor dropped that way would
    /// start again at the oldest dead letter, and everything redriven or
    /// purged since would be peeked and redriven again. The deletion is
    /// best effort (a Kafka-protocol broker without DeleteRecords keeps
    /// the records, logged): the cursor is what counts.
    pub(crate) async fn move_dlq_cursor(
        self: &Arc<Self>,
        queue: &str,
        offset: i64,
    ) -> Result<(), QueueError> {
        let dlq = topics::dlq(queue);
        self.commit_as(queue, &self.config.dlq_group(queue), vec![(dlq.clone(), 0, offset, String::new())])
            .await?;
        let mut below = TopicPartitionList::new();
        below
            .add_partition_offset(&dlq, 0, Offset::Offset(offset))
            .map_err(|e| queue_error("trim", queue, &e))?;
        let options = AdminOptions::new().operation_timeout(Some(self.timeout()));
        let trimmed = tokio::time::timeout(self.timeout(), self.admin.delete_records(&below, &options)).await;
        let failed = match trimmed {
            Ok(Ok(tpl)) => tpl.elements().iter().find_map(|e| e.error().err().map(|e| e.to_string())),
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        if let Some(e) = failed {
            tracing::warn!(queue, error = %e, "kafka: could not delete dead letters below the DLQ cursor; they reappear if the broker expires the cursor");
        }
        Ok(())
    }

    /// Produces one record and waits for its delivery report.
    pub(crate) async fn produce(
        &self,
        queue: &str,
        topic: &str,
        key: Option<&[u8]>,
        body: &[u8],
        headers: rdkafka::message::OwnedHeaders,
    ) -> Result<(), QueueError> {
        if self.health.is_down() {
            return Err(QueueError::unavailable_msg("kafka: brokers unreachable"));
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(body).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        let producer = self.producer();
        match producer.send(rec, rdkafka::util::Timeout::After(Duration::ZERO)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.health.observe(&e);
                // A producer that failed for good purges what it held
                // ("Purged in queue"): the cause is its fatal error.
                if let Some((code, reason)) = producer.client().fatal_error() {
                    return Err(fatal::produce_error(topic, code, &reason));
                }
                Err(queue_error("produce", queue, &e))
            }
        }
    }

    pub(crate) fn spec(&self, queue: &str) -> QueueSpec {
        self.specs.get(queue)
    }
}

/// The Kafka backend: one producer, one admin client, one group member per
/// queue consumed in this process.
pub struct KafkaBackend {
    shared: Arc<Shared>,
    members: tokio::sync::Mutex<HashMap<String, Arc<Member>>>,
}

impl KafkaBackend {
    /// What the adopted `topics` of `queue` keep differently from what
    /// Spillway sets on the topics it creates: a compacting cleanup policy
    /// (Kafka would remove a record when a later one has the same key,
    /// though each is a message of its own), or a retention shorter than
    /// `retention` (a sink outage longer than that loses the backlog, with
    /// no sign but a shrinking `stats`). Each finding is logged as a
    /// warning, by `queue ensure` and on every start, and returned. Nothing
    /// is changed on a topic Spillway did not create.
    pub async fn check_adopted(&self, queue: &str, topics: &[String]) -> Vec<String> {
        let specs: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(self.shared.config.send_timeout));
        let described = match self.shared.admin.describe_configs(&specs, &opts).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(queue, error = %e, "could not read the settings of the topics adopted");
                return Vec::new();
            }
        };
        let want = self.shared.config.retention;
        let mut findings = Vec::new();
        for (topic, r) in topics.iter().zip(described) {
            let Ok(resource) = r else { continue };
            let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
            if let Some(policy) = value("cleanup.policy").filter(|p| p.contains("compact")) {
                findings.push(format!(
                    "topic {topic} has cleanup.policy={policy}: Kafka removes a record when a later one has \
                     the same key, though each is a message of its own"
                ));
            }
            let kept = value("retention.ms").and_then(|v| v.parse::<i64>().ok());
            if let Some(ms) = kept.and_then(|ms| u64::try_from(ms).ok()) {
                if Duration::from_millis(ms) < want {
                    findings.push(format!(
                        "topic {topic} keeps records for {ms} ms (retention.ms), less than the configured \
                         retention of {} ms: a sink outage longer than that loses the backlog",
                        want.as_millis()
                    ));
                }
            }
        }
        for f in &findings {
            tracing::warn!(queue, "{f}");
        }
        findings
    }

    /// Checks the one broker setting a backlog's survival hangs on besides
    /// retention: `offsets.retention.minutes` (7 days by default). A
    /// consumer group with no members (every `spillway consume` stopped)
    /// loses its committed offsets that long after its last commit; its
    /// next member starts again at the oldest record, and everything the
    /// commit's metadata said was settled is delivered again. Named in a
    /// warning when it is shorter than the configured retention; returns
    /// what it found.
    pub async fn check_broker(&self) -> Vec<String> {
        let me = self.shared.clone();
        let timeout = me.config.send_timeout;
        let broker = Shared::blocking(move || me.producer().client().fetch_metadata(None, timeout))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|md| md.brokers().first().map(|b| b.id()));
        let Some(id) = broker else { return Vec::new() };
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let described = self.shared.admin.describe_configs(&[ResourceSpecifier::Broker(id)], &opts).await;
        let minutes = described
            .ok()
            .and_then(|d| d.into_iter().next())
            .and_then(Result::ok)
            .and_then(|r| r.get("offsets.retention.minutes").and_then(|e| e.value.clone()))
            .and_then(|v| v.parse::<u64>().ok());
        let want = self.shared.config.retention;
        let mut findings = Vec::new();
        if let Some(m) = minutes.filter(|m| Duration::from_secs(m.saturating_mul(60)) < want) {
            findings.push(format!(
                "the brokers keep a consumer group's offsets for {m} minutes after its last commit \
                 (offsets.retention.minutes), less than the configured retention of {} minutes: \
                 consumers stopped longer than that start again at the oldest record (duplicates). \
                 Set offsets.retention.minutes to at least the retention",
                want.as_secs() / 60
            ));
        }
        for f in &findings {
            tracing::warn!("{f}");
        }
        findings
    }

    /// Clients for the configured brokers. Connects lazily: a broker that is
    /// down makes calls fail, not this.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Self, QueueError> {
        let tokens = cfg
            .oauthbearer_token_file
            .clone()
            .map(|path| Arc::new(oauth::FileToken(path)) as Arc<dyn oauth::TokenSource>);
        Self::connect_with_tokens(cfg, tokens).await
    }

    /// [`KafkaBackend::connect`] with OAUTHBEARER tokens from `tokens` (an
    /// MSK IAM signer, say) instead of `oauthbearer_token_file`.
    pub async fn connect_with_tokens(
        cfg: &KafkaConfig,
        tokens: Option<Arc<dyn oauth::TokenSource>>,
    ) -> Result<Self, QueueError> {
        cfg.check_files()?;
        let oauthbearer =
            cfg.options.get("sasl.mechanisms").is_some_and(|m| m.eq_ignore_ascii_case("OAUTHBEARER"));
        if tokens.is_some() != oauthbearer {
            return Err(QueueError::Invalid(
                "kafka: a token source (queue.oauthbearer_token_file) and options.\"sasl.mechanisms\" = \"OAUTHBEARER\" go together".into(),
            ));
        }
        let tokens = tokens.map(oauth::Tokens::new);
        let register =
            |client: Arc<dyn oauth::Native>| tokens.as_ref().map_or(Ok(()), |t| t.register(client));
        let probe =
            Arc::new(cfg.client().create::<BaseConsumer>().map_err(|e| queue_error("probe client", "", &e))?);
        register(probe.clone())?;
        let health = Health::new(probe);
        let producer = Arc::new(new_producer(cfg, &health)?);
        register(producer.clone())?;
        let admin: Arc<AdminClient<DefaultClientContext>> =
            Arc::new(cfg.client().create().map_err(|e| queue_error("admin client", "", &e))?);
        register(admin.clone())?;
        if let Some(t) = &tokens {
            t.spawn();
        }
        let shared = Arc::new(Shared {
            config: cfg.clone(),
            producer: std::sync::RwLock::new(producer),
            replaced: Mutex::new(fatal::Pacing::default()),
            health,
            admin,
            tokens,
            specs: Specs::default(),
            clock: Clock::system(),
            readers: Mutex::new(HashMap::new()),
        });
        Ok(Self { shared, members: tokio::sync::Mutex::new(HashMap::new()) })
    }

    async fn member(&self, queue: &str) -> Result<Arc<Member>, QueueError> {
        let mut members = self.members.lock().await;
        if let Some(m) = members.get(queue) {
            return Ok(m.clone());
        }
        self.shared.partitions(queue, queue).await?;
        let m = Arc::new(Member::start(self.shared.clone(), queue)?);
        // A consumer is ready once the group gave its member partitions:
        // until then every receive would come back empty.
        let deadline =
            tokio::time::Instant::now() + self.shared.config.session_timeout.max(Duration::from_secs(10));
        while !m.assigned() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !m.assigned() {
            tracing::warn!(
                queue,
                "kafka: the group has not assigned partitions yet; receives stay empty until it does"
            );
        }
        members.insert(queue.to_owned(), m.clone());
        Ok(m)
    }

    /// Every partition of the source topic and the retry tiers. A tier that
    /// was never created (an older ensure) has nothing in it and is left out.
    async fn consumed_partitions(&self, queue: &str) -> Result<Vec<(String, i32)>, QueueError> {
        let topics = topics::consumed(queue);
        let listed = futures::future::join_all(topics.iter().map(|t| self.shared.partitions(queue, t))).await;
        let mut parts = Vec::new();
        for (topic, got) in topics.into_iter().zip(listed) {
            let ps = match got {
                Ok(ps) => ps,
                Err(QueueError::NotFound(_)) if topic != queue => continue,
                Err(e) => return Err(e),
            };
            parts.extend(ps.into_iter().map(|p| (topic.clone(), p)));
        }
        Ok(parts)
    }

    /// Counts of the source and the retry tiers: (unsettled not held, held), per kind.
    /// Where the group stands in each partition the queue consumes:
    /// `(topic, partition, position, end, commit metadata)`, the position
    /// being the lowest record not settled (at least the low watermark).
    async fn positions(&self, queue: &str) -> Result<Vec<(String, i32, i64, i64, String)>, QueueError> {
        let s = &self.shared;
        let group = s.config.group(queue);
        let parts = self.consumed_partitions(queue).await?;
        let mut committed = s.committed(queue, &group, parts.clone()).await?;
        // This process's own member knows better than the commit: exact, and
        // ahead of the last commit.
        if let Some(m) = self.members.lock().await.get(queue) {
            for (tp, (o, md)) in m.commit_points() {
                committed.insert(tp, (Some(o), md));
            }
        }
        // Every partition's watermarks at once: a queue has eleven topics
        // (source, ten tiers), and `/metrics` asks on every scrape.
        let marks =
            futures::future::try_join_all(parts.iter().map(|(topic, p)| s.watermarks(queue, topic, *p)))
                .await?;
        Ok(parts
            .into_iter()
            .zip(marks)
            .map(|((topic, p), (low, high))| {
                let (off, md) = committed.remove(&(topic.clone(), p)).unwrap_or((None, String::new()));
                (topic, p, off.unwrap_or(low).max(low), high, md)
            })
            .collect())
    }

    async fn counts(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let s = &self.shared;
        let mut stats = QueueStats::default();
        for (topic, _, from, high, md) in self.positions(queue).await? {
            let window = ledger::decode(from, &md);
            let held_now = window.unsettled.iter().filter(|(o, i)| i.held && **o < high).count() as u64;
            let unsettled =
                u64::try_from(high - from).unwrap_or(0).saturating_sub(window.settled_count(from));
            let waiting = unsettled.saturating_sub(held_now);
            stats.in_flight += held_now;
            if topic == queue {
                stats.visible += waiting;
            } else {
                stats.delayed += waiting;
            }
        }
        let dlq = topics::dlq(queue);
        let (low, high) = s.watermarks(queue, &dlq, 0).await?;
        let cursor = s.committed(queue, &s.config.dlq_group(queue), vec![(dlq.clone(), 0)]).await?;
        let from = cursor.get(&(dlq, 0)).and_then(|(o, _)| *o).unwrap_or(low).max(low);
        stats.dead = u64::try_from(high - from).unwrap_or(0);
        Ok(stats)
    }

    /// The source topic's `retention.ms`; `None` for `-1` (kept until
    /// deleted by hand).
    async fn retention_of(&self, queue: &str) -> Result<Option<Duration>, QueueError> {
        let opts = AdminOptions::new().request_timeout(Some(self.shared.timeout()));
        let described = self
            .shared
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(queue)], &opts)
            .await
            .map_err(|e| queue_error("describe topic", queue, &e))?;
        let resource = described
            .into_iter()
            .next()
            .ok_or_else(|| QueueError::unavailable_msg("kafka: no answer for the topic's settings"))?
            .map_err(|code| {
                QueueError::unavailable_msg(format!("kafka: describe topic `{queue}`: {code}"))
            })?;
        let ms =
            resource.get("retention.ms").and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<i64>().ok());
        Ok(ms.and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis))
    }

    /// The broker timestamp (ms) of the oldest record at the given
    /// positions: each is fetched once, by a reader of its own that commits
    /// nothing. `None` if none arrived within the timeout.
    async fn oldest_timestamp(
        &self,
        queue: &str,
        at: Vec<(String, i32, i64)>,
    ) -> Result<Option<i64>, QueueError> {
        use rdkafka::Message as _;
        let s = &self.shared;
        let reader = s.one_off_reader(queue, format!("{}.age", s.config.group(queue)), "age reader")?;
        let timeout = s.timeout();
        Shared::blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (topic, p, o) in &at {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
            }
            reader.assign(&tpl)?;
            let mut left: HashMap<(String, i32), i64> =
                at.into_iter().map(|(topic, p, o)| ((topic, p), o)).collect();
            let deadline = std::time::Instant::now() + timeout;
            let mut oldest: Option<i64> = None;
            while !left.is_empty() && std::time::Instant::now() < deadline {
                match reader.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let tp = (m.topic().to_owned(), m.partition());
                        if left.get(&tp).is_some_and(|o| m.offset() >= *o) {
                            left.remove(&tp);
                            if let Some(ts) = m.timestamp().to_millis() {
                                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            Ok(oldest)
        })
        .await?
        .map_err(|e| queue_error("age reader", queue, &e))
    }

    /// Reads up to `max` dead letters from the cursor on: (offset, record).
    async fn read_dead(&self, queue: &str, max: usize) -> Result<(i64, Vec<Record>), QueueError> {
        let s = self.shared.clone();
        let dlq = topics::dlq(queue);
        s.partitions(queue, &dlq).await?;
        let (low, high) = s.watermarks(queue, &dlq, 0).await?;
        let cursor = s.committed(queue, &s.config.dlq_group(queue), vec![(dlq.clone(), 0)]).await?;
        let from = cursor.get(&(dlq.clone(), 0)).and_then(|(o, _)| *o).unwrap_or(low).max(low);
        if from >= high || max == 0 {
            return Ok((from, Vec::new()));
        }
        let want = usize::try_from(high - from).unwrap_or(usize::MAX).min(max);
        let reader = s.one_off_reader(queue, format!("{}.peek", s.config.dlq_group(queue)), "dlq reader")?;
        let timeout = s.timeout();
        let records = Shared::blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&dlq, 0, Offset::Offset(from))?;
            reader.assign(&tpl)?;
            let deadline = std::time::Instant::now() + timeout;
            let mut out = Vec::new();
            while out.len() < want && std::time::Instant::now() < deadline {
                match reader.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let r = Record::of(&m);
                        if r.offset >= from {
                            out.push(r);
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            Ok(out)
        })
        .await?
        .map_err(|e| queue_error("read dead letters", queue, &e))?;
        if records.len() < want {
            return Err(QueueError::unavailable_msg(format!(
                "kafka: read {} of {want} dead letters of {queue} before the timeout",
                records.len()
            )));
        }
        Ok((from, records))
    }
}

#[async_trait]
impl Admin for KafkaBackend {
    /// Creates the source topic, the retry tiers and the DLQ; topics that
    /// exist are kept as they are.
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        topics::check_name(&spec.name)?;
        let cfg = &self.shared.config;
        let names = topics::all(&spec.name);
        let dlq = topics::dlq(&spec.name);
        let settings = cfg.topic_settings();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|t| {
                let partitions = if *t == dlq { 1 } else { cfg.partitions };
                settings.iter().fold(
                    NewTopic::new(t, partitions, TopicReplication::Fixed(cfg.replication)),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        // The request's own timeout too: librdkafka's default (60 s) is
        // how long `serve` would wait on brokers it cannot log in to.
        let opts = AdminOptions::new()
            .operation_timeout(Some(cfg.send_timeout))
            .request_timeout(Some(cfg.send_timeout * 2));
        // Timed out because no broker took the connection: say why.
        let results = self
            .shared
            .admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| self.shared.health.error("create topics", &spec.name, &e))?;
        let mut created = Vec::new();
        let mut adopted = Vec::new();
        for r in results {
            match r {
                Ok(topic) => created.push(topic),
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => adopted.push(topic),
                // A least-privilege principal may not create topics, and
                // the broker says so before it looks whether they exist:
                // the topics an operator made are adopted all the same.
                Err((topic, code)) if fatal::is_authorization(code) => {
                    match self.shared.partitions(&spec.name, &topic).await {
                        Ok(_) => adopted.push(topic),
                        Err(QueueError::NotFound(_)) => {
                            return Err(QueueError::unavailable_msg(format!(
                                "kafka: topic {topic} does not exist and this principal may not create it \
                                 ({code}): run `spillway queue ensure` as a principal that may, or grant \
                                 this one Create"
                            )));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err((topic, code)) => {
                    return Err(QueueError::unavailable_msg(format!("kafka: create topic {topic}: {code}")));
                }
            }
        }
        // CreateTopics answers when the controller has the topic, before
        // every broker's metadata shows it with a leader: a send right
        // after `ensure` would find no topic (Apache Kafka in KRaft mode
        // does this within milliseconds; a cluster, longer).
        let deadline = tokio::time::Instant::now() + cfg.send_timeout;
        futures::future::try_join_all(
            created.iter().map(|topic| self.shared.await_leaders(&spec.name, topic, deadline)),
        )
        .await?;
        if !adopted.is_empty() {
            self.check_adopted(&spec.name, &adopted).await;
        }
        self.check_broker().await;
        self.shared.specs.insert(spec);
        Ok(())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.counts(queue).await
    }

    /// The source topic's `retention.ms`, and the broker timestamp of the
    /// oldest record the group has not settled, across the source and the
    /// retry tiers (a retry's clock starts at its republish, as the
    /// broker's retention does).
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError> {
        let retention = self.retention_of(queue).await?;
        let behind: Vec<(String, i32, i64)> = self
            .positions(queue)
            .await?
            .into_iter()
            .filter(|(_, _, from, high, _)| from < high)
            .map(|(topic, p, from, _, _)| (topic, p, from))
            .collect();
        if behind.is_empty() {
            return Ok(QueueAge { retention, oldest: Some(Duration::ZERO) });
        }
        let now = self.shared.now_ms();
        let oldest = self
            .oldest_timestamp(queue, behind)
            .await?
            .map(|ts| Duration::from_millis(u64::try_from(now.saturating_sub(ts)).unwrap_or(0)));
        Ok(QueueAge { retention, oldest })
    }

    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let (_, records) = self.read_dead(queue, max).await?;
        Ok(records.iter().map(Record::dead_letter).collect())
    }

    /// Sends up to `max` dead letters back to the source topic with their
    /// count reset, then moves the DLQ cursor past them. A crash between
    /// the two sends them again on the next redrive (duplicates, no loss).
    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
        let (from, records) = self.read_dead(queue, max).await?;
        let Some(last) = records.last().map(|r| r.offset) else {
            return Ok(0);
        };
        let sends = records.iter().map(|r| {
            let headers = r.headers_with(&wire::DEAD_ONLY, &[]);
            self.shared.produce(queue, queue, r.key.as_deref(), &r.body, headers)
        });
        for outcome in futures::future::join_all(sends).await {
            outcome?;
        }
        self.shared.move_dlq_cursor(queue, last + 1).await?;
        debug_assert!(last >= from);
        Ok(records.len() as u64)
    }

    /// Moves the group (or the DLQ cursor) past everything there is now.
    /// The source topics are left as they are (another consumer group may
    /// read them); the DLQ is trimmed below its cursor
    /// ([`Shared::move_dlq_cursor`]).
    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
        match target {
            PurgeTarget::Dead => {
                let before = self.counts(queue).await?.dead;
                let dlq = topics::dlq(queue);
                let (_, high) = self.shared.watermarks(queue, &dlq, 0).await?;
                self.shared.move_dlq_cursor(queue, high).await?;
                Ok(before)
            }
            PurgeTarget::Source => {
                let before = self.counts(queue).await?.pending();
                let mut ends = Vec::new();
                for (topic, p) in self.consumed_partitions(queue).await? {
                    let (_, high) = self.shared.watermarks(queue, &topic, p).await?;
                    ends.push((topic, p, high));
                }
                let member = self.members.lock().await.get(queue).cloned();
                match member {
                    Some(m) => m.purge(ends).await?,
                    None => {
                        let offsets = ends.into_iter().map(|(t, p, o)| (t, p, o, String::new())).collect();
                        self.shared.commit_as(queue, &self.shared.config.group(queue), offsets).await?;
                    }
                }
                Ok(before)
            }
        }
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
        self.shared.partitions(queue, queue).await?;
        Ok(Arc::new(producer::KafkaProducer::new(self.shared.clone(), queue)))
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
        let member = self.member(queue).await?;
        Ok(Arc::new(consumer::KafkaConsumer::new(member)))
    }

    /// Not while the brokers are known to be down; else a metadata round
    /// trip to them.
    async fn ready(&self) -> Result<(), QueueError> {
        let health = &self.shared.health;
        if health.is_down() {
            return Err(QueueError::unavailable_msg(health.explain("brokers unreachable")));
        }
        let me = self.shared.clone();
        let timeout = Duration::from_secs(2).min(me.config.send_timeout);
        let reached =
            Shared::blocking(move || me.producer().client().fetch_metadata(None, timeout).map(|_| ()))
                .await?;
        match reached {
            Ok(()) => health.reached(),
            Err(_) => health.suspect(),
        }
        reached.map_err(|e| health.error("metadata", "", &e))
    }
}
