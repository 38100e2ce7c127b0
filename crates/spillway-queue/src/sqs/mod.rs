//! The SQS backend: AWS SQS, or any server that speaks its API, with the
//! same dead-letter rule as every backend.
//!
//! - [`wire`]: a message as SQS body and attributes, and SQS's limits.
//! - [`producer`]: `SendMessageBatch` in chunks, several in flight, failed
//!   entries retried.
//! - [`consumer`]: receive, ack, nack, release, dead-letter, close.
//! - [`calls`]: every request counted by operation, for the bill.
//!
//! # The count
//!
//! SQS counts every receive (`ApproximateReceiveCount`), and nothing can
//! undo one. A *failure* (nack) keeps the message and lets SQS's count
//! stand: the message becomes visible again after the delay
//! (`ChangeMessageVisibility`). A *release* (the sink, not the message,
//! failed) must not count, so on a standard queue it **re-sends** the
//! message carrying the failures it really had (`fail` in the `spillway`
//! attribute), then deletes the original: a crash between the two gives a
//! duplicate, never a loss. A delivery's count is the carried failures plus
//! SQS's count of this copy. Spillway dead-letters by that count, with its
//! metadata, on the nack of the `max_receive_count`-th receive, or on the
//! receive after it when that receive was never settled (a crash).
//!
//! Queues Spillway creates get a `RedrivePolicy` with `maxReceiveCount` one
//! above Spillway's, as a backstop for consumers that are not Spillway:
//! Spillway's own rule acts first and writes the metadata. A FIFO queue
//! cannot take a re-send without breaking its group's order, so there a
//! release counts like a failure (declared; `docs/backends.md`).

mod calls;
mod consumer;
mod producer;
pub(crate) mod wire;

use std::{
    collections::HashMap,
    error::Error as StdError,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_sqs::{
    config::{http::HttpResponse, timeout::TimeoutConfig, BehaviorVersion, Credentials, Region},
    error::{ProvideErrorMetadata, SdkError},
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
        MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
    },
    Client,
};
use serde::{Deserialize, Serialize};

use self::wire::Decoded;
use crate::{
    clock::ms_time, Admin, Backend, Clock, Consumer, DeadLetter, Producer, PurgeTarget, QueueAge, QueueError,
    QueueSpec, QueueStats,
};

/// SQS's largest message, and the size Spillway gives the queues it creates.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// SQS's limit on a whole `SendMessageBatch`.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// SQS's limits on entries per batch call and on a long poll.
const MAX_BATCH_ENTRIES: usize = 10;
const MAX_WAIT_SECS: u64 = 20;
/// SQS's longest per-message delay and visibility timeout.
const MAX_DELAY_SECS: u64 = 900;
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// How long a dead-letter queue Spillway creates keeps a message: 14 days,
/// SQS's longest.
const DLQ_RETENTION_SECS: u64 = 1_209_600;
/// How long messages taken by `peek_dead` stay hidden before they are
/// made visible again.
const PEEK_HIDE_SECS: i32 = 30;

/// `[queue] backend = "sqs"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// A local durable spool in front of the broker (`queue.spool`; off
    /// unless set): see [`crate::spool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// The AWS region; else the standard chain (`AWS_REGION`, the profile),
    /// else `us-east-1` when `endpoint_url` is set.
    #[serde(default)]
    pub region: Option<String>,
    /// An SQS-compatible server instead of AWS (`http://127.0.0.1:4566`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials. Without them, the standard chain: environment,
    /// profile, web identity (Kubernetes service accounts), instance role.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Masked by `config check`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Every call but a long poll must finish within this, retries included;
    /// a send that does not is `Timeout`, and ingest answers 503.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `SendMessageBatch` calls one `send_batch` keeps in flight at once.
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// How long the queues `queue ensure` creates keep a message
    /// (`MessageRetentionPeriod`, at most 14 days): the longest sink outage
    /// the backlog survives. SQS's default is 4 days; a queue Spillway
    /// adopts that keeps messages for less is named in a warning.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

fn default_retention() -> Duration {
    Duration::from_secs(DLQ_RETENTION_SECS)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_batches_in_flight() -> usize {
    8
}

impl SqsConfig {
    /// A config for an SQS-compatible server at `endpoint_url` with static
    /// credentials. For tests and local servers.
    pub fn local(endpoint_url: &str) -> Self {
        Self {
            spool: None,
            region: Some("us-east-1".into()),
            endpoint_url: Some(endpoint_url.into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            timeout: default_timeout(),
            batches_in_flight: default_batches_in_flight(),
            retention: default_retention(),
        }
    }
}

/// What a receive hides a message for on a queue whose own visibility
/// timeout is 0 (an adopted queue): SQS's default. With 0, every receive
/// would hand the message to every other consumer at once, and keeping it
/// hidden while a worker holds it would mean extending it without pause.
const ZERO_VISIBILITY_HOLD: Duration = Duration::from_secs(30);

/// The SQS error code of a failed call, if the server answered one.
fn code_of<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> &str {
    match e {
        SdkError::ServiceError(s) => s.err().code().unwrap_or_default(),
        _ => "",
    }
}

/// Whether a receipt-handle call failed because the receipt no longer
/// holds the message (it was deleted, or received again).
fn is_stale<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            stale_receipt(s.err().code().unwrap_or_default(), s.err().message().unwrap_or_default())
        }
        _ => false,
    }
}

