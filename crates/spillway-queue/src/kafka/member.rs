//! The process's group member for one queue: it fetches the source topic
//! and the retry tiers, hands records out one by one to however many
//! consumers the process runs, and commits what they settled.
//!
//! # Guarantees
//!
//! - A record is handed to one consumer at a time, and hidden for the
//!   queue's visibility timeout; a consumer that neither settles nor
//!   extends it in time loses it to the next receive, counted (as the
//!   embedded queue does).
//! - The committed offset of a partition is its lowest unsettled record,
//!   and the commit's metadata says what is settled above it and what was
//!   held ([`super::ledger`]). A receive returns only once the hold is
//!   committed, so a process that dies holding a message gets it counted
//!   by whoever reads the partition next.
//! - A retry or dead letter is settled only after its copy's delivery
//!   report. A crash in between gives a duplicate, never a loss.
//! - A tier record that is not due yet pauses its partition (the records
//!   behind it are due later still); the source topic never waits for it.
//!
//! - The group assigns partitions with `cooperative-sticky`: a member
//!   joining or leaving moves only the partitions that must move, and the
//!   others keep their holds.
//! - A partition this member gives up in a rebalance is committed with its
//!   holds cleared: a hand-over is not a crash, so it is not counted (five
//!   rebalances must not walk a healthy record to the DLQ). A member that
//!   dies, or is dropped while its consumers hold records without a
//!   verdict, leaves those holds in its last commit, and they count.
//!
//! # What it does not guarantee
//!
//! - When the group rebalances, records held from a partition this member
//!   loses are delivered again by the new owner (at least once, uncounted):
//!   the receipts here go stale, and their acks do nothing.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use futures::FutureExt as _;
use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    Offset, TopicPartitionList,
};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{
    ledger::{self, Item, Window},
    queue_error, topics,
    wire::{self, Record},
    Shared,
};
use crate::{clock::ms_time, task::run_to_end, DeadLetterPolicy, Delivery, Nacked, QueueError, Receipt};

/// A topic and partition.
pub(crate) type Tp = (String, i32);

/// More records than this fetched and not handed out pause the fetch.
const MAX_READY: usize = 2_000;
/// How long after an assignment the fetch of an empty partition counts as started.
const STARTING: Duration = Duration::from_millis(500);
/// The fetch resumes once fewer than this are left.
const LOW_READY: usize = MAX_READY / 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Due, waiting to be handed out.
    Ready,
    /// A record that is not due yet; its partition waits behind it.
    Waiting,
    /// Handed out to `owner`, hidden until `deadline`. `settling` while its
    /// retry or dead-letter copy is on the way.
    Held { seq: u64, owner: u64, deadline: Instant, settling: bool },
}

#[derive(Debug)]
struct Entry {
    record: Arc<Record>,
    slot: Slot,
    /// Receives whose consumer went away holding it.
    crashes: u32,
    first_received_ms: Option<i64>,
    last_received_ms: Option<i64>,
}

impl Entry {
    /// The count of a receive now: carried failures, crashes, and this one.
    fn count(&self) -> u32 {
        self.record.failures().saturating_add(self.crashes).saturating_add(1)
    }
}

#[derive(Debug)]
struct Part {
    entries: BTreeMap<i64, Entry>,
    /// One past the last offset fetched.
    end: i64,
    /// What the commit this member started from said.
    window: Window,
    /// Offsets below this are gone (committed before, or purged).
    floor: i64,
    /// Records that are not due, in offset order: the head blocks the rest.
    waiting: VecDeque<i64>,
    paused_due: bool,
}

impl Part {
    fn new(committed: i64, metadata: &str) -> Self {
        Self {
            entries: BTreeMap::new(),
            end: committed,
            window: ledger::decode(committed, metadata),
            floor: committed,
            waiting: VecDeque::new(),
            paused_due: false,
        }
    }

    /// The offset to commit and its metadata.
    fn commit_point(&self) -> (i64, String) {
        self.commit_point_with(true)
    }

    /// The offset to commit and its metadata; with `holds` false, the
    /// records handed out are written as not held (a clean hand-over).
    fn commit_point_with(&self, holds: bool) -> (i64, String) {
        let first_entry = self.entries.keys().next().copied();
        let first_inherited = self.window.unsettled.range(self.end..).next().map(|(o, _)| *o);
        let end = self.end.max(self.window.end).max(self.floor);
        let committed = [first_entry, first_inherited].into_iter().flatten().min().unwrap_or(end);
        let mut items: Vec<Item> = self
            .entries
            .iter()
            .map(|(o, e)| Item {
                offset: *o,
                crashes: e.crashes,
                held: holds && matches!(e.slot, Slot::Held { .. }),
            })
            .chain(self.window.unsettled.range(self.end..).map(|(o, i)| Item {
                offset: *o,
                crashes: i.crashes,
                held: false,
            }))
            .collect();
        items.sort_by_key(|i| i.offset);
        (committed, ledger::encode(committed, end, &items))
    }
}

