//! A Kafka broker killed (`kill -9`) and started again under steady load,
//! with `spillway serve` and `spillway consume` (into PostgreSQL) both on
//! the `kafka` backend: requests during the outage get fast 503s with
//! `Retry-After`, `/readyz` goes false and back, both processes recover
//! without a restart, and the consumer drains every 2xx into the table
//! within 30 s of the load's end.
//!
//! The broker is an Apache Kafka node of this test's own (its own ports
//! and data folder), so killing it never disturbs the shared one other
//! tests use.
//!
//! The outage cuts the network first (a proxy the broker advertises goes
//! down: connections refused and cut), then kills the broker and starts it
//! again, then restores the network. It lasts longer than the backend's
//! `send_timeout`, so librdkafka times out the sends it holds during the
//! outage and its idempotent producer bumps its epoch (KIP-360): the
//! producer must go on producing after that, and nothing it gave up on may
//! have been answered 2xx.

use std::time::Duration;

use spillway_e2e::{
    assert_every_accepted_delivered_within, eventually, free_port, outage_config, pg, KafkaBroker, Proxy,
    SteadyLoad, Workspace,
};

/// The publisher's send timeout: a 503 must come within it (plus slack).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE: &str = "kafka-outage";
/// librdkafka's own give-up time for a send (`message.timeout.ms`): shorter
/// than the outage, which lasts at least the broker's restart plus 3 s.
const BACKEND_SEND_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the consumer has, after the load, to drain every 2xx.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_kill_under_load_gives_fast_503s_and_loses_nothing() {
    let port = free_port();
    let mut broker = KafkaBroker::start_advertising(port, free_port()).await;
    let network = Proxy::start_on(broker.advertised(), port).await;
    let db = pg().await;
    let table = format!("kafka_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    // The backend's send_timeout is shorter than the outage: see the module doc.
    let backend = format!(
        "[queue]\nbackend = \"kafka\"\nbrokers = \"{}\"\npartitions = 2\nsend_timeout = \"{}s\"",
        broker.brokers(),
        BACKEND_SEND_TIMEOUT.as_secs()
    );
    let ws = Workspace::new(&outage_config(&backend, QUEUE, "200ms", &table));
    let ensure = ws.cli(&["queue", "ensure"]);
    assert!(ensure.status.success(), "{}", String::from_utf8_lossy(&ensure.stderr));

    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);

    tokio::time::sleep(Duration::from_secs(3)).await;
    network.down();
    broker.kill9();
    eventually(Duration::from_secs(5), "readiness false while the broker is down", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    broker.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    network.up().await;
    eventually(Duration::from_secs(60), "readiness back after the broker restart", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    seen.assert_fast_503s_and_recovery();
    let fast = seen.fast_503_share(Duration::from_millis(500));
    assert!(
        fast >= 0.8,
        "only {:.0} % of the 503s came within 500 ms: sends wait out their timeout while the broker is known to be down",
        fast * 100.0
    );
    assert_every_accepted_delivered_within(&db, &table, &seen.accepted, seen.answered_503(), DRAIN_DEADLINE)
        .await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
