//! A [`Plan`] as a commented `spillway.toml`.
//!
//! Written by hand rather than serialised: each table says where it came
//! from, and the options an operator may want instead (`format = "raw"`, a
//! sink) are there as comments. Every string goes through `toml`'s own
//! quoting. The caller checks the text with the gateway's own settings
//! (`spillway import` runs what `config check` runs), so a bug here is an
//! error, not a file that fails at deploy time.

use std::fmt::Write;

use crate::plan::{Backend, CorsPlan, KeyPlan, Plan, RoutePlan};

/// Where `[ingest.api_keys] files` points: the mount docs/deploy.md uses.
pub const API_KEYS_FILE: &str = "/etc/spillway-keys/keys";

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// A table key: bare when TOML allows it, quoted otherwise (`"q.fifo"`).
fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        k.to_owned()
    } else {
        q(k)
    }
}

fn secs(n: u64) -> String {
    q(&format!("{n}s"))
}

fn key_source(k: &KeyPlan) -> String {
    match k {
        KeyPlan::Header(h) => format!("{{ header = {} }}", q(&h.to_ascii_lowercase())),
        KeyPlan::JsonPointer(p) => format!("{{ json_pointer = {} }}", q(p)),
    }
}

fn cors_lines(out: &mut String, c: &CorsPlan) {
    let _ = writeln!(out, "allowed_origins = {}", list(&c.origins));
    if c.credentials {
        let _ = writeln!(out, "allow_credentials = true");
    }
    if !c.headers.is_empty() {
        let lower: Vec<String> = c.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let _ = writeln!(out, "allowed_headers = {}", list(&lower));
    }
    if let Some(s) = c.max_age_secs {
        let _ = writeln!(out, "max_age = {}", secs(s));
    }
}

/// The TOML text of `plan`; `from` names the input file in the header.
pub fn toml(plan: &Plan, from: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Imported by `spillway import {from}` from {}.", plan.source);
    let _ = writeln!(out, "# What could not be carried over, and what behaves differently, was printed");
    let _ = writeln!(out, "# on standard error: read it before deploying. Check this file with");
    let _ = writeln!(out, "# `spillway --config <file> config check`; create or adopt the queues with");
    let _ = writeln!(out, "# `spillway --config <file> queue ensure`.");
    let _ = writeln!(out);

    let _ = writeln!(out, "[queue]");
    match &plan.backend {
        Backend::Sqs { region } => {
            let _ = writeln!(out, "backend = \"sqs\"");
            match region {
                Some(r) => {
                    let _ = writeln!(out, "region = {}", q(r));
                }
                None => {
                    let _ = writeln!(out, "# region: from the AWS chain (AWS_REGION, the profile)");
                }
            }
            if let Some(r) = plan.queues.values().filter_map(|p| p.retention_secs).max() {
                let _ = writeln!(out, "# MessageRetentionPeriod of the queues `queue ensure` creates");
                let _ = writeln!(out, "retention = {}", secs(r));
            }
        }
        Backend::Kafka => {
            let _ = writeln!(out, "backend = \"kafka\"");
            let _ = writeln!(
                out,
                "# Your Kafka cluster's bootstrap servers (the Kinesis streams become topics)."
            );
            let _ = writeln!(out, "brokers = \"kafka:9092\"");
            if let Some(p) = plan.queues.values().filter_map(|p| p.partitions).max() {
                let _ = writeln!(out, "# The streams' ShardCount");
                let _ = writeln!(out, "partitions = {p}");
            }
        }
    }

    for (name, qp) in &plan.queues {
        let _ = writeln!(out);
        let from = qp.source.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
        match &qp.dlq {
            Some(dlq) => {
                let _ = writeln!(out, "# {name}{from}: dead letters to {dlq}");
            }
            None => {
                let _ = writeln!(out, "# {name}{from}");
            }
        }
        if let Some(b) = qp.max_message_bytes {
            let _ = writeln!(out, "[queues.{}]", key(name));
            let _ = writeln!(out, "max_message_bytes = {b}");
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "[queues.{}.dead_letter]", key(name));
        let mrc = qp.max_receive_count.unwrap_or(5);
        if qp.max_receive_count.is_none() {
            let _ = writeln!(out, "# No RedrivePolicy in the source: Spillway's default.");
        }
        let _ = writeln!(out, "max_receive_count = {mrc}");
        let _ =
            writeln!(out, "visibility_timeout = {}", secs(qp.visibility_timeout_secs.unwrap_or(30).max(1)));
    }

    // One CORS policy for every route: the top-level one, which also
    // answers unknown paths (as API Gateway's gateway responses do).
    let first = plan.routes.first().and_then(|r| r.cors.clone());
    let shared = first.is_some() && plan.routes.iter().all(|r| r.cors == first);
    if let (true, Some(c)) = (shared, &first) {
        let _ = writeln!(out);
        let _ = writeln!(out, "[ingest.cors]");
        cors_lines(&mut out, c);
    }

    if let Some(k) = &plan.api_keys {
        let _ = writeln!(out);
        let _ = writeln!(out, "[ingest.api_keys]");
        let _ = writeln!(out, "header = {}", q(&k.header.to_ascii_lowercase()));
        if !k.names.is_empty() {
            let _ =
                writeln!(out, "# The keys of {}: one per line in the file, never here", k.names.join(", "));
        }
        let _ = writeln!(out, "# (a Kubernetes Secret mounted there: docs/deploy.md).");
        let _ = writeln!(out, "files = {}", list(&[API_KEYS_FILE.to_owned()]));
    }

    if let Some(t) = plan.throttle {
        let _ = writeln!(out);
        let _ = writeln!(out, "[ingest.throttle]");
        let _ = writeln!(out, "# The usage plan's throttle: each API key on its own.");
        let (rate, per) = rate_per(t.rate);
        let _ = writeln!(out, "per_key = {{ rate = {rate}, burst = {}, per = {} }}", t.burst.max(1), q(&per));
    }

    for r in &plan.routes {
        let _ = writeln!(out);
        route(&mut out, r, shared, plan.api_keys.is_some());
    }

    if let Some(first) = plan.routes.first() {
        let _ = writeln!(out);
        let _ = writeln!(out, "[consumer]");
        let _ = writeln!(out, "queue = {}", q(&first.queue));
        let _ = writeln!(out, "# Where `spillway consume` writes (docs/configuration.md):");
        let _ = writeln!(out, "# [consumer.sink]");
        let _ = writeln!(out, "# type = \"postgres\"");
        let _ = writeln!(out, "# url = \"postgres://user@db:5432/events\"");
        let _ = writeln!(out, "# table = \"events\"");
    }
    out
}

