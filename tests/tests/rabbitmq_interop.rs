//! Interop with a plain AMQP client (python `pika` in the test venv that
//! `deploy/local/services.sh up` makes): it reads what `spillway serve`
//! published on the `rabbitmq` backend, with the body and headers
//! `docs/backends.md` documents; and `spillway dlq`/the queue API read what
//! pika published.

use std::process::Command;

use base64::Engine as _;
use spillway_e2e::{amqp_url, venv, Workspace};

const QUEUE: &str = "spillway-e2e-interop";

fn pika(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/pika_client.py");
    let out = Command::new(venv().join("bin/python"))
        .arg(script)
        .arg(amqp_url())
        .args(args)
        .output()
        .expect("run python");
    assert!(out.status.success(), "pika {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_reads_what_spillway_sent_and_spillway_reads_what_pika_sent() {
    let ws = Workspace::new(&format!(
        r#"
[queue]
backend = "rabbitmq"
url = "{amqp}"

[[ingest.routes]]
path = "/raw"
queue = "{QUEUE}"
format = "raw"
forward_headers = ["x-tenant"]

[consumer]
queue = "{QUEUE}"
"#,
        amqp = amqp_url()
    ));
    let purge = ws.cli(&["queue", "purge", "--yes"]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let gw = ws.serve();

    // Spillway → pika.
    let res = reqwest::Client::new()
        .post(gw.url("/raw"))
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .body(r#"{"event":"signup"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 202);
    let id = res.json::<serde_json::Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let read: serde_json::Value = serde_json::from_str(&pika(&["read", QUEUE])).expect("pika's JSON");
    let body =
        base64::engine::general_purpose::STANDARD.decode(read["body"].as_str().expect("body")).expect("b64");
    assert_eq!(body, br#"{"event":"signup"}"#);
    assert_eq!(read["message_id"], id.as_str());
    assert_eq!(read["delivery_mode"], 2, "persistent");
    let h = &read["headers"];
    assert_eq!(h["x-spillway-id"], id.as_str());
    assert_eq!(h["spillway-route"], "/raw");
    assert_eq!(h["spillway-format"], "raw");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["header-x-tenant"], "acme");
    assert!(h["x-spillway-enqueued-at"].as_i64().is_some_and(|ms| ms > 1_600_000_000_000), "{h}");

    // pika → Spillway.
    pika(&["publish", QUEUE, "from-pika-1"]);
    let backend = spillway_queue::connect(&spillway_queue::BackendConfig::Rabbitmq(
        spillway_queue::rabbitmq::RabbitConfig {
            spool: None,
            url: amqp_url(),
            urls: Vec::new(),
            connection_name: "interop-test".into(),
            confirm_timeout: std::time::Duration::from_secs(10),
            management_url: None,
            publisher_channels: 1,
            tls: Default::default(),
        },
    ))
    .await
    .expect("connect");
    let consumer = backend.consumer(QUEUE).await.expect("consumer");
    let got = consumer.receive(1, std::time::Duration::from_secs(10)).await.expect("receive");
    assert_eq!(got.len(), 1, "Spillway did not receive pika's message");
    let d = &got[0];
    assert_eq!(d.message.id, "from-pika-1", "the AMQP message_id is the id");
    assert_eq!(d.message.body.as_ref(), br#"{"from":"pika"}"#);
    assert_eq!(d.message.attributes.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(d.receive_count, 1);
    consumer.ack(d).await.expect("ack");
    consumer.close().await.expect("close");
}
