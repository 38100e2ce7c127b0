//! Every queue operation as a plain function over one connection. They run
//! inside the writer's transaction, so each sees and leaves a consistent state.
//!
//! Times are milliseconds since the Unix epoch, read by the caller from the
//! backend's [`Clock`](crate::Clock) and passed in as `now`: nothing here
//! reads a clock itself. A receipt is the message's
//! `seq` and the generation of the receive (`receipt_gen`), so a receipt from
//! an earlier receive of the same message no longer matches and its ack or
//! nack does nothing.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use crate::{
    DeadLetter, Delivery, Nacked, OutgoingMessage, PurgeTarget, QueueError, QueueSpec, QueueStats, Receipt,
    ReceivedMessage,
};

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> QueueError {
    move |e| QueueError::unavailable(format!("embedded queue: {what}"), e)
}

/// Which delivery an ack, nack or release is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handle {
    pub(crate) seq: i64,
    pub(crate) receipt: i64,
}

impl Handle {
    pub(crate) fn receipt(self) -> Receipt {
        Receipt(format!("{}.{}", self.seq, self.receipt))
    }

    pub(crate) fn parse(r: &Receipt) -> Result<Self, QueueError> {
        let bad = || QueueError::Invalid(format!("not an embedded-queue receipt: {:?}", r.0));
        let (seq, receipt) = r.0.split_once('.').ok_or_else(bad)?;
        Ok(Self { seq: seq.parse().map_err(|_| bad())?, receipt: receipt.parse().map_err(|_| bad())? })
    }
}

/// The settings of a queue that receives need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) max_receive_count: u32,
    pub(crate) visibility_timeout_ms: i64,
    pub(crate) max_message_bytes: usize,
}

pub(crate) fn ensure(conn: &Connection, spec: &QueueSpec) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO queues (name, max_receive_count, visibility_timeout_ms, max_message_bytes)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET max_receive_count = ?2, visibility_timeout_ms = ?3,
                                         max_message_bytes = ?4",
    )
    .and_then(|mut st| {
        st.execute(params![
            spec.name,
            spec.dead_letter.max_receive_count,
            ms(spec.dead_letter.visibility_timeout),
            i64::try_from(spec.max_message_bytes).unwrap_or(i64::MAX)
        ])
    })
    .map_err(sql("ensure"))?;
    Ok(())
}

impl Policy {
    /// Whether `spec` would leave this queue as it is.
    pub(crate) fn matches(&self, spec: &QueueSpec) -> bool {
        self.max_receive_count == spec.dead_letter.max_receive_count
            && self.visibility_timeout_ms == ms(spec.dead_letter.visibility_timeout)
            && self.max_message_bytes == spec.max_message_bytes
    }
}

pub(crate) fn policy(conn: &Connection, queue: &str) -> Result<Policy, QueueError> {
    conn.prepare_cached(
        "SELECT max_receive_count, visibility_timeout_ms, max_message_bytes FROM queues WHERE name = ?1",
    )
    .and_then(|mut st| {
        st.query_row([queue], |r| {
            Ok(Policy {
                max_receive_count: r.get(0)?,
                visibility_timeout_ms: r.get(1)?,
                max_message_bytes: usize::try_from(r.get::<_, i64>(2)?).unwrap_or(usize::MAX),
            })
        })
        .optional()
    })
    .map_err(sql("read queue policy"))?
    .ok_or_else(|| QueueError::NotFound(queue.to_owned()))
}

/// Inserts the messages that fit. Oversized ones were filtered by the caller.
///
/// A batch without ordering keys (the gateway's usual batch) goes in as
/// multi-row `INSERT`s of [`ROWS_PER_INSERT`] rows: one statement's fixed
/// work (starting the program, `AUTOINCREMENT`'s read and write-back of
/// `sqlite_sequence`, the statement's end) is then paid per chunk, not per
/// message. Rows of one `VALUES` list go in in their order, so `seq` follows
/// the batch as before. A batch with a key goes row by row: whether each
/// message is blocked depends on the rows before it.
pub(crate) fn send(
    conn: &Connection,
    queue: &str,
    msgs: &[OutgoingMessage],
    now: i64,
) -> Result<(), QueueError> {
    let inserted = if msgs.iter().any(|m| m.ordering_key.is_some()) {
        send_each(conn, queue, msgs, now)?
    } else {
        send_keyless(conn, queue, msgs, now)?
    };
    count(conn, queue, inserted, 0)
}

