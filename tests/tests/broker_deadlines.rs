//! Every call to a broker has a deadline. With the broker's network frozen
//! (connections stay open, no byte passes: a partition, or a hung node),
//! each producer and consumer call returns within its deadline, with an
//! error and never a false success; once the network thaws, nothing sent
//! is lost and nothing reaches the DLQ.
//!
//! The broker is one of the test's own behind a [`Proxy`] it advertises,
//! so freezing it never disturbs the shared one other tests use.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use spillway_e2e::{eventually, free_port, KafkaBroker, Proxy};
use spillway_queue::{
    kafka::{KafkaBackend, KafkaConfig},
    Backend, Consumer, DeadLetterPolicy, Delivery, OutgoingMessage, QueueError, QueueSpec,
};

/// The backend's own deadline for a call (`send_timeout`).
const DEADLINE: Duration = Duration::from_secs(3);
/// What a call may take beyond it: scheduling, a slow machine.
const SLACK: Duration = Duration::from_secs(2);

/// Runs `call`, asserting it returns within the deadline (plus slack), and
/// gives its result.
async fn bounded<T>(what: &str, call: impl Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
    let started = Instant::now();
    let limit = DEADLINE + SLACK;
    let Ok(got) = tokio::time::timeout(limit * 10, call).await else {
        panic!("{what} still had not returned after {:?} with the broker frozen", limit * 10);
    };
    let took = started.elapsed();
    assert!(took <= limit, "{what} took {took:?} with the broker frozen (deadline {DEADLINE:?})");
    got
}

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        dead_letter: DeadLetterPolicy { max_receive_count: 5, visibility_timeout: Duration::from_secs(2) },
        max_message_bytes: 64 * 1024,
    }
}

/// Receives until every id in `want` came and was acked.
async fn drain(c: &Arc<dyn Consumer>, mut want: BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.is_empty() {
        assert!(Instant::now() < deadline, "never delivered after the thaw: {want:?}");
        let got: Vec<Delivery> = c.receive(10, Duration::from_millis(500)).await.unwrap_or_default();
        for d in &got {
            want.remove(&d.message.id);
        }
        if !got.is_empty() {
            let _ = c.ack_batch(&got).await;
        }
    }
}

/// How an ack behaves with the network frozen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FrozenAck {
    /// It waits for the broker (Kafka's offset commit): it must fail.
    Fails,
    /// It is written and not answered (AMQP's `basic.ack`): it may succeed.
    MaySucceed,
}

/// The drill on a backend whose network `network` carries: three messages
/// held, the network frozen, every call timed, the network thawed, and
/// every message sent with an `Ok` delivered, none dead-lettered.
async fn frozen_broker_drill(b: Arc<dyn Backend>, network: &Proxy, queue: &str, ack: FrozenAck) {
    b.ensure(&spec(queue)).await.expect("ensure");
    let p = b.producer(queue).await.expect("producer");
    for i in 0..3 {
        p.send(OutgoingMessage::new(format!("m{i}"), "x")).await.expect("send before the freeze");
    }
    let c = b.consumer(queue).await.expect("consumer");
    let mut held = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while held.len() < 3 {
        assert!(Instant::now() < until, "three messages held: {}", held.len());
        held.extend(c.receive(3, Duration::from_millis(200)).await.expect("receive"));
    }

    let frozen = network.freeze();
    let acked = bounded("ack", c.ack(&held[0])).await;
    if ack == FrozenAck::Fails {
        assert!(acked.is_err(), "an ack the broker never saw reported success");
    }
    // A nack republishes, then settles the original.
    let nacked = bounded("nack", c.nack(&held[1], Duration::ZERO, "sink down")).await;
    assert!(nacked.is_err(), "a nack the broker never saw reported success: {nacked:?}");
    let sent = bounded("send", p.send(OutgoingMessage::new("m3", "x"))).await;
    assert!(sent.is_err(), "a send the broker never stored reported success");
    let _ = bounded("receive", c.receive(10, Duration::from_millis(500))).await;
    let _ = bounded("close", c.close()).await;
    bounded("stats", b.stats(queue)).await.expect_err("stats from a frozen broker");
    bounded("ready", b.ready()).await.expect_err("a frozen broker is not ready");

    drop(frozen);
    eventually(Duration::from_secs(60), "the broker answers again", || async { b.ready().await.is_ok() })
        .await;
    // m3 was refused, so it may be absent; every message sent with an `Ok`
    // comes back (the ack that timed out may or may not have landed).
    let c = b.consumer(queue).await.expect("consumer after the thaw");
    let want: BTreeSet<String> = ["m1", "m2"].into_iter().map(String::from).collect();
    drain(&c, want).await;
    let dead = b.peek_dead(queue, 10).await.expect("peek dead");
    assert!(dead.is_empty(), "dead-lettered by a frozen network: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_calls_return_within_their_deadline_while_the_broker_is_frozen() {
    let port = free_port();
    let broker = KafkaBroker::start_advertising(port, free_port()).await;
    let network = Proxy::start_on(broker.advertised(), port).await;
    let cfg = KafkaConfig { partitions: 1, send_timeout: DEADLINE, ..KafkaConfig::new(broker.brokers()) };
    let b = KafkaBackend::connect(&cfg).await.expect("kafka clients");
    eventually(Duration::from_secs(60), "the broker answers", || async { b.ready().await.is_ok() }).await;
    // An ack commits the group's offset: the coordinator does not answer.
    frozen_broker_drill(Arc::new(b), &network, "deadlines", FrozenAck::Fails).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_calls_return_within_their_deadline_while_the_broker_is_frozen() {
    use spillway_queue::rabbitmq::{RabbitBackend, RabbitConfig};
    let network = Proxy::start(5672).await;
    let cfg = RabbitConfig {
        spool: None,
        url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", network.port),
        urls: Vec::new(),
        connection_name: "spillway-deadlines".into(),
        confirm_timeout: DEADLINE,
        management_url: None,
        publisher_channels: 1,
        tls: Default::default(),
    };
    let b = RabbitBackend::connect(&cfg).await.expect("rabbitmq connection");
    let queue = format!("deadlines-{}", std::process::id());
    frozen_broker_drill(Arc::new(b.clone()), &network, &queue, FrozenAck::MaySucceed).await;
    let _ = b.delete_ensured().await;
}
