//! The baseline for the Kafka backend: rdkafka producing straight to a
//! topic with `acks=all` and the idempotent producer (the settings the
//! backend uses, `linger.ms` 2), no HTTP and no Spillway. `in_flight`
//! senders, each waiting for its delivery report before the next message,
//! like as many HTTP clients each waiting for their 202. Prints `msgs/s
//! cpu_us_per_msg` on the last line.
//!
//! Each record carries the four headers the gateway's records carry
//! (`spillway-id`, `spillway-enqueued-at`, `spillway-route`,
//! `spillway-format`): a broker that stores headers row by row pays for
//! them, and the baseline should too. `bare` as the last argument sends
//! none.
//!
//! ```text
//! raw_rdkafka BROKERS TOPIC IN_FLIGHT SECONDS BODY_BYTES [bare]
//! ```

use std::time::Duration;

use rdkafka::producer::FutureRecord;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (args, bare) = match args.split_last() {
        Some((last, rest)) if last == "bare" => (rest.to_vec(), true),
        _ => (args.clone(), false),
    };
    let [_, brokers, topic, in_flight, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_rdkafka BROKERS TOPIC IN_FLIGHT SECONDS BODY_BYTES [bare]".into());
    };
    let (in_flight, seconds, body_bytes): (usize, u64, usize) =
        (in_flight.parse()?, seconds.parse()?, body_bytes.parse()?);
    let producer = spillway_benches::kafka::topic_and_producer(brokers, topic).await?;
    let body = vec![b'x'; body_bytes];
    let topic = topic.clone();
    let run = spillway_benches::closed_loop(in_flight, seconds, |_, handle| {
        let (producer, topic, body) = (producer.clone(), topic.clone(), body.clone());
        async move {
            while handle.running() {
                let mut rec = FutureRecord::<[u8], [u8]>::to(&topic).payload(&body);
                if !bare {
                    rec = rec.headers(spillway_benches::kafka::headers(
                        &ulid::Ulid::new().to_string(),
                        "envelope",
                    ));
                }
                producer.send(rec, Duration::ZERO).await.map_err(|(e, _)| e).expect("delivered");
                handle.stored();
            }
        }
    })
    .await?;
    run.report(&format!("delivered with {in_flight} in flight"));
    Ok(())
}
