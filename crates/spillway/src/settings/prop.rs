#![cfg(test)]
//! Arbitrary values in every key: an error that names the key, or settings
//! that start without a panic. Never a panic, never a silent misbehaviour.
//!
//! Two rich configurations (every section set, one with the HTTP sink, one
//! with PostgreSQL) are the starting points. Each case replaces one node of
//! one of them (a scalar, an array or a whole table) with an arbitrary value,
//! including the ones that broke start-up before: `nan`, `inf`, `"*"`,
//! `"0s"`, huge and negative numbers. TOML is the carrier because it, unlike
//! JSON, can hold `nan` and `inf`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use figment::{providers::Format, Figment};
use proptest::prelude::*;
use toml::Value;

use super::Settings;

const HTTP: &str = r#"
[server]
listen = "127.0.0.1:8080"
shutdown_grace = "1s"
[server.limits]
header_read_timeout = "10s"
max_header_bytes = 16384
max_connections = 100
drain_timeout = "30s"
[queue]
backend = "embedded"
path = "/tmp/spillway-prop"
[queues.ingest]
max_message_bytes = 1024
[queues.ingest.dead_letter]
max_receive_count = 5
visibility_timeout = "30s"
[ingest]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
[ingest.api_keys]
header = "x-api-key"
keys = ["prop-key-0123456789abcdef"]
[ingest.throttle]
route = { rate = 1000, burst = 2000, per = "1s" }
per_ip = { rate = 20, burst = 40 }
[ingest.cors]
allowed_origins = ["https://*.test.com", "https://test.com"]
allow_credentials = true
allowed_headers = ["content-type"]
expose_headers = ["x-id"]
max_age = "10m"
strict_origin = false
[ingest.limits]
max_body_bytes = 4096
body_timeout = "10s"
[ingest.publisher]
max_batch = 64
linger = "0s"
max_in_flight = 4
backlog = 100
send_timeout = "5s"
[[ingest.routes]]
name = "events"
path = "/events/{tenant}"
methods = ["POST", "PUT"]
queue = "ingest"
format = "envelope"
forward_headers = ["user-agent"]
content_types = ["application/json"]
max_body_bytes = 2048
ordering_key = { header = "x-customer" }
dedup_key = { json_pointer = "/id" }
success = { status = 202, body = '{"id":"${id}"}', content_type = "application/json" }
throttle = { per_ip = { rate = 5, burst = 10, per = "1m" }, per_key = { rate = 1, burst = 1 } }
require_api_key = true
[ingest.routes.cors]
allowed_origins = ["http://localhost:3000"]
[ingest.routes.schema]
type = "object"
required = ["event"]
properties = { event = { type = "string", enum = ["a", "b"] }, n = { type = "integer", minimum = 0 } }
[consumer]
queue = "ingest"
concurrency = 4
batch_size = 10
wait = "5s"
circuit_threshold = 5
sink_timeout = "30s"
retry = { base = "1s", max = "5m", jitter = 0.2 }
probe = { base = "1s", max = "30s", jitter = 0.2 }
[consumer.sink]
type = "http"
url = "http://127.0.0.1:9/hook"
on_4xx = "retry"
headers = { authorization = "Bearer x" }
[log]
level = "info"
format = "text"
access = true
[metrics]
consumer_listen = "127.0.0.1:9100"
"#;

const POSTGRES: &str = r#"
[queue]
backend = "memory"
[consumer.sink]
type = "postgres"
url = "postgres://app:secret@127.0.0.1/events"
table = "app.events"
create_table = true
lock_timeout = "5s"
"#;