/// Row by row, each message's `blocked` read after the rows before it.
fn send_each(conn: &Connection, queue: &str, msgs: &[OutgoingMessage], now: i64) -> Result<i64, QueueError> {
    let mut st = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
                 (queue, id, body, attributes, ordering_key, dedup_key, enqueued_at, visible_at, blocked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(sql("prepare send"))?;
    let mut inserted = 0i64;
    let mut attributes = AttributesJson::default();
    for m in msgs {
        // Asked only for a message with a key: the keyless ones pay nothing.
        let blocked = match &m.ordering_key {
            Some(key) => key_has_live(conn, queue, key)?,
            None => false,
        };
        inserted += st
            .execute(params![
                queue,
                m.id,
                m.body.as_ref(),
                attributes.of(m)?,
                m.ordering_key,
                m.dedup_key,
                now,
                now.saturating_add(ms(m.delay)),
                blocked
            ])
            .map_err(sql("send"))? as i64;
    }
    Ok(inserted)
}

/// Rows per multi-row `INSERT`, largest first: a batch is cut greedily into
/// chunks of these sizes, so at most a few statements of each size run, and
/// the cached statements stay few.
const ROWS_PER_INSERT: [usize; 4] = [64, 16, 4, 1];

/// The multi-row `INSERT` for `rows` keyless messages: `?1` is the queue and
/// `?2` the time, shared by every row; each row then binds its id, body,
/// attributes, dedup key and visible time.
fn keyless_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR IGNORE INTO messages (queue, enqueued_at, id, body, attributes, dedup_key, visible_at) VALUES ",
    );
    for r in 0..rows {
        let p = 3 + r * KEYLESS_ROW_PARAMS;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(?1, ?2, ?{}, ?{}, ?{}, ?{}, ?{})", p, p + 1, p + 2, p + 3, p + 4));
    }
    sql
}

/// Parameters each row of [`keyless_insert_sql`] binds.
const KEYLESS_ROW_PARAMS: usize = 5;

/// The statements of [`ROWS_PER_INSERT`], built once: the statement cache
/// is keyed by the SQL text, so it must not be rebuilt for every batch.
fn keyless_inserts() -> &'static [String; ROWS_PER_INSERT.len()] {
    static SQL: std::sync::OnceLock<[String; ROWS_PER_INSERT.len()]> = std::sync::OnceLock::new();
    SQL.get_or_init(|| ROWS_PER_INSERT.map(keyless_insert_sql))
}

fn send_keyless(
    conn: &Connection,
    queue: &str,
    msgs: &[OutgoingMessage],
    now: i64,
) -> Result<i64, QueueError> {
    let mut inserted = 0i64;
    let mut attributes = AttributesJson::default();
    let mut rest = msgs;
    for (size, text) in ROWS_PER_INSERT.iter().zip(keyless_inserts()) {
        if rest.len() < *size {
            continue;
        }
        // Looked up once per size: the cache hashes the whole SQL text.
        let mut st = conn.prepare_cached(text).map_err(sql("prepare send"))?;
        while rest.len() >= *size {
            let (chunk, tail) = rest.split_at(*size);
            rest = tail;
            st.raw_bind_parameter(1, queue).map_err(sql("send"))?;
            st.raw_bind_parameter(2, now).map_err(sql("send"))?;
            for (r, m) in chunk.iter().enumerate() {
                let p = 3 + r * KEYLESS_ROW_PARAMS;
                let attributes = attributes.of(m)?;
                st.raw_bind_parameter(p, m.id.as_str())
                    .and_then(|()| st.raw_bind_parameter(p + 1, m.body.as_ref()))
                    .and_then(|()| st.raw_bind_parameter(p + 2, attributes))
                    .and_then(|()| st.raw_bind_parameter(p + 3, m.dedup_key.as_deref()))
                    .and_then(|()| st.raw_bind_parameter(p + 4, now.saturating_add(ms(m.delay))))
                    .map_err(sql("send"))?;
            }
            inserted += st.raw_execute().map_err(sql("send"))? as i64;
        }
    }
    Ok(inserted)
}

/// The attributes' JSON of a batch's messages, written once for a run of
/// messages with equal attributes: a gateway batch's messages usually carry
/// the same ones (their route's name and format), and serializing a map
/// cost about 860 instructions a message against about 60 for comparing
/// it with the previous one (`docs/benchmarks.md`, seventh session).
#[derive(Default)]
struct AttributesJson<'m> {
    last: Option<(&'m BTreeMap<String, String>, String)>,
}

impl<'m> AttributesJson<'m> {
    fn of(&mut self, m: &'m OutgoingMessage) -> Result<&str, QueueError> {
        let json = match self.last.take() {
            Some((attributes, json)) if *attributes == m.attributes => json,
            _ => serde_json::to_string(&m.attributes)
                .map_err(|e| QueueError::Invalid(format!("attributes: {e}")))?,
        };
        let (_, json) = self.last.insert((&m.attributes, json));
        Ok(json)
    }
}

