//! The RabbitMQ backend: durable quorum queues, publisher confirms, and the
//! same dead-letter rule as every backend, counted by Spillway itself.
//!
//! - [`topology`]: the queues behind one Spillway queue (source, DLQ, retry
//!   tiers) and their arguments.
//! - [`wire`]: a message as AMQP body and headers.
//! - [`consumer`]: receive, ack, nack, release, dead-letter, close.
//!
//! # The count
//!
//! RabbitMQ's `x-delivery-count` counts every return of a message to its
//! queue, so it cannot tell a failure from a release. A failed message is
//! therefore **republished** with the failures it really had in
//! `x-spillway-failures`, and only then acked (a crash between the two
//! gives a duplicate, never a loss). The count of a delivery is the carried
//! failures, plus the broker's `x-delivery-count` of this copy (receives
//! whose consumer went away holding it), plus one. Spillway dead-letters by
//! that count, with its metadata, on the receive after the
//! `max_receive_count`-th failed one; the queue's `x-delivery-limit` stays
//! as the backstop. `docs/backends.md` has the whole design.
//!
//! # Connections
//!
//! One connection per backend, opened on first use and opened again on the
//! next use after it failed (a broker restart needs no process restart).
//! While the broker is down every call fails fast with `Unavailable`.

mod consumer;
mod publish;
mod tls;
#[cfg(test)]
mod tls_tests;
pub mod topology;
pub(crate) mod wire;

pub use self::tls::RabbitTls;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use lapin::{
    options::{BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions},
    types::{FieldTable, ShortString},
    BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use self::wire::Headers;
pub(crate) use crate::clock::ms_time;
use crate::{
    Admin, Backend, Clock, Consumer, DeadLetter, OutgoingMessage, Producer, PurgeTarget, QueueAge,
    QueueError, QueueSpec, QueueStats,
};

/// How long opening a connection may take before the call is `Timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL for an error message: whatever is between `://` and the last `@`
/// of its authority (user and password) replaced, even when the URL does
/// not parse (a malformed URL is exactly the one an error prints).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The management plugin's HTTP API, for the counts AMQP does not give.
struct Management {
    http: reqwest::Client,
    /// `scheme://host:port`, without the credentials.
    base: String,
    user: String,
    password: String,
    /// The vhost, percent-encoded for a URL path.
    vhost: String,
}

impl Management {
    /// `tls`'s CA (`queue.tls.ca_file`) is trusted by an `https://` API too.
    fn new(url: &str, amqp_url: &str, tls: &RabbitTls) -> Result<Self, QueueError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            QueueError::Invalid(format!("queue.management_url {:?}: {e}", without_userinfo(url)))
        })?;
        let user = if parsed.username().is_empty() { "guest" } else { parsed.username() }.to_owned();
        let password = parsed.password().unwrap_or("guest").to_owned();
        let base = format!(
            "{}://{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or("127.0.0.1"),
            parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        let vhost = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map(|u| u.vhost)
            .map_err(|e| QueueError::Invalid(format!("queue.url: {e}")))?;
        let vhost = vhost.replace('%', "%25").replace('/', "%2F");
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(pem) = tls.ca_pem()? {
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                QueueError::unavailable("rabbitmq: queue.tls.ca_file for the management API", e)
            })?;
            http = certs.into_iter().fold(http, reqwest::ClientBuilder::add_root_certificate);
        }
        let http = http.build().map_err(|e| QueueError::unavailable("rabbitmq management client", e))?;
        Ok(Self { http, base, user, password, vhost })
    }

    /// Messages delivered to consumers and not yet acknowledged.
    async fn unacked(&self, queue: &str) -> Result<u64, QueueError> {
        let v = self.queue(queue, "messages_unacknowledged").await?;
        Ok(v.get("messages_unacknowledged").and_then(serde_json::Value::as_u64).unwrap_or(0))
    }

    /// The message TTL in force on the queue: its `x-message-ttl`
    /// argument, or else a policy's `message-ttl` (the lower of the two
    /// wins, as the broker applies them).
    async fn message_ttl(&self, queue: &str) -> Result<Option<Duration>, QueueError> {
        let v = self.queue(queue, "arguments,effective_policy_definition").await?;
        let arg = v.pointer("/arguments/x-message-ttl").and_then(serde_json::Value::as_u64);
        let policy =
            v.pointer("/effective_policy_definition/message-ttl").and_then(serde_json::Value::as_u64);
        Ok(arg.into_iter().chain(policy).min().map(Duration::from_millis))
    }

    /// The queue's fields `columns` from `GET /api/queues/{vhost}/{queue}`.
    async fn queue(&self, queue: &str, columns: &str) -> Result<serde_json::Value, QueueError> {
        let name = queue.replace('%', "%25").replace('/', "%2F");
        let url = format!("{}/api/queues/{}/{name}?columns={columns}", self.base, self.vhost);
        let res = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| QueueError::unavailable("rabbitmq management API", e))?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(QueueError::NotFound(queue.to_owned()));
        }
        let res =
            res.error_for_status().map_err(|e| QueueError::unavailable("rabbitmq management API", e))?;
        res.json().await.map_err(|e| QueueError::unavailable("rabbitmq management API answer", e))
    }
}

