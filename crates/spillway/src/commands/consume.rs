//! `spillway consume`: drain a queue into the sink.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{open_backend, queue_name};
use crate::{settings::Settings, signal};

pub(crate) async fn consume(s: Settings, queue: Option<String>) -> anyhow::Result<()> {
    let backend = open_backend(&s).await?;
    let mut cfg = s.consumer.clone();
    cfg.queue = queue_name(&s, queue);
    let sink = spillway_consumer::build_sink(&cfg.sink).await.context("setting up the sink")?;
    let consumer =
        backend.consumer(&cfg.queue).await.with_context(|| format!("consuming `{}`", cfg.queue))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal::terminated().await;
        tracing::info!("shutting down: finishing deliveries in hand, releasing the rest");
        trigger.cancel();
    });
    tracing::info!(queue = %cfg.queue, concurrency = cfg.concurrency, "consuming");
    let report = spillway_consumer::run(consumer, sink, cfg, shutdown).await;
    tracing::info!(?report, "consumer stopped");
    Ok(())
}
