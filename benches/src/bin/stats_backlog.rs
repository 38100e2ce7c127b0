//! `queue stats` against a deep backlog, in one run: the embedded queue's
//! O(1) counts (counters + the not-yet-visible index range, on the read
//! connection) against the full scan they replaced (the same SQL the
//! writer used to run), over the same database.
//!
//! ```text
//! stats_backlog MESSAGES
//! ```

use std::time::{Duration, Instant};

use spillway_queue::{embedded::EmbeddedBackend, Admin, Backend, QueueSpec};

const SCAN: &str = "SELECT sum(dead_at IS NULL AND visible_at <= ?2),
        sum(dead_at IS NULL AND visible_at > ?2 AND receipt IS NULL),
        sum(dead_at IS NULL AND visible_at > ?2 AND receipt IS NOT NULL),
        sum(dead_at IS NOT NULL)
 FROM messages WHERE queue = ?1";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let b = EmbeddedBackend::open(dir.path()).await?;
    b.ensure(&QueueSpec::new("q")).await?;
    let p = b.producer("q").await?;
    let body = bytes::Bytes::from(vec![b'x'; 200]);
    let started = Instant::now();
    spillway_benches::fill(p.as_ref(), n, &body, |_| None).await?;
    eprintln!("filled {n} messages in {:?}", started.elapsed());
    let mut counters = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let s = b.stats("q").await?;
        counters.push(t.elapsed());
        assert_eq!(s.visible as usize, n);
    }
    let conn = rusqlite::Connection::open(dir.path().join("queue.db"))?;
    let mut scans = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let now = i64::MAX / 2;
        let _: Option<i64> = conn.query_row(SCAN, rusqlite::params!["q", now], |r| r.get(0))?;
        scans.push(t.elapsed());
    }
    let (c, s) = (median(counters), median(scans));
    println!("| backlog | stats now (median of 9) | full scan (median of 5) | now / scan |");
    println!("|---|---|---|---|");
    println!("| {n} | {c:?} | {s:?} | {:.6} |", c.as_secs_f64() / s.as_secs_f64());
    Ok(())
}