#[derive(Debug, Default)]
struct State {
    parts: HashMap<Tp, Part>,
    ready: VecDeque<(Tp, i64)>,
    /// Bumped by every change a commit must carry.
    version: u64,
    seq: u64,
    /// Whether the fetch is paused because `ready` is full.
    full: bool,
    /// When the group last assigned this member partitions.
    assigned: Option<std::time::Instant>,
    /// Set when the member is dropped: the partitions it gives up now go
    /// with whatever its consumers still hold, and those holds count.
    leaving: bool,
}

impl State {
    fn commit_list(&self) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), part) in &self.parts {
            let (offset, md) = part.commit_point();
            tpl.add_partition_offset(t, *p, Offset::Offset(offset))?;
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(md);
            }
        }
        Ok(tpl)
    }

    fn next_due_ms(&self) -> Option<i64> {
        self.parts
            .values()
            .filter_map(|p| p.waiting.front().and_then(|o| p.entries.get(o)))
            .filter_map(|e| e.record.due_at())
            .min()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rebalance callbacks: a partition this member gives up is committed,
/// then forgotten. In a rebalance its holds are cleared (a hand-over, not a
/// crash); when the member itself is dropped they stay, and count: its
/// consumers went away without a verdict (a clean stop `close`s them
/// first, which gives everything back uncounted).
pub(crate) struct Ctx {
    state: Arc<Mutex<State>>,
    queue: String,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            lock(&self.state).assigned = Some(std::time::Instant::now());
            tracing::info!(queue = %self.queue, partitions = tpl.count(), "kafka: partitions assigned");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let mut tpl = TopicPartitionList::new();
        {
            let mut st = lock(&self.state);
            let leaving = st.leaving;
            for e in revoked.elements() {
                if let Some(part) = st.parts.remove(&(e.topic().to_owned(), e.partition())) {
                    let (offset, md) = part.commit_point_with(leaving);
                    if tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset)).is_ok() {
                        if let Some(mut el) = tpl.find_partition(e.topic(), e.partition()) {
                            el.set_metadata(md);
                        }
                    }
                }
            }
            st.version += 1;
        }
        if tpl.count() > 0 {
            // The callback runs inside the fetch task's poll: a synchronous
            // commit there would stall one of the runtime's few threads
            // for as long as the coordinator takes.
            let commit = || consumer.commit(&tpl, CommitMode::Sync);
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let done = if multi_thread { tokio::task::block_in_place(commit) } else { commit() };
            if let Err(e) = done {
                tracing::warn!(queue = %self.queue, error = %e, "kafka: commit of revoked partitions failed; their records are delivered again");
            }
        }
        tracing::info!(queue = %self.queue, partitions = revoked.count(), "kafka: partitions revoked");
    }
}

pub(crate) struct Inner {
    queue: String,
    shared: Arc<Shared>,
    policy: DeadLetterPolicy,
    consumer: Arc<StreamConsumer<Ctx>>,
    state: Arc<Mutex<State>>,
    notify: Notify,
    /// The state version last committed; held while a commit is on the way,
    /// so concurrent callers share one commit (group commit), and commits
    /// never land out of order.
    committed: Arc<tokio::sync::Mutex<u64>>,
}

/// The group member of one queue in this process. Dropping it stops the
/// fetch and leaves the group.
pub(crate) struct Member {
    inner: Arc<Inner>,
    fetch: JoinHandle<()>,
    owners: AtomicU64,
}

impl Drop for Member {
    fn drop(&mut self) {
        lock(&self.inner.state).leaving = true;
        self.fetch.abort();
    }
}

fn receipt(tp: &Tp, offset: i64, seq: u64) -> Receipt {
    Receipt(format!("{}|{}|{offset}|{seq}", tp.0, tp.1))
}

fn parse_receipt(r: &Receipt) -> Option<(Tp, i64, u64)> {
    let mut it = r.0.rsplitn(4, '|');
    let seq = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?.to_owned();
    Some(((topic, partition), offset, seq))
}

/// What a settle took from the ledger.
struct Taken {
    tp: Tp,
    offset: i64,
    seq: u64,
    record: Arc<Record>,
    count: u32,
    first_received_ms: Option<i64>,
    last_received_ms: Option<i64>,
}

