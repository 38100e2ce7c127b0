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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_under_load_is_spooled_not_refused_and_loses_nothing() {
    let db = pg().await;
    let table = format!("spool_outage_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let url = amqp_url();
    let port: u16 =
        url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).expect("port");
    let proxy = Proxy::start(port).await;
    let proxied = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
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