/// A rate per second as whole requests per a period: `0.5` → 1 per 2 s.
pub fn rate_per(rate: f64) -> (u64, String) {
    if rate >= 1.0 && rate.fract() == 0.0 {
        return (rate as u64, "1s".to_owned());
    }
    if rate >= 1.0 {
        // 2.5/s → 5 per 2000 ms, to the millisecond.
        return ((rate * 1000.0).round() as u64, "1000s".to_owned());
    }
    let per_ms = (1000.0 / rate.max(1e-6)).round() as u64;
    (1, format!("{per_ms}ms"))
}

fn route(out: &mut String, r: &RoutePlan, shared_cors: bool, keys: bool) {
    let _ = writeln!(out, "# {}", r.source);
    let _ = writeln!(out, "[[ingest.routes]]");
    let _ = writeln!(out, "path = {}", q(&r.path));
    let _ = writeln!(out, "queue = {}", q(&r.queue));
    let _ = writeln!(out, "methods = {}", list(&r.methods));
    if r.body_alone {
        let _ = writeln!(out, "# API Gateway put the request body alone in the message; Spillway sends its");
        let _ = writeln!(out, "# envelope (docs/envelope.md: the body and the request's facts). For a");
        let _ = writeln!(out, "# consumer that reads the body alone, uncomment:");
        let _ = writeln!(out, "# format = \"raw\"");
    }
    if let Some(s) = &r.success {
        match &s.body {
            Some(body) => {
                let _ = writeln!(out, "success = {{ status = {}, body = {} }}", s.status, q(body));
            }
            None => {
                let _ = writeln!(out, "success = {{ status = {} }}", s.status);
            }
        }
    }
    if !r.forward_headers.is_empty() {
        let lower: Vec<String> = r.forward_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let _ = writeln!(out, "forward_headers = {}", list(&lower));
    }
    if !r.content_types.is_empty() {
        let _ = writeln!(out, "content_types = {}", list(&r.content_types));
    }
    if let Some(k) = &r.ordering_key {
        let _ = writeln!(out, "ordering_key = {}", key_source(k));
    }
    if let Some(k) = &r.dedup_key {
        let _ = writeln!(out, "dedup_key = {}", key_source(k));
    }
    if keys {
        let _ = writeln!(out, "require_api_key = {}", r.require_api_key);
    }
    if !shared_cors {
        if let Some(c) = &r.cors {
            let _ = writeln!(out, "[ingest.routes.cors]");
            cors_lines(out, c);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_become_whole_requests_per_period() {
        assert_eq!(super::rate_per(100.0), (100, "1s".to_owned()));
        assert_eq!(super::rate_per(0.5), (1, "2000ms".to_owned()));
        assert_eq!(super::rate_per(2.5), (2500, "1000s".to_owned()));
    }

    #[test]
    fn keys_that_toml_cannot_take_bare_are_quoted() {
        assert_eq!(super::key("my-queue"), "my-queue");
        assert_eq!(super::key("orders.fifo"), "\"orders.fifo\"");
    }
}
