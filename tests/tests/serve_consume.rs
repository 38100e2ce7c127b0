//! `server.consume`: one `spillway serve` process accepts and drains. Every
//! accepted request reaches PostgreSQL through the in-process consumer, on
//! the embedded queue and on the memory backend (which no second process
//! can reach), its metrics are on the gateway's `/metrics`, and SIGTERM
//! stops both halves cleanly.
//!
//! Needs the machine's PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`,
//! or `SPILLWAY_TEST_PG`). Without it the test fails and says so.

use std::{collections::HashSet, time::Duration};

use spillway_e2e::{eventually, ids, pg, post_accepted, serve_consume_into_postgres, Workspace};

async fn accepts_and_drains(backend: &str) {
    let db = pg().await;
    let table = format!("serve_consume_{backend}_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let ws = Workspace::new(&serve_consume_into_postgres(backend, &table));
    let mut gw = ws.serve();
    let http = reqwest::Client::new();
    let mut accepted = HashSet::new();
    for i in 0..50 {
        accepted.insert(post_accepted(&http, &gw.url("/ingest"), format!(r#"{{"n":{i}}}"#)).await);
    }
    eventually(Duration::from_secs(30), "every accepted request in the table", || {
        let (db, table, accepted) = (&db, &table, &accepted);
        async move { &ids(db, table).await == accepted }
    })
    .await;
    // The consumer's metrics are the gateway's too, on its `/metrics`.
    let metrics =
        http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains(r#"spillway_consumer_circuit_open{queue="ingest"} 0"#),
        "the consumer's gauges on the gateway's /metrics: {metrics}"
    );

    let status = gw.stop(Duration::from_secs(20)).await;
    assert!(status.success(), "serve with its consumer exited with {status}");
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_the_embedded_queue_itself() {
    accepts_and_drains("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_drains_the_memory_backend_itself() {
    accepts_and_drains("memory").await;
}