/// Whether `key` has a live message in `queue`: one probe of `messages_group`.
fn key_has_live(conn: &Connection, queue: &str, key: &str) -> Result<bool, QueueError> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND ordering_key = ?2 AND dead_at IS NULL)",
    )
    .and_then(|mut st| st.query_row(params![queue, key], |r| r.get(0)))
    .map_err(sql("look up a key"))
}

/// Keeps the queue's `live` and `dead` counters in step with the rows, in
/// the same transaction as the change itself, so `stats` reads two numbers
/// instead of scanning a backlog.
fn count(conn: &Connection, queue: &str, live: i64, dead: i64) -> Result<(), QueueError> {
    if live == 0 && dead == 0 {
        return Ok(());
    }
    conn.prepare_cached("UPDATE queues SET live = live + ?2, dead = dead + ?3 WHERE name = ?1")
        .and_then(|mut st| st.execute(params![queue, live, dead]))
        .map_err(sql("count"))?;
    Ok(())
}

/// The result of one receive attempt: what was taken, and when the next
/// hidden message becomes visible (so a long poll knows how long to sleep).
pub(crate) struct Received {
    pub(crate) deliveries: Vec<(Handle, Delivery)>,
    pub(crate) next_visible_at: Option<i64>,
}

/// Takes up to `max` visible messages. Only the head of each ordering-key
/// group is a candidate (the others are `blocked`), so a group is delivered
/// one message at a time, in send order. A candidate that already used up its
/// receives is dead-lettered instead (its last receive timed out), and the
/// next message of its key takes its place.
///
/// The cost follows what is taken, not the backlog: the ready index leads
/// with `blocked`, so the walk never meets a message that waits behind its
/// key's head.
pub(crate) fn receive(conn: &Connection, queue: &str, max: usize, now: i64) -> Result<Received, QueueError> {
    let policy = policy(conn, queue)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut deliveries = Vec::new();
    let mut select = conn
        .prepare_cached(
            "SELECT seq, id, body, attributes, ordering_key, enqueued_at, receive_count, first_received_at,
                    receipt_gen
             FROM messages
             WHERE queue = ?1 AND dead_at IS NULL AND blocked = 0 AND visible_at <= ?2
             ORDER BY visible_at, seq
             LIMIT ?3",
        )
        .map_err(sql("prepare receive"))?;
    let mut take = conn
        .prepare_cached(
            "UPDATE messages
             SET receive_count = receive_count + 1, receipt_gen = receipt_gen + 1, receipt = receipt_gen + 1,
                 first_received_at = coalesce(first_received_at, ?2), last_received_at = ?2,
                 visible_at = ?3
             WHERE seq = ?1",
        )
        .map_err(sql("prepare take"))?;
    // Dead-lettering expired candidates frees room, so look again a few times.
    for _ in 0..4 {
        let want = limit - i64::try_from(deliveries.len()).unwrap_or(0);
        if want <= 0 {
            break;
        }
        let rows: Vec<Candidate> = select
            .query_map(params![queue, now, want], Candidate::from_row)
            .and_then(Iterator::collect)
            .map_err(sql("receive"))?;
        let mut expired = 0;
        for c in rows {
            if c.receive_count >= policy.max_receive_count {
                let reason = format!("visibility timeout expired on receive {}", c.receive_count);
                kill(conn, queue, c.seq, now, Some(&reason), true)?;
                expired += 1;
                continue;
            }
            take.execute(params![c.seq, now, now.saturating_add(policy.visibility_timeout_ms)])
                .map_err(sql("take"))?;
            let handle = Handle { seq: c.seq, receipt: c.receipt_gen + 1 };
            deliveries.push((handle, c.into_delivery(queue, handle, now)));
        }
        // Dead-lettering a head unblocks the next message of its key, so
        // look again even when this look found fewer than it wanted.
        if expired == 0 {
            break;
        }
    }
    let next_visible_at = if deliveries.is_empty() { next_visible(conn, queue, now)? } else { None };
    Ok(Received { deliveries, next_visible_at })
}

fn next_visible(conn: &Connection, queue: &str, now: i64) -> Result<Option<i64>, QueueError> {
    conn.prepare_cached(
        "SELECT min(visible_at) FROM messages
         WHERE queue = ?1 AND dead_at IS NULL AND blocked = 0 AND visible_at > ?2",
    )
    .and_then(|mut st| st.query_row(params![queue, now], |r| r.get(0)))
    .map_err(sql("next visible"))
}

