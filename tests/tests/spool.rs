//! `queue.spool` in front of RabbitMQ: the broker cut off (a proxy that
//! refuses and cuts connections, as a stopped broker) under steady load.
//! Every request is answered 202, none 503: during the outage from the
//! local spool (`x-spillway-spooled: true`), before and after from the
//! broker; `/readyz` stays true; once the broker is back the forwarder
//! drains the spool, and the consumer delivers every accepted message into
//! PostgreSQL. The machine's RabbitMQ itself keeps running.

use std::time::Duration;

use spillway_e2e::{
    amqp_url, assert_every_accepted_delivered_within, eventually, outage_config, pg, Proxy, SteadyLoad,
    Workspace,
};

const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// A proxy in front of the machine's RabbitMQ, and the AMQP URL through
/// it: the test takes the broker away by taking the proxy down.
async fn proxied_rabbitmq() -> (std::sync::Arc<Proxy>, String) {
    let url = amqp_url();
    let port: u16 =
        url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).expect("port");
    let proxy = Proxy::start(port).await;
    let proxied = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    (proxy, proxied)
}

/// A gateway on `queue` through `proxied`, with a spool in `spool_dir`
/// of `max_bytes` that a stopping gateway forwards for at most a second.
fn spool_workspace(proxied: &str, queue: &str, spool_dir: &std::path::Path, max_bytes: u64) -> Workspace {
    Workspace::new(&format!(
        "[queue]\nbackend = \"rabbitmq\"\nurl = \"{proxied}\"\n[queue.spool]\npath = \"{}\"\ndrain_timeout = \"1s\"\n\
         max_bytes = {max_bytes}\n[ingest.publisher]\nsend_timeout = \"2s\"\n\
         [[ingest.routes]]\npath = \"/ingest\"\nqueue = \"{queue}\"\n",
        spool_dir.display()
    ))
}

