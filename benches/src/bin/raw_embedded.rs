//! The baseline for the embedded queue: its own `send_batch`, no HTTP.
//! `concurrency` senders, each sending one message and waiting for its
//! commit before the next, like as many HTTP clients each waiting for their
//! 202 (the queue's writer group-commits what arrives together, as it does
//! behind the gateway). Each message carries the two attributes the gateway
//! sets. Prints `msgs/s cpu_us_per_msg` on the last line (the process's CPU
//! time per message, from /proc), as `raw_segment` does.
//!
//! ```text
//! raw_embedded DATA_DIR CONCURRENCY SECONDS BODY_BYTES
//! ```

use spillway_queue::{embedded::EmbeddedBackend, Admin, Backend, OutgoingMessage, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, concurrency, seconds, body_bytes] = args.as_slice() else {
        return Err("usage: raw_embedded DATA_DIR CONCURRENCY SECONDS BODY_BYTES".into());
    };
    let (concurrency, seconds, body_bytes): (usize, u64, usize) =
        (concurrency.parse()?, seconds.parse()?, body_bytes.parse()?);
    let b = EmbeddedBackend::open(std::path::Path::new(dir)).await?;
    b.ensure(&QueueSpec::new("raw")).await?;
    let producer = b.producer("raw").await?;
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    let run = spillway_benches::closed_loop(concurrency, seconds, |_, handle| {
        let (producer, body) = (producer.clone(), body.clone());
        async move {
            while handle.running() {
                let mut m = OutgoingMessage::new(ulid::Ulid::new().to_string(), body.clone());
                m.attributes.insert("spillway-format".to_owned(), "envelope".to_owned());
                m.attributes.insert("spillway-route".to_owned(), "ingest".to_owned());
                producer.send(m).await.expect("stored");
                handle.stored();
            }
        }
    })
    .await?;
    run.report(&format!("committed sends with {concurrency} senders"));
    Ok(())
}
