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

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};

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
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    let admin: AdminClient<DefaultClientContext> = cfg.create()?;
    // Six partitions, as the backend's `queue ensure` makes, and the
    // broker's default replication (-1, KIP-464): 3 on the three-node
    // cluster, as the gateway's topics get there. One that exists is kept.
    let _ = admin
        .create_topics(&[NewTopic::new(topic, 6, TopicReplication::Fixed(-1))], &AdminOptions::new())
        .await?;
    let producer: FutureProducer = cfg
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.size", "1048576")
        .set("message.timeout.ms", "10000")
        .create()?;
    let body = vec![b'x'; body_bytes];
    let topic = topic.clone();
    let run = spillway_benches::closed_loop(in_flight, seconds, |_, handle| {
        let (producer, topic, body) = (producer.clone(), topic.clone(), body.clone());
        async move {
            while handle.running() {
                let mut rec = FutureRecord::<[u8], [u8]>::to(&topic).payload(&body);
                if !bare {
                    let id = ulid::Ulid::new().to_string();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                        .to_string();
                    let headers = OwnedHeaders::new_with_capacity(4)
                        .insert(Header { key: "spillway-id", value: Some(id.as_bytes()) })
                        .insert(Header { key: "spillway-enqueued-at", value: Some(now.as_bytes()) })
                        .insert(Header { key: "spillway-route", value: Some(b"ingest".as_slice()) })
                        .insert(Header { key: "spillway-format", value: Some(b"envelope".as_slice()) });
                    rec = rec.headers(headers);
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