/// Whether an error code and message say "this receipt no longer holds
/// the message". SQS has three ways of saying it: `ReceiptHandleIsInvalid`
/// (a receipt it cannot read), `MessageNotInflight` (a message no longer
/// held), and, for a receipt whose visibility ran out or that a newer
/// receive replaced, `InvalidParameterValue` with "Value … for parameter
/// ReceiptHandle is invalid. Reason: The receipt handle has expired." (or
/// "Message does not exist or is not available for visibility timeout
/// change."). The test servers use only the first two, so the third is
/// checked on SQS's own texts in this module's tests. An
/// `InvalidParameterValue` about another parameter (a visibility past 12
/// hours) is not stale.
fn stale_receipt(code: &str, message: &str) -> bool {
    code.contains("ReceiptHandleIsInvalid")
        || code.contains("MessageNotInflight")
        || (code.contains("InvalidParameterValue") && message.contains("parameter ReceiptHandle"))
}

/// Turns an SDK error into what the caller does next.
fn sqs_error<E>(what: &str, queue: &str, timeout: Duration, e: SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    match &e {
        SdkError::TimeoutError(_) => return QueueError::Timeout { after: timeout },
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            if code.contains("NonExistentQueue") || code == "QueueDoesNotExist" {
                return QueueError::NotFound(queue.to_owned());
            }
            let msg = s.err().message().unwrap_or_default();
            if status.is_some_and(|s| (400..500).contains(&s)) && message_at_fault(code, msg) {
                return QueueError::Rejected(format!("sqs {what} on `{queue}`: {code}: {msg}"));
            }
        }
        _ => {}
    }
    QueueError::Unavailable {
        reason: format!("sqs {what} on `{queue}`: {}", describe(&e)),
        source: Some(Arc::new(e)),
    }
}

/// Whether SQS refused because of the message itself (its contents or
/// its size, or a batch too long, which Spillway then sends one by one):
/// only then is it the client's fault, a 422 that retrying cannot help.
/// Every other refusal is the operator's or Spillway's — credentials
/// (`ExpiredToken`, `InvalidClientTokenId`), permissions (`AccessDenied`),
/// KMS keys (`KmsAccessDenied`, `KmsDisabled`…), quotas and throttling,
/// clock skew (`RequestExpired`, `SignatureDoesNotMatch`): `Unavailable`,
/// a 503 with `Retry-After`, so the client keeps its data and retries (API
/// Gateway answered 5xx there too). A 4xx never tells a client to drop
/// data over an IAM slip.
pub(crate) fn message_at_fault(code: &str, message: &str) -> bool {
    let code = code.rsplit('.').next().unwrap_or(code);
    matches!(code, "InvalidMessageContents" | "MessageTooLong" | "BatchRequestTooLong")
        || (code == "InvalidParameterValue" && message.contains("shorter than"))
}

/// The error and its causes on one line: the SDK's own `Display` says only
/// "dispatch failure".
fn describe(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Whole seconds, rounded up: SQS takes delays and timeouts in seconds, and
/// the contract promises "at least".
fn ceil_secs(d: Duration, max: u64) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.min(max)).unwrap_or(i32::MAX)
}

/// A queue given by name or by URL: its name, and the URL if given.
fn split(queue: &str) -> (&str, Option<&str>) {
    if queue.starts_with("https://") || queue.starts_with("http://") {
        (queue.rsplit('/').next().unwrap_or(queue), Some(queue))
    } else {
        (queue, None)
    }
}

/// The dead-letter queue Spillway creates for `name`: `<name>-dlq`, or
/// `<base>-dlq.fifo` for a FIFO queue (a FIFO queue's DLQ must be FIFO).
pub fn dlq_name(name: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dlq.fifo"),
        None => format!("{name}-dlq"),
    }
}

/// What Spillway knows of one queue and its dead-letter queue.
#[derive(Debug)]
pub(crate) struct QueueInfo {
    /// The name Spillway was given (a name or a URL).
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) arn: String,
    pub(crate) fifo: bool,
    /// How long a receive hides a message: the queue's visibility timeout,
    /// or [`ZERO_VISIBILITY_HOLD`] on a queue whose timeout is 0.
    pub(crate) visibility: Duration,
    /// Set where receives must name their own visibility (the queue's is 0).
    pub(crate) receive_hide_secs: Option<i32>,
    /// The queue's `MaximumMessageSize`: the wire size SQS takes.
    pub(crate) max_wire_bytes: usize,
    pub(crate) dlq_url: String,
    pub(crate) dlq_arn: String,
}

