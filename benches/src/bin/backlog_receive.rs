//! Receive against a deep backlog, in one run: the time a consumer's
//! `receive` (batch 100, then one `ack_batch`) takes on a shallow queue and
//! on a deep one, for two shapes of backlog:
//!
//! - **plain**: every message without an ordering key;
//! - **one hot key**: all but the last 1,000 messages share one ordering
//!   key (one customer sending far more than the rest), and the head of
//!   that key is held by a consumer (in flight), so every message of the
//!   key waits behind it and the receive must find the 1,000 others.
//!
//! A receive that scans what it cannot deliver grows with the backlog; one
//! that walks an index to what it can deliver does not. Prints a table of
//! medians, the deep queue's time as a ratio to the shallow one's.
//!
//! ```text
//! backlog_receive DEEP [SHALLOW]
//! ```

use std::time::{Duration, Instant};

use spillway_queue::{embedded::EmbeddedBackend, Admin, Backend, QueueSpec};

const BATCH: usize = 100;
const OTHERS: usize = 1_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Fills a fresh queue with `n` messages (the last `OTHERS` without a key
/// when `hot`), holds the hot key's head, and times receives.
async fn run(n: usize, hot: bool) -> Result<Duration, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let b = EmbeddedBackend::open(dir.path()).await?;
    b.ensure(&QueueSpec::new("q")).await?;
    let p = b.producer("q").await?;
    let body = bytes::Bytes::from(vec![b'x'; 510]);
    let hot_until = if hot { n - OTHERS } else { 0 };
    spillway_benches::fill(p.as_ref(), n, &body, |i| (i < hot_until).then(|| "hot".to_owned())).await?;
    let c = b.consumer("q").await?;
    if hot {
        // Hold the hot key's head: one receive of one message, never acked.
        let held = c.receive(1, Duration::ZERO).await?;
        assert_eq!(held.len(), 1, "the hot key's head");
    }
    let rounds = if hot { OTHERS / BATCH - 1 } else { 9 };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let got = c.receive(BATCH, Duration::ZERO).await?;
        times.push(t.elapsed());
        assert_eq!(got.len(), BATCH, "a full batch");
        c.ack_batch(&got).await?;
    }
    Ok(median(times))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let deep: usize = std::env::args().nth(1).map_or(Ok(1_000_000), |a| a.parse())?;
    let shallow: usize = std::env::args().nth(2).map_or(Ok(10_000), |a| a.parse())?;
    println!("| backlog | messages | receive of {BATCH}, median | ratio to {shallow} |");
    println!("|---|---|---|---|");
    for hot in [false, true] {
        let shape = if hot { "one hot key, its head in flight" } else { "plain" };
        let base = run(shallow, hot).await?;
        let deep_t = run(deep, hot).await?;
        println!("| {shape} | {shallow} | {base:?} | 1.00 |");
        println!("| {shape} | {deep} | {deep_t:?} | {:.2} |", deep_t.as_secs_f64() / base.as_secs_f64());
    }
    Ok(())
}
