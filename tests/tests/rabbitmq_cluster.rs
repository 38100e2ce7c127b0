//! A node of a three-node RabbitMQ cluster `kill -9`ed under steady load,
//! with `spillway serve` and `spillway consume` (into PostgreSQL) both
//! connected to it: the node they hold their connections to, and that
//! leads the quorum queue (it was declared there). Both reconnect to
//! another node of `urls` without a restart, the queue's next leader takes
//! over, nothing unconfirmed is answered 2xx, and every 2xx reaches the
//! table. The killed node is started again afterwards (it rejoins).
//!
//! Needs `deploy/local/services.sh cluster rabbitmq` (the test command
//! brings it up) and PostgreSQL.

use std::time::Duration;

use spillway_e2e::{
    assert_cluster_up, assert_every_accepted_delivered, eventually, kill9_pid, outage_config, pg,
    rabbit_node_pid, services, ServicesOnDrop, SteadyLoad, Workspace, RABBIT_CLUSTER_PORTS,
};

const SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_holding_the_connection_and_the_leader_dies_and_nothing_is_lost() {
    assert_cluster_up("rabbitmq", &RABBIT_CLUSTER_PORTS).await;
    let db = pg().await;
    let queue = format!("cluster-loss-{}", std::process::id());
    let table = format!("rabbit_cluster_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    let url = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let backend = format!(
        "[queue]\nbackend = \"rabbitmq\"\nurl = \"{}\"\nurls = [\"{}\", \"{}\"]",
        url(RABBIT_CLUSTER_PORTS[0]),
        url(RABBIT_CLUSTER_PORTS[1]),
        url(RABBIT_CLUSTER_PORTS[2])
    );
    let ws = Workspace::new(&outage_config(&backend, &queue, "200ms", &table));
    let mut ensure = ws.cli(&["queue", "ensure"]);
    if String::from_utf8_lossy(&ensure.stderr).contains("INTERNAL_ERROR") {
        // RabbitMQ 3.10's dead-letter supervisor can die while a node
        // recovers its quorum queues after the last run's kill -9, after
        // services.sh checked it; an operator restarts the app, as
        // `services.sh cluster rabbitmq` does, and declares again.
        services(&["cluster", "rabbitmq"]);
        ensure = ws.cli(&["queue", "ensure"]);
    }
    assert!(ensure.status.success(), "{}", String::from_utf8_lossy(&ensure.stderr));

    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restart = ServicesOnDrop(&["cluster", "rabbitmq"]);
    kill9_pid(rabbit_node_pid(1));
    // The rest of the cluster keeps serving: 2xx again within the deadline,
    // with the first node still dead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually(Duration::from_secs(60), "readiness on another node", || async {
        http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.finish().await;
    seen.assert_only_202_503_and_recovery();
    assert_every_accepted_delivered(&db, &table, &seen.accepted, seen.answered_503()).await;
    drop(restart);
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
