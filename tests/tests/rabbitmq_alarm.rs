//! A RabbitMQ memory alarm under load (`rabbitmqctl
//! set_vm_memory_high_watermark`): the broker stops reading from every
//! connection that publishes. Sends must fail fast (a 503, not a hang),
//! readiness must go false, and the consumer must go on receiving and
//! acking, since acks are what free the broker's memory: Spillway consumes
//! on a connection of its own that never publishes. When the alarm clears,
//! sends work again.
//!
//! The alarm is raised on the machine's shared RabbitMQ, so this test has
//! a binary of its own (test binaries run one after another) and restores
//! the watermark even when it fails.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use spillway_e2e::eventually;
use spillway_queue::{
    rabbitmq::{RabbitBackend, RabbitConfig},
    Admin as _, Backend, DeadLetterPolicy, OutgoingMessage, QueueSpec,
};

const DEADLINE: Duration = Duration::from_secs(3);

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().unwrap_or_else(|e| {
        panic!("rabbitmqctl {args:?}: {e} (is RabbitMQ installed? deploy/local/services.sh up)")
    });
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Raises the memory alarm; dropping it restores the watermark it found.
struct Alarm(String);

impl Alarm {
    fn raise() -> Self {
        let was = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        let was = was.lines().last().unwrap_or("0.4").to_owned();
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.00001"]);
        Self(was)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["set_vm_memory_high_watermark", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_alarm_fails_sends_fast_and_lets_the_consumer_drain() {
    let cfg = RabbitConfig {
        spool: None,
        url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        urls: Vec::new(),
        connection_name: "spillway-alarm".into(),
        confirm_timeout: DEADLINE,
        management_url: None,
        publisher_channels: 1,
        tls: Default::default(),
    };
    let b = RabbitBackend::connect(&cfg).await.unwrap_or_else(|e| {
        panic!("no RabbitMQ at 127.0.0.1:5672 ({e}): start it with `deploy/local/services.sh up`")
    });
    let queue = format!("alarm-{}", std::process::id());
    let spec = QueueSpec {
        name: queue.clone(),
        dead_letter: DeadLetterPolicy { max_receive_count: 5, visibility_timeout: Duration::from_secs(30) },
        max_message_bytes: 64 * 1024,
    };
    b.ensure(&spec).await.expect("ensure");
    let p = b.producer(&queue).await.expect("producer");
    for chunk in (0..20).collect::<Vec<_>>().chunks(10) {
        let batch = chunk.iter().map(|i| OutgoingMessage::new(format!("m{i}"), "x")).collect();
        for o in p.send_batch(batch).await.expect("send") {
            o.expect("stored before the alarm");
        }
    }
    let c = b.consumer(&queue).await.expect("consumer");
    let held = c.receive(10, Duration::from_secs(2)).await.expect("receive before the alarm");
    assert_eq!(held.len(), 10);

    // Load: a sender that keeps trying through the alarm, timing each try.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let load = {
        let (p, stop, slowest_ms) = (p.clone(), stop.clone(), slowest_ms.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _ = p.send(OutgoingMessage::new(format!("load-{i}"), "x")).await;
                slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let alarm = Alarm::raise();
    eventually(Duration::from_secs(30), "readiness false under the alarm", || async {
        tokio::time::timeout(DEADLINE * 2, b.ready()).await.is_ok_and(|r| r.is_err())
    })
    .await;
    let t = Instant::now();
    let refused = p.send(OutgoingMessage::new("during", "x")).await;
    assert!(refused.is_err(), "a send under the alarm reported success");
    assert!(t.elapsed() < Duration::from_millis(500), "a send under a known alarm took {:?}", t.elapsed());

    // The consumer drains: acks and receives go through on its own
    // connection (with one shared connection they wait for the alarm).
    let t = Instant::now();
    c.ack_batch(&held).await.expect("ack under the alarm");
    let rest = c.receive(10, Duration::from_secs(2)).await.expect("receive under the alarm");
    assert_eq!(rest.len(), 10, "the other ten, under the alarm");
    c.ack_batch(&rest).await.expect("ack under the alarm");
    c.close().await.expect("close under the alarm");
    assert!(t.elapsed() < DEADLINE * 2, "draining under the alarm took {:?}", t.elapsed());
    let c2 = b.consumer(&queue).await.expect("another consumer");
    let got = c2.receive(100, Duration::from_millis(500)).await.expect("receive");
    let left: Vec<&str> =
        got.iter().map(|d| d.message.id.as_str()).filter(|id| id.starts_with('m')).collect();
    assert!(left.is_empty(), "acks made under the alarm did not reach the broker: {left:?} came back");
    // (What the load stored before the alarm is acked too: a release would
    // republish, which the alarm refuses.)
    c2.ack_batch(&got).await.expect("ack under the alarm");
    c2.close().await.expect("close");

    drop(alarm);
    eventually(Duration::from_secs(30), "ready once the alarm clears", || async { b.ready().await.is_ok() })
        .await;
    p.send(OutgoingMessage::new("after", "x")).await.expect("a send after the alarm");
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    let slowest = Duration::from_millis(slowest_ms.load(Ordering::Relaxed));
    assert!(slowest <= DEADLINE + Duration::from_secs(1), "a send under load took {slowest:?}");
    let _ = b.delete_ensured().await;
}
