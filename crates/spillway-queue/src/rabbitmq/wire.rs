//! A message on the wire: body as the AMQP body, everything else in headers.
//!
//! | header | what |
//! |---|---|
//! | every attribute, by its own name | the message's attributes (names starting `x-` are refused at send) |
//! | `x-spillway-id` | the message id (also the AMQP `message_id`) |
//! | `x-spillway-enqueued-at` | when it was first sent, ms since the epoch |
//! | `x-spillway-ordering-key` | the ordering key |
//! | `x-spillway-failures` | counted failed receives so far, carried across republishes |
//! | `x-spillway-first-received-at`, `x-spillway-last-error` | carried for the dead letter |
//! | `x-spillway-source-queue`, `x-spillway-receive-count`, `x-spillway-last-received-at`, `x-spillway-dead-lettered-at` | on dead letters only |
//!
//! Headers the broker adds (`x-delivery-count`, `x-death`, …) start with
//! `x-` too and are never taken for attributes.

use std::collections::BTreeMap;

use lapin::{
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};

use crate::{OutgoingMessage, QueueError};

pub(crate) const ID: &str = "x-spillway-id";
pub(crate) const ENQUEUED_AT: &str = "x-spillway-enqueued-at";
pub(crate) const ORDERING_KEY: &str = "x-spillway-ordering-key";
pub(crate) const FAILURES: &str = "x-spillway-failures";
pub(crate) const FIRST_RECEIVED_AT: &str = "x-spillway-first-received-at";
pub(crate) const LAST_ERROR: &str = "x-spillway-last-error";
pub(crate) const SOURCE_QUEUE: &str = "x-spillway-source-queue";
pub(crate) const RECEIVE_COUNT: &str = "x-spillway-receive-count";
pub(crate) const LAST_RECEIVED_AT: &str = "x-spillway-last-received-at";
pub(crate) const DEAD_LETTERED_AT: &str = "x-spillway-dead-lettered-at";
/// The broker's count of returns to the queue (requeues, closed channels).
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// Persistent: written to disk by the quorum queue before the confirm.
const PERSISTENT: u8 = 2;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn key(name: &str) -> Result<ShortString, QueueError> {
    ShortString::try_new(name).map_err(|e| QueueError::Invalid(format!("attribute name {name:?}: {e}")))
}

/// The properties of a new message. Refuses what AMQP cannot carry.
pub(crate) fn properties_for(m: &OutgoingMessage, now_ms: i64) -> Result<BasicProperties, QueueError> {
    let mut h = FieldTable::default();
    for (k, v) in &m.attributes {
        if k.starts_with("x-") || k.starts_with("X-") {
            return Err(QueueError::Invalid(format!(
                "attribute {k:?}: names starting with `x-` are reserved for the broker and Spillway on RabbitMQ"
            )));
        }
        h.insert(key(k)?, text(v));
    }
    h.insert(ShortString::from(ID), text(&m.id));
    h.insert(ShortString::from(ENQUEUED_AT), AMQPValue::LongLongInt(now_ms));
    if let Some(k) = &m.ordering_key {
        h.insert(ShortString::from(ORDERING_KEY), text(k));
    }
    let id =
        ShortString::try_new(m.id.clone()).map_err(|e| QueueError::Invalid(format!("message id: {e}")))?;
    Ok(BasicProperties::default().with_delivery_mode(PERSISTENT).with_message_id(id).with_headers(h))
}

/// Headers of a received message, as plain values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Headers {
    pub(crate) table: FieldTable,
}

impl Headers {
    pub(crate) fn of(p: &BasicProperties) -> Self {
        Self { table: p.headers().clone().unwrap_or_default() }
    }

    pub(crate) fn text(&self, name: &str) -> Option<String> {
        match self.table.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            other => Some(format!("{other:?}")),
        }
    }

    pub(crate) fn int(&self, name: &str) -> Option<i64> {
        match self.table.inner().get(name)? {
            AMQPValue::LongLongInt(n) => Some(*n),
            AMQPValue::LongInt(n) => Some(i64::from(*n)),
            AMQPValue::LongUInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
            AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// Every header not starting with `x-`: the message's attributes.
    pub(crate) fn attributes(&self) -> BTreeMap<String, String> {
        self.table
            .inner()
            .keys()
            .filter(|k| !k.as_str().starts_with("x-"))
            .filter_map(|k| Some((k.as_str().to_owned(), self.text(k.as_str())?)))
            .collect()
    }

    pub(crate) fn set_int(&mut self, name: &str, v: i64) {
        self.table.insert(ShortString::from(name), AMQPValue::LongLongInt(v));
    }

    pub(crate) fn set_text(&mut self, name: &str, v: &str) {
        self.table.insert(ShortString::from(name), text(v));
    }

    /// Drops the headers of an earlier life: the broker's, and the given ones.
    pub(crate) fn without(mut self, names: &[&str]) -> Self {
        let keep: BTreeMap<ShortString, AMQPValue> = self
            .table
            .inner()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                !names.contains(&k) && (k.starts_with("x-spillway-") || !k.starts_with("x-"))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.table = FieldTable::from(keep);
        self
    }

    /// The properties of a republished copy with these headers.
    pub(crate) fn into_properties(self, original: &BasicProperties) -> BasicProperties {
        let mut p = BasicProperties::default().with_delivery_mode(PERSISTENT).with_headers(self.table);
        if let Some(id) = original.message_id() {
            p = p.with_message_id(id.clone());
        }
        p
    }
}
