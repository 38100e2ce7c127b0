//! `spillway serve`: the gateway.

use anyhow::Context;
use spillway_ingest::{build_router_spooled, CompiledIngest, Readiness};
use spillway_queue::embedded::Durability;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::open_backend;
use crate::{settings::Settings, signal, telemetry};

pub(crate) async fn serve(s: Settings, ingest: CompiledIngest) -> anyhow::Result<()> {
    // With a spool, the gateway starts whether the broker answers or not:
    // it connects when it can and spools meanwhile (spool::lazy).
    let backend: std::sync::Arc<dyn spillway_queue::Backend> = if s.queue.spool().is_some() {
        let lazy = spillway_queue::spool::lazy::LazyBackend::new(s.queue.clone(), s.queue_specs());
        if let Err(e) = lazy.try_connect(std::time::Duration::from_secs(2)).await {
            tracing::warn!(error = %e, "starting with the queue backend down: requests go to the spool until it answers");
        }
        std::sync::Arc::new(lazy)
    } else {
        open_backend(&s).await?
    };
    let readiness = Readiness::start(backend.clone(), s.server.readiness_every).await;
    let metrics = telemetry::Metrics::new(
        telemetry::install()?,
        backend.clone(),
        s.queue_specs().into_iter().map(|q| q.name).collect(),
    );
    let spool = match s.queue.spool() {
        Some(cfg) => {
            let spool = spillway_queue::spool::Spool::open(cfg)
                .await
                .with_context(|| format!("opening the spool in {}", cfg.path.display()))?;
            tracing::info!(path = %cfg.path.display(), max_bytes = cfg.max_bytes, on = ?cfg.on, "spool open");
            Some(spool)
        }
        None => None,
    };
    let router = build_router_spooled(&ingest, backend.clone(), readiness.clone(), spool.clone()).await?;
    let listener =
        TcpListener::bind(s.server.listen).await.with_context(|| format!("binding {}", s.server.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let tls = match &s.server.tls {
        Some(cfg) => {
            let (acceptor, reloading) = spillway_ingest::tls::acceptor(cfg).map_err(anyhow::Error::msg)?;
            spillway_ingest::tls::spawn_reloader(&reloading);
            // Held for the server's life: the reloader stops when it is dropped.
            Some((acceptor, reloading))
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin_listener = TcpListener::bind(s.server.admin_listen)
        .await
        .with_context(|| format!("binding server.admin_listen {}", s.server.admin_listen))?;
    let admin_addr = admin_listener.local_addr().context("reading the admin address")?;
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
    println!(
        "spillway listening on {scheme}://{addr} ({where_}); routes: {}; admin on http://{admin_addr}",
        routes.join(", ")
    );
    tracing::info!(%addr, %admin_addr, backend = backend.kind(), "listening");

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
    // The admin port stays up while traffic drains (readiness 503 is
    // what load balancers must see) and stops with it.
    let admin = tokio::spawn(spillway_ingest::serve(
        admin_listener,
        admin_router(
            readiness.clone(),
            metrics,
            spillway_ingest::openapi::document(&ingest, env!("CARGO_PKG_VERSION")),
        ),
        admin_limits(&s.server.limits),
        shutdown.clone(),
    ));
    spillway_ingest::serve_exempting(
        listener,
        router,
        s.server.limits.clone(),
        ingest.trusted_proxies.clone(),
        tls.as_ref().map(|(acceptor, _)| acceptor.clone()),
        shutdown,
    )
    .await
    .context("serving HTTP")?;
    drop(tls);
    admin.await.context("the admin listener")?.context("serving the admin listener")?;
    tracing::info!("drained; every accepted request has its answer");
    // Forward what the spool holds while the broker takes it, for at most
    // `drain_timeout`; what is left (and what the forwarders hold) stays
    // in the spool for the next run.
    if let (Some(spool), Some(cfg)) = (&spool, s.queue.spool()) {
        let left = spool.drain(cfg.drain_timeout).await;
        if !left.is_empty() {
            tracing::warn!(?left, "spool: not empty at exit; the next run forwards it");
        }
        spool.shutdown().await;
    }
    if let Some(runtime) = consuming {
        stop_consuming.cancel();
        super::consume::finish(runtime.await)?;
    }
    Ok(())
}

/// `/metrics`, `/livez` (the process answers), `/readyz` (the kept
/// readiness), `/healthz` (as `/livez`, for older probes) and
/// `/openapi.json` (the routes, as `spillway openapi` prints them).
fn admin_router(
    readiness: Readiness,
    metrics: telemetry::Metrics,
    openapi: serde_json::Value,
) -> axum::Router {
    use axum::routing::get;
    let alive = || async { axum::Json(serde_json::json!({ "status": "ok" })) };
    let openapi = std::sync::Arc::new(openapi);
    axum::Router::new()
        .route("/openapi.json", get(move || async move { axum::Json(openapi.as_ref().clone()) }))
        .route("/metrics", get(move || async move { metrics.render().await }))
        .route("/livez", get(alive))
        .route("/healthz", get(alive))
        .route("/readyz", get(move || spillway_ingest::routes::readiness_answer(readiness.clone())))
}

/// The admin listener's limits: the traffic port's timeouts, and a small
/// connection cap of its own (probes and a scraper, not clients).
fn admin_limits(traffic: &spillway_ingest::ServerLimits) -> spillway_ingest::ServerLimits {
    spillway_ingest::ServerLimits { max_connections: ADMIN_CONNECTIONS, ..traffic.clone() }
}

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 64;
