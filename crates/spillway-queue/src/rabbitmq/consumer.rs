//! Receiving from RabbitMQ with the contract's semantics.
//!
//! - `receive` pulls with `basic.get`, and polls every [`POLL`] while the
//!   queue is empty (a long poll in steps). Each receive in progress has a
//!   channel of its own, taken from the consumer's pool, so the workers of
//!   one consumer receive in parallel instead of queueing behind one
//!   channel's round trips. It runs in a task of its own that records each
//!   delivery in `held` before handing it over, so a receive whose caller
//!   went away still leaves its deliveries for `close` to release (cancel
//!   safety).
//! - Why `basic.get` and not `basic.consume` with a prefetch: a prefetched
//!   message that was never handed out comes back with `x-delivery-count`
//!   one higher when its channel dies, exactly like one whose consumer
//!   crashed while working on it; with a prefetch of hundreds, one crash
//!   would count a failure against hundreds of messages nobody tried.
//!   `basic.get` leaves unacked only what a caller holds.
//! - `ack` acks; `nack`, `release` and `dead_letter` first republish (to a
//!   retry tier, the queue itself or the DLQ) and wait for the confirm, then
//!   ack the original: a crash between the two gives a duplicate, never a
//!   loss.
//! - There is no visibility timeout: a held message stays held until it is
//!   settled or its channel closes, and then the broker returns it at once
//!   with `x-delivery-count` one higher. `extend` has nothing to do.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use async_trait::async_trait;
use lapin::{options::BasicAckOptions, types::ShortString, BasicProperties, Channel};
use tokio::time::Instant;

use super::{bounded, close_channel, ms_time, publish, queue_error, topology, wire, wire::Headers, Shared};
use crate::{
    task::run_to_end, Consumer, DeadLetterPolicy, Delivery, Nacked, QueueError, Receipt, ReceivedMessage,
};

/// Channel generations, unique in the process, so a receipt names one
/// channel of one consumer: another consumer's receipt is stale here.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// How often an idle long poll asks again.
const POLL: Duration = Duration::from_millis(50);

/// A delivery this consumer holds: what it takes to ack or republish it.
struct Held {
    generation: u64,
    tag: u64,
    body: Vec<u8>,
    props: BasicProperties,
    /// This receive's count: carried failures + broker returns + 1.
    count: u32,
    first_received_ms: i64,
}

struct Inner {
    shared: Arc<Shared>,
    queue: String,
    policy: DeadLetterPolicy,
    /// Every live channel of this consumer by generation; a new channel
    /// (after one died, which returned its messages) has a new generation,
    /// which makes the old receipts stale.
    channels: Mutex<HashMap<u64, Channel>>,
    /// Channels no receive is using now.
    idle: Mutex<Vec<u64>>,
    /// Held deliveries by (generation, delivery tag).
    held: Mutex<HashMap<(u64, u64), Held>>,
    /// Read-held by every receive in progress, taken before its task is
    /// spawned; `close` takes it for writing, so it sees what they took.
    receiving: Arc<tokio::sync::RwLock<()>>,
}

pub(crate) struct RabbitConsumer {
    inner: Arc<Inner>,
}

impl RabbitConsumer {
    pub(crate) fn new(shared: Arc<Shared>, queue: &str, policy: DeadLetterPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                queue: queue.to_owned(),
                policy,
                channels: Mutex::default(),
                idle: Mutex::default(),
                held: Mutex::default(),
                receiving: Arc::default(),
            }),
        }
    }
}

impl Drop for RabbitConsumer {
    /// A consumer dropped without `close` (a crash, in the kit): its channel
    /// closes, and the broker returns what it held, counted.
    fn drop(&mut self) {
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _receiving = inner.receiving.write().await;
                for ch in inner.take_channels() {
                    close_channel(&ch, inner.shared.consuming.timeout, "consumer dropped");
                }
            });
        }
    }
}

fn receipt(generation: u64, tag: u64) -> Receipt {
    Receipt(format!("{generation}.{tag}"))
}

fn parse_receipt(r: &Receipt) -> Option<(u64, u64)> {
    let (g, t) = r.0.split_once('.')?;
    Some((g.parse().ok()?, t.parse().ok()?))
}

