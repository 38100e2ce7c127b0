//! What the gateway counts, through the `metrics` facade. The binary installs
//! a Prometheus recorder and serves it on `/metrics`; without a recorder these
//! calls cost next to nothing. Names and labels are listed in
//! `docs/operations.md`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{extract::Request, response::Response};
use tower::{Layer, Service};

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
/// the same start time and the same answer, so one layer does both.
///
/// A tower layer, not `axum::middleware::from_fn`: `from_fn` clones the
/// inner service and boxes a future on every request, which showed in the
/// per-request instruction count (`docs/benchmarks.md`, seventh session).
#[derive(Clone)]
pub struct RecordLayer(Arc<RouteMetrics>);

impl RecordLayer {
    pub fn new(metrics: RouteMetrics) -> Self {
        Self(Arc::new(metrics))
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record { inner, metrics: self.0.clone() }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    metrics: Arc<RouteMetrics>,
}

impl<S> Service<Request> for Record<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let access = crate::access_log::start(&req);
        Recorded { inner: self.inner.call(req), started, access, metrics: self.metrics.clone() }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`Record`]: counted when it is ready.
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        started: Instant,
        access: Option<crate::access_log::Pending>,
        metrics: Arc<RouteMetrics>,
    }
}

impl<F, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        let took = this.started.elapsed();
        let m = &**this.metrics;
        m.duration.record(took.as_secs_f64());
        if let Some(access) = this.access.take() {
            crate::access_log::finish(access, &m.route, &res, took);
        }
        let status = res.status().as_u16();
        if status == m.success_status {
            m.success.increment(1);
        } else {
            let route = metrics::SharedString::from_shared(m.route.clone());
            metrics::counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
        }
        Poll::Ready(Ok(res))
    }
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

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, task::Waker};

    use axum::body::Body;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// Answers one request per status through a [`RecordLayer`] and returns
    /// what a Prometheus recorder counted.
    fn counted(statuses: &[u16]) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let layer = RecordLayer::new(RouteMetrics::new("/r", 202));
            for &status in statuses {
                let mut svc = layer.layer(tower::service_fn(move |_req: Request| async move {
                    Ok::<_, Infallible>(
                        Response::builder().status(status).body(Body::empty()).expect("response"),
                    )
                }));
                let mut answer = std::pin::pin!(svc.call(Request::new(Body::empty())));
                let polled = answer.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                assert!(
                    matches!(&polled, Poll::Ready(Ok(res)) if res.status().as_u16() == status),
                    "the answer passes through unchanged"
                );
            }
        });
        handle.render()
    }

    /// The success status has its handle registered up front; every other
    /// status is counted too, under its own label, and every answer is timed.
    #[test]
    fn every_answer_is_counted_under_its_status() {
        let text = counted(&[202, 202, 503, 400, 202]);
        for line in [
            r#"spillway_http_requests_total{route="/r",status="202"} 3"#,
            r#"spillway_http_requests_total{route="/r",status="503"} 1"#,
            r#"spillway_http_requests_total{route="/r",status="400"} 1"#,
            r#"spillway_http_request_duration_seconds_count{route="/r"} 5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
