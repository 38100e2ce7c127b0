//! RabbitMQ stopped and started under steady load, with `spillway serve` and
//! `spillway consume` (into PostgreSQL) both on the `rabbitmq` backend:
//! requests during the outage get fast 503s with `Retry-After`, `/readyz`
//! goes false and back, both processes reconnect without a restart, and
//! every 2xx reaches the table.
//!
//! This test stops the machine's broker (`rabbitmqctl stop_app`), so it is
//! the only test in its binary, and a guard starts the broker again even
//! when the test fails.

use std::{process::Command, time::Duration};

use spillway_e2e::{
    amqp_url, assert_every_accepted_delivered, eventually, outage_config, pg, SteadyLoad, Workspace,
};

/// The publisher's send timeout: a 503 must come within it (plus slack).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE: &str = "spillway-e2e-outage";

fn rabbitmqctl(arg: &str) {
    let ok = Command::new("rabbitmqctl").arg(arg).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "`rabbitmqctl {arg}` failed: is RabbitMQ installed and running? (deploy/local/services.sh up)"
    );
}

/// Starts the broker again when dropped, whatever happened.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_under_load_gives_fast_503s_and_loses_nothing() {
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
    let restart = Restart;
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready = http.get(gw.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503, "readiness must be false while the broker is down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl("start_app");
    drop(restart);
    eventually(Duration::from_secs(60), "readiness back after the broker restart", || async {
        http.get(gw.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    seen.assert_fast_503s_and_recovery();
    assert_every_accepted_delivered(&db, &table, &seen.accepted, seen.answered_503()).await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