impl Inner {
    /// A channel for one receive: an idle one, or a new one.
    async fn checkout(&self) -> Result<(u64, Channel), QueueError> {
        loop {
            let next = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(g) = next else { break };
            let ch = self.channels.lock().unwrap_or_else(PoisonError::into_inner).get(&g).cloned();
            match ch {
                Some(c) if c.status().connected() => return Ok((g, c)),
                _ => self.forget(g),
            }
        }
        let c = self.shared.consuming.channel(false).await?;
        let g = GENERATIONS.fetch_add(1, Ordering::SeqCst) + 1;
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).insert(g, c.clone());
        Ok((g, c))
    }

    fn checkin(&self, generation: u64) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(generation);
    }

    /// A channel that died: the broker returned what was held on it, so
    /// those receipts are stale.
    fn forget(&self, generation: u64) {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).remove(&generation);
        self.held.lock().unwrap_or_else(PoisonError::into_inner).retain(|(g, _), _| *g != generation);
    }

    fn take_channels(&self) -> Vec<Channel> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, c)| c).collect()
    }

    /// Runs with the `receiving` guard read-held by the caller, on a
    /// channel of its own.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let (generation, ch) = self.checkout().await?;
        let got = self.receive_on(generation, &ch, max, wait).await;
        match &got {
            Ok(_) if ch.status().connected() => self.checkin(generation),
            Ok(_) => self.forget(generation),
            Err(_) => {
                // A call on it failed or timed out: what it has in flight
                // is unknown (a `get-ok` may still come). Close it, so the
                // broker returns whatever it holds; its receipts go stale.
                self.forget(generation);
                close_channel(&ch, self.shared.consuming.timeout, "spillway: a call failed");
            }
        }
        got
    }

    async fn receive_on(
        &self,
        generation: u64,
        ch: &Channel,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let mut out = Vec::new();
            while out.len() < max {
                // What this receive already holds goes to the caller even
                // when a later call fails: dropped here, it would stay
                // unacked on a live channel, held by nobody.
                let got = match self.shared.get(ch, &self.queue).await {
                    Ok(Some(got)) => got,
                    Ok(None) => break,
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => return Ok(out),
                };
                match self.take(generation, got).await {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => return Ok(out),
                }
            }
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Holds one delivery, or dead-letters it if its failures are used up.
    async fn take(
        &self,
        generation: u64,
        d: lapin::message::Delivery,
    ) -> Result<Option<Delivery>, QueueError> {
        let h = Headers::of(&d.properties);
        let now = self.shared.now_ms();
        let carried = h.int(wire::FAILURES).unwrap_or(0).max(0);
        let returned = h.int(wire::DELIVERY_COUNT).unwrap_or(0).max(0);
        let count = u32::try_from(carried + returned + 1).unwrap_or(u32::MAX);
        let first_received_ms = h.int(wire::FIRST_RECEIVED_AT).unwrap_or(now);
        let id = h
            .text(wire::ID)
            .or_else(|| d.properties.message_id().as_ref().map(|s| s.as_str().to_owned()))
            .filter(|id| !id.is_empty());
        let Some(id) = id else {
            self.adopt(d, h, count - 1, first_received_ms, now).await?;
            return Ok(None);
        };
        if count > self.policy.max_receive_count {
            // Its last allowed receive went away without a verdict.
            let reason = h
                .text(wire::LAST_ERROR)
                .unwrap_or_else(|| format!("its consumer went away holding it on receive {}", count - 1));
            let dead = self.dead_copy(&h, &d.properties, count - 1, first_received_ms, &reason, now);
            let dlq = topology::dlq(&self.queue);
            if let Err(e) = self.publish(&dlq, &d.data, dead).await {
                self.give_back(&d).await;
                return Err(e);
            }
            self.shared.ack(&d.acker, &self.queue).await?;
            return Ok(None);
        }
        let delivery = Delivery {
            queue: self.queue.clone(),
            message: ReceivedMessage {
                id,
                body: d.data.clone().into(),
                attributes: h.attributes(),
                ordering_key: h.text(wire::ORDERING_KEY),
                enqueued_at: ms_time(h.int(wire::ENQUEUED_AT).unwrap_or(now)),
            },
            receive_count: count,
            first_received_at: ms_time(first_received_ms),
            receipt: receipt(generation, d.delivery_tag),
        };
        let held = Held {
            generation,
            tag: d.delivery_tag,
            body: d.data,
            props: d.properties,
            count,
            first_received_ms,
        };
        self.held.lock().unwrap_or_else(PoisonError::into_inner).insert((generation, d.delivery_tag), held);
        Ok(Some(delivery))
    }

    /// Gives a message another producer published without an id (neither
    /// `x-spillway-id` nor an AMQP `message_id`) one of its own: a copy with
    /// a fresh ULID, the failures so far and the first receive time goes
    /// to the back of the queue (confirmed), then the original is acked.
    /// The copy is what consumers receive, so the id holds across retries,
    /// republishes and the DLQ; without this every such message would share
    /// the id `""` and a sink that drops repeated ids would keep only one.
    /// A crash between the confirm and the ack leaves both: the message is
    /// adopted twice, under two ids (a duplicate, never a loss).
    async fn adopt(
        &self,
        d: lapin::message::Delivery,
        h: Headers,
        failures: u32,
        first_received_ms: i64,
        now: i64,
    ) -> Result<(), QueueError> {
        let id = ulid::Ulid::new().to_string();
        let enqueued_ms = d
            .properties
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .map_or(now, |s| s.saturating_mul(1000));
        let mut headers = h.without(&[]);
        headers.set_text(wire::ID, &id);
        headers.set_int(wire::ENQUEUED_AT, enqueued_ms);
        headers.set_int(wire::FAILURES, i64::from(failures));
        if failures > 0 {
            headers.set_int(wire::FIRST_RECEIVED_AT, first_received_ms);
        }
        let props = headers.into_properties(&d.properties).with_message_id(ShortString::from(id.clone()));
        if let Err(e) = self.publish(&self.queue, &d.data, props).await {
            self.give_back(&d).await;
            return Err(e);
        }
        self.shared.ack(&d.acker, &self.queue).await?;
        tracing::debug!(queue = %self.queue, id, "adopted a message published without an id");
        Ok(())
    }

    /// Publishes on the publishing connection and waits for the confirm.
    async fn publish(&self, route: &str, body: &[u8], props: BasicProperties) -> Result<(), QueueError> {
        publish::publish_one(&self.shared.publishing, route, body, props, self.shared.confirm_timeout).await
    }

    /// Hands a delivery this consumer could not take back to the broker at
    /// once (requeued, which counts it), instead of leaving it unacked on a
    /// live channel until that closes. If even that fails, the channel
    /// goes, which returns it too.
    async fn give_back(&self, d: &lapin::message::Delivery) {
        let options = lapin::options::BasicRejectOptions { requeue: true };
        let rejected = tokio::time::timeout(self.shared.consuming.timeout, d.acker.reject(options)).await;
        if !matches!(rejected, Ok(Ok(_))) {
            tracing::warn!(queue = %self.queue, "rabbitmq: could not give a delivery back; its channel closes");
        }
    }

    /// The properties of a dead letter, with its metadata.
    fn dead_copy(
        &self,
        h: &Headers,
        original: &BasicProperties,
        count: u32,
        first_received_ms: i64,
        reason: &str,
        now: i64,
    ) -> BasicProperties {
        let mut h = h.clone().without(&[]);
        h.set_text(wire::SOURCE_QUEUE, &self.queue);
        h.set_int(wire::RECEIVE_COUNT, i64::from(count));
        h.set_text(wire::LAST_ERROR, reason);
        h.set_int(wire::FIRST_RECEIVED_AT, first_received_ms);
        h.set_int(wire::LAST_RECEIVED_AT, now);
        h.set_int(wire::DEAD_LETTERED_AT, now);
        h.into_properties(original)
    }

    /// Takes the held delivery a receipt names, if this consumer still holds it.
    fn settle(&self, r: &Receipt) -> Option<Held> {
        let key = parse_receipt(r)?;
        self.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&key)
    }

    async fn ack_original(&self, h: &Held) -> Result<(), QueueError> {
        let ch = self.channels.lock().unwrap_or_else(PoisonError::into_inner).get(&h.generation).cloned();
        let Some(c) = ch.filter(|c| c.status().connected()) else {
            return Ok(()); // its channel is gone: the broker returned it already
        };
        bounded(self.shared.consuming.timeout, async {
            c.basic_ack(h.tag, BasicAckOptions::default())
                .await
                .map_err(|e| queue_error("ack", &self.queue, &e))
        })
        .await
    }

    /// Republishes a held delivery to `route` with `failures` carried, then
    /// acks the original.
    async fn republish(
        &self,
        h: &Held,
        route: &str,
        failures: u32,
        last_error: Option<&str>,
    ) -> Result<(), QueueError> {
        let mut headers = Headers::of(&h.props).without(&[]);
        headers.set_int(wire::FAILURES, i64::from(failures));
        headers.set_int(wire::FIRST_RECEIVED_AT, h.first_received_ms);
        if let Some(e) = last_error {
            headers.set_text(wire::LAST_ERROR, e);
        }
        self.publish(route, &h.body, headers.into_properties(&h.props)).await?;
        self.ack_original(h).await
    }

    async fn dead_letter(&self, h: &Held, reason: &str) -> Result<(), QueueError> {
        let headers = Headers::of(&h.props);
        let props =
            self.dead_copy(&headers, &h.props, h.count, h.first_received_ms, reason, self.shared.now_ms());
        self.publish(&topology::dlq(&self.queue), &h.body, props).await?;
        self.ack_original(h).await
    }

    async fn release(&self, h: &Held, delay: Duration) -> Result<(), QueueError> {
        let route = topology::route_for(&self.queue, delay.min(topology::MAX_DELAY));
        self.republish(h, &route, h.count.saturating_sub(1), None).await
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        // Taken before the task exists, so `close` cannot slip in between.
        let receiving = inner.receiving.clone().read_owned().await;
        run_to_end("rabbitmq: receive", async move {
            let got = inner.receive(max, wait).await;
            drop(receiving);
            got
        })
        .await
    }

    /// Settles run in a task of their own, to their end even when the
    /// caller is dropped: dropped between taking the delivery out of `held`
    /// and acking it, it would stay unacked on a live channel, held by
    /// nobody, until the channel closed.
    async fn ack(&self, d: &Delivery) -> Result<(), QueueError> {
        let (inner, r) = (self.inner.clone(), d.receipt.clone());
        run_to_end("rabbitmq: settle", async move {
            match inner.settle(&r) {
                Some(h) => inner.ack_original(&h).await,
                None => Ok(()),
            }
        })
        .await
    }

    async fn nack(&self, d: &Delivery, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
        let (inner, r, reason) = (self.inner.clone(), d.receipt.clone(), reason.to_owned());
        run_to_end("rabbitmq: settle", async move {
            let Some(h) = inner.settle(&r) else { return Ok(Nacked::Stale) };
            if h.count >= inner.policy.max_receive_count {
                inner.dead_letter(&h, &reason).await?;
                return Ok(Nacked::DeadLettered);
            }
            let route = topology::route_for(&inner.queue, delay.min(topology::MAX_DELAY));
            inner.republish(&h, &route, h.count, Some(&reason)).await?;
            Ok(Nacked::Retried)
        })
        .await
    }

    async fn release(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let (inner, r) = (self.inner.clone(), d.receipt.clone());
        run_to_end("rabbitmq: settle", async move {
            match inner.settle(&r) {
                Some(h) => inner.release(&h, delay).await,
                None => Ok(()),
            }
        })
        .await
    }

    /// Nothing to do: a held message stays held until settled or until its
    /// channel closes (declared in the kit as redelivery on disconnect).
    async fn extend(&self, _d: &Delivery, _timeout: Duration) -> Result<(), QueueError> {
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let (inner, r, reason) = (self.inner.clone(), d.receipt.clone(), reason.to_owned());
        run_to_end("rabbitmq: settle", async move {
            match inner.settle(&r) {
                Some(h) => inner.dead_letter(&h, &reason).await,
                None => Ok(()),
            }
        })
        .await
    }

    /// Waits for a receive in progress (even one whose caller went away),
    /// then releases every held delivery, uncounted, and closes the
    /// channels. If a release fails (the broker is down or blocked), the
    /// rest are not tried one deadline after another: the channels close,
    /// and the broker returns what they held, counted.
    async fn close(&self) -> Result<(), QueueError> {
        let _receiving = self.inner.receiving.write().await;
        let held: Vec<Held> =
            self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, h)| h).collect();
        let mut failed = None;
        for h in &held {
            if let Err(e) = self.inner.release(h, Duration::ZERO).await {
                failed = Some(e);
                break;
            }
        }
        for ch in self.inner.take_channels() {
            close_channel(&ch, self.inner.shared.consuming.timeout, "closed");
        }
        failed.map_or(Ok(()), Err)
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.policy.visibility_timeout
    }
}
