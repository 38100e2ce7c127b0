//! The envelope: how one HTTP request travels through the queue.
//!
//! Consumers in other languages read it straight from the queue, so the JSON
//! is a public, versioned format, documented field by field in
//! `docs/envelope.md`. The `type` tag names the version: a newer consumer
//! still reads older messages, and a change that would break a reader gets a
//! new tag, never a silent change to `spillway.envelope.v1`.
//!
//! The body keeps its bytes exactly. A JSON body is embedded as JSON (so a
//! database can store the envelope as `jsonb` and query into it), UTF-8 text
//! as a string, anything else as base64; `body_encoding` says which.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

/// The tag of version 1.
pub const V1: &str = "spillway.envelope.v1";

/// The attribute that carries the payload's format on every queued message,
/// so a consumer knows how to read the body without guessing.
pub const FORMAT_ATTRIBUTE: &str = "spillway-format";

/// Why bytes could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Spillway envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown envelope version `{0}`: this reader knows `spillway.envelope.v1`")]
    UnknownVersion(String),
    #[error("envelope body is not valid {encoding}: {reason}")]
    Body { encoding: &'static str, reason: String },
}

/// Every version of the envelope a reader may meet.
///
/// Read with [`Envelope::from_slice`], which looks at the `type` tag first and
/// then reads that version. (Serde's internally tagged enums buffer their
/// content, which would lose the zero-copy JSON body.)
#[derive(Debug, Clone)]
pub enum Envelope {
    V1(EnvelopeV1),
}

/// The `type` tag of version 1; a unit type so the tag is checked on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum V1Tag {
    #[serde(rename = "spillway.envelope.v1")]
    V1,
}

#[derive(Deserialize)]
struct TagOnly {
    #[serde(rename = "type")]
    tag: String,
}

/// How the body bytes are written in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// The body was valid JSON and is embedded as is.
    Json,
    /// The body was valid UTF-8 and is a JSON string.
    Text,
    /// Anything else, as standard base64 with padding.
    Base64,
}

impl BodyEncoding {
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::Base64 => "base64",
        }
    }
}

/// Version 1 of the envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeV1 {
    /// Always `spillway.envelope.v1`.
    #[serde(rename = "type")]
    pub tag: V1Tag,
    /// The message id (a ULID), also returned to the client.
    pub id: String,
    /// When the gateway received the request, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The configured route's name.
    pub route: String,
    pub method: String,
    /// The request path as received, without the query.
    pub path: String,
    /// Values of the route's `{params}`.
    pub path_params: BTreeMap<String, String>,
    /// Query parameters; a repeated key keeps its last value (`raw_query` has all).
    pub query: BTreeMap<String, String>,
    pub raw_query: Option<String>,
    /// The headers the route forwards, with lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The client address as the gateway saw it.
    pub source_ip: Option<String>,
    pub content_type: Option<String>,
    /// The webhook signature that verified the request, on a route with
    /// `verify`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verification>,
    pub body_encoding: BodyEncoding,
    pub body: Box<RawValue>,
}

/// Which webhook signature scheme verified a request, and with which
/// secret (its key id: the first 8 bytes of the secret's SHA-256 in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub scheme: String,
    pub key_id: String,
}

/// The request facts an envelope is built from, apart from the body.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub id: String,
    pub received_at: OffsetDateTime,
    pub route: String,
    pub method: String,
    pub path: String,
    pub path_params: BTreeMap<String, String>,
    pub raw_query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub source_ip: Option<String>,
    pub content_type: Option<String>,
    pub verified: Option<Verification>,
}

impl EnvelopeV1 {
    /// Wraps a request. `body_is_json` says the caller already checked that
    /// the body parses as JSON (ingest does, for JSON routes); otherwise the
    /// body is checked here and embedded as text or base64 if it does not parse.
    pub fn new(meta: RequestMeta, body: &[u8], body_is_json: bool) -> Self {
        let (body_encoding, body) = encode_body(body, body_is_json);
        let query = parse_query(meta.raw_query.as_deref());
        Self {
            tag: V1Tag::V1,
            id: meta.id,
            received_at: meta.received_at,
            route: meta.route,
            method: meta.method,
            path: meta.path,
            path_params: meta.path_params,
            query,
            raw_query: meta.raw_query,
            headers: meta.headers,
            source_ip: meta.source_ip,
            content_type: meta.content_type,
            verified: meta.verified,
            body_encoding,
            body,
        }
    }