/// `[queue] backend = "rabbitmq"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// A local durable spool in front of the broker (`queue.spool`; off
    /// unless set): see [`crate::spool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// `amqp://user:password@host:5672/vhost` or `amqps://…` (the password is
    /// masked by `config check`).
    pub url: String,
    /// The cluster's other nodes, same form as `url`: when the node Spillway
    /// is connected to goes away (or `url` cannot be reached at start), it
    /// connects to the next that answers, in this order after `url`, and
    /// stays there. Quorum queues are reachable from every node of the
    /// cluster, so nothing else changes.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Shown in the broker's connection list.
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    /// The deadline of every call to the broker. A publish (a send, a
    /// retry, a dead letter) whose confirm has not come by then is
    /// `Timeout`: the broker may or may not have it, so nothing is acked on
    /// the strength of it. Bounds every wait on a silent broker.
    #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// The management plugin's HTTP API (`http://user:password@host:15672`,
    /// the password masked by `config check`). With it, `stats` reports
    /// `in_flight` (the broker's unacknowledged count, refreshed every 5 s
    /// by default); without it, AMQP tells nothing of held messages and
    /// `in_flight` is 0.
    #[serde(default)]
    pub management_url: Option<String>,
    /// How many batches may publish at once. Each holds a confirm channel
    /// of its own until its last confirm is in (so a returned message is
    /// paired with its own publish, and one batch's channel error fails no
    /// other); channels are kept for the next batch. Ingest keeps no more
    /// batches in flight than this, so they fill up while they wait. 8
    /// measured as fast as the shared channel before it (64 channels with 64
    /// small batches took twice the gateway's CPU; docs/benchmarks.md).
    #[serde(default = "default_publisher_channels")]
    pub publisher_channels: usize,
    /// `amqps://` only: a private CA, a client certificate (see [`RabbitTls`]).
    #[serde(default)]
    pub tls: RabbitTls,
}

fn default_publisher_channels() -> usize {
    8
}

fn default_connection_name() -> String {
    "spillway".to_owned()
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Turns a lapin error into what the caller does next.
fn queue_error(what: &str, queue: &str, e: &lapin::Error) -> QueueError {
    if let ErrorKind::ProtocolError(amqp) = e.kind() {
        match amqp.get_id() {
            404 => return QueueError::NotFound(queue.to_owned()),
            // PRECONDITION_FAILED: "inequivalent arg 'x-…' for queue …" names the argument.
            406 => return QueueError::Invalid(format!("{what}: {}", amqp.get_message())),
            _ => {}
        }
    }
    QueueError::Unavailable { reason: format!("rabbitmq: {what}: {e}"), source: Some(Arc::new(e.clone())) }
}

fn short(name: &str) -> Result<ShortString, QueueError> {
    ShortString::try_new(name).map_err(|e| QueueError::Invalid(format!("queue name {name:?}: {e}")))
}

/// Runs one call to the broker; `Timeout` after `after`. Every await on
/// lapin goes through here: a broker that stops answering (a partition, a
/// hung node, a connection blocked by a resource alarm) must not hang a
/// request, a worker or a shutdown.
async fn bounded<T>(
    after: Duration,
    call: impl std::future::Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(after, call).await.map_err(|_| QueueError::Timeout { after })?
}

/// Closes a channel in the background, bounded: nobody waits for a close,
/// and one the broker never answers must not hold a task forever.
fn close_channel(ch: &Channel, after: Duration, reason: &'static str) {
    let ch = ch.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(after, ch.close(200, ShortString::from(reason))).await;
    });
}

/// A connection, opened again after a failure. Spillway keeps two: one
/// that publishes and one that only consumes. Under a memory or disk alarm
/// RabbitMQ stops reading from every connection that publishes; acks on a
/// shared connection would stall with it, and acks are what free the
/// broker's memory and disk.
struct Link {
    /// `url`, then `urls`: the nodes tried in turn.
    urls: Vec<String>,
    /// The node of the last connection: tried first next time.
    current: std::sync::atomic::AtomicUsize,
    name: String,
    tls: RabbitTls,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Confirm channels for publishing no batch holds: each batch leases
    /// one for itself (see [`publish`]), opened when none is idle.
    idle: std::sync::Mutex<Vec<Channel>>,
    /// How many batches may hold a confirm channel at once.
    leases: Arc<tokio::sync::Semaphore>,
    /// The deadline of every call on this connection.
    timeout: Duration,
}