/// One step into a TOML document.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every node's path, the root excluded.
fn paths(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Table(t) => {
            for (k, child) in t {
                at.push(Step::Key(k.clone()));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(Step::Index(i));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match (step, v) {
        (Step::Key(k), Value::Table(t)) => t.get_mut(k),
        (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// Strings that broke start-up before, and their neighbours.
const SPECIAL_STRINGS: [&str; 22] = [
    "",
    "*",
    "0s",
    "1ns",
    "-1s",
    "nan",
    "99999999999999999999s",
    "https://*",
    "/",
    "{x}",
    "GET",
    "postgres://",
    "http://",
    "raw",
    "json",
    "embedded",
    "memory",
    "sqs",
    "0.0.0.0:0",
    "a.b.c",
    "ftp://x",
    "x; drop table y",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::String),
        prop::sample::select(SPECIAL_STRINGS.to_vec()).prop_map(|s| Value::String(s.to_owned())),
        prop::sample::select(vec![0i64, 1, -1, 8191, 65536, i64::MAX, i64::MIN, u32::MAX as i64])
            .prop_map(Value::Integer),
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5, 0.0, 1.0, 1.5, 1e300])
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        1 => Just(Value::Table(toml::map::Map::new())),
    ]
}

/// The names along a path, for the error check.
fn names(path: &[Step]) -> Vec<&str> {
    path.iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect()
}

/// Runs what `serve`, `consume` and `config check` run with the settings.
fn start(s: &Settings, ingest: &spillway_ingest::CompiledIngest) {
    for route in ingest.routes.iter().filter_map(|r| r.cors.as_ref().map(|c| (c, r))) {
        let (policy, r) = route;
        let svc = tower::service_fn(|_: ()| async { Ok::<_, ()>(()) });
        let _ = tower::Layer::layer(&policy.layer(&r.methods), svc);
    }
    if let Some(policy) = &ingest.global_cors {
        let svc = tower::service_fn(|_: ()| async { Ok::<_, ()>(()) });
        let _ = tower::Layer::layer(&policy.layer(&[axum::http::Method::POST]), svc);
    }
    for attempt in [1, 2, 5, 30, u32::MAX] {
        for unit in [0.0, 0.5, 0.999] {
            let _ = s.consumer.retry.delay(attempt, unit);
            let _ = s.consumer.probe.delay(attempt, unit);
        }
    }
    let _ = s.queue_specs();
    let _ = toml::to_string_pretty(&s.masked());
}

/// The two starting documents.
fn base(postgres: bool) -> Value {
    let mut doc: Value = toml::from_str(HTTP).expect("base config");
    if postgres {
        let overlay: Value = toml::from_str(POSTGRES).expect("postgres overlay");
        if let (Value::Table(base), Value::Table(over)) = (&mut doc, overlay) {
            for (k, v) in over {
                match (base.get_mut(&k), v) {
                    (Some(Value::Table(b)), Value::Table(o)) => b.extend(o),
                    (_, v) => {
                        base.insert(k, v);
                    }
                }
            }
        }
        let sink = [Step::Key("consumer".into()), Step::Key("sink".into())];
        if let Some(Value::Table(sink)) = node_mut(&mut doc, &sink) {
            sink.retain(|k, _| ["type", "url", "table", "create_table", "lock_timeout"].contains(&k));
        }
        if let Some(Value::Table(q)) = node_mut(&mut doc, &[Step::Key("queue".into())]) {
            q.remove("path");
        }
    }
    doc
}

fn all_paths(doc: &Value) -> Vec<Vec<Step>> {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    all
}

/// One case: `path` in the base set to `new`. `Err` says what went wrong.
fn check_case(postgres: bool, path: &[Step], new: &Value) -> Result<(), String> {
    let mut doc = base(postgres);
    *node_mut(&mut doc, path).ok_or("no such path")? = new.clone();
    let Ok(text) = toml::to_string(&doc) else { return Ok(()) };
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        Settings::from_figment(&Figment::from(figment::providers::Toml::string(&text)))
    }))
    .map_err(|_| format!("panicked loading {path:?} = {new:?}"))?;
    match loaded {
        Ok((s, ingest)) => catch_unwind(AssertUnwindSafe(|| start(&s, &ingest)))
            .map_err(|_| format!("panicked starting with {path:?} = {new:?}")),
        Err(e) => {
            let message = format!("{e:#}");
            let named = names(path);
            if named.iter().any(|n| message.contains(n)) {
                Ok(())
            } else {
                Err(format!("the error for {path:?} = {new:?} names none of {named:?}: {message}"))
            }
        }
    }
}

/// The values that broke start-up before, and their neighbours.
fn specials() -> Vec<Value> {
    let mut v: Vec<Value> = SPECIAL_STRINGS.iter().map(|s| Value::String((*s).to_owned())).collect();
    v.extend([0i64, 1, -1, 8191, i64::MAX, i64::MIN].map(Value::Integer));
    v.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5, 1.5, 1e300].map(Value::Float));
    v.extend([
        Value::Boolean(true),
        Value::Boolean(false),
        Value::Array(vec![]),
        Value::Table(Default::default()),
    ]);
    v.push(Value::Array(vec![Value::String("*".into())]));
    v
}

/// Every special value in every key of both bases: the sweep a random
/// search would need many thousand cases to cover.
#[test]
fn every_special_value_in_every_key_is_an_error_naming_the_key_or_starts() {
    let mut failures = Vec::new();
    for postgres in [false, true] {
        for path in all_paths(&base(postgres)) {
            for new in specials() {
                if let Err(e) = check_case(postgres, &path, &new) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_value_in_any_key_is_an_error_naming_the_key_or_starts_without_a_panic(
        postgres in any::<bool>(),
        pick in any::<prop::sample::Index>(),
        new in value(),
    ) {
        let path = pick.get(&all_paths(&base(postgres))).clone();
        check_case(postgres, &path, &new).map_err(TestCaseError::fail)?;
    }
}
