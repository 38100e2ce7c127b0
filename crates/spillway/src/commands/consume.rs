//! `spillway consume`: drain a queue into the sink.

use std::sync::Arc;

use anyhow::Context;
use spillway_consumer::{ConsumerConfig, RunReport};
use spillway_queue::Backend;
use tokio_util::sync::CancellationToken;

use super::{open_backend, queue_name};
use axum::{routing::get, Router};
use tokio::net::TcpListener;

use crate::{settings::Settings, signal, telemetry};

pub(crate) async fn consume(s: Settings, queue: Option<String>) -> anyhow::Result<()> {
    let backend = open_backend(&s).await?;
    let mut cfg = s.consumer.clone();
    cfg.queue = queue_name(&s, queue);
    let shutdown = CancellationToken::new();
    let metrics =
        telemetry::Metrics::new(telemetry::install()?, backend.clone(), Arc::from([cfg.queue.clone()]));
    if let Some(addr) = s.metrics.consumer_listen {
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("binding {addr} for metrics"))?;
        let app = Router::new()
            .route("/metrics", get(move || async move { metrics.render().await }))
            .route("/healthz", get(|| std::future::ready("ok")));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "metrics on /metrics");
    }
    let runtime = start(&backend, cfg.clone(), shutdown.clone()).await?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal::terminated().await;
        tracing::info!("shutting down: finishing deliveries in hand, releasing the rest");
        trigger.cancel();
    });
    finish(runtime.await)
}

/// Sets up the sink and the queue's consumer, then starts the runtime; it
/// runs until `shutdown`. Shared by `spillway consume` and by `spillway
/// serve` with `server.consume`. The metrics recorder must be installed
/// first: the runtime registers its metric handles when it starts, and
/// handles taken before the recorder exists record nothing.
pub(crate) async fn start(
    backend: &Arc<dyn Backend>,
    cfg: ConsumerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<RunReport>> {
    let sink = spillway_consumer::build_sink(&cfg.sink).await.context("setting up the sink")?;
    let consumer =
        backend.consumer(&cfg.queue).await.with_context(|| format!("consuming `{}`", cfg.queue))?;
    tracing::info!(queue = %cfg.queue, concurrency = cfg.concurrency, "consuming");
    Ok(tokio::spawn(spillway_consumer::run(consumer, sink, cfg, shutdown)))
}

/// The runtime's end, as the command's result.
pub(crate) fn finish(ended: Result<RunReport, tokio::task::JoinError>) -> anyhow::Result<()> {
    let report = ended.context("the consumer runtime ended abnormally")?;
    tracing::info!(?report, "consumer stopped");
    if report.panicked > 0 {
        anyhow::bail!("{} consumer worker(s) ended abnormally; see the log", report.panicked);
    }
    Ok(())
}
