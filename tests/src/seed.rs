//! The seed's own setup end to end, for any configuration that claims to be
//! it: `docs/examples/seed.toml` as shipped (tests/tests/sqs.rs) and what
//! `spillway import` makes of `docs/examples/seed-serverless.yml`
//! (tests/tests/import.rs). On a moto server of its own, with the database
//! behind: CORS reflected on the preflight, the PUT and an error answer;
//! the message in `my-queue` and nowhere else; and a message the database
//! refuses in `my-queue-dlq` after exactly 5 receives, with Spillway's
//! metadata.

use std::time::Duration;

use spillway_queue::Admin;

use crate::{count, eventually, interop, pg, pg_url, Moto, Workspace};

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Runs the seed's checks on `config`, whose PUT on `/my/path` answers
/// `success_status`.
pub async fn the_seed_checks(config: &str, success_status: u16) {
    let moto = Moto::start().await;
    let db = pg().await;
    let table = format!("seed_{}_{success_status}", std::process::id());
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (
             id text PRIMARY KEY, queue text NOT NULL, payload jsonb NOT NULL,
             enqueued_at timestamptz NOT NULL, inserted_at timestamptz NOT NULL DEFAULT now(),
             CONSTRAINT no_poison CHECK (NOT (payload->'body' ? 'poison')))"
    ))
    .await
    .expect("create table");
    let ws = [
        ("SPILLWAY_QUEUE__ENDPOINT_URL", moto.url()),
        ("SPILLWAY_QUEUE__ACCESS_KEY_ID", "test".to_owned()),
        ("SPILLWAY_QUEUE__SECRET_ACCESS_KEY", "test".to_owned()),
        ("SPILLWAY_CONSUMER__SINK__TYPE", "postgres".to_owned()),
        ("SPILLWAY_CONSUMER__SINK__URL", pg_url()),
        ("SPILLWAY_CONSUMER__SINK__TABLE", table.clone()),
        ("SPILLWAY_CONSUMER__SINK__CREATE_TABLE", "false".to_owned()),
        ("SPILLWAY_CONSUMER__WAIT", "1s".to_owned()),
        ("SPILLWAY_CONSUMER__RETRY", "{ base = \"100ms\", max = \"300ms\", jitter = 0.1 }".to_owned()),
    ]
    .iter()
    .fold(Workspace::new(config), |ws, (k, v)| ws.with_env(k, v));
    let ensured = ws.cli(&["queue", "ensure"]);
    assert!(ensured.status.success(), "{}", String::from_utf8_lossy(&ensured.stderr));
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let origin = "https://app.test.com";

    // The preflight, the PUT and an error answer all reflect the origin.
    let pre = http
        .request(reqwest::Method::OPTIONS, gw.url("/my/path"))
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .expect("preflight");
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(header(&pre, "access-control-allow-origin"), Some(origin));
    let put = |body: &'static str| {
        http.put(gw.url("/my/path"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(body)
    };
    let res = put(r#"{"poison":true}"#).send().await.expect("put");
    assert_eq!(res.status(), success_status);
    assert_eq!(header(&res, "access-control-allow-origin"), Some(origin));
    assert_eq!(header(&res, "access-control-allow-credentials"), Some("true"));
    let poison = res.json::<serde_json::Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let bad = put("{not json").send().await.expect("put");
    assert_eq!(bad.status(), 400);
    assert_eq!(header(&bad, "access-control-allow-origin"), Some(origin), "an error answer without CORS");
    // An origin of none of the three patterns gets no CORS headers.
    let other = http
        .put(gw.url("/my/path"))
        .header("origin", "https://test.com.evil.example")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("put");
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    // The messages are in `my-queue`, and nothing else is.
    let sqs = moto.backend().await;
    assert_eq!(sqs.stats("my-queue").await.expect("stats").visible, 2);

    // The database refuses one: 5 receives, then `my-queue-dlq`.
    let good = put(r#"{"fine":true}"#).send().await.expect("put");
    assert_eq!(good.status(), success_status);
    let _consumer = ws.consume();
    eventually(Duration::from_secs(60), "the refused message in the DLQ", || async {
        sqs.stats("my-queue").await.is_ok_and(|s| s.dead == 1 && s.pending() == 0)
    })
    .await;
    assert_eq!(count(&db, &table).await, 2, "the good messages are in the table");
    let peek = ws.cli(&["dlq", "peek"]);
    let peeked = String::from_utf8_lossy(&peek.stdout);
    assert!(peek.status.success() && peeked.contains(&poison), "dlq peek: {peeked}");
    let dead: serde_json::Value =
        serde_json::from_str(&interop("boto3_client.py", &moto.url(), &["read", "my-queue-dlq"]))
            .expect("json");
    let meta: serde_json::Value =
        serde_json::from_str(dead["attributes"]["spillway"].as_str().expect("spillway attribute"))
            .expect("meta");
    assert_eq!(meta["id"], poison.as_str());
    assert_eq!(meta["rc"], 5, "dead-lettered after exactly 5 receives: {meta}");
    assert_eq!(meta["src"], "my-queue");
    assert!(meta["err"].as_str().is_some_and(|e| e.contains("no_poison")), "{meta}");
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
