//! What the gateway counts, through the `metrics` facade. The binary installs
//! a Prometheus recorder and serves it on `/metrics`; without a recorder these
//! calls cost next to nothing. Names and labels are listed in
//! `docs/operations.md`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};

/// Requests answered, by route and status.
pub const REQUESTS: &str = "spillway_http_requests_total";
/// Time from the request's arrival to its answer, by route.
pub const REQUEST_DURATION: &str = "spillway_http_request_duration_seconds";
/// Messages per `send_batch` call, by queue.
pub const BATCH_SIZE: &str = "spillway_publish_batch_size";
/// How long `send_batch` took to confirm, by queue.
pub const PUBLISH_DURATION: &str = "spillway_publish_duration_seconds";
/// The route label of answers to unknown paths.
pub const UNMATCHED: &str = "unmatched";

/// A route's metric handles, registered once when the router is built so the
/// hot path does not look them up by name and labels on every request. Build
/// the router after installing the recorder.
#[derive(Clone)]
pub struct RouteMetrics {
    route: Arc<str>,
    success_status: u16,
    success: metrics::Counter,
    duration: metrics::Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str, success_status: u16) -> Self {
        let route: Arc<str> = Arc::from(route);
        let label = metrics::SharedString::from_shared(route.clone());
        Self {
            success: metrics::counter!(REQUESTS, "route" => label.clone(), "status" => success_status.to_string()),
            duration: metrics::histogram!(REQUEST_DURATION, "route" => label),
            route,
            success_status,
        }
    }
}

/// Counts every answer of a route, whoever gave it (handler, CORS, limits),
/// and logs it when access logs are on ([`crate::access_log`]): both need
/// the same start time and the same answer, so one middleware does both.
pub async fn record(State(m): State<RouteMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let access = crate::access_log::start(&req);
    let res = next.run(req).await;
    let took = started.elapsed();
    m.duration.record(took.as_secs_f64());
    if let Some(access) = access {
        crate::access_log::finish(access, &m.route, &res, took);
    }
    let status = res.status().as_u16();
    if status == m.success_status {
        m.success.increment(1);
    } else {
        let route = metrics::SharedString::from_shared(m.route.clone());
        metrics::counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    }
    res
}

/// A queue's publisher metric handles, registered once.
pub(crate) struct PublishMetrics {
    batch_size: metrics::Histogram,
    duration: metrics::Histogram,
}

impl PublishMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        Self {
            batch_size: metrics::histogram!(BATCH_SIZE, "queue" => queue.to_owned()),
            duration: metrics::histogram!(PUBLISH_DURATION, "queue" => queue.to_owned()),
        }
    }

    /// Records one batch sent by the publisher.
    pub(crate) fn batch_sent(&self, size: usize, took: Duration) {
        self.batch_size.record(size as f64);
        self.duration.record(took.as_secs_f64());
    }
}
