//! The `sqs` backend end to end, each test on a moto server of its own
//! (from the venv `deploy/local/services.sh up` makes):
//!
//! - the original setup, from `docs/examples/seed.toml` as shipped
//!   (`spillway_e2e::seed`): CORS on the preflight, the PUT and an error
//!   answer, the message in `my-queue`, and a message the database refuses
//!   in `my-queue-dlq` after exactly 5 receives;
//! - interop with boto3: it reads what Spillway sent, with the body and
//!   attributes `docs/backends.md` documents, and Spillway reads what it sent;
//! - an outage under steady load into PostgreSQL: fast 503s with
//!   `Retry-After`, `/readyz` false and back, and every 2xx in the table;
//! - the SQS server itself `kill -9`ed under load and started again on its
//!   data (an ElasticMQ of the test's own, messages persisted): fast 503s,
//!   2xx again without a restart, and the consumer drains every 2xx into
//!   PostgreSQL within 30 s of the load's end;
//! - a queue deleted under the gateway: 503 with `Retry-After` (the
//!   operator's fault, so the client keeps its data), not a 500, and 202
//!   again once `queue ensure` made it again.

use std::time::Duration;

use spillway_e2e::{
    assert_every_accepted_delivered, assert_every_accepted_delivered_within, eventually, interop,
    outage_config, pg, ElasticMqNode, Moto, Proxy, SteadyLoad, Workspace,
};
use spillway_queue::{Admin, Backend};

fn boto3(endpoint: &str, args: &[&str]) -> String {
    interop("boto3_client.py", endpoint, args)
}