/// `queue stats --json` of `queue`: its messages in this machine's spool,
/// and visible on the broker.
fn spooled_and_visible(ws: &Workspace, queue: &str) -> (Option<u64>, Option<u64>) {
    let out = ws.cli(&["queue", "stats", "--json", "--queue", queue]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (v[queue]["spooled"].as_u64(), v[queue]["visible"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_under_load_is_spooled_not_refused_and_loses_nothing() {
    let db = pg().await;
    let table = format!("spool_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let (proxy, proxied) = proxied_rabbitmq().await;
    let queue = format!("spillway-e2e-spool-{}", std::process::id());
    let spool_dir = tempfile::tempdir().expect("spool dir");
    let backend = format!(
        "[queue]\nbackend = \"rabbitmq\"\nurl = \"{proxied}\"\n[queue.spool]\npath = \"{}\"\nmax_bytes = 104857600\n",
        spool_dir.path().display()
    );
    let ws = Workspace::new(&outage_config(&backend, &queue, "200ms", &table));
    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.down();
    // Spooled answers carry the header; readiness stays true meanwhile.
    let probes = std::sync::atomic::AtomicUsize::new(0);
    eventually(Duration::from_secs(10), "a request answered from the spool", || async {
        probes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = http.post(gw.url("/ingest")).body("{\"probe\":1}").send().await;
        r.is_ok_and(|r| {
            r.status() == 202 && r.headers().get("x-spillway-spooled").is_some_and(|v| v == "true")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = http.get(gw.admin_url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "a pod with room in its spool stays ready while the broker is down");
    proxy.up().await;
    eventually(Duration::from_secs(60), "the spool drained into the broker", || async {
        let text =
            http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        text.lines().any(|l| l.starts_with("spillway_spool_messages{") && l.ends_with(" 0"))
            && text.lines().any(|l| l.starts_with("spillway_spool_forwarded_total{"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = load.finish().await;
    let not_202: Vec<u16> = seen.statuses.iter().copied().filter(|s| *s != 202).collect();
    assert!(not_202.is_empty(), "a broker outage with a spool answered {not_202:?}");
    // The probes above are stored too, beside the load's requests.
    let probes = probes.load(std::sync::atomic::Ordering::SeqCst);
    assert_every_accepted_delivered_within(&db, &table, &seen.accepted, probes, Duration::from_secs(60))
        .await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}

/// A gateway stopped while the broker is down keeps what it spooled;
/// `queue stats` shows it, and `spillway spool drain` forwards it to the
/// broker once the broker is back, without a gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spool_drain_forwards_what_a_stopped_gateway_left() {
    let (proxy, proxied) = proxied_rabbitmq().await;
    let queue = format!("spillway-e2e-spool-drain-{}", std::process::id());
    let spool_dir = tempfile::tempdir().expect("spool dir");
    let ws = spool_workspace(&proxied, &queue, spool_dir.path(), 1 << 20);
    let purge = ws.cli(&["queue", "purge", "--yes", "--queue", &queue]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let mut gw = ws.serve();
    proxy.down();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    for i in 0..5 {
        let r = http.post(gw.url("/ingest")).body(format!("{{\"n\":{i}}}")).send().await.expect("post");
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
    let status = gw.stop(Duration::from_secs(20)).await;
    assert!(status.success(), "serve exited {status:?}");

    proxy.up().await;
    let (spooled, _) = spooled_and_visible(&ws, &queue);
    assert_eq!(spooled, Some(5), "queue stats shows what the stopped gateway left in its spool");
    let drain = ws.cli(&["spool", "drain", "--timeout", "60s"]);
    assert!(drain.status.success(), "{}", String::from_utf8_lossy(&drain.stderr));
    eventually(Duration::from_secs(15), "the broker counts what was drained", || async {
        spooled_and_visible(&ws, &queue) == (Some(0), Some(5))
    })
    .await;
}

/// With a spool, a gateway (re)started while the broker is down starts,
/// is ready, and takes requests into its spool; once the broker answers it
/// connects, ensures its queue and forwards. (The spool drill found a
/// gateway killed during an outage unable to start again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_started_while_the_broker_is_down_spools_then_forwards() {
    let (proxy, proxied) = proxied_rabbitmq().await;
    let queue = format!("spillway-e2e-spool-start-{}", std::process::id());
    let spool_dir = tempfile::tempdir().expect("spool dir");
    let ws = spool_workspace(&proxied, &queue, spool_dir.path(), 1 << 20);
    proxy.down();
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let ready = http.get(gw.admin_url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "ready: the spool takes what the broker cannot");
    for i in 0..3 {
        let r = http.post(gw.url("/ingest")).body(format!("{{\"n\":{i}}}")).send().await.expect("post");
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers().get("x-spillway-spooled").map(|v| v.as_bytes()), Some(&b"true"[..]));
    }
    proxy.up().await;
    eventually(Duration::from_secs(30), "the spooled messages on the broker", || async {
        spooled_and_visible(&ws, &queue) == (Some(0), Some(3))
    })
    .await;
    let r = http.post(gw.url("/ingest")).body("{\"after\":1}").send().await.expect("post");
    assert_eq!(r.status(), 202);
    assert!(
        r.headers().get("x-spillway-spooled").is_none(),
        "straight to the broker once the spool is empty"
    );
}

/// A full spool: past `max_bytes`, 503 with `Retry-After` and the JSON
/// error body (never a 2xx for what it did not store), readiness false;
/// everything it accepted reaches the broker once it is back, and the
/// gateway takes requests again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_answers_503_with_retry_after_and_keeps_all_it_accepted() {
    let (proxy, proxied) = proxied_rabbitmq().await;
    let queue = format!("spillway-e2e-spool-full-{}", std::process::id());
    let spool_dir = tempfile::tempdir().expect("spool dir");
    // A few envelopes of a 100-byte body each.
    let ws = spool_workspace(&proxied, &queue, spool_dir.path(), 4096);
    let purge = ws.cli(&["queue", "purge", "--yes", "--queue", &queue]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let gw = ws.serve();
    proxy.down();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(90));
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for _ in 0..40 {
        let r = http.post(gw.url("/ingest")).body(body.clone()).send().await.expect("post");
        match r.status().as_u16() {
            202 => {
                assert_eq!(refused, 0, "a 202 after the spool was full");
                accepted += 1;
            }
            503 => {
                refused += 1;
                assert!(r.headers().contains_key("retry-after"), "a full spool's 503 has no Retry-After");
                let v: serde_json::Value = r.json().await.expect("a JSON error body");
                assert_eq!(v["error"]["code"], "queue_unavailable", "{v}");
            }
            other => panic!("a full spool answered {other}"),
        }
    }
    assert!(accepted >= 3 && refused > 0, "accepted {accepted}, refused {refused}: the spool never filled");
    // Readiness asks the broker every few seconds; once it knows it down,
    // the full spool makes the pod not ready.
    eventually(Duration::from_secs(20), "a pod whose spool is full and broker down not ready", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    let metrics =
        http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("spillway_spool_full_total{") && l.ends_with(&format!(" {refused}"))),
        "every refusal counted in spillway_spool_full_total"
    );
    proxy.up().await;
    eventually(Duration::from_secs(30), "everything the spool accepted on the broker", || async {
        spooled_and_visible(&ws, &queue) == (Some(0), Some(accepted))
    })
    .await;
    let r = http.post(gw.url("/ingest")).body(body).send().await.expect("post");
    assert_eq!(r.status(), 202, "takes requests again once the spool drained");
}

/// With a spool, a gateway whose Kafka cluster is down starts within
/// seconds and answers from the spool at once: no request, and not the
/// start, waits out the admin client's timeout (about 20 s against a
/// cluster that does not answer: the Kafka spool drill lost 20 s of
/// requests after each gateway restart to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_whose_kafka_cluster_is_down_starts_in_seconds_and_spools_at_once() {
    let spool_dir = tempfile::tempdir().expect("spool dir");
    // Nothing listens on port 1: every broker connection is refused.
    let ws = Workspace::new(&format!(
        "[queue]\nbackend = \"kafka\"\nbrokers = \"127.0.0.1:1\"\n[queue.spool]\npath = \"{}\"\n\
         [[ingest.routes]]\npath = \"/ingest\"\nqueue = \"spillway-e2e-spool-kafka-down\"\n",
        spool_dir.path().display()
    ));
    let started = std::time::Instant::now();
    let gw = ws.serve();
    assert!(started.elapsed() < Duration::from_secs(6), "started in {:?}", started.elapsed());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    for i in 0..3 {
        let sent = std::time::Instant::now();
        let r = http.post(gw.url("/ingest")).body(format!("{{\"n\":{i}}}")).send().await.expect("post");
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers().get("x-spillway-spooled").map(|v| v.as_bytes()), Some(&b"true"[..]));
        assert!(sent.elapsed() < Duration::from_secs(1), "answered in {:?}", sent.elapsed());
    }
}