impl Link {
    async fn connection(&self) -> Result<Arc<Connection>, QueueError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        // The node of the last connection first, then the others in order.
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut failed = None;
        let tls = self.tls.read()?;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| queue_error("connect: the tokio runtime", "", &e))?;
        for i in (0..self.urls.len()).map(|k| (start + k) % self.urls.len()) {
            let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
            let connect = Connection::connect_with_config(&self.urls[i], props, tls.clone(), runtime.clone());
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect).await;
            match attempt {
                Ok(Ok(connected)) => {
                    if i != start {
                        tracing::info!(node = i, "connected to another node of the RabbitMQ cluster");
                    }
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    let c = Arc::new(connected);
                    *conn = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => {
                    let reason = self.tls.explain(format!("rabbitmq: connect: {e}"));
                    failed = Some(QueueError::Unavailable { reason, source: Some(Arc::new(e)) });
                }
                Err(_) => failed = Some(QueueError::Timeout { after: CONNECT_TIMEOUT }),
            }
        }
        Err(failed.unwrap_or_else(|| QueueError::unavailable_msg("rabbitmq: no node to connect to")))
    }

    /// A new channel, with publisher confirms when asked.
    async fn channel(&self, confirms: bool) -> Result<Channel, QueueError> {
        let conn = self.connection().await?;
        bounded(self.timeout, async {
            let ch = conn.create_channel().await.map_err(|e| queue_error("open channel", "", &e))?;
            if confirms {
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| queue_error("enable confirms", "", &e))?;
            }
            Ok(ch)
        })
        .await
    }

    /// `Unavailable` while the broker blocks this connection (a memory or
    /// disk alarm): a publish would wait for the alarm to clear.
    async fn unblocked(&self) -> Result<(), QueueError> {
        if self.connection().await?.status().blocked() {
            return Err(QueueError::unavailable_msg(
                "rabbitmq: the broker blocked publishing (a memory or disk alarm; see `rabbitmq-diagnostics alarms`)",
            ));
        }
        Ok(())
    }

    /// A confirm channel for one batch's publishes alone, waiting (at most
    /// the deadline) while `publisher_channels` batches hold one;
    /// `Unavailable` at once while the broker blocks publishing.
    async fn publisher(&self) -> Result<publish::Lease<'_>, QueueError> {
        self.unblocked().await?;
        let permit = bounded(self.timeout, async {
            self.leases
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| QueueError::unavailable_msg("rabbitmq: closed"))
        })
        .await?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
            match next {
                Some(c) if c.status().connected() => break Some(c),
                Some(_) => continue,
                None => break None,
            }
        };
        let channel = match idle {
            Some(c) => c,
            None => self.channel(true).await?,
        };
        Ok(publish::Lease { link: self, channel, keep: false, _permit: permit })
    }

    /// A confirm channel a batch finished with cleanly, for the next.
    fn give_back(&self, channel: Channel) {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(channel);
    }
}

struct Shared {
    /// Sends, retries, dead letters, redrives: everything that publishes.
    publishing: Link,
    /// Receives, acks, declares, counts: never publishes, so a resource
    /// alarm never blocks it.
    consuming: Link,
    clock: Clock,
    confirm_timeout: Duration,
    /// `publisher_channels`: batches publishing at once.
    publisher_channels: usize,
    management: Option<Management>,
    /// The policies of queues ensured by this process.
    specs: crate::spec::Specs,
}

impl Shared {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn spec(&self, queue: &str) -> QueueSpec {
        self.specs.get(queue)
    }

    /// Ready messages in `queue`; `NotFound` if it does not exist.
    async fn count(&self, ch: &Channel, queue: &str) -> Result<u64, QueueError> {
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let name = short(queue)?;
        let q = bounded(self.consuming.timeout, async {
            ch.queue_declare(name, options, FieldTable::default())
                .await
                .map_err(|e| queue_error("declare (passive)", queue, &e))
        })
        .await?;
        Ok(u64::from(q.message_count()))
    }

    /// `NotFound` unless `queue` exists. On a channel of its own: a passive
    /// declare of a missing queue closes the channel it ran on.
    async fn must_exist(&self, queue: &str) -> Result<(), QueueError> {
        let ch = self.consuming.channel(false).await?;
        let exists = self.count(&ch, queue).await;
        close_channel(&ch, self.consuming.timeout, "done");
        exists.map(|_| ())
    }

    /// The next message of `queue`, unacked, if there is one.
    async fn get(&self, ch: &Channel, queue: &str) -> Result<Option<lapin::message::Delivery>, QueueError> {
        let name = short(queue)?;
        let got = bounded(self.consuming.timeout, async {
            ch.basic_get(name, BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| queue_error("get", queue, &e))
        })
        .await?;
        Ok(got.map(|m| m.delivery))
    }

    async fn declare(&self, ch: &Channel, queue: &str, args: FieldTable) -> Result<(), QueueError> {
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let name = short(queue)?;
        bounded(self.consuming.timeout, async {
            ch.queue_declare(name, options, args)
                .await
                .map_err(|e| queue_error(&format!("declare queue `{queue}`"), queue, &e))
        })
        .await?;
        Ok(())
    }

    /// Acks a delivery on the channel it came on.
    async fn ack(&self, acker: &lapin::Acker, queue: &str) -> Result<(), QueueError> {
        bounded(self.consuming.timeout, async {
            acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map_err(|e| queue_error("ack", queue, &e))
        })
        .await
        .map(|_| ())
    }
}

/// A connection to a RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBackend {
    shared: Arc<Shared>,
}

