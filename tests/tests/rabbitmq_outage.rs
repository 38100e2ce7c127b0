//! The machine's RabbitMQ `kill -9`ed under steady load and started again
//! on its data, with `spillway serve` and `spillway consume` (into
//! PostgreSQL) both on the `rabbitmq` backend: requests during the outage
//! get fast 503s with `Retry-After`, `/readyz` goes false and back, both
//! processes reconnect without a restart, and the consumer drains every 2xx
//! into the table within 30 s of the load's end.
//!
//! A `kill -9`, not `rabbitmqctl stop_app`: a clean stop closes every
//! connection with a `connection.close` the client sees at once, and the
//! quorum queue's log is flushed; a killed broker leaves half-open sockets,
//! recovers its queues from disk, and (RabbitMQ 3.10) may come back without
//! its dead-letter supervisor, which `services.sh rabbitmq` heals as an
//! operator would.
//!
//! This test kills the machine's broker, so it is the only test in its
//! binary, and a guard starts the broker again even when the test fails.

use std::time::Duration;

use spillway_e2e::{
    amqp_url, assert_every_accepted_delivered_within, eventually, kill9_pid, outage_config, pg,
    rabbit_single_pid, services, ServicesOnDrop, SteadyLoad, Workspace,
};

/// The publisher's send timeout: a 503 must come within it (plus slack).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE: &str = "spillway-e2e-outage";
/// How long the consumer has, after the load, to drain every 2xx.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_kill9_under_load_gives_fast_503s_and_loses_nothing() {
    let db = pg().await;
    let table = format!("rabbit_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let backend = format!("[queue]\nbackend = \"rabbitmq\"\nurl = \"{}\"", amqp_url());
    let ws = Workspace::new(&outage_config(&backend, QUEUE, "200ms", &table));
    // A fixed queue name, emptied first: runs do not pile up queues on the broker.
    let purge = ws.cli(&["queue", "purge", "--yes"]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let _ = ws.cli(&["dlq", "purge", "--yes"]);

    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart = ServicesOnDrop(&["rabbitmq"]);
    kill9_pid(rabbit_single_pid());
    eventually(Duration::from_secs(5), "readiness false while the broker is down", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    services(&["rabbitmq"]);
    drop(restart);
    eventually(Duration::from_secs(60), "readiness back after the broker restart", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    seen.assert_fast_503s_and_recovery();
    assert_every_accepted_delivered_within(&db, &table, &seen.accepted, seen.answered_503(), DRAIN_DEADLINE)
        .await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
