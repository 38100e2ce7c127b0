//! The envelope encoder: the per-request CPU cost Spillway adds to the body.

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spillway_envelope::{encode_v1, Envelope, EnvelopeV1, RequestMeta};
use time::OffsetDateTime;

fn meta() -> RequestMeta {
    RequestMeta {
        id: "01JDXR5V9W0000000000000000".into(),
        received_at: OffsetDateTime::UNIX_EPOCH,
        route: "/ingest".into(),
        method: "POST".into(),
        path: "/ingest".into(),
        path_params: BTreeMap::new(),
        raw_query: Some("source=web&v=2".into()),
        headers: BTreeMap::from([("user-agent".into(), "bench/1.0".into())]),
        source_ip: Some("10.0.0.1".into()),
        content_type: Some("application/json".into()),
        verified: None,
    }
}

fn json_body(len: usize) -> Vec<u8> {
    let pad = "x".repeat(len.saturating_sub(40));
    format!(r#"{{"event":"page_view","user":42,"pad":"{pad}"}}"#).into_bytes()
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_encode");
    for len in [200usize, 4096, 65536] {
        let json = json_body(len);
        let binary: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("json_checked", len), &json, |b, body| {
            b.iter(|| Envelope::V1(EnvelopeV1::new(meta(), black_box(body), true)).to_bytes())
        });
        // What ingest runs: the one-pass writer, over a body it already
        // checked (building the request facts included, as above).
        g.bench_with_input(BenchmarkId::new("json_one_pass", len), &json, |b, body| {
            b.iter(|| encode_v1(&meta(), black_box(body), true))
        });
        g.bench_with_input(BenchmarkId::new("json_detected", len), &json, |b, body| {
            b.iter(|| Envelope::V1(EnvelopeV1::new(meta(), black_box(body), false)).to_bytes())
        });
        g.bench_with_input(BenchmarkId::new("binary_base64", len), &binary, |b, body| {
            b.iter(|| Envelope::V1(EnvelopeV1::new(meta(), black_box(body), false)).to_bytes())
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let bytes = Envelope::V1(EnvelopeV1::new(meta(), &json_body(200), true)).to_bytes();
    c.bench_function("envelope_decode/200", |b| b.iter(|| Envelope::from_slice(black_box(&bytes))));
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
