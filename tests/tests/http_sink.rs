//! `spillway consume` with the HTTP sink, end to end: an endpoint that answers
//! 500 to every call for longer than a message's retry budget costs no
//! message the DLQ (the circuit opens after a few 5xx in a row), and a 4xx
//! with `on_4xx = "dead_letter"` sends just that message to the DLQ at once.
//! An endpoint that hangs for one message and answers the rest: that message
//! reaches the DLQ after `max_receive_count`, the rest is delivered.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::post, Router};
use spillway_e2e::{eventually, post_accepted, Workspace};

#[derive(Clone, Default)]
struct Endpoint {
    failing: Arc<AtomicBool>,
    received: Arc<Mutex<HashSet<String>>>,
}

async fn hook(State(e): State<Endpoint>, headers: axum::http::HeaderMap, body: String) -> StatusCode {
    if e.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if body.contains("\"hang\":true") {
        std::future::pending::<()>().await;
    }
    if body.contains("\"reject\":true") {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let id =
        headers.get("x-spillway-message-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    e.received.lock().expect("lock").insert(id);
    StatusCode::NO_CONTENT
}

/// Serves the endpoint on loopback; returns its URL.
async fn serve_endpoint(endpoint: &Endpoint) -> String {
    let app = Router::new().route("/hook", post(hook)).with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundreds_on_every_call_cost_nothing_and_a_4xx_dead_letters_at_once() {
    let endpoint = Endpoint::default();
    endpoint.failing.store(true, Ordering::SeqCst);
    let hook_url = serve_endpoint(&endpoint).await;

    let ws = Workspace::new(&format!(
        r#"
[queue]
backend = "embedded"
path = "{{data}}"

[queues.ingest.dead_letter]
max_receive_count = 5
visibility_timeout = "3s"

[consumer]
concurrency = 2
wait = "200ms"
circuit_threshold = 3
retry = {{ base = "100ms", max = "200ms", jitter = 0.1 }}
probe = {{ base = "100ms", max = "300ms", jitter = 0.1 }}

[consumer.sink]
type = "http"
url = "{hook_url}"
on_4xx = "dead_letter"
"#
    ));
    let gw = ws.serve();
    let mut consumer = ws.consume();
    let http = reqwest::Client::new();
    let url = gw.url("/ingest");
    let mut accepted = HashSet::new();
    for i in 0..30 {
        accepted.insert(post_accepted(&http, &url, format!(r#"{{"n":{i}}}"#)).await);
    }
    // Longer than 3 × max_receive_count × the retry backoff.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ws.stats("ingest").await.dead, 0, "an endpoint outage sent messages to the DLQ");
    endpoint.failing.store(false, Ordering::SeqCst);

    let rejected_id = post_accepted(&http, &url, r#"{"reject":true}"#.to_owned()).await;

    eventually(Duration::from_secs(30), "every message delivered", || async {
        endpoint.received.lock().expect("lock").len() == accepted.len()
    })
    .await;
    assert_eq!(*endpoint.received.lock().expect("lock"), accepted);
    eventually(Duration::from_secs(10), "the rejected message in the DLQ", || async {
        ws.stats("ingest").await.dead == 1
    })
    .await;
    let dead = ws.queue().await.peek_dead("ingest", 10).await.expect("peek");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, rejected_id);
    assert_eq!(dead[0].receive_count, 1, "a 4xx with on_4xx = dead_letter is not retried");
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("422"), "{:?}", dead[0].last_error);
    let _ = consumer.kill();
    let _ = consumer.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_that_hangs_for_one_message_sends_only_that_one_to_the_dlq() {
    let endpoint = Endpoint::default();
    let hook_url = serve_endpoint(&endpoint).await;

    let ws = Workspace::new(&format!(
        r#"
[queue]
backend = "embedded"
path = "{{data}}"

[queues.ingest.dead_letter]
max_receive_count = 5
visibility_timeout = "3s"

[consumer]
concurrency = 2
wait = "200ms"
sink_timeout = "1s"
retry = {{ base = "100ms", max = "200ms", jitter = 0.1 }}
probe = {{ base = "100ms", max = "300ms", jitter = 0.1 }}

[consumer.sink]
type = "http"
url = "{hook_url}"
"#
    ));
    let gw = ws.serve();
    let mut consumer = ws.consume();
    let http = reqwest::Client::new();
    let url = gw.url("/ingest");
    let hang_id = post_accepted(&http, &url, r#"{"hang":true}"#.to_owned()).await;
    // Steady traffic while the hanging message cycles: the sink is evidently up.
    let mut accepted = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while ws.stats("ingest").await.dead == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the hanging message never reached the DLQ");
        accepted.insert(post_accepted(&http, &url, format!(r#"{{"n":{n}}}"#)).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(Duration::from_secs(30), "every other message delivered", || async {
        endpoint.received.lock().expect("lock").len() == accepted.len()
    })
    .await;
    assert_eq!(*endpoint.received.lock().expect("lock"), accepted);
    let dead = ws.queue().await.peek_dead("ingest", 10).await.expect("peek");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, hang_id);
    assert_eq!(dead[0].receive_count, 5);
    assert!(
        dead[0].last_error.as_deref().unwrap_or_default().contains("did not answer"),
        "{:?}",
        dead[0].last_error
    );
    let _ = consumer.kill();
    let _ = consumer.wait();
}
