//! The failure Spillway exists for, end to end with real processes:
//! gateway → embedded queue → `spillway consume` → PostgreSQL.
//!
//! The table is locked for far longer than a message's whole retry budget.
//! Requests keep getting 2xx; once the lock is gone, every accepted message is
//! in the table exactly once and none went to the DLQ. In the same run a
//! poison message (it breaks a CHECK constraint) walks to the DLQ after 5
//! receives with its error text, and `spillway dlq redrive` brings it back.
//!
//! Needs the machine's PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`,
//! or `SPILLWAY_TEST_PG`). Without it the test fails and says so.

use std::{collections::HashSet, time::Duration};

use spillway_e2e::{count, eventually, pg, pg_url, post_accepted, Workspace};

/// Retry backoff of the consumer in this test; the lock outlasts
/// 3 × max_receive_count × this many times over.
const BACKOFF_MAX_MS: u64 = 200;
const MAX_RECEIVE_COUNT: u64 = 5;

async fn scrape(http: &reqwest::Client, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    http.get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("consumer metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_table_loses_nothing_and_dead_letters_only_the_poison() {
    let db = pg().await;
    let table = format!("events_{}", std::process::id());
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (
             id text PRIMARY KEY,
             queue text NOT NULL,
             payload jsonb NOT NULL,
             enqueued_at timestamptz NOT NULL,
             inserted_at timestamptz NOT NULL DEFAULT now(),
             CONSTRAINT no_poison CHECK (NOT (payload->'body' ? 'poison')))"
    ))
    .await
    .expect("create table");

    let metrics_port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let ws = Workspace::new(&format!(
        r#"
[metrics]
consumer_listen = "127.0.0.1:{metrics_port}"

[queue]
backend = "embedded"
path = "{{data}}"

[queues.ingest.dead_letter]
max_receive_count = {MAX_RECEIVE_COUNT}
visibility_timeout = "3s"

[consumer]
queue = "ingest"
concurrency = 4
wait = "200ms"
sink_timeout = "3s"
retry = {{ base = "100ms", max = "{BACKOFF_MAX_MS}ms", jitter = 0.1 }}
probe = {{ base = "100ms", max = "500ms", jitter = 0.1 }}

[consumer.sink]
type = "postgres"
url = "{url}"
table = "{table}"
create_table = false
lock_timeout = "300ms"
"#,
        url = pg_url()
    ));
    let gw = ws.serve();
    let mut consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut accepted = HashSet::new();
    let url = gw.url("/ingest");
    let send = |body: String| post_accepted(&http, &url, body);

    // Healthy: messages flow through.
    for i in 0..20 {
        accepted.insert(send(format!(r#"{{"n":{i}}}"#)).await);
    }
    eventually(Duration::from_secs(30), "the first 20 rows", || async { count(&db, &table).await == 20 })
        .await;

    // The database stalls: another session holds an exclusive lock on the table.
    let locker = pg().await;
    locker.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await.expect("lock");
    let outage = Duration::from_millis(3 * MAX_RECEIVE_COUNT * BACKOFF_MAX_MS * 3);
    let started = tokio::time::Instant::now();
    let poison_id = send(r#"{"poison":true}"#.to_owned()).await;
    let mut i = 20;
    while started.elapsed() < outage {
        accepted.insert(send(format!(r#"{{"n":{i}}}"#)).await);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_during_outage = ws.stats("ingest").await.dead;
    let consumer_metrics = scrape(&http, metrics_port).await;
    assert!(
        consumer_metrics.contains(r#"spillway_consumer_circuit_open{queue="ingest"} 1"#),
        "the circuit should be open while the table is locked: {consumer_metrics}"
    );
    locker.batch_execute("COMMIT").await.expect("unlock");
    assert_eq!(dead_during_outage, 0, "the outage sent messages to the DLQ");

    // Recovery: every accepted message lands, exactly once; only the poison is dead.
    let expected = accepted.len() as i64;
    eventually(Duration::from_secs(60), "every accepted message in the table", || async {
        count(&db, &table).await == expected
    })
    .await;
    eventually(Duration::from_secs(30), "the poison message in the DLQ", || async {
        ws.stats("ingest").await.dead == 1
    })
    .await;
    let rows = db.query(&format!("SELECT id FROM {table}"), &[]).await.expect("select");
    let ids: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, accepted, "the table must hold exactly the accepted messages");

    let peek = ws.cli(&["dlq", "peek", "--json"]);
    assert!(peek.status.success(), "{}", String::from_utf8_lossy(&peek.stderr));
    let line =
        String::from_utf8_lossy(&peek.stdout).lines().next().map(str::to_owned).expect("one dead letter");
    let dead: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(dead["id"], poison_id.as_str());
    assert_eq!(dead["receive_count"], MAX_RECEIVE_COUNT);
    assert_eq!(dead["source_queue"], "ingest");
    let err = dead["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("no_poison"), "the dead letter should say why: {err}");

    // Fix the cause, redrive, and the poison message lands too.
    db.batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT no_poison"))
        .await
        .expect("drop constraint");
    let redrive = ws.cli(&["dlq", "redrive"]);
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    assert!(String::from_utf8_lossy(&redrive.stdout).contains("redrove 1 message"), "{:?}", redrive);
    eventually(Duration::from_secs(30), "the redriven message in the table", || async {
        count(&db, &table).await == expected + 1
    })
    .await;
    assert_eq!(ws.stats("ingest").await.dead, 0);
    let consumer_metrics = scrape(&http, metrics_port).await;
    assert!(
        consumer_metrics.contains(r#"spillway_consumer_circuit_open{queue="ingest"} 0"#),
        "{consumer_metrics}"
    );
    // Exactly one message was dead-lettered (by its fifth nack), after
    // four counted retries; the outage counted nothing.
    assert!(
        consumer_metrics
            .contains(r#"spillway_consumer_messages_total{queue="ingest",outcome="dead_lettered"} 1"#),
        "{consumer_metrics}"
    );
    let retried = format!(
        r#"spillway_consumer_messages_total{{queue="ingest",outcome="retried"}} {}"#,
        MAX_RECEIVE_COUNT - 1
    );
    assert!(consumer_metrics.contains(&retried), "{consumer_metrics}");

    let _ = consumer.kill();
    let _ = consumer.wait();
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