pub(crate) struct Shared {
    client: Client,
    clock: Clock,
    timeout: Duration,
    batches_in_flight: usize,
    /// `SqsConfig::retention`, capped at SQS's 14 days.
    retention: Duration,
    /// The policies of queues ensured by this process.
    specs: crate::spec::Specs,
    queues: Mutex<HashMap<String, Arc<QueueInfo>>>,
    /// Cleared once the server answers that it has no `StartMessageMoveTask`.
    move_tasks: AtomicBool,
}

type Attributes = HashMap<QueueAttributeName, String>;

impl Shared {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn err<E>(&self, what: &str, queue: &str, e: SdkError<E, HttpResponse>) -> QueueError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        sqs_error(what, queue, self.timeout, e)
    }

    fn spec(&self, queue: &str) -> QueueSpec {
        self.specs.get(queue)
    }

    async fn url_of(&self, queue: &str) -> Result<String, QueueError> {
        let (name, url) = split(queue);
        if let Some(url) = url {
            return Ok(url.to_owned());
        }
        let got = self.client.get_queue_url().queue_name(name).send().await;
        let got = got.map_err(|e| self.err("get queue url", queue, e))?;
        got.queue_url().map(str::to_owned).ok_or_else(|| QueueError::NotFound(queue.to_owned()))
    }

    async fn attributes(&self, queue: &str, url: &str) -> Result<Attributes, QueueError> {
        let got = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| self.err("get queue attributes", queue, e))?;
        Ok(got.attributes().cloned().unwrap_or_default())
    }

    /// The queue, its attributes and its DLQ, cached after the first look.
    async fn info(&self, queue: &str) -> Result<Arc<QueueInfo>, QueueError> {
        if let Some(i) = self.queues.lock().unwrap_or_else(PoisonError::into_inner).get(queue) {
            return Ok(i.clone());
        }
        let url = self.url_of(queue).await?;
        let attrs = self.attributes(queue, &url).await?;
        let (name, _) = split(queue);
        let dlq = match redrive_target(&attrs) {
            Some(arn) => arn.rsplit(':').next().unwrap_or_default().to_owned(),
            None => dlq_name(name),
        };
        let dlq_url = self.url_of(&dlq).await?;
        let dlq_attrs = self.attributes(&dlq, &dlq_url).await?;
        let int = |a: &Attributes, k: QueueAttributeName| a.get(&k).and_then(|v| v.parse::<u64>().ok());
        let flag = |a: &Attributes, k: QueueAttributeName| a.get(&k).is_some_and(|v| v == "true");
        let queue_visibility =
            Duration::from_secs(int(&attrs, QueueAttributeName::VisibilityTimeout).unwrap_or(30));
        if queue_visibility.is_zero() {
            tracing::warn!(queue = %queue, "the queue's visibility timeout is 0: receives hide each message for {ZERO_VISIBILITY_HOLD:?} themselves, or every consumer would see it at once");
        }
        let info = Arc::new(QueueInfo {
            name: queue.to_owned(),
            arn: attrs.get(&QueueAttributeName::QueueArn).cloned().unwrap_or_default(),
            fifo: flag(&attrs, QueueAttributeName::FifoQueue) || name.ends_with(".fifo"),
            visibility: if queue_visibility.is_zero() { ZERO_VISIBILITY_HOLD } else { queue_visibility },
            receive_hide_secs: queue_visibility
                .is_zero()
                .then(|| ceil_secs(ZERO_VISIBILITY_HOLD, MAX_VISIBILITY_SECS)),
            max_wire_bytes: int(&attrs, QueueAttributeName::MaximumMessageSize)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(256 * 1024),
            url,
            dlq_arn: dlq_attrs.get(&QueueAttributeName::QueueArn).cloned().unwrap_or_default(),
            dlq_url,
        });
        self.queues.lock().unwrap_or_else(PoisonError::into_inner).insert(queue.to_owned(), info.clone());
        Ok(info)
    }

    /// The queue's URL, creating it with `attrs` if it does not exist. An
    /// existing queue is adopted as it is.
    async fn get_or_create(&self, name: &str, attrs: Attributes) -> Result<(String, bool), QueueError> {
        match self.url_of(name).await {
            Ok(url) => Ok((url, false)),
            Err(QueueError::NotFound(_)) => {
                let created =
                    self.client.create_queue().queue_name(name).set_attributes(Some(attrs)).send().await;
                let created = created.map_err(|e| self.err("create queue", name, e))?;
                let url = created.queue_url().map(str::to_owned);
                Ok((url.ok_or_else(|| QueueError::NotFound(name.to_owned()))?, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends entries in one `SendMessageBatch` (at most 10), retrying the
    /// entries SQS failed on its side. Returns each entry's outcome by its
    /// `Id`. A call refused as a whole for a client error is split into
    /// single sends, so one bad entry fails alone (some servers refuse the
    /// whole batch for it).
    async fn send_entries(
        &self,
        queue: &str,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Vec<(String, Result<(), QueueError>)> {
        let mut pending = entries;
        let mut out = Vec::with_capacity(pending.len());
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            let sent = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(pending.clone()))
                .send()
                .await;
            let result = match sent {
                Ok(r) => r,
                Err(e) => {
                    let err = self.err("send", queue, e);
                    if matches!(err, QueueError::Rejected(_)) && pending.len() > 1 {
                        for one in pending {
                            out.extend(Box::pin(self.send_entries(queue, url, vec![one])).await);
                        }
                        return out;
                    }
                    out.extend(pending.into_iter().map(|p| (p.id().to_owned(), Err(err.clone()))));
                    return out;
                }
            };
            for ok in result.successful() {
                out.push((ok.id().to_owned(), Ok(())));
            }
            let mut retry = Vec::new();
            for failed in result.failed() {
                let msg = failed.message().unwrap_or_default();
                if failed.sender_fault() && message_at_fault(failed.code(), msg) {
                    out.push((
                        failed.id().to_owned(),
                        Err(QueueError::Rejected(format!(
                            "sqs refused the message: {}: {msg}",
                            failed.code()
                        ))),
                    ));
                } else if failed.sender_fault() {
                    // The account's, not the message's (a KMS key, a
                    // permission): retrying now will not help, the client
                    // retrying later may.
                    out.push((
                        failed.id().to_owned(),
                        Err(QueueError::unavailable_msg(format!(
                            "sqs did not store the message in `{queue}`: {}: {msg}",
                            failed.code()
                        ))),
                    ));
                } else if let Some(p) = pending.iter().find(|p| p.id() == failed.id()) {
                    retry.push(p.clone());
                }
            }
            pending = retry;
            if pending.is_empty() {
                return out;
            }
        }
        let err = QueueError::unavailable_msg(format!(
            "sqs did not store the message in `{queue}` after 3 attempts"
        ));
        out.extend(pending.into_iter().map(|p| (p.id().to_owned(), Err(err.clone()))));
        out
    }

    /// Sends one message and waits for SQS to take it.
    async fn send_one(
        &self,
        queue: &str,
        url: &str,
        entry: SendMessageBatchRequestEntry,
    ) -> Result<(), QueueError> {
        let mut got = self.send_entries(queue, url, vec![entry]).await;
        got.pop().map_or_else(|| Err(QueueError::unavailable_msg("sqs returned no outcome")), |(_, r)| r)
    }

    /// Deletes by receipt; a stale receipt is not an error.
    async fn delete(&self, queue: &str, url: &str, receipt: &str) -> Result<(), QueueError> {
        match self.client.delete_message().queue_url(url).receipt_handle(receipt).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_stale(&e) => Ok(()),
            Err(e) => Err(self.err("delete", queue, e)),
        }
    }

    /// Deletes up to 10 receipts in one call; stale receipts are not errors.
    async fn delete_batch(&self, queue: &str, url: &str, receipts: &[String]) -> Result<(), QueueError> {
        let mut entries = Vec::with_capacity(receipts.len());
        for (i, r) in receipts.iter().enumerate() {
            let e = DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).build();
            entries.push(e.map_err(|e| QueueError::Invalid(format!("sqs delete entry: {e}")))?);
        }
        if crate::fault::hit("sqs.delete_batch", || queue.to_owned()) {
            return Err(QueueError::unavailable_msg(format!("sqs delete batch on `{queue}`: InternalError")));
        }
        let got = self.client.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await;
        let got = got.map_err(|e| self.err("delete batch", queue, e))?;
        match got.failed().iter().find(|f| !stale_receipt(f.code(), f.message().unwrap_or_default())) {
            Some(f) => Err(QueueError::unavailable_msg(format!(
                "sqs delete on `{queue}`: {}: {}",
                f.code(),
                f.message().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }

    /// Makes messages a peek took visible again.
    async fn show_again(&self, queue: &str, url: &str, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(MAX_BATCH_ENTRIES) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                let e = ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .build();
                entries.push(e.map_err(|e| QueueError::Invalid(format!("sqs visibility entry: {e}")))?);
            }
            let sent = self
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await;
            sent.map_err(|e| self.err("change visibility", queue, e))?;
        }
        Ok(())
    }

    /// Up to `max` (at most 10) messages, hidden for `hide_secs`, waiting
    /// up to `wait_secs` for the first.
    async fn take(
        &self,
        queue: &str,
        url: &str,
        max: usize,
        wait_secs: i32,
        hide_secs: Option<i32>,
    ) -> Result<Vec<Message>, QueueError> {
        let max = i32::try_from(max.clamp(1, MAX_BATCH_ENTRIES)).unwrap_or(1);
        let timeout = self.timeout + Duration::from_secs(u64::try_from(wait_secs).unwrap_or(0));
        let got = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_secs)
            .set_visibility_timeout(hide_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build()),
            )
            .send()
            .await
            .map_err(|e| self.err("receive", queue, e))?;
        Ok(got.messages().to_vec())
    }
}

/// Whether an adopted queue keeps messages for less than `retention`: a
/// sink outage longer than that loses the backlog.
pub(crate) fn short_retention(queue: &str, attrs: &Attributes, retention: Duration) -> Option<String> {
    let kept = attrs.get(&QueueAttributeName::MessageRetentionPeriod)?.parse::<u64>().ok()?;
    (kept < retention.as_secs()).then(|| {
        format!(
            "queue {queue} keeps messages for {kept} s (MessageRetentionPeriod), less than the configured \
             retention of {} s: a sink outage longer than that loses the backlog",
            retention.as_secs()
        )
    })
}

/// A send entry: group and deduplication ids on FIFO, a delay on standard.
fn send_entry(
    fifo: bool,
    id: String,
    wire: wire::Wire,
    delay_secs: i32,
    group: Option<&str>,
    dedup: Option<String>,
) -> Result<SendMessageBatchRequestEntry, QueueError> {
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(id)
        .message_body(wire.body)
        .set_message_attributes(Some(wire.attributes));
    if fifo {
        b = b.message_group_id(check_fifo_id("ordering key", group.unwrap_or_default())?);
        if let Some(d) = dedup {
            b = b.message_deduplication_id(check_fifo_id("dedup key", &d)?);
        }
    } else if delay_secs > 0 {
        b = b.delay_seconds(delay_secs);
    }
    b.build().map_err(|e| QueueError::Invalid(format!("sqs send entry: {e}")))
}

/// A FIFO group or deduplication id: 1 to 128 of ASCII `!`–`~`.
fn check_fifo_id<'a>(what: &str, id: &'a str) -> Result<&'a str, QueueError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(QueueError::Invalid(format!(
            "{what} {id:?}: a FIFO queue takes 1 to 128 printable ASCII characters without spaces"
        )));
    }
    Ok(id)
}

