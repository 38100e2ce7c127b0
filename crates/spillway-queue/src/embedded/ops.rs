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
pub(crate) fn send(
    conn: &Connection,
    queue: &str,
    msgs: &[OutgoingMessage],
    now: i64,
) -> Result<(), QueueError> {
    let mut st = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
                 (queue, id, body, attributes, ordering_key, dedup_key, enqueued_at, visible_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(sql("prepare send"))?;
    let mut inserted = 0i64;
    for m in msgs {
        let attributes = serde_json::to_string(&m.attributes)
            .map_err(|e| QueueError::Invalid(format!("attributes: {e}")))?;
        inserted += st
            .execute(params![
                queue,
                m.id,
                m.body.as_ref(),
                attributes,
                m.ordering_key,
                m.dedup_key,
                now,
                now.saturating_add(ms(m.delay))
            ])
            .map_err(sql("send"))? as i64;
    }
    count(conn, queue, inserted, 0)
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
/// group is a candidate, so a group is delivered one message at a time, in
/// send order. A candidate that already used up its receives is dead-lettered
/// instead (its last receive timed out).
pub(crate) fn receive(conn: &Connection, queue: &str, max: usize, now: i64) -> Result<Received, QueueError> {
    let policy = policy(conn, queue)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut deliveries = Vec::new();
    let mut select = conn
        .prepare_cached(
            "SELECT seq, id, body, attributes, ordering_key, enqueued_at, receive_count, first_received_at,
                    receipt_gen
             FROM messages m
             WHERE queue = ?1 AND dead_at IS NULL AND visible_at <= ?2
               AND (ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM messages p
                    WHERE p.queue = m.queue AND p.ordering_key = m.ordering_key
                      AND p.dead_at IS NULL AND p.seq < m.seq))
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
        let found = rows.len();
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
        if expired == 0 || i64::try_from(found).unwrap_or(0) < want {
            break;
        }
    }
    let next_visible_at = if deliveries.is_empty() { next_visible(conn, queue, now)? } else { None };
    Ok(Received { deliveries, next_visible_at })
}

fn next_visible(conn: &Connection, queue: &str, now: i64) -> Result<Option<i64>, QueueError> {
    conn.prepare_cached(
        "SELECT min(visible_at) FROM messages WHERE queue = ?1 AND dead_at IS NULL AND visible_at > ?2",
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
        "UPDATE messages SET dead_at = ?2, receipt = NULL, last_error = coalesce(last_error, ?3) WHERE seq = ?1"
    } else {
        "UPDATE messages SET dead_at = ?2, receipt = NULL, last_error = ?3 WHERE seq = ?1"
    };
    let n = conn
        .prepare_cached(sql_text)
        .and_then(|mut st| st.execute(params![seq, now, reason]))
        .map_err(sql("dead-letter"))? as i64;
    count(conn, queue, -n, n)
}

/// Whether the handle still holds the message, and its receive count if so.
fn held(conn: &Connection, h: Handle) -> Result<Option<u32>, QueueError> {
    conn.prepare_cached(
        "SELECT receive_count FROM messages WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL",
    )
    .and_then(|mut st| st.query_row(params![h.seq, h.receipt], |r| r.get(0)).optional())
    .map_err(sql("look up delivery"))
}

pub(crate) fn ack(conn: &Connection, queue: &str, h: Handle) -> Result<(), QueueError> {
    let n = conn
        .prepare_cached("DELETE FROM messages WHERE seq = ?1 AND receipt = ?2 AND dead_at IS NULL")
        .and_then(|mut st| st.execute(params![h.seq, h.receipt]))
        .map_err(sql("ack"))? as i64;
    count(conn, queue, -n, 0)
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
    let (hidden, held): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), count(receipt) FROM messages
             WHERE queue = ?1 AND dead_at IS NULL AND visible_at > ?2",
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
/// The dedup key is dropped: a live message may have taken it meanwhile.
pub(crate) fn redrive(conn: &Connection, queue: &str, max: usize, now: i64) -> Result<u64, QueueError> {
    policy(conn, queue)?;
    let moved = conn
        .prepare_cached(
            "UPDATE messages
             SET dead_at = NULL, receive_count = 0, receipt = NULL, first_received_at = NULL,
                 last_received_at = NULL, last_error = NULL, dedup_key = NULL, visible_at = ?3
             WHERE seq IN (SELECT seq FROM messages WHERE queue = ?1 AND dead_at IS NOT NULL
                           ORDER BY dead_at, seq LIMIT ?2)",
        )
        .and_then(|mut st| st.execute(params![queue, i64::try_from(max).unwrap_or(i64::MAX), now]))
        .map_err(sql("redrive"))?;
    count(conn, queue, moved as i64, -(moved as i64))?;
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
