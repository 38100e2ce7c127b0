//! A message on the wire: the body as the Kafka value, the ordering key as
//! the Kafka key, everything else in headers (UTF-8 text values).
//!
//! | header | what |
//! |---|---|
//! | every attribute, by its own name | the message's attributes (the names below are refused at send; other `spillway-` names, such as the gateway's `spillway-format` and `spillway-route`, are attributes like any other) |
//! | `spillway-id` | the message id |
//! | `spillway-enqueued-at` | when it was first sent, ms since the epoch |
//! | `spillway-dedup-key` | the dedup key, for sinks that want it (Kafka drops nothing) |
//! | `spillway-due-at` | not to be delivered before this, ms since the epoch (retry tiers, delayed sends) |
//! | `spillway-failures` | counted failed receives so far, carried across republishes |
//! | `spillway-first-received-at`, `spillway-last-error` | carried for the dead letter |
//! | `spillway-source-queue`, `spillway-receive-count`, `spillway-last-received-at`, `spillway-dead-lettered-at` | on dead letters only |
//!
//! A plain Kafka client reads the key, the value and these headers as they
//! are; one that writes a message without any of them gets an id made of
//! the topic, partition and offset, and a count that starts at zero.

use std::collections::BTreeMap;

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::{clock::ms_time, DeadLetter, OutgoingMessage, QueueError, ReceivedMessage};

pub(crate) const ID: &str = "spillway-id";
pub(crate) const ENQUEUED_AT: &str = "spillway-enqueued-at";
pub(crate) const DEDUP_KEY: &str = "spillway-dedup-key";
pub(crate) const DUE_AT: &str = "spillway-due-at";
pub(crate) const FAILURES: &str = "spillway-failures";
pub(crate) const FIRST_RECEIVED_AT: &str = "spillway-first-received-at";
pub(crate) const LAST_ERROR: &str = "spillway-last-error";
pub(crate) const SOURCE_QUEUE: &str = "spillway-source-queue";
pub(crate) const RECEIVE_COUNT: &str = "spillway-receive-count";
pub(crate) const LAST_RECEIVED_AT: &str = "spillway-last-received-at";
pub(crate) const DEAD_LETTERED_AT: &str = "spillway-dead-lettered-at";
/// The headers of one life of a message, dropped when a dead letter is
/// redriven: it starts again with a count of zero.
pub(crate) const DEAD_ONLY: [&str; 8] = [
    FAILURES,
    FIRST_RECEIVED_AT,
    LAST_ERROR,
    SOURCE_QUEUE,
    RECEIVE_COUNT,
    LAST_RECEIVED_AT,
    DEAD_LETTERED_AT,
    DUE_AT,
];

/// Whether the backend writes this header itself (then it is never an
/// attribute): the message's identity, and every header of one life.
pub(crate) fn is_reserved(name: &str) -> bool {
    [ID, ENQUEUED_AT, DEDUP_KEY].contains(&name) || DEAD_ONLY.contains(&name)
}

/// One record as fetched, owned, with its headers decoded.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) body: Bytes,
    /// The headers read as text (the last of a repeated key wins): for
    /// Spillway's own headers and for the attributes a sink sees.
    pub(crate) headers: BTreeMap<String, String>,
    /// The headers exactly as fetched: order, repeated keys, null values
    /// and bytes that are not UTF-8. Copies (retries, dead letters) carry
    /// these, so a foreign producer's headers reach the DLQ as it wrote
    /// them, not as their text reading.
    pub(crate) raw_headers: Vec<(String, Option<Vec<u8>>)>,
    /// The broker's timestamp, ms since the epoch.
    pub(crate) timestamp_ms: Option<i64>,
}