fn workspace(config: &str, moto_url: &str) -> Workspace {
    [
        ("SPILLWAY_QUEUE__ENDPOINT_URL", moto_url.to_owned()),
        ("SPILLWAY_QUEUE__ACCESS_KEY_ID", "test".to_owned()),
        ("SPILLWAY_QUEUE__SECRET_ACCESS_KEY", "test".to_owned()),
    ]
    .iter()
    .fold(Workspace::new(config), |ws, (k, v)| ws.with_env(k, v))
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_setup_runs_from_the_seed_config() {
    let seed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/seed.toml"))
        .expect("docs/examples/seed.toml");
    spillway_e2e::seed::the_seed_checks(&seed, 202).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_killed_under_load_and_restarted_loses_nothing_and_the_consumer_resumes() {
    let mut server = ElasticMqNode::start().await;
    let db = pg().await;
    let table = format!("sqs_kill_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let backend = "[queue]\nbackend = \"sqs\"\nregion = \"us-east-1\"";
    let ws = workspace(&outage_config(backend, "killed", "200ms", &table), &server.url());
    let ensured = ws.cli(&["queue", "ensure"]);
    assert!(ensured.status.success(), "{}", String::from_utf8_lossy(&ensured.stderr));
    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load =
        SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), Duration::from_secs(2));

    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill9();
    eventually(Duration::from_secs(5), "readiness false while the server is down", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    eventually(Duration::from_secs(60), "readiness back after the restart", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    seen.assert_fast_503s_and_recovery();
    assert_every_accepted_delivered_within(
        &db,
        &table,
        &seen.accepted,
        seen.answered_503(),
        Duration::from_secs(30),
    )
    .await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_the_gateway_is_a_503_with_retry_after_until_ensured() {
    let moto = Moto::start().await;
    let ws = workspace(
        "[queue]\nbackend = \"sqs\"\nregion = \"us-east-1\"\n\n\
         [[ingest.routes]]\npath = \"/e\"\nqueue = \"gone\"\n",
        &moto.url(),
    );
    let ensured = ws.cli(&["queue", "ensure"]);
    assert!(ensured.status.success(), "{}", String::from_utf8_lossy(&ensured.stderr));
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let post = || http.post(gw.url("/e")).header("content-type", "application/json").body("{}").send();
    assert_eq!(post().await.expect("post").status(), 202);

    boto3(&moto.url(), &["delete", "gone"]);
    let res = post().await.expect("post");
    assert_eq!(res.status(), 503, "a missing queue is the operator's to fix, not the client's");
    assert!(header(&res, "retry-after").is_some(), "{:?}", res.headers());
    let body: serde_json::Value = res.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], "queue_unavailable", "{body}");
    // Counted as the operator's, by kind.
    let metrics =
        http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("spillway_publish_errors_total{")
            && l.contains("queue=\"gone\"")
            && (l.contains("kind=\"not_found\"") || l.contains("kind=\"unavailable\""))),
        "{metrics}"
    );
    let sqs = moto.backend().await;
    assert!(sqs.stats("gone").await.is_err(), "nothing made the queue again behind the operator's back");

    let ensured = ws.cli(&["queue", "ensure"]);
    assert!(ensured.status.success(), "{}", String::from_utf8_lossy(&ensured.stderr));
    eventually(Duration::from_secs(30), "202 again once the queue exists", || async {
        post().await.is_ok_and(|r| r.status() == 202)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_what_spillway_sent_and_spillway_reads_what_boto3_sent() {
    let moto = Moto::start().await;
    let ws = workspace(
        r#"
[queue]
backend = "sqs"

[[ingest.routes]]
path = "/raw"
queue = "interop"
format = "raw"
forward_headers = ["x-tenant"]

[consumer]
queue = "interop"
"#,
        &moto.url(),
    );
    let gw = ws.serve();

    // Spillway → boto3: a text body as is, a binary one in base64.
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        http.post(gw.url("/raw"))
            .header("content-type", "application/json")
            .header("x-tenant", "acme")
            .body(body)
    };
    let res = post(br#"{"event":"signup"}"#.to_vec()).send().await.expect("post");
    assert_eq!(res.status(), 202);
    let id = res.json::<serde_json::Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let read: serde_json::Value =
        serde_json::from_str(&boto3(&moto.url(), &["read", "interop"])).expect("json");
    assert_eq!(read["body"], r#"{"event":"signup"}"#);
    let a = &read["attributes"];
    assert_eq!(a["spillway-route"], "/raw");
    assert_eq!(a["spillway-format"], "raw");
    assert_eq!(a["content-type"], "application/json");
    assert_eq!(a["header-x-tenant"], "acme");
    let meta: serde_json::Value =
        serde_json::from_str(a["spillway"].as_str().expect("spillway")).expect("meta");
    assert_eq!(meta["id"], id.as_str());
    assert!(meta["enq"].as_i64().is_some_and(|ms| ms > 1_600_000_000_000), "{meta}");
    assert!(meta.get("enc").is_none(), "text travels as is: {meta}");

    // boto3 → Spillway: the SQS message id is the id, attributes as sent.
    let sent_id = boto3(&moto.url(), &["send", "interop", r#"{"from":"boto3"}"#, "tenant=acme"]);
    let backend = moto.backend().await;
    let consumer = backend.consumer("interop").await.expect("consumer");
    let got = consumer.receive(1, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(got.len(), 1, "Spillway did not receive boto3's message");
    let d = &got[0];
    assert_eq!(d.message.id, sent_id);
    assert_eq!(d.message.body.as_ref(), br#"{"from":"boto3"}"#);
    assert_eq!(d.message.attributes.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(d.receive_count, 1);
    consumer.ack(d).await.expect("ack");
    consumer.close().await.expect("close");
}

/// The publisher's send timeout: a 503 must come within it (plus slack).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// moto keeps its queues in memory only, so the outage is a proxy between
/// Spillway and moto going down (connections refused, open ones cut) and
/// coming back: what Spillway sees of a stopped and restarted server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_under_load_gives_fast_503s_and_loses_nothing() {
    let moto = Moto::start().await;
    let proxy = Proxy::start(moto.port).await;
    let db = pg().await;
    let table = format!("sqs_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let ws = workspace(
        &outage_config("[queue]\nbackend = \"sqs\"\ntimeout = \"2s\"", "outage", "1s", &table),
        &format!("http://127.0.0.1:{}", proxy.port),
    );
    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.down();
    eventually(Duration::from_secs(10), "readiness false while SQS is down", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.up().await;
    eventually(Duration::from_secs(60), "readiness back after SQS is back", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    seen.assert_fast_503s_and_recovery();
    assert_every_accepted_delivered(&db, &table, &seen.accepted, seen.answered_503()).await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