struct Candidate {
    seq: i64,
    id: String,
    body: Vec<u8>,
    attributes: String,
    ordering_key: Option<String>,
    enqueued_at: i64,
    receive_count: u32,
    first_received_at: Option<i64>,
    receipt_gen: i64,
}

impl Candidate {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: r.get(0)?,
            id: r.get(1)?,
            body: r.get(2)?,
            attributes: r.get(3)?,
            ordering_key: r.get(4)?,
            enqueued_at: r.get(5)?,
            receive_count: r.get(6)?,
            first_received_at: r.get(7)?,
            receipt_gen: r.get(8)?,
        })
    }

    fn into_delivery(self, queue: &str, handle: Handle, now: i64) -> Delivery {
        Delivery {
            queue: queue.to_owned(),
            message: ReceivedMessage {
                id: self.id,
                body: Bytes::from(self.body),
                attributes: parse_attributes(&self.attributes),
                ordering_key: self.ordering_key,
                enqueued_at: to_time(self.enqueued_at),
            },
            receive_count: self.receive_count + 1,
            first_received_at: to_time(self.first_received_at.unwrap_or(now)),
            receipt: handle.receipt(),
        }
    }
}

fn parse_attributes(json: &str) -> BTreeMap<String, String> {
    // Written by `send` from a BTreeMap, so it parses; an empty map is the safe reading otherwise.
    serde_json::from_str(json).unwrap_or_default()
}

/// Moves a message to the dead-letter queue. `keep_error` keeps an earlier
/// error text over `reason` (a timed-out receive says less than the nack before it).
fn kill(
    conn: &Connection,
    queue: &str,
    seq: i64,
    now: i64,
    reason: Option<&str>,
    keep_error: bool,
) -> Result<(), QueueError> {
    let sql_text = if keep_error {
        "UPDATE messages SET dead_at = ?2, receipt = NULL, last_error = coalesce(last_error, ?3) WHERE seq = ?1
         RETURNING ordering_key"
    } else {
        "UPDATE messages SET dead_at = ?2, receipt = NULL, last_error = ?3 WHERE seq = ?1
         RETURNING ordering_key"
    };
    let killed: Option<Option<String>> = conn
        .prepare_cached(sql_text)
        .and_then(|mut st| st.query_row(params![seq, now, reason], |r| r.get(0)).optional())
        .map_err(sql("dead-letter"))?;
    let Some(key) = killed else { return Ok(()) };
    if let Some(key) = key {
        promote(conn, queue, &key)?;
    }
    count(conn, queue, -1, 1)
}

/// Unblocks the next message of `key` (the lowest `seq` still waiting) if the
/// key has no head: called when a head leaves, acked or dead-lettered, and
/// after a redrive brought messages of the key back. Two index probes.
/// Returns whether a message became receivable.
fn promote(conn: &Connection, queue: &str, key: &str) -> Result<bool, QueueError> {
    let n = conn
        .prepare_cached(
            "UPDATE messages SET blocked = 0
             WHERE seq = (SELECT seq FROM messages
                          WHERE queue = ?1 AND ordering_key = ?2 AND dead_at IS NULL AND blocked = 1
                          ORDER BY seq LIMIT 1)
               AND NOT EXISTS (SELECT 1 FROM messages
                               WHERE queue = ?1 AND ordering_key = ?2 AND dead_at IS NULL AND blocked = 0)",
        )
        .and_then(|mut st| st.execute(params![queue, key]))
        .map_err(sql("unblock the next message of a key"))?;
    Ok(n > 0)
}

/// Whether the handle still holds the message, and its receive count if so.
fn held(conn: &Connection, h: Handle) -> Result<Option<u32>, QueueError> {
    conn.prepare_cached(
        "SELECT receive_count FROM messages WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL",
    )
    .and_then(|mut st| st.query_row(params![h.seq, h.receipt], |r| r.get(0)).optional())
    .map_err(sql("look up delivery"))
}

/// Deletes the delivered message. Returns whether the next message of its
/// key became receivable, so the caller can wake waiting receivers.
pub(crate) fn ack(conn: &Connection, queue: &str, h: Handle) -> Result<bool, QueueError> {
    let acked: Option<Option<String>> = conn
        .prepare_cached(
            "DELETE FROM messages WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL RETURNING ordering_key",
        )
        .and_then(|mut st| st.query_row(params![h.seq, h.receipt], |r| r.get(0)).optional())
        .map_err(sql("ack"))?;
    let Some(key) = acked else { return Ok(false) };
    count(conn, queue, -1, 0)?;
    match key {
        Some(key) => promote(conn, queue, &key),
        None => Ok(false),
    }
}

