//! The broker that leads the queue's partition `kill -9`ed under steady
//! load on a three-node Apache Kafka cluster (replication 3,
//! `min.insync.replicas` 2, `acks=all`), with `spillway serve` and
//! `spillway consume` (into PostgreSQL) running: sends that were waiting
//! for the dead leader's acks are never answered 2xx unless the cluster
//! took them, the next leader takes over without a restart of either
//! process, and every 2xx reaches the table. The killed node is started
//! again afterwards on the same data.
//!
//! Needs `deploy/local/services.sh cluster kafka` (the test command brings
//! it up) and PostgreSQL.

use std::time::Duration;

use rdkafka::{
    config::ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use spillway_e2e::{
    assert_cluster_up, assert_every_accepted_delivered, eventually, kafka_cluster_brokers, kafka_node_pid,
    kill9_pid, outage_config, pg, ServicesOnDrop, SteadyLoad, Workspace, KAFKA_CLUSTER_PORTS,
};

const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The node id that leads partition 0 of `topic`, if one does.
fn leader_of(topic: &str) -> Option<i32> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_cluster_brokers())
        .create()
        .expect("metadata client");
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    let leader = t.partitions().iter().find(|p| p.id() == 0)?.leader();
    (1..=3).contains(&leader).then_some(leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_dies_under_load_and_the_next_takes_over_losing_nothing() {
    assert_cluster_up("kafka", &KAFKA_CLUSTER_PORTS).await;
    let db = pg().await;
    let queue = format!("cluster-loss-{}", std::process::id());
    let table = format!("kafka_cluster_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    // One partition: the leader of partition 0 leads everything sent.
    let backend = format!(
        "[queue]\nbackend = \"kafka\"\nbrokers = \"{}\"\npartitions = 1\nreplication = 3",
        kafka_cluster_brokers()
    );
    let ws = Workspace::new(&outage_config(&backend, &queue, "200ms", &table));
    let ensure = ws.cli(&["queue", "ensure"]);
    assert!(ensure.status.success(), "{}", String::from_utf8_lossy(&ensure.stderr));
    let leader = leader_of(&queue).expect("partition 0 of the queue's topic has a leader");

    let gw = ws.serve();
    let _consumer = ws.consume();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let load = SteadyLoad::start(http.clone(), reqwest::Method::POST, gw.url("/ingest"), SEND_TIMEOUT);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let restart = ServicesOnDrop(&["cluster", "kafka"]);
    kill9_pid(kafka_node_pid(leader));
    eventually(Duration::from_secs(60), "another node leads the queue's partition", || async {
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || leader_of(&queue).is_some_and(|now| now != leader))
            .await
            .unwrap_or(false)
    })
    .await;
    // 2xx again with the old leader still dead.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = load.finish().await;
    seen.assert_only_202_503_and_recovery();
    assert_every_accepted_delivered(&db, &table, &seen.accepted, seen.answered_503()).await;
    drop(restart);
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
