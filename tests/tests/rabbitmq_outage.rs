//! RabbitMQ stopped and started under steady load, with `spillway serve` and
//! `spillway consume` (into PostgreSQL) both on the `rabbitmq` backend:
//! requests during the outage get fast 503s with `Retry-After`, `/readyz`
//! goes false and back, both processes reconnect without a restart, and
//! every 2xx reaches the table.
//!
//! This test stops the machine's broker (`rabbitmqctl stop_app`), so it is
//! the only test in its binary, and a guard starts the broker again even
//! when the test fails.

use std::{
    collections::HashSet,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use spillway_e2e::{amqp_url, assert_every_accepted_delivered, eventually, pg, pg_url, Workspace};
use tokio::time::Instant;

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

#[derive(Default)]
struct Seen {
    accepted: HashSet<String>,
    statuses: Vec<u16>,
    slow: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_under_load_gives_fast_503s_and_loses_nothing() {
    let db = pg().await;
    let table = format!("rabbit_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let ws = Workspace::new(&format!(
        r#"
[queue]
backend = "rabbitmq"
url = "{amqp}"

[queues.{QUEUE}.dead_letter]
max_receive_count = 5
visibility_timeout = "5s"

[ingest.publisher]
send_timeout = "2s"

[[ingest.routes]]
path = "/ingest"
queue = "{QUEUE}"

[consumer]
queue = "{QUEUE}"
concurrency = 2
wait = "200ms"
retry = {{ base = "100ms", max = "500ms", jitter = 0.1 }}
probe = {{ base = "100ms", max = "500ms", jitter = 0.1 }}

[consumer.sink]
type = "postgres"
url = "{pg}"
table = "{table}"
"#,
        amqp = amqp_url(),
        pg = pg_url(),
    ));
    // A fixed queue name, emptied first: runs do not pile up queues on the broker.
    let purge = ws.cli(&["queue", "purge", "--yes"]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let _ = ws.cli(&["dlq", "purge", "--yes"]);

    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, url, seen, stop) = (http.clone(), gw.url("/ingest"), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                let res = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"n":{n}}}"#))
                    .send()
                    .await;
                n += 1;
                let took = sent.elapsed();
                let r = res.unwrap_or_else(|e| panic!("the gateway did not answer: {e}"));
                let status = r.status().as_u16();
                if status == 503 {
                    assert!(r.headers().contains_key("retry-after"), "a 503 without Retry-After");
                }
                let id = if status == 202 {
                    let v: serde_json::Value = r.json().await.expect("json");
                    Some(v["id"].as_str().expect("id").to_owned())
                } else {
                    None
                };
                {
                    let mut s = seen.lock().expect("lock");
                    s.statuses.push(status);
                    if took > SEND_TIMEOUT + Duration::from_secs(1) {
                        s.slow.push(took);
                    }
                    s.accepted.extend(id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

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
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.expect("load task");

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    let unexpected: Vec<u16> = seen.statuses.iter().copied().filter(|s| *s != 202 && *s != 503).collect();
    assert!(unexpected.is_empty(), "only 202 and 503 are right here: {unexpected:?}");
    assert!(seen.statuses.contains(&503), "the outage produced no 503 at all");
    assert!(seen.slow.is_empty(), "answers slower than the send timeout: {:?}", seen.slow);
    let after = seen.statuses.iter().rev().take_while(|s| **s == 202).count();
    assert!(after > 10, "the gateway did not recover: {after} 2xx at the end");

    let answered_503 = seen.statuses.iter().filter(|s| **s == 503).count();
    assert_every_accepted_delivered(&db, &table, &seen.accepted, answered_503).await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