impl Record {
    pub(crate) fn of<M: Message>(m: &M) -> Self {
        let mut headers = BTreeMap::new();
        let mut raw_headers = Vec::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                headers.insert(h.key.to_owned(), value);
                raw_headers.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            headers,
            raw_headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    fn int(&self, name: &str) -> Option<i64> {
        self.headers.get(name)?.parse().ok()
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `spillway-id` header; for a record another producer wrote
    /// without one (or with an empty one), its place in the log, which no
    /// other record shares. Every republished copy carries it in the
    /// header ([`Self::headers_with`]), so it holds across retries, tiers
    /// and the DLQ.
    pub(crate) fn id(&self) -> String {
        self.headers
            .get(ID)
            .filter(|id| !id.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("{}-{}-{}", self.topic, self.partition, self.offset))
    }

    /// Failed receives carried by this copy.
    pub(crate) fn failures(&self) -> u32 {
        self.int(FAILURES).and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
    }

    pub(crate) fn due_at(&self) -> Option<i64> {
        self.int(DUE_AT)
    }

    pub(crate) fn first_received_at(&self) -> Option<i64> {
        self.int(FIRST_RECEIVED_AT)
    }

    pub(crate) fn enqueued_at(&self) -> i64 {
        self.int(ENQUEUED_AT).or(self.timestamp_ms).unwrap_or(0)
    }

    /// The attributes: every header the backend did not write itself.
    pub(crate) fn attributes(&self) -> BTreeMap<String, String> {
        self.headers.iter().filter(|(k, _)| !is_reserved(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub(crate) fn received(&self) -> ReceivedMessage {
        ReceivedMessage {
            id: self.id(),
            body: self.body.clone(),
            attributes: self.attributes(),
            ordering_key: self.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            enqueued_at: ms_time(self.enqueued_at()),
        }
    }

    /// The headers of a copy: this one's, with `set` replacing or adding.
    ///
    /// The copy always carries this record's id and enqueue time, so a
    /// record another producer wrote without them keeps the id and time it
    /// was first read with (not the republished copy's place in the log).
    pub(crate) fn headers_with(&self, drop: &[&str], set: &[(&str, String)]) -> OwnedHeaders {
        let own = [(ID, self.id()), (ENQUEUED_AT, self.enqueued_at().to_string())];
        let mut out = OwnedHeaders::new_with_capacity(self.raw_headers.len() + set.len() + own.len());
        let replaced = |k: &str| set.iter().any(|(s, _)| *s == k) || own.iter().any(|(s, _)| *s == k);
        for (k, v) in &self.raw_headers {
            if drop.contains(&k.as_str()) || replaced(k) {
                continue;
            }
            out = out.insert(Header { key: k, value: v.as_deref() });
        }
        for (k, v) in own.iter().filter(|(k, _)| !drop.contains(k) && !set.iter().any(|(s, _)| s == k)) {
            out = out.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        for (k, v) in set {
            out = out.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        out
    }

    /// This record read as a dead letter.
    pub(crate) fn dead_letter(&self) -> DeadLetter {
        DeadLetter {
            id: self.id(),
            source_queue: self.text(SOURCE_QUEUE).unwrap_or_default().to_owned(),
            receive_count: self.int(RECEIVE_COUNT).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            last_error: self.text(LAST_ERROR).map(str::to_owned),
            first_received_at: self.first_received_at().map(ms_time),
            last_received_at: self.int(LAST_RECEIVED_AT).map(ms_time),
            dead_lettered_at: ms_time(self.int(DEAD_LETTERED_AT).or(self.timestamp_ms).unwrap_or(0)),
            enqueued_at: ms_time(self.enqueued_at()),
            body: self.body.clone(),
            attributes: self.attributes(),
        }
    }
}

/// The headers of a new message. Refuses what Spillway's own names would shadow.
pub(crate) fn headers_for(m: &OutgoingMessage, now_ms: i64) -> Result<OwnedHeaders, QueueError> {
    let mut h = OwnedHeaders::new_with_capacity(m.attributes.len() + 4);
    for (k, v) in &m.attributes {
        if is_reserved(k) {
            return Err(QueueError::Invalid(format!(
                "attribute {k:?}: the Kafka backend writes that header itself"
            )));
        }
        // librdkafka keeps a header name as a C string: a NUL would cut it
        // short, and `a\0b` would arrive as `a` (found by the kafka_wire
        // fuzz target).
        if k.contains('\0') {
            return Err(QueueError::Invalid(format!(
                "attribute {k:?}: a Kafka header name cannot hold a NUL"
            )));
        }
        h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    h = h.insert(Header { key: ID, value: Some(m.id.as_bytes()) });
    h = h.insert(Header { key: ENQUEUED_AT, value: Some(now_ms.to_string().as_bytes()) });
    if let Some(k) = &m.dedup_key {
        h = h.insert(Header { key: DEDUP_KEY, value: Some(k.as_bytes()) });
    }
    if !m.delay.is_zero() {
        let due = now_ms.saturating_add(i64::try_from(m.delay.as_millis()).unwrap_or(i64::MAX));
        h = h.insert(Header { key: DUE_AT, value: Some(due.to_string().as_bytes()) });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_an_attribute_name_is_refused_not_cut_short() {
        let mut m = OutgoingMessage::new("a", "b");
        m.attributes.insert("d\0x".into(), "v".into());
        assert!(matches!(headers_for(&m, 0), Err(QueueError::Invalid(_))));
    }

    #[test]
    fn reserved_attribute_names_are_refused() {
        let mut m = OutgoingMessage::new("a", "b");
        m.attributes.insert("spillway-failures".into(), "0".into());
        assert!(matches!(headers_for(&m, 0), Err(QueueError::Invalid(_))));
    }

    /// The gateway's own attributes (`spillway-format`, `spillway-route`)
    /// are not the backend's headers: they travel, and come back.
    #[test]
    fn other_spillway_attributes_round_trip() {
        let mut m = OutgoingMessage::new("a", "b");
        m.attributes.insert("spillway-format".into(), "json".into());
        let h = headers_for(&m, 0).expect("not reserved");
        let headers = h
            .iter()
            .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect();
        let raw_headers = h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
        let r = Record {
            topic: "q".into(),
            partition: 0,
            offset: 0,
            key: None,
            body: Bytes::new(),
            headers,
            raw_headers,
            timestamp_ms: None,
        };
        assert_eq!(r.attributes().get("spillway-format").map(String::as_str), Some("json"));
        assert!(!r.attributes().contains_key(ID), "the id is not an attribute");
    }

    #[test]
    fn a_delayed_send_carries_its_due_time() {
        let mut m = OutgoingMessage::new("a", "b");
        m.delay = std::time::Duration::from_millis(700);
        let h = headers_for(&m, 1_000).expect("headers");
        let due = h.iter().find(|h| h.key == DUE_AT).and_then(|h| h.value).expect("due-at");
        assert_eq!(due, b"1700");
    }
}
