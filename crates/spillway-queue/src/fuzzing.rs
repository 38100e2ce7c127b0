//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! backend's wire decoding of attributes and headers, on what another
//! producer may write (any names, values, bytes) and on the round trip of
//! what Spillway writes. A broken invariant panics, which libFuzzer reports.
//!
//! The invariants: decoding never panics; a message from another producer
//! always gets a non-empty id (its place in the log or the broker's id,
//! never a shared or empty one, so it can neither collide nor vanish);
//! and what Spillway sends comes back with its id, body and attributes.

use std::collections::BTreeMap;

use crate::OutgoingMessage;

/// An outgoing message from parts, for the round trips.
fn outgoing(
    id: &str,
    body: &[u8],
    attributes: &BTreeMap<String, String>,
    key: Option<&str>,
) -> OutgoingMessage {
    let mut m = OutgoingMessage::new(id.to_owned(), bytes::Bytes::copy_from_slice(body));
    m.attributes = attributes.clone();
    m.ordering_key = key.map(str::to_owned);
    m
}

/// A message attribute as another SQS client may send it: a name, and a
/// string value, a binary one, both or neither.
pub type SqsAttribute = (String, Option<String>, Option<Vec<u8>>);

/// SQS: a message with any body, message attributes (string or binary)
/// and system attributes, as another client may send it.
#[cfg(feature = "sqs")]
pub fn sqs_foreign(body: &str, message_id: &str, attributes: &[SqsAttribute], receive_count: &str) {
    use aws_sdk_sqs::{
        primitives::Blob,
        types::{Message, MessageAttributeValue, MessageSystemAttributeName},
    };
    let mut attrs = std::collections::HashMap::new();
    for (k, s, b) in attributes {
        let mut v = MessageAttributeValue::builder().data_type(if b.is_some() { "Binary" } else { "String" });
        if let Some(s) = s {
            v = v.string_value(s);
        }
        if let Some(b) = b {
            v = v.binary_value(Blob::new(b.clone()));
        }
        if let Ok(v) = v.build() {
            attrs.insert(k.clone(), v);
        }
    }
    let mut system = std::collections::HashMap::new();
    system.insert(MessageSystemAttributeName::ApproximateReceiveCount, receive_count.to_owned());
    system.insert(MessageSystemAttributeName::SentTimestamp, receive_count.to_owned());
    let m = Message::builder()
        .body(body)
        .message_id(message_id)
        .set_message_attributes(Some(attrs))
        .set_attributes(Some(system))
        .build();
    if let Ok(d) = crate::sqs::wire::decode(&m) {
        if !message_id.is_empty() {
            assert!(!d.meta.id.is_empty(), "a message with an SQS id decoded without one");
        }
    }
}

/// SQS: what Spillway encodes, decoded again, is the same message.
#[cfg(feature = "sqs")]
pub fn sqs_round_trip(id: &str, body: &[u8], attributes: &BTreeMap<String, String>) {
    use aws_sdk_sqs::types::Message;
    let meta = crate::sqs::wire::Meta { id: id.to_owned(), enq: 1, ..Default::default() };
    let Ok(wire) = crate::sqs::wire::encode(body, attributes, meta) else { return };
    let m = Message::builder()
        .body(wire.body.clone())
        .message_id("sqs-own-id")
        .set_message_attributes(Some(wire.attributes.clone()))
        .build();
    let d = crate::sqs::wire::decode(&m).expect("Spillway's own message decodes");
    assert_eq!(&d.body[..], body, "the body changed on the way");
    assert_eq!(&d.attributes, attributes, "the attributes changed on the way");
    let want = if id.is_empty() { "sqs-own-id" } else { id };
    assert_eq!(d.meta.id, want, "the id changed on the way");
}

/// Kafka: a record with any key, payload and headers (repeated, null,
/// not UTF-8) at a place in the log.
#[cfg(feature = "kafka")]
pub fn kafka_foreign(
    payload: &[u8],
    key: Option<&[u8]>,
    headers: &[(String, Option<Vec<u8>>)],
    partition: i32,
    offset: i64,
) {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: v.as_deref() });
    }
    let m = OwnedMessage::new(
        Some(payload.to_vec()),
        key.map(<[u8]>::to_vec),
        "topic".to_owned(),
        Timestamp::NotAvailable,
        partition,
        offset,
        Some(h),
    );
    let r = crate::kafka::wire::Record::of(&m);
    let got = r.received();
    assert!(!got.id.is_empty(), "a record decoded without an id");
    // librdkafka keeps a header name up to its first NUL.
    let has_id = headers
        .iter()
        .rev()
        .find(|(k, _)| k.split('\0').next() == Some(crate::kafka::wire::ID))
        .is_some_and(|(_, v)| v.as_ref().is_some_and(|v| !v.is_empty()));
    if !has_id {
        assert_eq!(
            got.id,
            format!("topic-{partition}-{offset}"),
            "a foreign record's id is not its place in the log"
        );
    }
    let _ = (r.failures(), r.due_at(), r.first_received_at(), r.enqueued_at(), r.dead_letter());
    let _ = r.headers_with(&[crate::kafka::wire::FAILURES], &[(crate::kafka::wire::LAST_ERROR, "x".into())]);
}

