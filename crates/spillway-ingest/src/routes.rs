//! The route table as an axum `Router`.
//!
//! Each configured route gets a method router with the route's methods, a
//! JSON 405 (with `Allow`) for the others, and, when CORS is configured,
//! these layers from outside in: [`cors::TidyLayer`], tower-http's
//! `CorsLayer`, and, with `strict_origin`, [`cors::GuardLayer`]. CORS wraps
//! the route's every answer, errors included; [`metrics::RecordLayer`],
//! around all of them, counts every answer. An unknown path gets a JSON
//! 404. `/healthz` and `/readyz` are answered by the server itself.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    extract::Request,
    http::Method,
    response::IntoResponse,
    routing::{any, get, MethodFilter, MethodRouter},
    Router,
};
use spillway_queue::{spool::Spool, Backend, QueueError};

use crate::{
    config::{CompiledIngest, ConfigError},
    cors::{self, CorsPolicy},
    error::ApiError,
    handler::{ingest, RouteState},
    metrics,
    publisher::Publisher,
    readiness::Readiness,
    store::Store,
};

/// Why the router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("queue `{queue}`: {source}")]
    Queue { queue: String, source: QueueError },
}

/// Builds the router from the compiled settings: one publisher per queue,
/// shared by the routes that use it. The queues must exist (the binary
/// ensures them first).
pub async fn build_router(
    cfg: &CompiledIngest,
    backend: Arc<dyn Backend>,
    readiness: Readiness,
) -> Result<Router, BuildError> {
    build_router_spooled(cfg, backend, readiness, None).await
}

/// [`build_router`] with a spool in front of the backend (`queue.spool`):
/// each queue gets its gate and forwarder, and readiness stays true while
/// the backend is down as long as every spool has room.
pub async fn build_router_spooled(
    cfg: &CompiledIngest,
    backend: Arc<dyn Backend>,
    readiness: Readiness,
    spool: Option<Arc<Spool>>,
) -> Result<Router, BuildError> {
    let routes = cfg.routes.clone();
    let admission = Arc::new(crate::admission::Admission::new(cfg.max_body_bytes_in_flight));
    let mut stores: HashMap<String, Arc<Store>> = HashMap::new();
    let mut idempotency_stores = crate::idempotency::Stores::default();
    let mut router = Router::new();
    for route in routes {
        let store = match stores.get(&route.queue) {
            Some(s) => s.clone(),
            None => {
                let queue_error = |source| BuildError::Queue { queue: route.queue.clone(), source };
                let producer = backend.producer(&route.queue).await.map_err(queue_error)?;
                let gate = match &spool {
                    Some(spool) => {
                        Some(spool.gate(&route.queue, producer.clone()).await.map_err(queue_error)?)
                    }
                    None => None,
                };
                let p = Arc::new(Publisher::spawn(route.queue.clone(), producer, &cfg.publisher));
                let s = Arc::new(Store::new(p, gate));
                stores.insert(route.queue.clone(), s.clone());
                s
            }
        };
        let path = route.path.clone();
        let allow = route.allow();
        let methods = route.methods.clone();
        let cors = route.cors.clone();
        if let Some(throttle) = &route.throttle {
            crate::throttle::spawn_sweeper(throttle, &route.name);
        }
        let idempotency = match &route.idempotency {
            Some(c) => Some(Arc::new(
                idempotency_stores
                    .route(c, &cfg.idempotency, &format!("route {}: idempotency", route.path))
                    .await?,
            )),
            None => None,
        };
        let state = Arc::new(RouteState { route, store, admission: admission.clone(), idempotency });
        let mut mr: MethodRouter = MethodRouter::new();
        for m in &methods {
            let filter = MethodFilter::try_from(m.clone()).map_err(|_| ConfigError {
                key: format!("route {path}"),
                message: format!("method {m} cannot be routed"),
            })?;
            let st = state.clone();
            mr = mr.on(filter, move |req: Request| ingest(st.clone(), req));
        }
        mr = mr.fallback(move || async move { ApiError::MethodNotAllowed { allow }.into_response() });
        let counted = metrics::RouteMetrics::new(&state.route.name, state.route.success_status.as_u16());
        let mr =
            with_cors(mr, cors.as_ref(), &methods).layer::<_, Infallible>(metrics::RecordLayer::new(counted));
        router = router.route(&path, mr);
    }
    if spool.is_some() {
        let all: Vec<Arc<Store>> = stores.into_values().collect();
        readiness.ready_while_down(move || all.iter().all(|s| s.can_take_while_down()));
    }
    // An unknown path is answered under the top-level CORS policy, so a
    // browser on an allowed origin can read its 404.
    let not_found: MethodRouter = any(|| async { ApiError::NotFound.into_response() });
    let global = cfg.global_cors.clone();
    Ok(router
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(move || readiness_answer(readiness.clone())))
        .fallback_service(
            with_cors(not_found, global.as_ref(), &[Method::POST, Method::PUT]).layer::<_, Infallible>(
                metrics::RecordLayer::new(metrics::RouteMetrics::new(metrics::UNMATCHED, 404)),
            ),
        ))
}

/// Wraps a route in the CORS layers, from outside in: `Tidy`, tower-http's
/// `CorsLayer`, and `Guard` when the policy is strict. Without a policy the
/// route is left as it is.
fn with_cors(mr: MethodRouter, policy: Option<&Arc<CorsPolicy>>, methods: &[Method]) -> MethodRouter {
    let Some(policy) = policy else { return mr };
    let mr = if policy.strict_origin {
        mr.layer::<_, Infallible>(cors::GuardLayer(policy.matcher.clone()))
    } else {
        mr
    };
    mr.layer::<_, Infallible>(policy.layer(methods)).layer::<_, Infallible>(cors::TidyLayer)
}

/// `/readyz`: the kept answer ([`Readiness`]); the cause is only logged.
pub async fn readiness_answer(readiness: Readiness) -> axum::response::Response {
    if readiness.is_ready() {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not_ready" })),
        )
            .into_response()
    }
}