/// A failed receive: retried later, or dead-lettered if it was the last allowed.
pub(crate) fn nack(
    conn: &Connection,
    queue: &str,
    h: Handle,
    delay: Duration,
    reason: &str,
    now: i64,
) -> Result<Nacked, QueueError> {
    let Some(receives) = held(conn, h)? else { return Ok(Nacked::Stale) };
    let policy = policy(conn, queue)?;
    if receives >= policy.max_receive_count {
        kill(conn, queue, h.seq, now, Some(reason), false)?;
        return Ok(Nacked::DeadLettered);
    }
    conn.prepare_cached(
        "UPDATE messages SET visible_at = ?2, receipt = NULL, last_error = ?3 WHERE seq = ?1",
    )
    .and_then(|mut st| st.execute(params![h.seq, now.saturating_add(ms(delay)), reason]))
    .map_err(sql("nack"))?;
    Ok(Nacked::Retried)
}

pub(crate) fn release(conn: &Connection, h: Handle, delay: Duration, now: i64) -> Result<(), QueueError> {
    conn.prepare_cached(
        "UPDATE messages SET visible_at = ?3, receipt = NULL, receive_count = max(receive_count - 1, 0)
         WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL",
    )
    .and_then(|mut st| st.execute(params![h.seq, h.receipt, now.saturating_add(ms(delay))]))
    .map_err(sql("release"))?;
    Ok(())
}

pub(crate) fn extend(conn: &Connection, h: Handle, timeout: Duration, now: i64) -> Result<(), QueueError> {
    conn.prepare_cached(
        "UPDATE messages SET visible_at = ?3 WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL",
    )
    .and_then(|mut st| st.execute(params![h.seq, h.receipt, now.saturating_add(ms(timeout))]))
    .map_err(sql("extend"))?;
    Ok(())
}

pub(crate) fn dead_letter(
    conn: &Connection,
    queue: &str,
    h: Handle,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    if held(conn, h)?.is_some() {
        kill(conn, queue, h.seq, now, Some(reason), false)?;
    }
    Ok(())
}

/// Counts for one queue without a scan: `live` and `dead` are counters kept
/// in the same transactions as the rows; `delayed` and `in_flight` are
/// counted over the index range of messages not yet visible, which holds
/// only messages that are retrying, delayed or held by a consumer, never the
/// visible backlog. Runs on the read connection, outside the writer.
pub(crate) fn stats(conn: &Connection, queue: &str, now: i64) -> Result<QueueStats, QueueError> {
    let to_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let (live, dead): (i64, i64) = conn
        .prepare_cached("SELECT live, dead FROM queues WHERE name = ?1")
        .and_then(|mut st| st.query_row([queue], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(sql("stats"))?
        .ok_or_else(|| QueueError::NotFound(queue.to_owned()))?;
    // `blocked IN (0, 1)` is every row; spelled out so that the ready index,
    // which has `blocked` before `visible_at`, serves the range.
    let (hidden, held): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), count(receipt) FROM messages
             WHERE queue = ?1 AND dead_at IS NULL AND blocked IN (0, 1) AND visible_at > ?2",
        )
        .and_then(|mut st| st.query_row(params![queue, now], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(sql("stats"))?;
    Ok(QueueStats {
        visible: to_u64(live - hidden),
        delayed: to_u64(hidden - held),
        in_flight: to_u64(held),
        dead: to_u64(dead),
    })
}

/// When the queue's oldest message still to be delivered was sent (ms);
/// `None` when there is none. By sequence (a retry keeps its row, so its
/// first send), walking the table in row order: `+queue` keeps SQLite off
/// the queue's indexes, which would visit every live row. It reads the
/// rows before the first live one of the queue: dead letters and other
/// queues' messages, not the backlog.
pub(crate) fn oldest_enqueued(conn: &Connection, queue: &str) -> Result<Option<i64>, QueueError> {
    policy(conn, queue)?;
    conn.prepare_cached(
        "SELECT enqueued_at FROM messages WHERE +queue = ?1 AND dead_at IS NULL ORDER BY seq LIMIT 1",
    )
    .and_then(|mut st| st.query_row([queue], |r| r.get(0)).optional())
    .map_err(sql("oldest message"))
}

/// The bytes of the live messages of `queue` (bodies, and attributes as
/// stored): how full a spool is when a process opens it again. A scan of
/// the queue's rows, run once at start.
pub(crate) fn live_bytes(conn: &Connection, queue: &str) -> Result<u64, QueueError> {
    conn.prepare_cached(
        "SELECT COALESCE(SUM(length(body) + length(attributes)), 0) FROM messages
         WHERE queue = ?1 AND dead_at IS NULL",
    )
    .and_then(|mut st| st.query_row([queue], |r| r.get::<_, i64>(0)))
    .map(|n| u64::try_from(n).unwrap_or(0))
    .map_err(sql("live bytes"))
}

/// The live messages of `queue` per ordering key (keyed ones only).
pub(crate) fn live_keys(conn: &Connection, queue: &str) -> Result<Vec<(String, u64)>, QueueError> {
    let mut st = conn
        .prepare_cached(
            "SELECT ordering_key, count(*) FROM messages
             WHERE queue = ?1 AND dead_at IS NULL AND ordering_key IS NOT NULL GROUP BY ordering_key",
        )
        .map_err(sql("live keys"))?;
    let rows = st
        .query_map([queue], |r| Ok((r.get::<_, String>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0))))
        .map_err(sql("live keys"))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql("live keys"))
}

