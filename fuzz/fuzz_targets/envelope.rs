//! The envelope: `encode_v1` is byte for byte the struct's serialisation,
//! and what it encodes reads back with the same id, facts and body bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use spillway_envelope::{encode_v1, Envelope, EnvelopeV1, RequestMeta, Verification};

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    id: String,
    seconds: i32,
    nanos: u32,
    route: String,
    method: String,
    path: String,
    path_params: BTreeMap<String, String>,
    raw_query: Option<String>,
    headers: BTreeMap<String, String>,
    source_ip: Option<String>,
    content_type: Option<String>,
    verified: Option<(String, String)>,
    body: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let received_at = time::OffsetDateTime::from_unix_timestamp(i64::from(i.seconds)).expect("in range")
        + time::Duration::nanoseconds(i64::from(i.nanos % 1_000_000_000));
    let meta = RequestMeta {
        id: i.id,
        received_at,
        route: i.route,
        method: i.method,
        path: i.path,
        path_params: i.path_params,
        raw_query: i.raw_query,
        headers: i.headers,
        source_ip: i.source_ip,
        content_type: i.content_type,
        verified: i.verified.map(|(scheme, key_id)| Verification { scheme, key_id }),
    };
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&i.body).is_ok();
    let fast = encode_v1(&meta, &i.body, is_json);
    let slow = Envelope::V1(EnvelopeV1::new(meta.clone(), &i.body, is_json)).to_bytes();
    assert_eq!(fast, slow, "encode_v1 differs from the struct's serialisation");
    let Envelope::V1(back) = Envelope::from_slice(&fast).expect("an envelope reads back");
    assert_eq!(back.id, meta.id);
    assert_eq!(back.headers, meta.headers);
    assert_eq!(back.path_params, meta.path_params);
    assert_eq!(back.raw_query, meta.raw_query);
    assert_eq!(back.received_at, meta.received_at);
    // docs/envelope.md: a JSON body keeps its text, surrounding whitespace
    // trimmed; any other keeps its bytes exactly.
    let want: &[u8] = if is_json { i.body.trim_ascii() } else { &i.body };
    assert_eq!(&back.body_bytes().expect("the body decodes")[..], want, "the body changed");
});