impl RabbitBackend {
    /// Connects to the broker (once now, to fail early on a wrong URL).
    pub async fn connect(cfg: &RabbitConfig) -> Result<Self, QueueError> {
        Self::connect_with_clock(cfg, Clock::system()).await
    }

    /// [`RabbitBackend::connect`] with the time read from `clock`.
    pub async fn connect_with_clock(cfg: &RabbitConfig, clock: Clock) -> Result<Self, QueueError> {
        let urls: Vec<String> = std::iter::once(&cfg.url).chain(&cfg.urls).cloned().collect();
        cfg.tls.check(&urls)?;
        let link = |role: &str, publishers: usize| Link {
            urls: urls.clone(),
            current: std::sync::atomic::AtomicUsize::new(0),
            name: format!("{} ({role})", cfg.connection_name),
            tls: cfg.tls.clone(),
            conn: tokio::sync::Mutex::default(),
            idle: std::sync::Mutex::default(),
            leases: Arc::new(tokio::sync::Semaphore::new(publishers.max(1))),
            timeout: cfg.confirm_timeout,
        };
        let publishing = link("publishing", cfg.publisher_channels);
        let consuming = link("consuming", 1);
        let management =
            cfg.management_url.as_deref().map(|m| Management::new(m, &cfg.url, &cfg.tls)).transpose()?;
        publishing.connection().await?;
        consuming.connection().await?;
        let confirm_timeout = cfg.confirm_timeout;
        Ok(Self {
            shared: Arc::new(Shared {
                publishing,
                consuming,
                clock,
                confirm_timeout,
                publisher_channels: cfg.publisher_channels.max(1),
                management,
                specs: crate::spec::Specs::default(),
            }),
        })
    }
}

#[async_trait]
impl Admin for RabbitBackend {
    /// Declares the DLQ, the retry tiers and the source queue. A queue that
    /// exists with other arguments is `Invalid`, naming the argument.
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        if spec.dead_letter.max_receive_count == 0 {
            return Err(QueueError::Invalid("max_receive_count must be at least 1".into()));
        }
        let ch = self.shared.consuming.channel(false).await?;
        let name = &spec.name;
        let declared = async {
            self.shared.declare(&ch, &topology::dlq(name), topology::dlq_args()).await?;
            for tier in topology::TIERS_MS {
                self.shared
                    .declare(&ch, &topology::tier_queue(name, tier), topology::tier_args(name, tier))
                    .await?;
            }
            self.shared
                .declare(&ch, name, topology::source_args(name, spec.dead_letter.max_receive_count))
                .await
        }
        .await;
        close_channel(&ch, self.shared.consuming.timeout, "done");
        declared?;
        self.shared.specs.insert(spec);
        Ok(())
    }

    /// `visible` and `dead` are the broker's ready counts; `delayed` is the
    /// ready count of the retry tiers. Messages held by consumers
    /// (`in_flight`) come from the management plugin's API when
    /// `management_url` is set (its counts lag by up to its collection
    /// interval, 5 s by default), and are 0 otherwise: AMQP does not tell
    /// them.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let ch = self.shared.consuming.channel(false).await?;
        let counted = async {
            let visible = self.shared.count(&ch, queue).await?;
            let dead = self.shared.count(&ch, &topology::dlq(queue)).await?;
            let mut delayed = 0;
            for tier in topology::TIERS_MS {
                delayed += self.shared.count(&ch, &topology::tier_queue(queue, tier)).await?;
            }
            let in_flight = match &self.shared.management {
                Some(m) => m.unacked(queue).await?,
                None => 0,
            };
            Ok(QueueStats { visible, delayed, in_flight, dead })
        }
        .await;
        close_channel(&ch, self.shared.consuming.timeout, "done");
        counted
    }

    /// Spillway's queues keep a message until consumed; an operator's
    /// `message-ttl` policy (read through `management_url`) is the
    /// retention. The oldest message's age is not told for a quorum queue
    /// (the management API has it for classic queues only, and reading the
    /// head with `basic.get` would count a receive): `None`.
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError> {
        let retention = match &self.shared.management {
            Some(m) => m.message_ttl(queue).await?,
            None => None,
        };
        Ok(QueueAge { retention, oldest: None })
    }

    /// Takes up to `max` dead letters without acking them, then closes the
    /// channel, which returns them to the DLQ.
    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let ch = self.shared.consuming.channel(false).await?;
        let dlq = topology::dlq(queue);
        let peeked = async {
            self.shared.count(&ch, &dlq).await?;
            let mut out = Vec::new();
            while out.len() < max {
                let Some(d) = self.shared.get(&ch, &dlq).await? else { break };
                out.push(dead_letter_of(queue, &d.properties, d.data));
            }
            Ok(out)
        }
        .await;
        close_channel(&ch, self.shared.consuming.timeout, "peeked");
        peeked
    }

    /// Moves dead letters back: republished to the source queue with their
    /// count and error cleared, confirmed, then acked in the DLQ.
    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
        let ch = self.shared.consuming.channel(false).await?;
        let dlq = topology::dlq(queue);
        let moved = async {
            self.shared.count(&ch, queue).await?;
            let mut moved = 0u64;
            while (moved as usize) < max {
                let Some(d) = self.shared.get(&ch, &dlq).await? else { break };
                let headers = Headers::of(&d.properties).without(&[
                    wire::FAILURES,
                    wire::FIRST_RECEIVED_AT,
                    wire::LAST_ERROR,
                    wire::SOURCE_QUEUE,
                    wire::RECEIVE_COUNT,
                    wire::LAST_RECEIVED_AT,
                    wire::DEAD_LETTERED_AT,
                ]);
                let props = headers.into_properties(&d.properties);
                let link = &self.shared.publishing;
                publish::publish_one(link, queue, &d.data, props, self.shared.confirm_timeout).await?;
                self.shared.ack(&d.acker, &dlq).await?;
                moved += 1;
            }
            Ok(moved)
        }
        .await;
        close_channel(&ch, self.shared.consuming.timeout, "redriven");
        moved
    }

    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
        let ch = self.shared.consuming.channel(false).await?;
        let names: Vec<String> = match target {
            PurgeTarget::Source => std::iter::once(queue.to_owned())
                .chain(topology::TIERS_MS.iter().map(|&t| topology::tier_queue(queue, t)))
                .collect(),
            PurgeTarget::Dead => vec![topology::dlq(queue)],
        };
        let purged = async {
            let mut n = 0u64;
            for name in &names {
                self.shared.count(&ch, name).await?;
                let q = short(name)?;
                n += u64::from(
                    bounded(self.shared.consuming.timeout, async {
                        ch.queue_purge(q, QueuePurgeOptions::default())
                            .await
                            .map_err(|e| queue_error("purge", name, &e))
                    })
                    .await?,
                );
            }
            Ok(n)
        }
        .await;
        close_channel(&ch, self.shared.consuming.timeout, "purged");
        purged
    }
}

