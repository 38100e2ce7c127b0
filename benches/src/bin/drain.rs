//! How fast `spillway consume` drains a backlog into PostgreSQL, in one
//! run: the batching sink (one statement per received batch) against the
//! same sink handed one message at a time (what every sink did before), on
//! the same backlog size, the same machine, alternating.
//!
//! ```text
//! drain MESSAGES POSTGRES_URL          # batched against one by one
//! drain MESSAGES POSTGRES_URL grid     # batched only, workers × batch sizes
//! drain MESSAGES POSTGRES_URL sinks >/dev/null
//!     # every sink at the consumer's defaults: postgres, stdout (its JSON
//!     # lines to this process's standard output), http (to an endpoint in
//!     # this process that answers 204); the table goes to standard error
//! ```

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use spillway_consumer::{sink::PostgresSink, ConsumerConfig, Sink, SinkError};
use spillway_queue::{embedded::EmbeddedBackend, Admin, Backend, Delivery, OutgoingMessage, QueueSpec};
use tokio_util::sync::CancellationToken;

/// The same sink, but never in batches.
struct OneByOne(Arc<PostgresSink>);

#[async_trait]
impl Sink for OneByOne {
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        self.0.deliver(d).await
    }
}

async fn drain(n: usize, sink: Arc<dyn Sink>, concurrency: usize, batch: Option<usize>) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = EmbeddedBackend::open(dir.path()).await.expect("open");
    b.ensure(&QueueSpec::new("q")).await.expect("ensure");
    let p = b.producer("q").await.expect("producer");
    for chunk in 0..n.div_ceil(1000) {
        let msgs = (0..1000)
            .map(|i| {
                let id = format!("{:08}-{chunk}-{i}", rand_prefix());
                let body = format!(r#"{{"event":"page_view","user":{i},"pad":"{}"}}"#, "x".repeat(150));
                OutgoingMessage::new(id, body)
            })
            .collect();
        p.send_batch(msgs).await.expect("fill");
    }
    let cfg = ConsumerConfig {
        queue: "q".into(),
        concurrency,
        batch_size: batch,
        wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let stop = CancellationToken::new();
    let consumer = b.consumer("q").await.expect("consumer");
    let started = Instant::now();
    let task = tokio::spawn(spillway_consumer::run(consumer, sink, cfg, stop.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if b.stats("q").await.expect("stats").pending() == 0 {
            break;
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    rate
}

fn rand_prefix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static RUN: AtomicU32 = AtomicU32::new(0);
    RUN.fetch_add(1, Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let url = args.get(2).cloned().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let table = format!("drain_bench_{}", std::process::id());
    let sink =
        Arc::new(PostgresSink::connect(&url, &table, true, Duration::from_secs(5)).await.expect("postgres"));
    if args.get(3).map(String::as_str) == Some("grid") {
        // Ratios to the defaults (4 × 10) of the same run.
        println!("| workers × batch | batched, msg/s | ratio to 4 × 10 |");
        println!("|---|---|---|");
        let mut base = None;
        for (workers, batch) in [(4, 10), (4, 100), (8, 100), (16, 100), (4, 10)] {
            let rate = drain(n, sink.clone(), workers, Some(batch)).await;
            let base = *base.get_or_insert(rate);
            println!("| {workers} × {batch} | {rate:.0} | {:.2} |", rate / base);
        }
    } else if args.get(3).map(String::as_str) == Some("sinks") {
        every_sink(n, &url, &table).await;
    } else {
        one_by_one_against_batched(n, &sink).await;
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await;
}

async fn one_by_one_against_batched(n: usize, sink: &Arc<PostgresSink>) {
    println!("| workers × batch | one by one, msg/s | batched, msg/s | batched / one by one |");
    println!("|---|---|---|---|");
    for (workers, batch) in [(4, 10), (16, 100)] {
        let one = drain(n, Arc::new(OneByOne(sink.clone())), workers, Some(batch)).await;
        let many = drain(n, sink.clone(), workers, Some(batch)).await;
        println!("| {workers} × {batch} | {one:.0} | {many:.0} | {:.2} |", many / one);
    }
}

/// Every sink as `spillway consume` builds it from its config, at the
/// consumer's defaults (4 workers; the batch size each sink gets by
/// default), and the HTTP sink again with 32 workers; twice each,
/// alternating. The table goes to standard error:
/// standard output is the stdout sink's.
async fn every_sink(n: usize, url: &str, table: &str) {
    use spillway_consumer::SinkConfig;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|_: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = SinkConfig::Http {
        url: format!("http://{addr}/hook"),
        on_4xx: Default::default(),
        headers: Default::default(),
    };
    // (name, sink, workers): the defaults, and the HTTP sink, which
    // delivers one by one, once more with more workers.
    let sinks = [
        (
            "postgres",
            SinkConfig::Postgres {
                url: url.to_owned(),
                table: table.to_owned(),
                create_table: true,
                lock_timeout: Duration::from_secs(5),
            },
            4,
        ),
        ("stdout", SinkConfig::Stdout, 4),
        ("http", http.clone(), 4),
        ("http", http, 32),
    ];
    eprintln!("| sink | workers | batch (default) | round 1, msg/s | round 2, msg/s |");
    eprintln!("|---|---|---|---|---|");
    let mut rates = vec![Vec::new(); sinks.len()];
    let mut batches = vec![0; sinks.len()];
    for _ in 0..2 {
        for (i, (_, cfg, workers)) in sinks.iter().enumerate() {
            let sink = spillway_consumer::build_sink(cfg).await.expect("sink");
            batches[i] = ConsumerConfig::default().batch_size_for(sink.batches());
            rates[i].push(drain(n, sink, *workers, None).await);
        }
    }
    for (((name, _, workers), r), batch) in sinks.iter().zip(&rates).zip(&batches) {
        eprintln!("| {name} | {workers} | {batch} | {:.0} | {:.0} |", r[0], r[1]);
    }
}