impl Member {
    pub(crate) fn start(shared: Arc<Shared>, queue: &str) -> Result<Self, QueueError> {
        let cfg = &shared.config;
        let state = Arc::new(Mutex::new(State::default()));
        let ctx = Ctx { state: state.clone(), queue: queue.to_owned() };
        let session = cfg.session_timeout.as_millis().max(6_000);
        let consumer: StreamConsumer<Ctx> = cfg
            .client()
            .set("group.id", cfg.group(queue))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", cfg.fetch_wait.as_millis().to_string())
            .set("session.timeout.ms", session.to_string())
            .set(
                "heartbeat.interval.ms",
                cfg.options.get("heartbeat.interval.ms").cloned().unwrap_or((session / 5).to_string()),
            )
            .set("partition.assignment.strategy", cfg.assignment_strategy())
            .create_with_context(ctx)
            .map_err(|e| queue_error("consumer", queue, &e))?;
        let names = topics::consumed(queue);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(|e| queue_error("subscribe", queue, &e))?;
        let consumer = Arc::new(consumer);
        shared.with_token(consumer.clone())?;
        let policy = shared.spec(queue).dead_letter;
        let inner = Arc::new(Inner {
            queue: queue.to_owned(),
            shared,
            policy,
            consumer,
            state,
            notify: Notify::new(),
            committed: Arc::new(tokio::sync::Mutex::new(0)),
        });
        let fetch = tokio::spawn(inner.clone().fetch_loop());
        Ok(Self { inner, fetch, owners: AtomicU64::new(1) })
    }

    /// Whether the group has given this member its partitions.
    /// and it knows where to fetch each from.
    /// (librdkafka knows a position only once a partition delivered a
    /// record, so an empty partition counts as started a moment after the
    /// assignment).
    pub(crate) fn assigned(&self) -> bool {
        let Some(at) = lock(&self.inner.state).assigned else { return false };
        if at.elapsed() > STARTING {
            return true;
        }
        match self.inner.consumer.position() {
            Ok(tpl) => {
                tpl.count() > 0 && tpl.elements().iter().all(|e| matches!(e.offset(), Offset::Offset(_)))
            }
            Err(_) => false,
        }
    }

    /// How many partitions the group gives this member now.
    #[cfg(test)]
    pub(crate) fn assignment_len(&self) -> usize {
        self.inner.consumer.assignment().map_or(0, |a| a.count())
    }

    /// Whether the group hands partitions over one by one.
    #[cfg(test)]
    pub(crate) fn cooperative(&self) -> bool {
        matches!(self.inner.consumer.rebalance_protocol(), rdkafka::consumer::RebalanceProtocol::Cooperative)
    }

    /// What a commit now would write, per partition this member reads.
    pub(crate) fn commit_points(&self) -> Vec<(Tp, (i64, String))> {
        lock(&self.inner.state).parts.iter().map(|(tp, p)| (tp.clone(), p.commit_point())).collect()
    }