/// A dead letter as stored: metadata from its headers.
fn dead_letter_of(queue: &str, props: &BasicProperties, body: Vec<u8>) -> DeadLetter {
    let h = Headers::of(props);
    let time = |name: &str| h.int(name).map(ms_time);
    DeadLetter {
        id: h
            .text(wire::ID)
            .or_else(|| props.message_id().as_ref().map(|s| s.as_str().to_owned()))
            .unwrap_or_default(),
        source_queue: h.text(wire::SOURCE_QUEUE).unwrap_or_else(|| queue.to_owned()),
        receive_count: h.int(wire::RECEIVE_COUNT).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        last_error: h.text(wire::LAST_ERROR),
        first_received_at: time(wire::FIRST_RECEIVED_AT),
        last_received_at: time(wire::LAST_RECEIVED_AT),
        dead_lettered_at: time(wire::DEAD_LETTERED_AT).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        enqueued_at: time(wire::ENQUEUED_AT).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        body: body.into(),
        attributes: h.attributes(),
    }
}

#[async_trait]
impl Backend for RabbitBackend {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
        self.shared.must_exist(queue).await?;
        Ok(Arc::new(RabbitProducer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            max_message_bytes: self.shared.spec(queue).max_message_bytes,
        }))
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
        self.shared.must_exist(queue).await?;
        Ok(Arc::new(consumer::RabbitConsumer::new(
            self.shared.clone(),
            queue,
            self.shared.spec(queue).dead_letter,
        )))
    }

    async fn ready(&self) -> Result<(), QueueError> {
        // A round trip (a channel opened and closed): a broker that stopped
        // answering keeps its connections looking open until the heartbeat
        // gives up, a minute or more.
        let ch = self.shared.consuming.channel(false).await?;
        close_channel(&ch, self.shared.consuming.timeout, "ready");
        // Not ready while the broker blocks publishing (a resource alarm).
        // Not a lease: under load every publishing channel is busy, and a
        // probe waiting for one would call a busy gateway unready.
        self.shared.publishing.unblocked().await
    }
}

struct RabbitProducer {
    shared: Arc<Shared>,
    queue: String,
    max_message_bytes: usize,
}

#[async_trait]
impl Producer for RabbitProducer {
    /// Publishes the whole batch on a confirm channel of its own, then
    /// waits for every confirm: one round trip for the batch, not one per
    /// message.
    async fn send_batch(
        &self,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let mut outcomes: Vec<Option<Result<(), QueueError>>> = (0..msgs.len()).map(|_| None).collect();
        let lease = self.shared.publishing.publisher().await?;
        self.publish_each(lease, msgs, &mut |i, o| outcomes[i] = Some(o)).await;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(QueueError::unavailable_msg("rabbitmq: no confirm outcome"))))
            .collect())
    }

    /// As `send_batch`, each outcome handed on as its confirm arrives
    /// (confirms come in publish order on the channel).
    async fn send_each(
        &self,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        match self.shared.publishing.publisher().await {
            Ok(lease) => self.publish_each(lease, msgs, report).await,
            Err(e) => (0..msgs.len()).for_each(|i| report(i, Err(e.clone()))),
        }
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    fn confirms_each(&self) -> bool {
        true
    }

    fn max_batches_in_flight(&self) -> Option<usize> {
        Some(self.shared.publisher_channels)
    }
}

