//! The admin listener (`server.admin_listen`): probes and metrics apart
//! from the traffic port, outside its connection cap, answered from kept
//! state, so that probes and scrapes cost the broker a bounded number of
//! calls however often they come.

use std::time::Duration;

use spillway_e2e::{Moto, Workspace};

/// `spillway_sqs_requests_total`, summed over its `op` labels.
fn sqs_requests(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("spillway_sqs_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The traffic port's one connection slot is taken by an idle client:
/// the admin port still answers every probe and the scrape, the traffic
/// port has no `/metrics` (not public), and `/readyz` says ready or not
/// and nothing more.
#[tokio::test]
async fn probes_and_metrics_answer_while_the_traffic_port_is_full() {
    let ws = Workspace::new(
        r#"
[queue]
backend = "embedded"
path = "{data}"

[server.limits]
max_connections = 1

[[ingest.routes]]
path = "/ingest"
queue = "ingest"
"#,
    );
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let r = http.get(gw.url("/metrics")).send().await.expect("traffic port");
    assert_eq!(r.status(), 404, "metrics are not on the traffic port");
    drop(r);
    drop(http);

    // The one slot, held by a client that sends nothing.
    let _idle = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    assert!(
        http.get(gw.url("/healthz")).send().await.is_err(),
        "the traffic port has a free slot: the test would prove nothing"
    );
    for path in ["/livez", "/healthz", "/readyz", "/metrics"] {
        let r = http.get(gw.admin_url(path)).send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status(), 200, "{path}");
        let body = r.text().await.expect("body");
        match path {
            "/readyz" => assert_eq!(body, r#"{"status":"ready"}"#),
            "/metrics" => assert!(body.contains("spillway_queue_messages"), "{body}"),
            _ => {}
        }
    }
}

/// 100 `/readyz` and 100 `/metrics` calls within a second or two cost a
/// handful of SQS requests: readiness asks every `readiness_every` (2 s),
/// the queue counts are read at most every 5 s. Read from the gateway's
/// own request counter, which every SQS call passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_scrapes_cost_a_bounded_number_of_sqs_requests() {
    let moto = Moto::start().await;
    let ws = Workspace::new(
        r#"
[queue]
backend = "sqs"

[[ingest.routes]]
path = "/ingest"
queue = "admin-cost"
"#,
    )
    .with_env("SPILLWAY_QUEUE__ENDPOINT_URL", &moto.url())
    .with_env("SPILLWAY_QUEUE__ACCESS_KEY_ID", "test")
    .with_env("SPILLWAY_QUEUE__SECRET_ACCESS_KEY", "test");
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let scrape = || async {
        let r = http.get(gw.admin_url("/metrics")).send().await.expect("metrics");
        assert_eq!(r.status(), 200);
        r.text().await.expect("text")
    };
    let before = sqs_requests(&scrape().await);
    assert!(before > 0.0, "the counter is there (ensure, the first counts)");
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let r = http.get(gw.admin_url("/readyz")).send().await.expect("readyz");
        assert_eq!(r.status(), 200);
        scrape().await;
    }
    let elapsed = started.elapsed();
    let after = sqs_requests(&scrape().await);
    // Per 2 s one ListQueues; per 5 s the counts (a GetQueueAttributes for
    // the queue and one for its DLQ): at most 4 calls per started 2 s.
    let bound = 4.0 * (elapsed.as_secs_f64() / 2.0).ceil() + 4.0;
    assert!(
        after - before <= bound,
        "{} SQS requests for 100 probes and 100 scrapes in {elapsed:?} (bound {bound})",
        after - before
    );
}
