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

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

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
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = spillway_benches::process_cpu_secs();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (producer, body, sent, stop) = (producer.clone(), body.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut m = OutgoingMessage::new(ulid::Ulid::new().to_string(), body.clone());
                m.attributes.insert("spillway-format".to_owned(), "envelope".to_owned());
                m.attributes.insert("spillway-route".to_owned(), "ingest".to_owned());
                producer.send(m).await.expect("stored");
                sent.fetch_add(1, Ordering::Relaxed);
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
    let n = sent.load(Ordering::Relaxed).max(1);
    let cpu_us = (spillway_benches::process_cpu_secs() - cpu0) * 1e6 / n as f64;
    eprintln!("{n} committed sends in {elapsed:?} with {concurrency} senders, {cpu_us:.1} us CPU each");
    println!("{:.0} {cpu_us:.2}", n as f64 / elapsed.as_secs_f64());
    Ok(())
}