    /// The body bytes exactly as the client sent them.
    pub fn body_bytes(&self) -> Result<Bytes, EnvelopeError> {
        let bad = |reason: String| EnvelopeError::Body { encoding: self.body_encoding.name(), reason };
        match self.body_encoding {
            BodyEncoding::Json => Ok(Bytes::copy_from_slice(self.body.get().as_bytes())),
            BodyEncoding::Text => serde_json::from_str::<String>(self.body.get())
                .map(Bytes::from)
                .map_err(|e| bad(e.to_string())),
            BodyEncoding::Base64 => {
                let s: String = serde_json::from_str(self.body.get()).map_err(|e| bad(e.to_string()))?;
                BASE64.decode(s).map(Bytes::from).map_err(|e| bad(e.to_string()))
            }
        }
    }
}

impl Envelope {
    /// The JSON bytes that go into the queue.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing cannot fail: every map key is a string and the body is
        // already valid JSON.
        let json = match self {
            Self::V1(e) => serde_json::to_vec(e),
        };
        Bytes::from(json.unwrap_or_default())
    }

    /// Reads an envelope of any known version.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let TagOnly { tag } = serde_json::from_slice(bytes)?;
        match tag.as_str() {
            V1 => Ok(Self::V1(serde_json::from_slice(bytes)?)),
            other => Err(EnvelopeError::UnknownVersion(other.to_owned())),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::V1(e) => &e.id,
        }
    }
}

/// The queued bytes of a request, written in one pass: exactly the bytes
/// `Envelope::V1(EnvelopeV1::new(meta, body, body_is_json)).to_bytes()`
/// gives (a test holds the two to that), without building the struct.
///
/// Why a second writer: on the ingest path the struct costs a copy of every
/// field and, worse, a second full parse of a JSON body the gateway has
/// already checked (`RawValue::from_string` validates). Here a body the
/// caller vouches for (`body_is_json`) is copied in as is.
///
/// Contract: with `body_is_json`, `body` must parse as JSON (ingest checks
/// it before calling); a body that is not UTF-8 is still base64, as in
/// [`EnvelopeV1::new`].
pub fn encode_v1(meta: &RequestMeta, body: &[u8], body_is_json: bool) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 320);
    // Writing JSON into a Vec cannot fail: every key is a string.
    let _ = write_v1(&mut out, meta, body, body_is_json);
    Bytes::from(out)
}

