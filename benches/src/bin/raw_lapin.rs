//! The baseline for the RabbitMQ backend: lapin publishing straight to a
//! durable quorum queue with publisher confirms, no HTTP and no Spillway.
//! `concurrency` publishers, each on its own confirm channel, each waiting
//! for its confirm before the next message, like as many HTTP clients each
//! waiting for their 202. Prints `msgs/s cpu_us_per_msg` on the last line.
//!
//! ```text
//! raw_lapin AMQP_URL QUEUE CONCURRENCY SECONDS BODY_BYTES
//! ```

use std::sync::Arc;

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
    // Every publisher's confirm channel first, so the run times publishing only.
    let mut channels = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let run = spillway_benches::closed_loop(concurrency, seconds, |i, handle| {
        let (ch, queue, body) = (channels[i].clone(), queue.clone(), body.clone());
        async move {
            while handle.running() {
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
                    Confirmation::Ack(None) => handle.stored(),
                    other => panic!("not stored: {other:?}"),
                }
            }
        }
    })
    .await?;
    run.report(&format!("confirmed publishes with {concurrency} publishers"));
    let _ = setup.queue_purge(ShortString::from(queue.as_str()), Default::default()).await;
    Ok(())
}
