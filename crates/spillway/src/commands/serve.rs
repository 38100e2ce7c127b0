//! `spillway serve`: the gateway.

use anyhow::Context;
use spillway_ingest::{build_router, CompiledIngest, Readiness};
use spillway_queue::embedded::Durability;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::open_backend;
use crate::{settings::Settings, signal, telemetry};

pub(crate) async fn serve(s: Settings, ingest: CompiledIngest) -> anyhow::Result<()> {
    let backend = open_backend(&s).await?;
    let readiness = Readiness::new(backend.clone());
    let metrics = telemetry::Metrics::new(
        telemetry::install()?,
        backend.clone(),
        s.queue_specs().into_iter().map(|q| q.name).collect(),
    );
    let router = build_router(&ingest, backend.clone(), readiness.clone())
        .await?
        .route("/metrics", axum::routing::get(move || async move { metrics.render().await }));
    let listener =
        TcpListener::bind(s.server.listen).await.with_context(|| format!("binding {}", s.server.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let where_ = match &s.queue {
        spillway_queue::BackendConfig::Embedded { path, durability } => {
            if *durability == Durability::ProcessCrash {
                tracing::warn!(
                    "queue.durability = \"process_crash\": commits are not fsync'd; a power cut or kernel crash can lose the last accepted requests"
                );
            }
            format!("embedded queue in {}, durability {}", path.display(), durability.as_str())
        }
        other => format!("{} queue", other.kind()),
    };
    let routes: Vec<String> =
        s.ingest.routes.iter().map(|r| format!("{} {}", r.methods.join("|"), r.path)).collect();
    println!("spillway listening on http://{addr} ({where_}); routes: {}", routes.join(", "));
    tracing::info!(%addr, backend = backend.kind(), "listening");

    // The in-process consumer stops after the HTTP server has drained, so
    // nothing it could still deliver is left behind by a shutdown.
    let stop_consuming = CancellationToken::new();
    let consuming = if s.server.consume {
        Some(super::consume::start(&backend, s.consumer.clone(), stop_consuming.clone()).await?)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    let grace = s.server.shutdown_grace;
    let trigger = shutdown.clone();
    let ready = readiness.clone();
    tokio::spawn(async move {
        signal::terminated().await;
        tracing::info!(?grace, "shutting down: readiness off, then draining");
        ready.start_draining();
        tokio::time::sleep(grace).await;
        trigger.cancel();
    });
    spillway_ingest::serve(listener, router, s.server.limits.clone(), shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("drained; every accepted request has its answer");
    if let Some(runtime) = consuming {
        stop_consuming.cancel();
        super::consume::finish(runtime.await)?;
    }
    Ok(())
}