fn write_v1(
    out: &mut Vec<u8>,
    meta: &RequestMeta,
    body: &[u8],
    body_is_json: bool,
) -> serde_json::Result<()> {
    fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) -> serde_json::Result<()> {
        out.push(b',');
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, value)
    }
    out.extend_from_slice(b"{\"type\":\"spillway.envelope.v1\"");
    field(out, "id", &meta.id)?;
    let received_at = meta.received_at.format(&time::format_description::well_known::Rfc3339);
    field(out, "received_at", received_at.as_deref().unwrap_or(""))?;
    field(out, "route", &meta.route)?;
    field(out, "method", &meta.method)?;
    field(out, "path", &meta.path)?;
    field(out, "path_params", &meta.path_params)?;
    field(out, "query", &parse_query(meta.raw_query.as_deref()))?;
    field(out, "raw_query", &meta.raw_query)?;
    field(out, "headers", &meta.headers)?;
    field(out, "source_ip", &meta.source_ip)?;
    field(out, "content_type", &meta.content_type)?;
    if let Some(v) = &meta.verified {
        field(out, "verified", v)?;
    }
    match std::str::from_utf8(body) {
        Ok(text) if body_is_json => {
            field(out, "body_encoding", &BodyEncoding::Json)?;
            out.extend_from_slice(b",\"body\":");
            out.extend_from_slice(text.trim().as_bytes());
        }
        _ => {
            let (encoding, raw) = encode_body(body, body_is_json);
            field(out, "body_encoding", &encoding)?;
            field(out, "body", &raw)?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// Query parameters; a repeated key keeps its last value.
fn parse_query(raw: Option<&str>) -> BTreeMap<String, String> {
    raw.map(|q| {
        q.split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    })
    .unwrap_or_default()
}

fn encode_body(body: &[u8], known_json: bool) -> (BodyEncoding, Box<RawValue>) {
    if let Ok(text) = std::str::from_utf8(body) {
        if known_json
            || (!text.trim().is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
        {
            if let Ok(raw) = RawValue::from_string(text.trim().to_owned()) {
                return (BodyEncoding::Json, raw);
            }
        }
        if let Ok(raw) = serde_json::value::to_raw_value(text) {
            return (BodyEncoding::Text, raw);
        }
    }
    let b64 = BASE64.encode(body);
    // A base64 string is always representable as a JSON string.
    let raw = serde_json::value::to_raw_value(&b64).unwrap_or_else(|_| RawValue::NULL.to_owned());
    (BodyEncoding::Base64, raw)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RequestMeta {
        RequestMeta {
            id: "01JDXR0000000000000000TEST".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
            route: "ingest".into(),
            method: "POST".into(),
            path: "/ingest".into(),
            path_params: BTreeMap::new(),
            raw_query: Some("a=1&b=x%20y&b=z".into()),
            headers: BTreeMap::new(),
            source_ip: Some("127.0.0.1".into()),
            content_type: Some("application/json".into()),
            verified: None,
        }
    }

    fn round_trip(body: &[u8]) -> (BodyEncoding, Bytes) {
        let env = Envelope::V1(EnvelopeV1::new(meta(), body, false));
        let bytes = env.to_bytes();
        let Envelope::V1(back) = Envelope::from_slice(&bytes).expect("parse");
        (back.body_encoding, back.body_bytes().expect("body"))
    }

    #[test]
    fn json_body_is_embedded_as_json() {
        let (enc, body) = round_trip(br#"{"event":"click","n":1}"#);
        assert_eq!(enc, BodyEncoding::Json);
        assert_eq!(body.as_ref(), br#"{"event":"click","n":1}"#);
    }

    #[test]
    fn text_and_binary_bodies_keep_their_bytes() {
        assert_eq!(round_trip(b"plain text"), (BodyEncoding::Text, Bytes::from_static(b"plain text")));
        assert_eq!(round_trip(b""), (BodyEncoding::Text, Bytes::new()));
        let bin = [0u8, 159, 146, 150, 255];
        assert_eq!(round_trip(&bin), (BodyEncoding::Base64, Bytes::copy_from_slice(&bin)));
    }

    #[test]
    fn the_type_tag_names_the_version() {
        let env = Envelope::V1(EnvelopeV1::new(meta(), b"{}", true));
        let v: serde_json::Value = serde_json::from_slice(&env.to_bytes()).expect("json");
        assert_eq!(v["type"], V1);
        assert_eq!(v["received_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["query"]["b"], "z");
        assert_eq!(v["query"]["a"], "1");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("x%20y+z%2"), "x y z%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn the_one_pass_writer_gives_the_structs_bytes() {
        let mut odd = meta();
        odd.headers.insert("x-quote".into(), "a \"b\" \\ c\n\u{1}é✓".into());
        odd.path_params.insert("tenant".into(), "ünï/😀".into());
        odd.raw_query = Some("q=%22x%22&e=&&k".into());
        odd.received_at = OffsetDateTime::from_unix_timestamp_nanos(1_764_227_000_123_456_789).expect("time");
        let mut bare = meta();
        bare.raw_query = None;
        bare.source_ip = None;
        bare.content_type = None;
        let bodies: [(&[u8], bool); 8] = [
            (br#"{"event":"click","n":1}"#, true),
            (b"  [1, 2, {\"a\": null}]\n", true),
            (br#""just a string""#, false),
            (b"plain text \"quoted\"", false),
            (b"", false),
            (&[0u8, 159, 146, 150, 255], false),
            (&[0u8, 159, 146, 150, 255], true),
            (br#"{"nested":{"deep":[true,false]}}"#, false),
        ];
        for m in [meta(), odd, bare] {
            for (body, is_json) in bodies {
                let via_struct = Envelope::V1(EnvelopeV1::new(m.clone(), body, is_json)).to_bytes();
                let direct = encode_v1(&m, body, is_json);
                assert_eq!(
                    String::from_utf8_lossy(&direct),
                    String::from_utf8_lossy(&via_struct),
                    "body {body:?}, json {is_json}"
                );
            }
        }
    }

    #[test]
    fn an_unknown_version_is_an_error() {
        assert!(Envelope::from_slice(br#"{"type":"spillway.envelope.v9"}"#).is_err());
    }
}