/// The counts by a full scan: what [`stats`] must always agree with.
#[cfg(test)]
pub(crate) fn stats_by_scan(conn: &Connection, queue: &str, now: i64) -> Result<QueueStats, QueueError> {
    let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
    conn.prepare_cached(
        "SELECT sum(dead_at IS NULL AND visible_at <= ?2),
                sum(dead_at IS NULL AND visible_at > ?2 AND receipt IS NULL),
                sum(dead_at IS NULL AND visible_at > ?2 AND receipt IS NOT NULL),
                sum(dead_at IS NOT NULL)
         FROM messages WHERE queue = ?1",
    )
    .and_then(|mut st| {
        st.query_row(params![queue, now], |r| {
            Ok(QueueStats {
                visible: count(r.get(0)?),
                delayed: count(r.get(1)?),
                in_flight: count(r.get(2)?),
                dead: count(r.get(3)?),
            })
        })
    })
    .map_err(sql("stats"))
}

pub(crate) fn peek_dead(conn: &Connection, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
    policy(conn, queue)?;
    conn.prepare_cached(
        "SELECT id, receive_count, last_error, first_received_at, last_received_at, dead_at, enqueued_at,
                body, attributes
         FROM messages WHERE queue = ?1 AND dead_at IS NOT NULL ORDER BY dead_at, seq LIMIT ?2",
    )
    .and_then(|mut st| {
        st.query_map(params![queue, i64::try_from(max).unwrap_or(i64::MAX)], |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                source_queue: queue.to_owned(),
                receive_count: r.get(1)?,
                last_error: r.get(2)?,
                first_received_at: r.get::<_, Option<i64>>(3)?.map(to_time),
                last_received_at: r.get::<_, Option<i64>>(4)?.map(to_time),
                dead_lettered_at: to_time(r.get(5)?),
                enqueued_at: to_time(r.get(6)?),
                body: Bytes::from(r.get::<_, Vec<u8>>(7)?),
                attributes: parse_attributes(&r.get::<_, String>(8)?),
            })
        })?
        .collect()
    })
    .map_err(sql("peek dead letters"))
}

/// Moves up to `max` dead letters back, oldest first, as if never received.
/// The dedup key is dropped: a live message may have taken it meanwhile. A
/// message with a key comes back behind its key's head, if the key has one.
pub(crate) fn redrive(conn: &Connection, queue: &str, max: usize, now: i64) -> Result<u64, QueueError> {
    policy(conn, queue)?;
    let keys: Vec<Option<String>> = conn
        .prepare_cached(
            "UPDATE messages
             SET dead_at = NULL, receive_count = 0, receipt = NULL, first_received_at = NULL,
                 last_received_at = NULL, last_error = NULL, dedup_key = NULL, visible_at = ?3,
                 blocked = ordering_key IS NOT NULL
             WHERE seq IN (SELECT seq FROM messages WHERE queue = ?1 AND dead_at IS NOT NULL
                           ORDER BY dead_at, seq LIMIT ?2)
             RETURNING ordering_key",
        )
        .and_then(|mut st| {
            st.query_map(params![queue, i64::try_from(max).unwrap_or(i64::MAX), now], |r| r.get(0))?.collect()
        })
        .map_err(sql("redrive"))?;
    let moved = keys.len() as i64;
    let keys: std::collections::BTreeSet<String> = keys.into_iter().flatten().collect();
    for key in &keys {
        promote(conn, queue, key)?;
    }
    count(conn, queue, moved, -moved)?;
    Ok(moved as u64)
}