/// Kafka: what Spillway writes comes back as it was sent.
#[cfg(feature = "kafka")]
pub fn kafka_round_trip(id: &str, body: &[u8], attributes: &BTreeMap<String, String>, key: Option<&str>) {
    use rdkafka::message::{OwnedMessage, Timestamp};
    let m = outgoing(id, body, attributes, key);
    let Ok(h) = crate::kafka::wire::headers_for(&m, 7) else { return };
    let record = OwnedMessage::new(
        Some(body.to_vec()),
        key.map(|k| k.as_bytes().to_vec()),
        "topic".to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(h),
    );
    let got = crate::kafka::wire::Record::of(&record).received();
    let want_id = if id.is_empty() { "topic-0-0" } else { id };
    assert_eq!(got.id, want_id);
    assert_eq!(&got.body[..], body);
    assert_eq!(&got.attributes, attributes);
}

/// An AMQP header value from a kind and bytes.
#[cfg(feature = "rabbitmq")]
fn amqp_value(kind: u8, bytes: &[u8]) -> lapin::types::AMQPValue {
    use lapin::types::{AMQPValue, LongString, ShortString};
    let n = i64::from_le_bytes(
        bytes
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(8)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or([0; 8]),
    );
    match kind % 9 {
        0 => AMQPValue::LongString(LongString::from(bytes.to_vec())),
        // At most 255 bytes: longer is not a short string on the wire.
        1 => ShortString::try_new(String::from_utf8_lossy(bytes).into_owned())
            .map_or(AMQPValue::Void, AMQPValue::ShortString),
        2 => AMQPValue::LongLongInt(n),
        3 => AMQPValue::LongInt(n as i32),
        4 => AMQPValue::Boolean(n & 1 == 1),
        5 => AMQPValue::Timestamp(n as u64),
        6 => AMQPValue::Double(f64::from_bits(n as u64)),
        7 => AMQPValue::Void,
        _ => AMQPValue::ShortShortUInt(n as u8),
    }
}

/// AMQP: a message with any headers (names, kinds, values) and message id.
#[cfg(feature = "rabbitmq")]
pub fn amqp_foreign(message_id: Option<&str>, headers: &[(String, u8, Vec<u8>)]) {
    use lapin::{
        types::{FieldTable, ShortString},
        BasicProperties,
    };
    let mut t = FieldTable::default();
    for (k, kind, v) in headers {
        if let Ok(name) = ShortString::try_new(k.clone()) {
            t.insert(name, amqp_value(*kind, v));
        }
    }
    let mut p = BasicProperties::default().with_headers(t);
    if let Some(id) = message_id.and_then(|id| ShortString::try_new(id.to_owned()).ok()) {
        p = p.with_message_id(id);
    }
    let h = crate::rabbitmq::wire::Headers::of(&p);
    let _ = h.attributes();
    for (k, _, _) in headers {
        let _ = (h.text(k), h.int(k));
    }
    let _ = h.clone().without(&[crate::rabbitmq::wire::FAILURES]).into_properties(&p);
}

/// AMQP: what Spillway writes comes back as it was sent.
#[cfg(feature = "rabbitmq")]
pub fn amqp_round_trip(id: &str, body: &[u8], attributes: &BTreeMap<String, String>, key: Option<&str>) {
    let m = outgoing(id, body, attributes, key);
    let Ok(p) = crate::rabbitmq::wire::properties_for(&m, 7) else { return };
    let h = crate::rabbitmq::wire::Headers::of(&p);
    assert_eq!(h.text(crate::rabbitmq::wire::ID).as_deref(), Some(id));
    assert_eq!(&h.attributes(), attributes);
    assert_eq!(h.text(crate::rabbitmq::wire::ORDERING_KEY).as_deref(), key);
}