impl RabbitProducer {
    /// Publishes every message on the leased channel, then reports each
    /// outcome in publish order as its confirm arrives (a message refused
    /// before the wire gets its error in its place): the one loop behind
    /// `send_batch` and `send_each`.
    async fn publish_each(
        &self,
        lease: publish::Lease<'_>,
        msgs: Vec<OutgoingMessage>,
        report: &mut (dyn FnMut(usize, Result<(), QueueError>) + Send),
    ) {
        let limit = self.max_message_bytes;
        let now = self.shared.now_ms();
        // One deadline for the batch: confirms awaited one after another
        // must not each get the whole timeout afresh.
        let deadline = tokio::time::Instant::now() + self.shared.confirm_timeout;
        let items = msgs
            .iter()
            .map(|m| {
                m.check_size(limit)?;
                if m.delay > topology::MAX_DELAY {
                    return Err(QueueError::Invalid(format!(
                        "a delay of {:?} is longer than RabbitMQ's longest retry tier ({:?})",
                        m.delay,
                        topology::MAX_DELAY
                    )));
                }
                let props = wire::properties_for(m, now)?;
                Ok((topology::route_for(&self.queue, m.delay), m.body.as_ref(), props))
            })
            .collect();
        publish::publish_batch(lease, items, deadline, report).await;
    }
}

