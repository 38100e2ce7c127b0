//! Metrics: a Prometheus recorder for the `metrics` calls in the libraries,
//! rendered on `GET /metrics` (by `serve` on its own port, by `consume` on
//! `consumer.metrics_listen`).

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
