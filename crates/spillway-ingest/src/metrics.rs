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

/// Counts every answer of a route, whoever gave it (handler, CORS, limits).
/// The route label is shared, not copied, on every request.
pub async fn record(State(route): State<Arc<str>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let res = next.run(req).await;
    let took = started.elapsed();
    let label = || metrics::SharedString::from_shared(route.clone());
    metrics::counter!(REQUESTS, "route" => label(), "status" => status_label(res.status().as_u16()))
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => label()).record(took.as_secs_f64());
    res
}

/// Common statuses without an allocation.
fn status_label(status: u16) -> metrics::SharedString {
    match status {
        200 => "200".into(),
        202 => "202".into(),
        204 => "204".into(),
        400 => "400".into(),
        404 => "404".into(),
        413 => "413".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}

/// Records one batch sent by the publisher.
pub(crate) fn batch_sent(queue: &str, size: usize, took: Duration) {
    metrics::histogram!(BATCH_SIZE, "queue" => queue.to_owned()).record(size as f64);
    metrics::histogram!(PUBLISH_DURATION, "queue" => queue.to_owned()).record(took.as_secs_f64());
}
