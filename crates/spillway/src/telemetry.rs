//! Metrics: a Prometheus recorder for the `metrics` calls in the libraries,
//! rendered on `GET /metrics` (by `serve` on `server.admin_listen`, by
//! `consume` on `metrics.consumer_listen`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use spillway_queue::Backend;

/// Messages in a queue by state (`visible`, `delayed`, `in_flight`, `dead`),
/// read from the backend when `/metrics` is scraped: for alerts and for
/// autoscaling on queue depth. `dead` is the DLQ depth.
pub(crate) const QUEUE_MESSAGES: &str = "spillway_queue_messages";
/// Scrapes whose queue counts could not be read (the last values stay).
pub(crate) const QUEUE_STATS_ERRORS: &str = "spillway_queue_stats_errors_total";
/// The age of the oldest message still to be delivered, by queue, where
/// the backend can tell (docs/backends.md): with
/// [`QUEUE_RETENTION`], the alert before a broker's retention deletes a
/// backlog (docs/operations.md).
pub(crate) const QUEUE_OLDEST_AGE: &str = "spillway_queue_oldest_message_age_seconds";
/// How long the broker keeps a message nobody consumed, by queue; absent
/// where it keeps it until consumed.
pub(crate) const QUEUE_RETENTION: &str = "spillway_queue_retention_seconds";
/// A scrape waits this long for the backend's counts.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// The counts are read again at most this often, however often `/metrics`
/// is scraped: on SQS each read is a `GetQueueAttributes` per queue, billed
/// (docs/operations.md).
pub(crate) const STATS_EVERY: Duration = Duration::from_secs(5);
/// The age is read again at most this often: on Kafka it fetches a record
/// per partition behind, which a scrape every few seconds need not repeat.
const AGE_EVERY: Duration = Duration::from_secs(30);
/// A scrape waits this long for the age.
const AGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds: from well under a millisecond (an fsync'd commit) to a 30 s sink call.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];
/// Messages per batch.
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// How often histogram samples are folded into buckets. Samples wait in
/// memory until then: at 70k requests/s, 5 s of them was ~10 MiB of RSS.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the global recorder and starts its upkeep task.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("batch_size".into()), &SIZE_BUCKETS))
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What `/metrics` serves: the queue gauges, refreshed when older than
/// [`STATS_EVERY`], then everything. Concurrent scrapes share one refresh.
#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    backend: Arc<dyn Backend>,
    queues: Arc<[String]>,
    /// When each queue's age was last read.
    aged: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// When the counts were last read; held while they are read.
    counted: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
    /// The process's own gauges (`process_resident_memory_bytes`, CPU,
    /// open files), read at each scrape: what the dashboard's memory
    /// panel and an OOM investigation need, in Prometheus' standard names.
    process: Arc<metrics_process::Collector>,
}

impl Metrics {
    /// Also starts each queue's error counter at 0, so it is there before
    /// the first error: `rate()` over a counter that does not exist yet is
    /// no data, not 0, and a dashboard or alert cannot tell that from a
    /// broken scrape.
    pub(crate) fn new(handle: PrometheusHandle, backend: Arc<dyn Backend>, queues: Arc<[String]>) -> Self {
        for q in queues.iter() {
            metrics::counter!(QUEUE_STATS_ERRORS, "queue" => q.clone()).absolute(0);
        }
        let process = metrics_process::Collector::default();
        process.describe();
        Self {
            handle,
            backend,
            queues,
            aged: Arc::default(),
            counted: Arc::default(),
            process: Arc::new(process),
        }
    }

    pub(crate) async fn render(&self) -> String {
        {
            let mut counted = self.counted.lock().await;
            if counted.is_none_or(|at| at.elapsed() >= STATS_EVERY) {
                self.refresh_counts().await;
                *counted = Some(tokio::time::Instant::now());
            }
        }
        self.process.collect();
        self.handle.render()
    }

    async fn refresh_counts(&self) {
        for q in self.queues.iter() {
            match tokio::time::timeout(STATS_TIMEOUT, self.backend.stats(q)).await {
                Ok(Ok(s)) => {
                    for (state, n) in [
                        ("visible", s.visible),
                        ("delayed", s.delayed),
                        ("in_flight", s.in_flight),
                        ("dead", s.dead),
                    ] {
                        metrics::gauge!(QUEUE_MESSAGES, "queue" => q.clone(), "state" => state).set(n as f64);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(queue = %q, error = %e, "metrics: cannot read queue counts");
                    metrics::counter!(QUEUE_STATS_ERRORS, "queue" => q.clone()).increment(1);
                }
                Err(_) => {
                    tracing::warn!(queue = %q, "metrics: queue counts did not arrive in time");
                    metrics::counter!(QUEUE_STATS_ERRORS, "queue" => q.clone()).increment(1);
                }
            }
            self.refresh_age(q).await;
        }
    }

    /// Sets the age gauges of `q`, unless they were read less than
    /// [`AGE_EVERY`] ago. A failed read keeps the last values.
    async fn refresh_age(&self, q: &str) {
        {
            let mut aged = self.aged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if aged.get(q).is_some_and(|at| at.elapsed() < AGE_EVERY) {
                return;
            }
            aged.insert(q.to_owned(), std::time::Instant::now());
        }
        match tokio::time::timeout(AGE_TIMEOUT, self.backend.age(q)).await {
            Ok(Ok(age)) => {
                if let Some(oldest) = age.oldest {
                    metrics::gauge!(QUEUE_OLDEST_AGE, "queue" => q.to_owned()).set(oldest.as_secs_f64());
                }
                if let Some(retention) = age.retention {
                    metrics::gauge!(QUEUE_RETENTION, "queue" => q.to_owned()).set(retention.as_secs_f64());
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(queue = %q, error = %e, "metrics: cannot read the oldest message's age")
            }
            Err(_) => tracing::warn!(queue = %q, "metrics: the oldest message's age did not arrive in time"),
        }
    }
}