impl RabbitBackend {
    /// Deletes the queues behind every queue this handle ensured: source,
    /// retry tiers and DLQ. For tests on a shared broker.
    pub async fn delete_ensured(&self) -> Result<(), QueueError> {
        let names = self.shared.specs.names();
        let ch = self.shared.consuming.channel(false).await?;
        for name in names {
            let all = std::iter::once(name.clone())
                .chain(std::iter::once(topology::dlq(&name)))
                .chain(topology::TIERS_MS.iter().map(|&t| topology::tier_queue(&name, t)));
            for q in all {
                ch.queue_delete(short(&q)?, lapin::options::QueueDeleteOptions::default())
                    .await
                    .map_err(|e| queue_error("delete", &q, &e))?;
            }
        }
        close_channel(&ch, self.shared.consuming.timeout, "deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The conformance kit against the machine's RabbitMQ. Each scenario
    //! makes its own queues (random names) and deletes them when it passed.
    use std::{sync::Arc, time::Duration};

    use async_trait::async_trait;

    use super::{RabbitBackend, RabbitConfig};
    use crate::{
        testkit::{Capabilities, Harness, KeyOrder, Redelivery, StatsAccuracy, TimeSource},
        Backend,
    };

    /// `SPILLWAY_TEST_AMQP`, or the machine's RabbitMQ.
    fn url() -> String {
        std::env::var("SPILLWAY_TEST_AMQP")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    /// `SPILLWAY_TEST_AMQP_MANAGEMENT`, or the machine's management plugin
    /// (`deploy/local/services.sh` enables it).
    fn management_url() -> String {
        std::env::var("SPILLWAY_TEST_AMQP_MANAGEMENT")
            .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned())
    }

    async fn connect() -> RabbitBackend {
        let cfg = RabbitConfig {
            spool: None,
            url: url(),
            urls: Vec::new(),
            connection_name: "spillway-tests".into(),
            confirm_timeout: Duration::from_secs(10),
            management_url: Some(management_url()),
            publisher_channels: 4,
            tls: Default::default(),
        };
        match RabbitBackend::connect(&cfg).await {
            Ok(b) => b,
            Err(e) => panic!(
                "RabbitMQ is not reachable at {} ({e}): start it with `deploy/local/services.sh up`, \
                 or point SPILLWAY_TEST_AMQP at one",
                cfg.url
            ),
        }
    }

    struct Rabbit(RabbitBackend);

    #[async_trait]
    impl Harness for Rabbit {
        fn capabilities() -> Capabilities {
            Capabilities {
                time: TimeSource::Wall,
                visibility: Duration::from_secs(1),
                durable: true,
                redelivery: Redelivery::OnDisconnect,
                // The management plugin refreshes its counts every 5 s.
                stats: StatsAccuracy::Converges { within: Duration::from_secs(12) },
                in_flight_reported: true,
                dedup: false,
                key_order: KeyOrder::UntilRetried,
                // `basic.get` takes the queue's head, whatever its key:
                // workers side by side hold one key's messages at once.
                key_single_flight: false,
                // Quorum queues do not tell the head's age.
                oldest_age: false,
                ..Capabilities::embedded()
            }
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

    crate::conformance_tests!(Rabbit);

    #[async_trait]
    impl crate::testkit::ForeignProducer for Rabbit {
        /// As pika or any AMQP client would: persistent, confirmed, and no
        /// `message_id` or header at all.
        async fn publish_foreign(&self, queue: &str, body: &[u8]) {
            use lapin::{options::BasicPublishOptions, options::ConfirmSelectOptions, BasicProperties};
            let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
                .await
                .expect("a plain AMQP connection");
            let ch = conn.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack(), "the broker stored the foreign message");
            let _ = conn.close(200, "done".into()).await;
        }
    }

    crate::foreign_producer_tests!(Rabbit);

    #[async_trait]
    impl crate::testkit::RefusingDlq for Rabbit {
        /// A policy on the DLQ, as an operator would set one: `max-length`
        /// 1 with `overflow: reject-publish`, so the broker nacks every
        /// publish into it once it is full (and holds its own dead letters
        /// until it may). It is filled here, and the call returns once a
        /// publish was nacked: a quorum queue takes the publish that
        /// reaches its limit, and a policy takes effect a moment after it
        /// is set.
        async fn refuse_dead_letters(&self, queue: &str) {
            use lapin::{options::BasicPublishOptions, options::ConfirmSelectOptions, BasicProperties};
            let dlq = super::topology::dlq(queue);
            let body = serde_json::json!({
                "pattern": format!("^{}$", dlq.replace('.', "\\.")),
                "apply-to": "queues",
                "priority": 10,
                "definition": { "max-length": 1, "overflow": "reject-publish" },
            });
            let res = management(reqwest::Method::PUT, &format!("policies/%2F/refuse-{dlq}"))
                .json(&body)
                .send()
                .await
                .expect("the management API");
            assert!(res.status().is_success(), "set the policy: {}", res.status());
            let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
                .await
                .expect("a plain AMQP connection");
            let ch = conn.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
            for _ in 0..100 {
                let props = BasicProperties::default().with_delivery_mode(2);
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        dlq.as_str().into(),
                        BasicPublishOptions::default(),
                        b"filler",
                        props,
                    )
                    .await
                    .expect("publish");
                if confirm.await.expect("confirm").is_nack() {
                    let _ = conn.close(200, "done".into()).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the DLQ `{dlq}` never refused a publish under its policy");
        }
        /// The fillers taken out, then the policy removed. In that order:
        /// a publisher the DLQ refused (the broker's own dead-letter worker
        /// among them) is told it may publish again only when the queue
        /// drops below its limit; with the policy removed first, RabbitMQ
        /// 3.10's worker kept its refused dead letter for good.
        async fn accept_dead_letters(&self, queue: &str) {
            let dlq = super::topology::dlq(queue);
            let res = management(reqwest::Method::DELETE, &format!("queues/%2F/{dlq}/contents"))
                .send()
                .await
                .expect("the management API");
            assert!(res.status().is_success(), "purge the fillers: {}", res.status());
            let res = management(reqwest::Method::DELETE, &format!("policies/%2F/refuse-{dlq}"))
                .send()
                .await
                .expect("the management API");
            assert!(res.status().is_success(), "clear the policy: {}", res.status());
        }
    }

    /// Spillway's queues keep a message until consumed (no retention);
    /// an operator's `message-ttl` policy is the retention `age` reports,
    /// which the retention alert divides by.
    #[tokio::test]
    async fn a_message_ttl_policy_is_the_retention() {
        use crate::{Admin as _, QueueSpec};
        let b = connect().await;
        let name = format!("conf-ttl-{:08x}", rand::random::<u32>());
        b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
        assert_eq!(b.age(&name).await.expect("age").retention, None);
        let policy = format!("policies/%2F/ttl-{name}");
        let body = serde_json::json!({
            "pattern": format!("^{name}$"), "apply-to": "queues", "priority": 10,
            "definition": { "message-ttl": 3_600_000 },
        });
        let res = management(reqwest::Method::PUT, &policy).json(&body).send().await.expect("management API");
        assert!(res.status().is_success(), "{}", res.status());
        let mut got = None;
        for _ in 0..40 {
            got = b.age(&name).await.expect("age").retention;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = management(reqwest::Method::DELETE, &policy).send().await;
        assert_eq!(got, Some(Duration::from_secs(3600)));
        let _ = b.delete_ensured().await;
    }

    /// A call to the test broker's management API.
    fn management(method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let base = reqwest::Url::parse(&management_url()).expect("management url");
        let url = format!(
            "http://{}:{}/api/{path}",
            base.host_str().unwrap_or("127.0.0.1"),
            base.port().unwrap_or(15672)
        );
        reqwest::Client::new().request(method, url).basic_auth(base.username(), base.password())
    }

    crate::refusing_dlq_tests!(Rabbit);

    /// Readiness does not wait for a publishing channel: with every one
    /// leased (a gateway under load), the probe still answers at once.
    #[tokio::test]
    async fn readiness_does_not_wait_for_a_busy_publishing_channel() {
        let b = connect().await;
        let mut held = Vec::new();
        for _ in 0..b.shared.publisher_channels {
            held.push(b.shared.publishing.publisher().await.expect("a lease"));
        }
        let probe = tokio::time::timeout(Duration::from_secs(2), crate::Backend::ready(&b)).await;
        assert!(matches!(probe, Ok(Ok(()))), "{probe:?}");
        drop(held);
    }

    /// One batch whose delayed messages are returned (their retry tier's
    /// queue deleted by an operator) and whose others are stored: each
    /// message gets its own outcome. The broker acks such a batch with
    /// multiple acks, whose confirms lapin completes in no set order, each
    /// taking whatever return came first.
    #[tokio::test]
    async fn a_batch_half_returned_reports_each_message_its_own_outcome() {
        use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
        let b = connect().await;
        let name = format!("conf-halfreturned-{:08x}", rand::random::<u32>());
        b.ensure(&QueueSpec::new(&name)).await.expect("ensure");
        let p = b.producer(&name).await.expect("producer");
        let tier = super::topology::route_for(&name, Duration::from_millis(100));
        assert_ne!(tier, name);
        let ch = b.shared.consuming.channel(false).await.expect("channel");
        ch.queue_delete(tier.as_str().into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("delete the tier");
        let mut wrong = Vec::new();
        let mut stored = 0;
        for round in 0..5 {
            let msgs: Vec<OutgoingMessage> = (0..200)
                .map(|i| {
                    let mut m = OutgoingMessage::new(format!("r{round}m{i}"), "x");
                    if i % 2 == 0 {
                        m.delay = Duration::from_millis(100);
                    }
                    m
                })
                .collect();
            for (i, outcome) in p.send_batch(msgs).await.expect("batch").into_iter().enumerate() {
                match (i % 2 == 0, outcome) {
                    (true, Ok(())) => {
                        wrong.push(format!("r{round}m{i} reported stored, but its tier is gone"))
                    }
                    (false, Err(e)) => {
                        wrong.push(format!("r{round}m{i} failed, but its queue is there: {e}"))
                    }
                    (false, Ok(())) => stored += 1,
                    (true, Err(_)) => {}
                }
            }
        }
        assert!(wrong.is_empty(), "{} wrong outcomes: {wrong:?}", wrong.len());
        assert_eq!(stored, 500);
        let _ = b.delete_ensured().await;
    }

    /// Messages the broker returns as unroutable (their queue deleted) and
    /// messages it stores, sent side by side, each get their own outcome:
    /// every returned one an error, every stored one `Ok`. lapin hands a
    /// `basic.return` to whichever confirm of the channel completes next,
    /// in no set order when one ack covers several publishes; on a channel
    /// shared by concurrent batches, a returned message was reported stored
    /// (a 2xx for a message that went nowhere) and a stored one failed, in
    /// about one run in three of 400 sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_returned_message_is_never_reported_stored() {
        use crate::{Admin as _, Backend as _, OutgoingMessage, QueueSpec};
        let b = connect().await;
        let gone = format!("conf-returned-{:08x}", rand::random::<u32>());
        let kept = format!("conf-stored-{:08x}", rand::random::<u32>());
        b.ensure(&QueueSpec::new(&gone)).await.expect("ensure");
        b.ensure(&QueueSpec::new(&kept)).await.expect("ensure");
        let to_gone = b.producer(&gone).await.expect("producer");
        let to_kept = b.producer(&kept).await.expect("producer");
        let ch = b.shared.consuming.channel(false).await.expect("channel");
        ch.queue_delete(gone.as_str().into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("delete");
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..1000 {
            let p = if i % 2 == 0 { to_gone.clone() } else { to_kept.clone() };
            sends.spawn(async move { (i, p.send(OutgoingMessage::new(format!("m{i}"), "x")).await) });
        }
        let mut stored = 0;
        let mut wrong = Vec::new();
        while let Some(joined) = sends.join_next().await {
            let (i, outcome) = joined.expect("send task");
            match (i % 2 == 0, outcome) {
                (true, Ok(())) => wrong.push(format!("m{i} reported stored, but its queue is gone")),
                (false, Err(e)) => wrong.push(format!("m{i} failed, but its queue is there: {e}")),
                (false, Ok(())) => stored += 1,
                (true, Err(_)) => {}
            }
        }
        assert!(wrong.is_empty(), "{} wrong outcomes: {wrong:?}", wrong.len());
        let mut s = b.stats(&kept).await.expect("stats");
        for _ in 0..40 {
            if s.visible == stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            s = b.stats(&kept).await.expect("stats");
        }
        assert_eq!(s.visible, stored);
        let _ = b.delete_ensured().await;
    }

    /// A queue that exists with other arguments is refused with the
    /// argument named, not a closed channel or a silent mismatch.
    #[tokio::test]
    async fn a_queue_with_other_arguments_is_an_error_naming_the_argument() {
        let b = connect().await;
        let name = format!("conf-args-{:08x}", rand::random::<u32>());
        let mut spec = crate::QueueSpec::new(&name);
        crate::Admin::ensure(&b, &spec).await.expect("ensure");
        spec.dead_letter.max_receive_count = 3;
        let err = crate::Admin::ensure(&b, &spec).await.expect_err("other arguments");
        assert!(matches!(&err, crate::QueueError::Invalid(m) if m.contains("x-delivery-limit")), "{err:?}");
        // The backend still works after the refusal.
        spec.dead_letter.max_receive_count = 5;
        crate::Admin::ensure(&b, &spec).await.expect("the original arguments still pass");
        b.delete_ensured().await.expect("cleanup");
    }
}
