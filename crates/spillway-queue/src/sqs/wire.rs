//! A message on SQS: what Spillway puts in the body and the message
//! attributes, and the limits SQS sets on both, checked before any call.
//!
//! | where | what |
//! |---|---|
//! | body | the message body as text when it is non-empty text of the characters SQS allows; otherwise base64 (and `enc` says so) |
//! | one String attribute per message attribute, by its own name | the message's attributes |
//! | the String attribute `spillway` | a JSON object: `id`, `enq` (first sent, ms since the epoch), and where they apply `key` (ordering key), `enc` (`"base64"`, or `"empty"` for an empty body, sent as `-`), `fail` (failed receives carried across re-sends), `first` (first receive, ms), `err` (last error); on dead letters also `src`, `rc`, `last`, `dl` |
//!
//! SQS allows 10 message attributes; `spillway` takes one, so a message
//! carries at most 9 of its own. A message that SQS would refuse is refused
//! here first, with `Invalid` and nothing sent.
//!
//! A message sent by another client has no `spillway` attribute: its id is
//! the SQS message id, its body the text as sent, its count SQS's own.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// The attribute that carries Spillway's metadata.
pub(crate) const META: &str = "spillway";
/// SQS's limit on message attributes per message.
pub(crate) const MAX_ATTRIBUTES: usize = 10;
/// What an empty body travels as: SQS refuses an empty one.
const EMPTY_BODY: &str = "-";
/// A dead letter's `err` is cut to this many bytes, so the metadata of a
/// message near the size limit still fits.
const MAX_ERROR_BYTES: usize = 1024;

/// How the body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// Standard base64 with padding: the body was binary, or text with
    /// characters SQS refuses.
    Base64,
    /// The body was empty; the wire body is `-`.
    Empty,
}

/// Spillway's metadata, in the `spillway` attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) id: String,
    pub(crate) enq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) enc: Option<Encoding>,
    /// Failed receives of earlier copies (a release re-sends the message).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) fail: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) first: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) err: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dl: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Meta {
    /// The same message as a fresh one: no count, no error, no dead-letter
    /// fields. What a redrive sends back.
    pub(crate) fn reset(&self) -> Self {
        Self { id: self.id.clone(), enq: self.enq, key: self.key.clone(), enc: self.enc, ..Self::default() }
    }

    pub(crate) fn set_error(&mut self, reason: &str) {
        let mut end = reason.len().min(MAX_ERROR_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.err = Some(reason[..end].to_owned());
    }
}

/// A message ready to send: body and attributes as SQS takes them.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
    /// The size SQS counts: body plus each attribute's name, type and value.
    pub(crate) size: usize,
}

/// Whether SQS takes this character in a body or a String attribute:
/// `#x9 | #xA | #xD | #x20–#xD7FF | #xE000–#xFFFD | #x10000–#x10FFFF`.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// The body as SQS carries it, and how it was encoded.
pub(crate) fn encode_body(body: &[u8]) -> (String, Option<Encoding>) {
    if body.is_empty() {
        return (EMPTY_BODY.to_owned(), Some(Encoding::Empty));
    }
    match std::str::from_utf8(body) {
        Ok(text) if text.chars().all(allowed) => (text.to_owned(), None),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), Some(Encoding::Base64)),
    }
}

/// The body as it was sent. `Invalid` for base64 that does not decode.
pub(crate) fn decode_body(wire: &str, enc: Option<Encoding>) -> Result<Bytes, QueueError> {
    match enc {
        None => Ok(Bytes::copy_from_slice(wire.as_bytes())),
        Some(Encoding::Empty) => Ok(Bytes::new()),
        Some(Encoding::Base64) => base64::engine::general_purpose::STANDARD
            .decode(wire)
            .map(Bytes::from)
            .map_err(|e| QueueError::Invalid(format!("sqs: a body marked base64 does not decode: {e}"))),
    }
}

/// A name SQS takes for a message attribute: up to 256 of `A–Z a–z 0–9 _ - .`,
/// no leading, trailing or doubled `.`, not starting with `AWS.` or `Amazon.`.
fn check_name(name: &str) -> Result<(), QueueError> {
    let bad = |why: &str| Err(QueueError::Invalid(format!("attribute {name:?}: {why} on SQS")));
    if name.is_empty() || name.len() > 256 {
        return bad("a name must have 1 to 256 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return bad("a name may only hold letters, digits, `_`, `-` and `.`");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return bad("a name may not start or end with `.` or hold `..`");
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        return bad("names starting with `AWS.` or `Amazon.` are reserved");
    }
    if name == META {
        return bad("the name `spillway` is Spillway's own");
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), QueueError> {
    if value.is_empty() {
        return Err(QueueError::Invalid(format!("attribute {name:?}: SQS refuses an empty value")));
    }
    if let Some(c) = value.chars().find(|&c| !allowed(c)) {
        return Err(QueueError::Invalid(format!(
            "attribute {name:?}: SQS refuses the character {c:?} in a value"
        )));
    }
    Ok(())
}

fn string_value(v: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| QueueError::Invalid(format!("sqs attribute: {e}")))
}

/// The wire form of a message: checks every SQS rule on attributes, encodes
/// the body, adds the metadata. `Invalid` names the rule a message breaks.
pub(crate) fn encode(
    body: &[u8],
    attributes: &BTreeMap<String, String>,
    mut meta: Meta,
) -> Result<Wire, QueueError> {
    if attributes.len() + 1 > MAX_ATTRIBUTES {
        return Err(QueueError::Invalid(format!(
            "{} attributes: SQS carries at most {MAX_ATTRIBUTES} per message and Spillway uses one, \
             so at most {} of the message's own",
            attributes.len(),
            MAX_ATTRIBUTES - 1
        )));
    }
    let mut out = HashMap::with_capacity(attributes.len() + 1);
    let mut size = 0;
    for (k, v) in attributes {
        check_name(k)?;
        check_value(k, v)?;
        size += k.len() + "String".len() + v.len();
        out.insert(k.clone(), string_value(v)?);
    }
    let (wire_body, enc) = encode_body(body);
    meta.enc = enc;
    let json = serde_json::to_string(&meta).map_err(|e| QueueError::Invalid(format!("sqs metadata: {e}")))?;
    if let Some(c) = json.chars().find(|&c| !allowed(c)) {
        return Err(QueueError::Invalid(format!("the id, key or error holds {c:?}, which SQS refuses")));
    }
    size += META.len() + "String".len() + json.len() + wire_body.len();
    out.insert(META.to_owned(), string_value(&json)?);
    Ok(Wire { body: wire_body, attributes: out, size })
}

/// What a received SQS message holds, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub(crate) meta: Meta,
    pub(crate) body: Bytes,
    pub(crate) attributes: BTreeMap<String, String>,
    /// SQS's receive count of this copy.
    pub(crate) approximate_receive_count: u32,
    /// SQS's first receive of this copy, ms.
    pub(crate) first_receive_ms: Option<i64>,
    /// FIFO only: the group.
    pub(crate) group: Option<String>,
}