/// The dead-letter queue ARN of a queue's `RedrivePolicy`, if it has one.
fn redrive_target(attrs: &Attributes) -> Option<String> {
    let policy = attrs.get(&QueueAttributeName::RedrivePolicy)?;
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    v.get("deadLetterTargetArn")?.as_str().map(str::to_owned)
}

fn redrive_max(attrs: &Attributes) -> Option<u64> {
    let policy = attrs.get(&QueueAttributeName::RedrivePolicy)?;
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let n = v.get("maxReceiveCount")?;
    n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok()))
}

/// A connection to SQS. Cheap to clone.
#[derive(Clone)]
pub struct SqsBackend {
    shared: Arc<Shared>,
}

impl SqsBackend {
    /// Builds the client from the config and the standard AWS chain. Makes
    /// no call: the first `ensure` tells whether the server is there.
    pub async fn connect(cfg: &SqsConfig) -> Result<Self, QueueError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_timeout(cfg.timeout)
                .build(),
        );
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "spillway-config"));
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            if cfg.endpoint_url.is_none() {
                return Err(QueueError::Invalid(
                    "no AWS region: set queue.region, or AWS_REGION, or a region in the AWS profile".into(),
                ));
            }
            sdk = sdk.into_builder().region(Region::new("us-east-1")).build();
        }
        if cfg.batches_in_flight == 0 {
            return Err(QueueError::Invalid("queue.batches_in_flight must be at least 1".into()));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                client: Client::from_conf(
                    aws_sdk_sqs::config::Builder::from(&sdk).interceptor(calls::CountRequests).build(),
                ),
                clock: Clock::system(),
                timeout: cfg.timeout,
                batches_in_flight: cfg.batches_in_flight,
                retention: cfg.retention.min(Duration::from_secs(DLQ_RETENTION_SECS)),
                specs: crate::spec::Specs::default(),
                queues: Mutex::default(),
                move_tasks: AtomicBool::new(true),
            }),
        })
    }

    /// Deletes the queues behind every queue this handle ensured (source
    /// and DLQ). For tests on a shared server.
    pub async fn delete_ensured(&self) -> Result<(), QueueError> {
        let infos: Vec<Arc<QueueInfo>> =
            self.shared.queues.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        let mut urls: Vec<(String, String)> = infos
            .iter()
            .flat_map(|i| [(i.url.clone(), i.name.clone()), (i.dlq_url.clone(), i.name.clone())])
            .collect();
        urls.sort();
        urls.dedup_by(|a, b| a.0 == b.0);
        for (url, name) in urls {
            let deleted = self.shared.client.delete_queue().queue_url(&url).send().await;
            match deleted.map_err(|e| self.shared.err("delete queue", &name, e)) {
                Ok(_) | Err(QueueError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A dead letter as stored: its metadata, or SQS's for a message that SQS's
/// own redrive moved (no `rc`: its count is SQS's, approximate).
fn dead_letter_of(queue: &str, d: Decoded) -> DeadLetter {
    let m = &d.meta;
    DeadLetter {
        id: m.id.clone(),
        source_queue: m.src.clone().unwrap_or_else(|| queue.to_owned()),
        receive_count: m.rc.unwrap_or_else(|| m.fail + d.approximate_receive_count.saturating_sub(1)),
        last_error: m.err.clone(),
        first_received_at: m.first.or(d.first_receive_ms).map(ms_time),
        last_received_at: m.last.map(ms_time),
        dead_lettered_at: ms_time(m.dl.unwrap_or(m.enq)),
        enqueued_at: ms_time(m.enq),
        body: d.body,
        attributes: d.attributes,
    }
}

#[async_trait]
impl Admin for SqsBackend {
    /// Creates the DLQ and the queue with a `RedrivePolicy`, or adopts what
    /// exists as it is (its DLQ is the one its `RedrivePolicy` names).
    async fn ensure(&self, spec: &QueueSpec) -> Result<(), QueueError> {
        let s = &self.shared;
        let max = spec.dead_letter.max_receive_count;
        if max == 0 {
            return Err(QueueError::Invalid("max_receive_count must be at least 1".into()));
        }
        let visibility = spec.dead_letter.visibility_timeout;
        if visibility > Duration::from_secs(MAX_VISIBILITY_SECS) {
            return Err(QueueError::Invalid(format!(
                "visibility_timeout {visibility:?}: SQS allows at most 12 hours"
            )));
        }
        let (name, _) = split(&spec.name);
        let fifo = name.ends_with(".fifo");
        s.queues.lock().unwrap_or_else(PoisonError::into_inner).remove(&spec.name);
        let existing = match s.url_of(&spec.name).await {
            Ok(url) => Some(url),
            Err(QueueError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        match existing {
            Some(url) => {
                let attrs = s.attributes(&spec.name, &url).await?;
                // The DLQ the queue names (or Spillway's name for it) is made
                // if it is missing: new, or deleted since (dead letters would
                // fail until it is back).
                let dlq = match redrive_target(&attrs) {
                    Some(arn) => arn.rsplit(':').next().unwrap_or_default().to_owned(),
                    None => dlq_name(name),
                };
                let mut dlq_attrs = HashMap::new();
                dlq_attrs.insert(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.to_string());
                if fifo {
                    dlq_attrs.insert(QueueAttributeName::FifoQueue, "true".into());
                }
                if s.get_or_create(&dlq, dlq_attrs).await?.1 {
                    tracing::warn!(queue = %spec.name, dlq = %dlq, "the dead-letter queue was missing: made again");
                }
                match redrive_max(&attrs) {
                    None => {
                        tracing::warn!(queue = %spec.name, "the queue has no RedrivePolicy: only Spillway dead-letters its messages");
                    }
                    Some(n) if n <= u64::from(max) => tracing::warn!(
                        queue = %spec.name, redrive_max_receive_count = n, max_receive_count = max,
                        "SQS's own redrive acts first: a message whose consumers crash reaches the DLQ without Spillway's metadata"
                    ),
                    Some(_) => {}
                }
                if let Some(finding) = short_retention(&spec.name, &attrs, s.retention) {
                    tracing::warn!(queue = %spec.name, "{finding}");
                }
                let secs = attrs.get(&QueueAttributeName::VisibilityTimeout).cloned().unwrap_or_default();
                if secs != ceil_secs(visibility, MAX_VISIBILITY_SECS).to_string() {
                    tracing::warn!(queue = %spec.name, queue_visibility_seconds = %secs, configured = ?visibility,
                        "the existing queue's VisibilityTimeout is kept");
                }
            }
            None => {
                let mut dlq = HashMap::new();
                dlq.insert(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.to_string());
                dlq.insert(QueueAttributeName::MaximumMessageSize, MAX_MESSAGE_BYTES.to_string());
                if fifo {
                    dlq.insert(QueueAttributeName::FifoQueue, "true".into());
                }
                let (dlq_url, _) = s.get_or_create(&dlq_name(name), dlq).await?;
                let dlq_attrs = s.attributes(&dlq_name(name), &dlq_url).await?;
                let dlq_arn = dlq_attrs.get(&QueueAttributeName::QueueArn).cloned().unwrap_or_default();
                let policy = serde_json::json!({
                    "deadLetterTargetArn": dlq_arn,
                    "maxReceiveCount": max.saturating_add(1),
                });
                let mut attrs = HashMap::new();
                attrs.insert(
                    QueueAttributeName::VisibilityTimeout,
                    ceil_secs(visibility, MAX_VISIBILITY_SECS).to_string(),
                );
                attrs.insert(QueueAttributeName::MaximumMessageSize, MAX_MESSAGE_BYTES.to_string());
                attrs.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
                attrs.insert(QueueAttributeName::MessageRetentionPeriod, s.retention.as_secs().to_string());
                if fifo {
                    attrs.insert(QueueAttributeName::FifoQueue, "true".into());
                }
                s.get_or_create(name, attrs).await?;
            }
        }
        s.info(&spec.name).await?;
        s.specs.insert(spec);
        Ok(())
    }

    /// SQS's `Approximate…` counts: `visible`, `delayed` and `in_flight`
    /// (`NotVisible`: held by consumers, or nacked with a delay) of the
    /// queue, and every message of the DLQ as `dead`.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let info = self.shared.info(queue).await?;
        let count = |a: &Attributes, k: QueueAttributeName| {
            a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        let src = self.shared.attributes(queue, &info.url).await?;
        let dlq = self.shared.attributes(queue, &info.dlq_url).await?;
        Ok(QueueStats {
            visible: count(&src, QueueAttributeName::ApproximateNumberOfMessages),
            delayed: count(&src, QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            in_flight: count(&src, QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            dead: count(&dlq, QueueAttributeName::ApproximateNumberOfMessages)
                + count(&dlq, QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                + count(&dlq, QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// The queue's `MessageRetentionPeriod`. SQS tells the oldest message's
    /// age only to CloudWatch (`ApproximateAgeOfOldestMessage`, which the
    /// documented alert uses): `None` here.
    async fn age(&self, queue: &str) -> Result<QueueAge, QueueError> {
        let info = self.shared.info(queue).await?;
        let attrs = self.shared.attributes(queue, &info.url).await?;
        let retention = attrs
            .get(&QueueAttributeName::MessageRetentionPeriod)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(QueueAge { retention, oldest: None })
    }

    /// Receives up to `max` dead letters, then makes them visible again.
    async fn peek_dead(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let info = self.shared.info(queue).await?;
        let mut out = Vec::new();
        let mut receipts = Vec::new();
        let peeked = async {
            while out.len() < max {
                let got =
                    self.shared.take(queue, &info.dlq_url, max - out.len(), 1, Some(PEEK_HIDE_SECS)).await?;
                if got.is_empty() {
                    break;
                }
                for m in &got {
                    receipts.extend(m.receipt_handle().map(str::to_owned));
                    out.push(dead_letter_of(queue, wire::decode(m)?));
                }
            }
            Ok::<_, QueueError>(())
        }
        .await;
        let shown = self.shared.show_again(queue, &info.dlq_url, &receipts).await;
        peeked?;
        shown?;
        Ok(out)
    }

    /// Moves dead letters back with their count reset. When the whole DLQ
    /// is asked for and the server has it, SQS's own `StartMessageMoveTask`
    /// does it; otherwise (or when the server answers that it has none)
    /// receive, send, delete, at most `max`.
    async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
        let info = self.shared.info(queue).await?;
        // A move task only for standard queues: SQS moves FIFO dead letters
        // without their group's order, and ElasticMQ completes a FIFO task
        // having moved nothing. Its "moved" count is approximate on SQS and
        // counts earlier messages on ElasticMQ, so what is reported is at
        // most what the DLQ held when the task started.
        if self.shared.move_tasks.load(Ordering::Relaxed) && !info.fifo {
            let dead = self.stats(queue).await?.dead;
            if dead > 0 && (max as u64) >= dead {
                if let Some(moved) = self.move_task(&info).await? {
                    return Ok(moved.min(dead));
                }
            }
        }
        let mut moved = 0u64;
        while (moved as usize) < max {
            let want = (max - moved as usize).min(MAX_BATCH_ENTRIES);
            let got = self.shared.take(queue, &info.dlq_url, want, 1, Some(PEEK_HIDE_SECS)).await?;
            if got.is_empty() {
                break;
            }
            let mut done = Vec::new();
            for m in &got {
                let d = wire::decode(m)?;
                let meta = d.meta.reset();
                let group = meta.key.clone().unwrap_or_else(|| meta.id.clone());
                let dedup = format!("{}.r{}", meta.id, self.shared.now_ms());
                let id = meta.id.clone();
                let w = wire::encode(&d.body, &d.attributes, meta)?;
                let entry = send_entry(info.fifo, "0".into(), w, 0, Some(&group), Some(dedup))?;
                self.shared.send_one(queue, &info.url, entry).await?;
                tracing::debug!(queue, id, "redriven");
                done.extend(m.receipt_handle().map(str::to_owned));
            }
            self.shared.delete_batch(queue, &info.dlq_url, &done).await?;
            moved += done.len() as u64;
        }
        Ok(moved)
    }

    /// `PurgeQueue`. Returns the approximate count before it. SQS allows one
    /// purge of a queue per 60 s; a second is `Unavailable`, saying so.
    async fn purge(&self, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
        let info = self.shared.info(queue).await?;
        let stats = self.stats(queue).await?;
        let (url, n) = match target {
            PurgeTarget::Source => (&info.url, stats.pending()),
            PurgeTarget::Dead => (&info.dlq_url, stats.dead),
        };
        match self.shared.client.purge_queue().queue_url(url).send().await {
            Ok(_) => Ok(n),
            Err(e) if code_of(&e).contains("PurgeQueueInProgress") => Err(QueueError::unavailable_msg(
                format!("sqs: `{queue}` was purged less than 60 s ago; SQS allows one purge a minute"),
            )),
            Err(e) => Err(self.shared.err("purge", queue, e)),
        }
    }
}

impl SqsBackend {
    /// Redrive by `StartMessageMoveTask`, waiting for it to finish. `None`
    /// if the server has no such call (it is remembered).
    async fn move_task(&self, info: &QueueInfo) -> Result<Option<u64>, QueueError> {
        let s = &self.shared;
        let started = s
            .client
            .start_message_move_task()
            .source_arn(&info.dlq_arn)
            .destination_arn(&info.arn)
            .send()
            .await;
        let started = match started {
            Ok(started) => started,
            Err(e) => return self.no_move_task(info, e),
        };
        // Ours, not an earlier task of the same DLQ that the list may show
        // first; a task never listed is an error after a while, not a wait
        // forever. A listed task that runs is waited for: it moves.
        let handle = started.task_handle().unwrap_or_default().to_owned();
        let listed_by = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let listed =
                s.client.list_message_move_tasks().source_arn(&info.dlq_arn).max_results(10).send().await;
            let listed = listed.map_err(|e| s.err("list message move tasks", &info.name, e))?;
            let ours = listed
                .results()
                .iter()
                .find(|t| handle.is_empty() || t.task_handle() == Some(handle.as_str()))
                .filter(|_| !crate::fault::hit("sqs.move_task_listed", || info.name.clone()));
            let Some(task) = ours else {
                if tokio::time::Instant::now() >= listed_by {
                    return Err(QueueError::unavailable_msg(format!(
                        "sqs did not list the message move task it started for `{}` within 30 s",
                        info.name
                    )));
                }
                continue;
            };
            match task.status().unwrap_or_default() {
                "RUNNING" | "CANCELLING" => continue,
                "COMPLETED" => {
                    return Ok(Some(u64::try_from(task.approximate_number_of_messages_moved()).unwrap_or(0)))
                }
                other => {
                    return Err(QueueError::unavailable_msg(format!(
                        "sqs message move task for `{}` ended {other}: {}",
                        info.name,
                        task.failure_reason().unwrap_or_default()
                    )))
                }
            }
        }
    }

    /// `StartMessageMoveTask` failed: `None` (remembered) where the server
    /// has no such call, the error otherwise.
    fn no_move_task(
        &self,
        info: &QueueInfo,
        e: SdkError<aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskError, HttpResponse>,
    ) -> Result<Option<u64>, QueueError> {
        let s = &self.shared;
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = code_of(&e).to_owned();
        if status.is_some_and(|s| s >= 500) || code.contains("InvalidAction") || code.contains("Unsupported")
        {
            tracing::info!(queue = %info.name, ?status, code, "the server has no StartMessageMoveTask; redriving by receive, send, delete");
            s.move_tasks.store(false, Ordering::Relaxed);
            return Ok(None);
        }
        Err(s.err("start message move task", &info.name, e))
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
        let info = self.shared.info(queue).await?;
        Ok(Arc::new(producer::SqsProducer::new(
            self.shared.clone(),
            info,
            self.shared.spec(queue).max_message_bytes,
        )))
    }

    async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
        let info = self.shared.info(queue).await?;
        Ok(Arc::new(consumer::SqsConsumer::new(
            self.shared.clone(),
            info,
            self.shared.spec(queue).dead_letter,
        )))
    }

    /// One cheap call (`ListQueues`, one result) within the timeout.
    async fn ready(&self) -> Result<(), QueueError> {
        let listed = self.shared.client.list_queues().max_results(1).send().await;
        listed.map(|_| ()).map_err(|e| self.shared.err("list queues", "", e))
    }
}

#[cfg(test)]
mod tests;
