//! What the API Gateway controls cost a request when a route turns them on:
//! the JSON Schema check, the API key check, the rate limits. Each beside
//! the baseline a JSON route already pays, parsing the body once to check
//! it is JSON (`json_parse_baseline`), so the figures are ratios within one
//! run (docs/benchmarks.md).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use axum::http::{HeaderMap, HeaderValue};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use spillway_ingest::{
    api_key::{ApiKeys, ApiKeysConfig},
    schema::BodySchema,
    throttle::{RateConfig, Throttle, ThrottleConfig},
};

/// The benchmark's 200-byte JSON body.
const BODY: &[u8] = br#"{"event":"page_view","user":42,"email":"someone@test.com","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn access(c: &mut Criterion) {
    let schema = BodySchema::compile(
        &serde_json::json!({
            "type": "object",
            "required": ["event", "user"],
            "properties": {
                "event": { "type": "string", "enum": ["page_view", "click"] },
                "user": { "type": "integer", "minimum": 1 },
                "email": { "type": "string", "format": "email" },
                "pad": { "type": "string", "maxLength": 1000 }
            }
        }),
        "bench",
    )
    .expect("schema");
    let keys: Vec<String> = (0..10).map(|i| format!("key-{i:02}-0123456789abcdef0123456789")).collect();
    let api_keys = ApiKeys::compile(&ApiKeysConfig { keys: keys.clone(), ..ApiKeysConfig::default() })
        .expect("keys")
        .expect("some");
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_str(&keys[9]).expect("value"));
    // Never exhausted in a run: the check is measured, not the refusal.
    let many = RateConfig { rate: 1_000_000_000, burst: u32::MAX / 2, per: Duration::from_secs(1) };
    let throttle = Throttle::compile(
        &ThrottleConfig {
            route: Some(many.clone()),
            per_ip: Some(many.clone()),
            per_key: Some(many),
            ..ThrottleConfig::default()
        },
        "bench",
    )
    .expect("throttle")
    .expect("limits");
    let clients: Vec<IpAddr> = (0..1000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).collect();

    let mut g = c.benchmark_group("access");
    g.bench_function("json_parse_baseline", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(BODY)).is_ok())
    });
    g.bench_function("schema_check", |b| b.iter(|| schema.check(black_box(BODY)).is_ok()));
    g.bench_function("api_key_last_of_10", |b| b.iter(|| api_keys.check(black_box(&headers)).is_ok()));
    let mut i = 0usize;
    g.bench_function("throttle_ip_key_route_1000_clients", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            throttle.check(black_box(Some(clients[i])), black_box(Some(i % 10))).is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, access);
criterion_main!(benches);
