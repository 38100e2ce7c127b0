//! The baseline for the RabbitMQ backend: lapin publishing straight to a
//! durable quorum queue with publisher confirms, no HTTP and no Spillway.
//! `concurrency` publishers, each on its own confirm channel, each waiting
//! for its confirm before the next message, like as many HTTP clients each
//! waiting for their 202. Prints `msgs/s` as one number on the last line.
//!
//! ```text
//! raw_lapin AMQP_URL QUEUE CONCURRENCY SECONDS BODY_BYTES
//! ```

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Confirmation, Connection, ConnectionProperties,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, concurrency, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_lapin AMQP_URL QUEUE CONCURRENCY SECONDS BODY_BYTES".into());
    };
    let (concurrency, seconds, body_bytes): (usize, u64, usize) =
        (concurrency.parse()?, seconds.parse()?, body_bytes.parse()?);
    let conn = Arc::new(Connection::connect(url, ConnectionProperties::default()).await?);
    let setup = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    setup.queue_declare(ShortString::from(queue.as_str()), durable, args).await?;
    let body = vec![b'x'; body_bytes];
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (queue, body, sent, stop) = (queue.clone(), body.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let props = BasicProperties::default().with_delivery_mode(2);
                let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
                let confirm = ch
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(queue.as_str()),
                        options,
                        &body,
                        props,
                    )
                    .await
                    .expect("publish");
                match confirm.await.expect("confirm") {
                    Confirmation::Ack(None) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("not stored: {other:?}"),
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await?;
    }
    let n = sent.load(Ordering::Relaxed);
    eprintln!("{n} confirmed publishes in {elapsed:?} with {concurrency} publishers");
    println!("{:.0}", n as f64 / elapsed.as_secs_f64());
    let _ = setup.queue_purge(ShortString::from(queue.as_str()), Default::default()).await;
    Ok(())
}
