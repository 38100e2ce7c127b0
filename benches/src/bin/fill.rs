//! Fills an embedded queue with a backlog for the gateway to face:
//! `MESSAGES` messages of `BODY_BYTES` (the gateway's 510-byte envelope of
//! a 200-byte request by default), 1,000 to a commit. Prints the time it
//! took and the database's bytes per message.
//!
//! ```text
//! fill DATA_DIR QUEUE MESSAGES [BODY_BYTES]
//! ```

use std::time::Instant;

use spillway_queue::{embedded::EmbeddedBackend, Admin, Backend, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, queue, n, body_bytes) = match args.as_slice() {
        [_, dir, queue, n] => (dir, queue, n.parse::<usize>()?, 510),
        [_, dir, queue, n, bytes] => (dir, queue, n.parse()?, bytes.parse()?),
        _ => return Err("usage: fill DATA_DIR QUEUE MESSAGES [BODY_BYTES]".into()),
    };
    let dir = std::path::Path::new(dir);
    let b = EmbeddedBackend::open(dir).await?;
    b.ensure(&QueueSpec::new(queue.as_str())).await?;
    let p = b.producer(queue).await?;
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    let started = Instant::now();
    spillway_benches::fill(p.as_ref(), n, &body, |_| None).await?;
    let took = started.elapsed();
    drop(p);
    let bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "filled {n} messages of {body_bytes} bytes in {:.1} s ({:.0}/s); {:.0} bytes on disk per message",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        bytes as f64 / n.max(1) as f64
    );
    Ok(())
}