fn system_int(m: &Message, name: MessageSystemAttributeName) -> Option<i64> {
    m.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse().ok())
}

/// Decodes a received message; one from another client (no `spillway`
/// attribute) gets metadata from SQS's own attributes.
pub(crate) fn decode(m: &Message) -> Result<Decoded, QueueError> {
    let mut attributes = BTreeMap::new();
    let mut meta = None;
    for (k, v) in m.message_attributes().into_iter().flatten() {
        let text = match (v.string_value(), v.binary_value()) {
            (Some(s), _) => s.to_owned(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.encode(b.as_ref()),
            (None, None) => String::new(),
        };
        if k == META {
            meta = serde_json::from_str::<Meta>(&text).ok();
            if meta.is_some() {
                continue;
            }
        }
        attributes.insert(k.clone(), text);
    }
    // Another client's message: SQS's MessageId is unique and stays with
    // it; a re-send (release, redrive) carries it on in the metadata.
    let meta = match meta {
        Some(meta) if !meta.id.is_empty() => meta,
        Some(meta) => Meta { id: m.message_id().unwrap_or_default().to_owned(), ..meta },
        None => Meta {
            id: m.message_id().unwrap_or_default().to_owned(),
            enq: system_int(m, MessageSystemAttributeName::SentTimestamp).unwrap_or_default(),
            ..Meta::default()
        },
    };
    let body = decode_body(m.body().unwrap_or_default(), meta.enc)?;
    Ok(Decoded {
        body,
        attributes,
        approximate_receive_count: system_int(m, MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
        first_receive_ms: system_int(m, MessageSystemAttributeName::ApproximateFirstReceiveTimestamp),
        group: m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).cloned(),
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_travels_as_is_and_everything_else_as_base64() {
        assert_eq!(encode_body(b"{\"a\":1}\n"), ("{\"a\":1}\n".to_owned(), None));
        assert_eq!(encode_body(b""), ("-".to_owned(), Some(Encoding::Empty)));
        let (wire, enc) = encode_body(&[0, 159, 146, 150]);
        assert_eq!(enc, Some(Encoding::Base64));
        assert_eq!(decode_body(&wire, enc).expect("decodes").as_ref(), &[0, 159, 146, 150]);
        // Valid UTF-8 with a character SQS refuses (a control character).
        assert_eq!(encode_body("a\u{1}b".as_bytes()).1, Some(Encoding::Base64));
        assert_eq!(decode_body("-", Some(Encoding::Empty)).expect("empty").len(), 0);
    }

    #[test]
    fn attributes_that_sqs_refuses_are_invalid_before_any_call() {
        let meta = Meta { id: "x".into(), ..Meta::default() };
        let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let too_many: BTreeMap<String, String> = (0..10).map(|i| (format!("a{i}"), "v".to_owned())).collect();
        for (case, why) in [
            (too_many, "at most 9"),
            (attrs(&[("bad name", "v")]), "letters, digits"),
            (attrs(&[("AWS.thing", "v")]), "reserved"),
            (attrs(&[("a..b", "v")]), "`..`"),
            (attrs(&[("spillway", "v")]), "Spillway's own"),
            (attrs(&[("k", "")]), "empty value"),
            (attrs(&[("k", "a\u{0}b")]), "character"),
        ] {
            let err = encode(b"b", &case, meta.clone()).expect_err("refused");
            assert!(matches!(&err, QueueError::Invalid(m) if m.contains(why)), "{why}: {err:?}");
        }
        let nine: BTreeMap<String, String> = (0..9).map(|i| (format!("a{i}"), "v".to_owned())).collect();
        encode(b"b", &nine, meta).expect("nine attributes fit");
    }

    #[test]
    fn size_counts_body_names_types_and_values() {
        let meta = Meta { id: "id".into(), enq: 1, ..Meta::default() };
        let w = encode(b"hello", &BTreeMap::from([("k".to_owned(), "vv".to_owned())]), meta).expect("wire");
        let json = w.attributes[META].string_value().expect("meta").len();
        assert_eq!(w.size, 5 + (1 + 6 + 2) + (META.len() + 6 + json));
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let mut m = Meta::default();
        m.set_error(&"é".repeat(1000));
        let err = m.err.expect("error");
        assert!(err.len() <= MAX_ERROR_BYTES && err.chars().all(|c| c == 'é'));
    }
}