pub(crate) fn purge(conn: &Connection, queue: &str, target: PurgeTarget) -> Result<u64, QueueError> {
    policy(conn, queue)?;
    let text = match target {
        PurgeTarget::Source => "DELETE FROM messages WHERE queue = ?1 AND dead_at IS NULL",
        PurgeTarget::Dead => "DELETE FROM messages WHERE queue = ?1 AND dead_at IS NOT NULL",
    };
    let n = conn.prepare_cached(text).and_then(|mut st| st.execute([queue])).map_err(sql("purge"))?;
    match target {
        PurgeTarget::Source => count(conn, queue, -(n as i64), 0)?,
        PurgeTarget::Dead => count(conn, queue, 0, -(n as i64))?,
    }
    Ok(n as u64)
}

pub(crate) fn ping(conn: &Connection) -> Result<(), QueueError> {
    conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql("ping"))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use super::*;
    use crate::DeadLetterPolicy;

    const NOW: i64 = 1_000_000;

    fn queue(max_receive_count: u32) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        super::super::schema::prepare(&conn, None).expect("schema");
        let spec = QueueSpec {
            name: "q".into(),
            dead_letter: DeadLetterPolicy { max_receive_count, visibility_timeout: Duration::from_secs(30) },
            max_message_bytes: 1024,
        };
        ensure(&conn, &spec).expect("ensure");
        conn
    }

    /// Sends `n` messages named `{prefix}{i}`, with `key` if given.
    fn send_n(conn: &Connection, prefix: &str, n: usize, key: Option<&str>) {
        let msgs: Vec<_> = (0..n)
            .map(|i| {
                let mut m = OutgoingMessage::new(format!("{prefix}{i}"), "x");
                m.ordering_key = key.map(str::to_owned);
                m
            })
            .collect();
        for chunk in msgs.chunks(1000) {
            send(conn, "q", chunk, NOW).expect("send");
        }
    }

    fn ids(got: &Received) -> Vec<&str> {
        got.deliveries.iter().map(|(_, d)| d.message.id.as_str()).collect()
    }

    /// A keyless batch goes in as multi-row inserts of several sizes (150
    /// rows: 64, 64, 16, 4, 1, 1). Every row keeps its own fields (its
    /// attributes too, whether equal to the previous row's or not) and the
    /// batch's order, a duplicate dedup key is ignored and not counted, and
    /// a delayed message waits.
    #[test]
    fn a_keyless_batch_keeps_order_fields_and_dedup() {
        let conn = queue(5);
        let msgs: Vec<_> = (0..150)
            .map(|i| {
                let mut m = OutgoingMessage::new(format!("m{i}"), format!("body {i}"));
                // Pairs of messages with equal attributes: the second of
                // each reuses the first's JSON, the next pair's differs.
                m.attributes.insert("n".into(), (i / 2).to_string());
                m.dedup_key = (i % 50 == 7).then(|| "same".to_owned()).or_else(|| Some(format!("d{i}")));
                if i == 149 {
                    m.delay = Duration::from_secs(60);
                }
                m
            })
            .collect();
        send(&conn, "q", &msgs, NOW).expect("send");
        // m57 and m107 repeat m7's dedup key; m149 is delayed.
        let expected: Vec<String> =
            (0..149).filter(|i| *i == 7 || i % 50 != 7).map(|i| format!("m{i}")).collect();
        let got = receive(&conn, "q", 1000, NOW).expect("receive");
        assert_eq!(ids(&got), expected);
        for (_, d) in &got.deliveries {
            let n = &d.message.id[1..];
            assert_eq!(d.message.body, format!("body {n}").as_bytes());
            let pair = n.parse::<usize>().expect("a number") / 2;
            assert_eq!(d.message.attributes["n"], pair.to_string(), "m{n}");
        }
        let stats = stats(&conn, "q", NOW).expect("stats");
        let counts = (stats.visible, stats.in_flight, stats.delayed, stats.dead);
        assert_eq!(counts, (0, 147, 1, 0), "{stats:?}");
    }

    /// The SQLite virtual-machine instructions `f` runs, counted in steps of
    /// 100: a measure of work that does not depend on the machine's speed.
    fn instructions<T>(conn: &Connection, f: impl FnOnce() -> T) -> (T, u64) {
        let steps = Arc::new(AtomicU64::new(0));
        let counter = steps.clone();
        conn.progress_handler(
            100,
            Some(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                false
            }),
        );
        let out = f();
        conn.progress_handler(100, None::<fn() -> bool>);
        (out, steps.load(Ordering::Relaxed) * 100)
    }

    /// The work of one receive of 10 when `waiting` messages of one key wait
    /// behind its head, which a consumer holds, and 20 others are visible.
    fn receive_behind_a_held_head(waiting: usize) -> u64 {
        let conn = queue(5);
        send_n(&conn, "hot", waiting + 1, Some("hot"));
        send_n(&conn, "other", 20, None);
        let head = receive(&conn, "q", 1, NOW).expect("receive the head");
        assert_eq!(ids(&head), ["hot0"]);
        let (got, work) = instructions(&conn, || receive(&conn, "q", 10, NOW).expect("receive"));
        assert_eq!(got.deliveries.len(), 10, "ten of the others: {:?}", ids(&got));
        assert!(ids(&got).iter().all(|id| id.starts_with("other")), "{:?}", ids(&got));
        work
    }

    /// A receive walks to what it can deliver: a key's backlog behind its
    /// held head costs nothing. It used to cost an index probe per waiting
    /// message, inside the writer.
    #[test]
    fn a_receive_costs_the_same_behind_a_keys_deep_backlog() {
        let shallow = receive_behind_a_held_head(10);
        let deep = receive_behind_a_held_head(5_000);
        assert!(deep < shallow * 2, "5,000 waiting: {deep} instructions; 10 waiting: {shallow}");
    }

    /// And the same for a backlog without keys.
    #[test]
    fn a_receive_costs_the_same_on_a_deep_queue() {
        let work = |n| {
            let conn = queue(5);
            send_n(&conn, "m", n, None);
            instructions(&conn, || receive(&conn, "q", 10, NOW).expect("receive")).1
        };
        let (shallow, deep) = (work(20), work(5_000));
        assert!(deep < shallow * 2, "5,000 queued: {deep} instructions; 20 queued: {shallow}");
    }

    /// A head whose last receive timed out is dead-lettered by the next
    /// receive, and the next message of its key is delivered in its place.
    #[test]
    fn an_expired_head_gives_way_to_the_next_of_its_key() {
        let conn = queue(1);
        send_n(&conn, "k", 3, Some("k"));
        assert_eq!(ids(&receive(&conn, "q", 10, NOW).expect("receive")), ["k0"]);
        let later = NOW + 31_000;
        assert_eq!(ids(&receive(&conn, "q", 10, later).expect("receive")), ["k1"]);
        assert_eq!(stats(&conn, "q", later).expect("stats").dead, 1);
    }

    /// An ack lets the next message of the key through, and says so.
    #[test]
    fn an_ack_unblocks_the_next_of_its_key() {
        let conn = queue(5);
        send_n(&conn, "k", 2, Some("k"));
        send_n(&conn, "m", 1, None);
        let got = receive(&conn, "q", 10, NOW).expect("receive");
        assert_eq!(ids(&got), ["k0", "m0"]);
        assert!(!ack(&conn, "q", got.deliveries[1].0).expect("ack"), "m0 has no key");
        assert!(ack(&conn, "q", got.deliveries[0].0).expect("ack"), "k1 is next");
        assert!(!ack(&conn, "q", got.deliveries[0].0).expect("ack again"), "a stale ack changes nothing");
        assert_eq!(ids(&receive(&conn, "q", 10, NOW).expect("receive")), ["k1"]);
    }

    /// A redriven message of a key comes back behind the key's head, not
    /// beside it; with no head, the oldest redriven one leads.
    #[test]
    fn a_redriven_message_waits_behind_its_keys_head() {
        let conn = queue(5);
        send_n(&conn, "a", 2, Some("k"));
        let got = receive(&conn, "q", 10, NOW).expect("receive");
        dead_letter(&conn, "q", got.deliveries[0].0, "poison", NOW).expect("dead-letter a0");
        let got = receive(&conn, "q", 10, NOW).expect("receive");
        assert_eq!(ids(&got), ["a1"], "a1 leads once a0 is dead");
        assert_eq!(redrive(&conn, "q", 10, NOW).expect("redrive"), 1);
        assert_eq!(ids(&receive(&conn, "q", 10, NOW).expect("receive")), Vec::<&str>::new(), "a1 is held");
        ack(&conn, "q", got.deliveries[0].0).expect("ack a1");
        assert_eq!(ids(&receive(&conn, "q", 10, NOW).expect("receive")), ["a0"]);

        let conn = queue(5);
        send_n(&conn, "b", 2, Some("k"));
        for _ in 0..2 {
            let got = receive(&conn, "q", 10, NOW).expect("receive");
            dead_letter(&conn, "q", got.deliveries[0].0, "poison", NOW).expect("dead-letter");
        }
        assert_eq!(redrive(&conn, "q", 10, NOW).expect("redrive"), 2);
        assert_eq!(ids(&receive(&conn, "q", 10, NOW).expect("receive")), ["b0"], "one head, the oldest");
    }
}