    /// A new consumer's identity, for what it holds.
    pub(crate) fn owner(&self) -> u64 {
        self.owners.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn visibility_timeout(&self) -> Duration {
        self.inner.policy.visibility_timeout
    }

    pub(crate) async fn receive(
        &self,
        owner: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (out, dead, next_expiry) = self.inner.take(owner, max);
            let any_dead = !dead.is_empty();
            // A dead letter that cannot be stored (the DLQ topic gone, say)
            // is held again (it expires and is tried once more); it fails
            // the receive only when nothing else came, so the records taken
            // with it are handed over, not left hidden until they expire.
            let mut failed = None;
            for t in dead {
                let reason = "the consumer went away holding it on its last allowed receive";
                let inner = self.inner.clone();
                if let Err(e) =
                    run_to_end("kafka: settle", async move { inner.dead_letter(t, reason).await }).await
                {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed.filter(|_| out.is_empty()) {
                return Err(e);
            }
            if !out.is_empty() {
                if let Err(e) = self.inner.commit().await {
                    self.inner.give_back(&out);
                    return Err(e);
                }
                return Ok(out);
            }
            if any_dead {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let until = next_expiry.map_or(deadline, |e| e.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    pub(crate) async fn ack_batch(&self, receipts: &[&Receipt]) -> Result<(), QueueError> {
        let mut changed = false;
        {
            let mut st = lock(&self.inner.state);
            for r in receipts {
                let Some((tp, offset, seq)) = parse_receipt(r) else { continue };
                let Some(part) = st.parts.get_mut(&tp) else { continue };
                if matches!(part.entries.get(&offset).map(|e| e.slot), Some(Slot::Held { seq: s, settling: false, .. }) if s == seq)
                {
                    part.entries.remove(&offset);
                    changed = true;
                }
            }
            if changed {
                st.version += 1;
            }
        }
        if changed {
            self.inner.commit().await?;
        }
        Ok(())
    }

    /// A settle runs in a task of its own, to its end even when the caller
    /// is dropped (a shutdown's `select!`): dropped mid-produce, it would
    /// leave the record marked as settling, never to expire, pinning the
    /// partition's committed offset.
    pub(crate) async fn nack(
        &self,
        r: &Receipt,
        delay: Duration,
        reason: &str,
    ) -> Result<Nacked, QueueError> {
        let (inner, r, reason) = (self.inner.clone(), r.clone(), reason.to_owned());
        run_to_end("kafka: settle", async move { inner.nack(&r, delay, &reason).await }).await
    }

    pub(crate) async fn release(&self, r: &Receipt, delay: Duration) -> Result<(), QueueError> {
        let (inner, r) = (self.inner.clone(), r.clone());
        run_to_end("kafka: settle", async move { inner.release(&r, delay).await }).await
    }

    pub(crate) fn extend(&self, r: &Receipt, timeout: Duration) {
        let mut st = lock(&self.inner.state);
        let Some((tp, offset, seq)) = parse_receipt(r) else { return };
        if let Some(e) = st.parts.get_mut(&tp).and_then(|p| p.entries.get_mut(&offset)) {
            if let Slot::Held { seq: s, deadline, .. } = &mut e.slot {
                if *s == seq {
                    *deadline = Instant::now() + timeout;
                }
            }
        }
    }

    pub(crate) async fn dead_letter(&self, r: &Receipt, reason: &str) -> Result<(), QueueError> {
        let (inner, r, reason) = (self.inner.clone(), r.clone(), reason.to_owned());
        run_to_end("kafka: settle", async move {
            let Some(t) = inner.start_settle(&r) else { return Ok(()) };
            inner.dead_letter(t, &reason).await
        })
        .await
    }

    /// Gives back everything `owner` holds, uncounted.
    pub(crate) async fn close(&self, owner: u64) -> Result<(), QueueError> {
        let changed = {
            let mut st = lock(&self.inner.state);
            let mut back: Vec<(Tp, i64)> = Vec::new();
            for (tp, part) in &mut st.parts {
                for (o, e) in &mut part.entries {
                    if matches!(e.slot, Slot::Held { owner: w, settling: false, .. } if w == owner) {
                        e.slot = Slot::Ready;
                        back.push((tp.clone(), *o));
                    }
                }
            }
            back.sort();
            for b in back.iter().rev() {
                st.ready.push_front(b.clone());
            }
            if !back.is_empty() {
                st.version += 1;
            }
            !back.is_empty()
        };
        if changed {
            self.inner.notify.notify_waiters();
            self.inner.commit().await?;
        }
        Ok(())
    }

    /// Drops everything below `ends` (per partition) and commits there.
    pub(crate) async fn purge(&self, ends: Vec<(String, i32, i64)>) -> Result<(), QueueError> {
        let mut resume = TopicPartitionList::new();
        let tpl = {
            let mut st = lock(&self.inner.state);
            let mut tpl = TopicPartitionList::new();
            for (t, p, high) in &ends {
                let tp = (t.clone(), *p);
                let (offset, md) = match st.parts.get_mut(&tp) {
                    Some(part) => {
                        part.entries.retain(|o, _| *o >= *high);
                        part.waiting.retain(|o| *o >= *high);
                        part.window = Window { end: *high, unsettled: BTreeMap::new() };
                        part.floor = part.floor.max(*high);
                        part.end = part.end.max(*high);
                        if part.paused_due && part.waiting.is_empty() {
                            part.paused_due = false;
                            resume.add_partition(t, *p);
                        }
                        part.commit_point()
                    }
                    None => (*high, String::new()),
                };
                tpl.add_partition_offset(t, *p, Offset::Offset(offset))
                    .map_err(|e| queue_error("purge", &self.inner.queue, &e))?;
                if let Some(mut e) = tpl.find_partition(t, *p) {
                    e.set_metadata(md);
                }
            }
            st.version += 1;
            tpl
        };
        if resume.count() > 0 && !lock(&self.inner.state).full {
            let _ = self.inner.consumer.resume(&resume);
        }
        let consumer = self.inner.consumer.clone();
        let via_member = Shared::blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await?;
        if let Err(e) = via_member {
            // Not in the group yet: commit as a plain client of the group.
            tracing::debug!(error = %e, "kafka: purge commit through the member failed; committing as the group");
            let offsets = ends.into_iter().map(|(t, p, o)| (t, p, o, String::new())).collect();
            self.inner
                .shared
                .commit_as(&self.inner.queue, &self.inner.shared.config.group(&self.inner.queue), offsets)
                .await?;
        }
        Ok(())
    }
}

impl Inner {
    async fn nack(&self, r: &Receipt, delay: Duration, reason: &str) -> Result<Nacked, QueueError> {
        let Some(t) = self.start_settle(r) else { return Ok(Nacked::Stale) };
        if t.count >= self.policy.max_receive_count {
            self.dead_letter(t, reason).await?;
            return Ok(Nacked::DeadLettered);
        }
        let failures = t.count;
        self.retry(t, delay, failures, Some(reason)).await?;
        Ok(Nacked::Retried)
    }

    async fn release(&self, r: &Receipt, delay: Duration) -> Result<(), QueueError> {
        if delay.is_zero() {
            let mut st = lock(&self.state);
            let Some((tp, offset, seq)) = parse_receipt(r) else { return Ok(()) };
            let Some(e) = st.parts.get_mut(&tp).and_then(|p| p.entries.get_mut(&offset)) else {
                return Ok(());
            };
            if matches!(e.slot, Slot::Held { seq: s, settling: false, .. } if s == seq) {
                e.slot = Slot::Ready;
                st.ready.push_front((tp, offset));
                st.version += 1;
                drop(st);
                self.notify.notify_waiters();
            }
            return Ok(());
        }
        let Some(t) = self.start_settle(r) else { return Ok(()) };
        // Uncounted: the failures carried so far, and the crashes.
        let failures = t.count.saturating_sub(1);
        self.retry(t, delay, failures, None).await
    }

    /// Takes up to `max` records for `owner`: first the holds that expired
    /// (counted), then the ready ones. Records whose count is past the limit
    /// come back in the second list, to be dead-lettered.
    fn take(&self, owner: u64, max: usize) -> (Vec<Delivery>, Vec<Taken>, Option<Instant>) {
        let now = Instant::now();
        let now_ms = self.shared.now_ms();
        let mut st = lock(&self.state);
        let st = &mut *st;
        let mut expired: Vec<(Tp, i64)> = Vec::new();
        let mut next_expiry: Option<Instant> = None;
        for (tp, part) in &mut st.parts {
            for (o, e) in &mut part.entries {
                if let Slot::Held { deadline, settling: false, .. } = e.slot {
                    if deadline <= now {
                        e.crashes = e.crashes.saturating_add(1);
                        e.slot = Slot::Ready;
                        expired.push((tp.clone(), *o));
                    } else {
                        next_expiry = Some(next_expiry.map_or(deadline, |n| n.min(deadline)));
                    }
                }
            }
        }
        expired.sort();
        for x in expired.iter().rev() {
            st.ready.push_front(x.clone());
        }
        // Keys another consumer holds: their records wait, in place, so a
        // key is handled by one consumer at a time and in order (this one
        // may take several of a key at once; it handles a batch in order).
        let busy: HashSet<Vec<u8>> = st
            .parts
            .values()
            .flat_map(|p| p.entries.values())
            .filter(|e| matches!(e.slot, Slot::Held { owner: o, .. } if o != owner))
            .filter_map(|e| e.record.key.clone())
            .collect();
        let mut skipped = Vec::new();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        while out.len() < max {
            let Some((tp, offset)) = st.ready.pop_front() else { break };
            let Some(e) = st.parts.get_mut(&tp).and_then(|p| p.entries.get_mut(&offset)) else { continue };
            if e.slot != Slot::Ready {
                continue;
            }
            if e.record.key.as_ref().is_some_and(|k| busy.contains(k)) {
                skipped.push((tp, offset));
                continue;
            }
            st.seq += 1;
            let seq = st.seq;
            let count = e.count();
            e.first_received_ms.get_or_insert_with(|| e.record.first_received_at().unwrap_or(now_ms));
            if count > self.policy.max_receive_count {
                e.slot =
                    Slot::Held { seq, owner, deadline: now + self.policy.visibility_timeout, settling: true };
                dead.push(Taken {
                    tp,
                    offset,
                    seq,
                    record: e.record.clone(),
                    count: count - 1,
                    first_received_ms: e.first_received_ms,
                    last_received_ms: e.last_received_ms,
                });
                continue;
            }
            e.last_received_ms = Some(now_ms);
            let deadline = now + self.policy.visibility_timeout;
            e.slot = Slot::Held { seq, owner, deadline, settling: false };
            next_expiry = Some(next_expiry.map_or(deadline, |n| n.min(deadline)));
            out.push(Delivery {
                queue: self.queue.clone(),
                message: e.record.received(),
                receive_count: count,
                first_received_at: ms_time(e.first_received_ms.unwrap_or(now_ms)),
                receipt: receipt(&tp, offset, seq),
            });
        }
        for x in skipped.into_iter().rev() {
            st.ready.push_front(x);
        }
        if !out.is_empty() || !dead.is_empty() || !expired.is_empty() {
            st.version += 1;
        }
        if st.full && st.ready.len() < LOW_READY {
            st.full = false;
            let due_paused: Vec<Tp> =
                st.parts.iter().filter(|(_, p)| p.paused_due).map(|(tp, _)| tp.clone()).collect();
            self.set_paused(false, &due_paused);
        }
        (out, dead, next_expiry)
    }

    /// Pauses or resumes every assigned partition but those in `except`.
    fn set_paused(&self, pause: bool, except: &[Tp]) {
        let Ok(assigned) = self.consumer.assignment() else { return };
        let mut tpl = TopicPartitionList::new();
        for e in assigned.elements() {
            let tp = (e.topic().to_owned(), e.partition());
            if !except.contains(&tp) {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        let r = if pause { self.consumer.pause(&tpl) } else { self.consumer.resume(&tpl) };
        if let Err(e) = r {
            tracing::warn!(queue = %self.queue, error = %e, pause, "kafka: pause/resume failed");
        }
    }

    /// Puts records a failed receive took back, uncounted.
    fn give_back(&self, out: &[Delivery]) {
        let mut st = lock(&self.state);
        for d in out.iter().rev() {
            let Some((tp, offset, seq)) = parse_receipt(&d.receipt) else { continue };
            if let Some(e) = st.parts.get_mut(&tp).and_then(|p| p.entries.get_mut(&offset)) {
                if matches!(e.slot, Slot::Held { seq: s, .. } if s == seq) {
                    e.slot = Slot::Ready;
                    st.ready.push_front((tp, offset));
                }
            }
        }
        st.version += 1;
    }

    /// Marks a held record as settling; `None` for a stale receipt.
    fn start_settle(&self, r: &Receipt) -> Option<Taken> {
        let (tp, offset, seq) = parse_receipt(r)?;
        let mut st = lock(&self.state);
        let e = st.parts.get_mut(&tp)?.entries.get_mut(&offset)?;
        match &mut e.slot {
            Slot::Held { seq: s, settling, .. } if *s == seq && !*settling => *settling = true,
            _ => return None,
        }
        Some(Taken {
            tp,
            offset,
            seq,
            record: e.record.clone(),
            count: e.count(),
            first_received_ms: e.first_received_ms,
            last_received_ms: e.last_received_ms,
        })
    }

    /// A settle whose copy failed: held again, as before.
    fn abort_settle(&self, t: &Taken) {
        let mut st = lock(&self.state);
        if let Some(e) = st.parts.get_mut(&t.tp).and_then(|p| p.entries.get_mut(&t.offset)) {
            if let Slot::Held { seq, settling, .. } = &mut e.slot {
                if *seq == t.seq {
                    *settling = false;
                }
            }
        }
    }

    /// The copy is stored: the original is settled.
    async fn finish_settle(&self, t: &Taken) -> Result<(), QueueError> {
        {
            let mut st = lock(&self.state);
            if let Some(part) = st.parts.get_mut(&t.tp) {
                if matches!(part.entries.get(&t.offset).map(|e| e.slot), Some(Slot::Held { seq, .. }) if seq == t.seq)
                {
                    part.entries.remove(&t.offset);
                }
            }
            st.version += 1;
        }
        self.commit().await
    }

    async fn retry(
        &self,
        t: Taken,
        delay: Duration,
        failures: u32,
        reason: Option<&str>,
    ) -> Result<(), QueueError> {
        let now = self.shared.now_ms();
        let mut set = vec![(wire::FAILURES, failures.to_string())];
        if let Some(first) = t.first_received_ms {
            set.push((wire::FIRST_RECEIVED_AT, first.to_string()));
        }
        if let Some(reason) = reason {
            set.push((wire::LAST_ERROR, reason.to_owned()));
        }
        if !delay.is_zero() {
            let due = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            set.push((wire::DUE_AT, due.to_string()));
        }
        let headers = t.record.headers_with(&[wire::DUE_AT], &set);
        let topic = topics::route_for(&self.queue, delay.min(topics::MAX_DELAY));
        let sent =
            self.shared.produce(&self.queue, &topic, t.record.key.as_deref(), &t.record.body, headers).await;
        if let Err(e) = sent {
            self.abort_settle(&t);
            return Err(e);
        }
        self.finish_settle(&t).await
    }

    async fn dead_letter(&self, t: Taken, reason: &str) -> Result<(), QueueError> {
        let now = self.shared.now_ms();
        let mut set = vec![
            (wire::SOURCE_QUEUE, self.queue.clone()),
            (wire::RECEIVE_COUNT, t.count.to_string()),
            (wire::FAILURES, t.count.to_string()),
            (wire::LAST_ERROR, reason.to_owned()),
            (wire::DEAD_LETTERED_AT, now.to_string()),
        ];
        if let Some(first) = t.first_received_ms {
            set.push((wire::FIRST_RECEIVED_AT, first.to_string()));
        }
        if let Some(last) = t.last_received_ms {
            set.push((wire::LAST_RECEIVED_AT, last.to_string()));
        }
        let headers = t.record.headers_with(&[wire::DUE_AT], &set);
        let sent = self
            .shared
            .produce(&self.queue, &topics::dlq(&self.queue), t.record.key.as_deref(), &t.record.body, headers)
            .await;
        if let Err(e) = sent {
            self.abort_settle(&t);
            return Err(e);
        }
        tracing::debug!(queue = %self.queue, id = %t.record.id(), count = t.count, "kafka: dead-lettered");
        self.finish_settle(&t).await
    }

    /// Commits the ledger as it stands, unless a commit since the last
    /// change already did.
    ///
    /// A synchronous commit has no timeout of its own: with the coordinator
    /// unreachable it waits for as long as that lasts. The caller waits at
    /// most `send_timeout` (then `Timeout`); the commit itself goes on in
    /// the background holding the lock, so the next one starts only after
    /// it and no older commit lands over a newer one.
    ///
    /// # Cancel safety
    ///
    /// Safe: dropping the future leaves the commit running to its end.
    async fn commit(&self) -> Result<(), QueueError> {
        let after = self.shared.config.send_timeout;
        let run = async {
            let want = lock(&self.state).version;
            let mut done = self.committed.clone().lock_owned().await;
            if *done >= want {
                return Ok(());
            }
            let (version, tpl) = {
                let st = lock(&self.state);
                (st.version, st.commit_list().map_err(|e| queue_error("commit", &self.queue, &e))?)
            };
            let consumer = self.consumer.clone();
            tokio::task::spawn_blocking(move || {
                if tpl.count() > 0 {
                    consumer.commit(&tpl, CommitMode::Sync)?;
                }
                *done = version;
                Ok(())
            })
            .await
            .map_err(|e| QueueError::unavailable("kafka: commit task", e))?
            .map_err(|e| queue_error("commit", &self.queue, &e))
        };
        tokio::time::timeout(after, run).await.map_err(|_| QueueError::Timeout { after })?
    }

    async fn fetch_loop(self: Arc<Self>) {
        let mut last_warn: Option<Instant> = None;
        // How long to wait after a record was put back (its partition's
        // committed offset could not be read), doubling while it goes on.
        let mut put_back_wait = Duration::from_millis(100);
        loop {
            let next_due = lock(&self.state).next_due_ms();
            let sleep = next_due.map(|due| {
                let wait = u64::try_from(due - self.shared.now_ms()).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait)
            });
            tokio::select! {
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let r = Record::of(&m);
                        drop(m);
                        let mut put_back = !self.accept(r).await;
                        // Take what else is already here before waking the
                        // receivers, so a receive gets a batch, not one.
                        for _ in 0..MAX_READY {
                            if put_back {
                                break;
                            }
                            match self.consumer.recv().now_or_never() {
                                Some(Ok(m)) => {
                                    let r = Record::of(&m);
                                    drop(m);
                                    put_back = !self.accept(r).await;
                                }
                                _ => break,
                            }
                        }
                        self.notify.notify_waiters();
                        if put_back {
                            tokio::time::sleep(put_back_wait).await;
                            put_back_wait = (put_back_wait * 2).min(Duration::from_secs(5));
                        } else {
                            put_back_wait = Duration::from_millis(100);
                        }
                    }
                    Err(e) => {
                        if last_warn.is_none_or(|w| w.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(queue = %self.queue, error = %e, "kafka: fetch failed; retrying");
                            last_warn = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = async { match sleep { Some(s) => tokio::time::sleep_until(s).await, None => std::future::pending().await } } => {
                    self.release_due();
                }
            }
        }
    }

    /// Reads the committed offset of a partition seen for the first time,
    /// one try bounded by `send_timeout`.
    ///
    /// If it fails, the record that asked is put back: the partition seeks
    /// to it, so it is fetched again and the read tried again then. `None`
    /// says so. Meanwhile the fetch goes on for every other partition — a
    /// group coordinator that does not answer for one partition must not
    /// stop the records and due retries of all the others (this call runs
    /// on the fetch loop). Only if the seek fails too is the read retried
    /// here until it succeeds: dropping the record without the seek would
    /// let the partition's commit pass over it.
    async fn init_part(&self, tp: &Tp, first_offset: i64) -> Option<Part> {
        let mut backoff = Duration::from_millis(100);
        let mut put_back = false;
        loop {
            match self.read_committed(tp).await {
                Ok(Some((Offset::Offset(o), md))) => return Some(Part::new(o, &md)),
                Ok(_) => return Some(Part::new(first_offset, "")),
                Err(e) if !put_back => {
                    tracing::warn!(queue = %self.queue, topic = %tp.0, partition = tp.1, error = %e,
                        "kafka: reading the committed offset failed; the partition will fetch the record again");
                    match self.seek(tp, first_offset).await {
                        Ok(()) => return None,
                        Err(e) => {
                            tracing::warn!(queue = %self.queue, error = %e, "kafka: seeking back failed; reading the committed offset again");
                            put_back = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "kafka: reading the committed offset failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The partition's committed offset and its metadata, as the group
    /// coordinator has them; `None` when the group has none yet.
    async fn read_committed(&self, tp: &Tp) -> Result<Option<(Offset, String)>, QueueError> {
        let timeout = self.shared.config.send_timeout;
        // The member's own client: it already knows the group's coordinator.
        let consumer = self.consumer.clone();
        let (t, p) = tp.clone();
        Shared::blocking(move || {
            if crate::fault::hit("kafka.committed", || format!("{t}/{p}")) {
                return Err(KafkaError::OffsetFetch(RDKafkaErrorCode::CoordinatorNotAvailable));
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&t, p);
            let got = consumer.committed_offsets(tpl, timeout)?;
            Ok(super::committed::read(&got).into_iter().next().map(|c| (c.offset, c.metadata)))
        })
        .await
        .and_then(|r| r.map_err(|e| queue_error("committed offsets", &self.queue, &e)))
    }

    /// Makes the partition fetch from `offset` again; what was fetched past
    /// it and not yet taken is discarded by librdkafka.
    async fn seek(&self, tp: &Tp, offset: i64) -> Result<(), QueueError> {
        let timeout = self.shared.config.send_timeout;
        let consumer = self.consumer.clone();
        let (t, p) = tp.clone();
        Shared::blocking(move || consumer.seek(&t, p, Offset::Offset(offset), timeout))
            .await
            .and_then(|r| r.map_err(|e| queue_error("seek", &self.queue, &e)))
    }

    /// Takes a fetched record in. `false` if it was put back instead (see
    /// [`Self::init_part`]): the fetch loop then waits a little.
    async fn accept(&self, r: Record) -> bool {
        let tp: Tp = (r.topic.clone(), r.partition);
        let known = lock(&self.state).parts.contains_key(&tp);
        if !known {
            let Some(part) = self.init_part(&tp, r.offset).await else { return false };
            lock(&self.state).parts.entry(tp.clone()).or_insert(part);
        }
        let now_ms = self.shared.now_ms();
        let mut pause_tp = false;
        let mut pause_all = false;
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let Some(part) = st.parts.get_mut(&tp) else { return true };
            if r.offset < part.floor || r.offset < part.end || part.window.settled(r.offset) {
                part.end = part.end.max(r.offset + 1);
                return true;
            }
            part.end = r.offset + 1;
            let crashes = part.window.unsettled.get(&r.offset).map_or(0, |i| i.crashes);
            let not_due = r.due_at().is_some_and(|due| due > now_ms);
            let offset = r.offset;
            let slot = if not_due || !part.waiting.is_empty() {
                part.waiting.push_back(offset);
                if !part.paused_due {
                    part.paused_due = true;
                    pause_tp = !st.full;
                }
                Slot::Waiting
            } else {
                st.ready.push_back((tp.clone(), offset));
                Slot::Ready
            };
            part.entries.insert(
                offset,
                Entry { record: Arc::new(r), slot, crashes, first_received_ms: None, last_received_ms: None },
            );
            st.version += 1;
            if !st.full && st.ready.len() >= MAX_READY {
                st.full = true;
                pause_all = true;
            }
        }
        if pause_tp {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            let _ = self.consumer.pause(&tpl);
        }
        if pause_all {
            self.set_paused(true, &[]);
        }
        true
    }

    /// Moves the records that fell due to the ready list.
    fn release_due(&self) {
        let now_ms = self.shared.now_ms();
        let mut resume = TopicPartitionList::new();
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            for (tp, part) in &mut st.parts {
                while let Some(&o) = part.waiting.front() {
                    let Some(e) = part.entries.get_mut(&o) else {
                        part.waiting.pop_front();
                        continue;
                    };
                    if e.record.due_at().is_some_and(|due| due > now_ms) {
                        break;
                    }
                    part.waiting.pop_front();
                    if e.slot == Slot::Waiting {
                        e.slot = Slot::Ready;
                        st.ready.push_back((tp.clone(), o));
                    }
                }
                if part.waiting.is_empty() && part.paused_due {
                    part.paused_due = false;
                    if !st.full {
                        resume.add_partition(&tp.0, tp.1);
                    }
                }
            }
        }
        if resume.count() > 0 {
            let _ = self.consumer.resume(&resume);
        }
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_with_dots_and_dashes_in_the_topic() {
        let tp: Tp = ("orders.retry.1000".to_owned(), 3);
        let r = receipt(&tp, 42, 7);
        assert_eq!(parse_receipt(&r), Some((tp, 42, 7)));
        assert_eq!(parse_receipt(&Receipt("garbage".into())), None);
    }
}
