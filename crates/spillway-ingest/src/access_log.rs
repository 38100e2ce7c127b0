//! One log event per answered request, at target `spillway::access`, level
//! INFO: method, path, route, status, microseconds, the client's address,
//! the stored message's id (`message_id`, the same as the answer's
//! `x-spillway-id` and the envelope's `id`), the error code of a refusal,
//! and the client's own `x-request-id` when it sent one. With `log.format =
//! "json"` each is one JSON line a log pipeline can join with the consumer's
//! logs and the database row by message id.
//!
//! Off unless the subscriber enables the target (`log.access = true` in
//! the binary): at tens of thousands of requests a second a line each costs
//! real CPU, and the metrics already count every answer. Disabled, a
//! request pays one cached `enabled!` check.

use std::{net::IpAddr, time::Duration};

use axum::{
    extract::Request,
    http::{HeaderValue, Method},
    response::Response,
};

/// The log target; filter on it to turn access logs on or off.
pub const TARGET: &str = "spillway::access";

/// Whether access lines are wanted: one cached callsite check. The handler
/// and the error answer attach [`ClientIp`] and [`ErrorCode`] only then, so
/// with access logs off a response carries no extensions (whose map is an
/// allocation per response).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Set on a response by the handler when access logs are on: the client
/// the request came from (after trusted proxies, [`crate::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Set on an error response when access logs are on: its stable `error.code`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// What the log line needs from the request, taken before the request is
/// handed on; `None` when access logging is off.
pub struct Pending {
    method: Method,
    path: String,
    request_id: Option<HeaderValue>,
}

/// Call before the request is handled.
pub fn start(req: &Request) -> Option<Pending> {
    if !enabled() {
        return None;
    }
    Some(Pending {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        request_id: req.headers().get("x-request-id").cloned(),
    })
}

/// Call with the answer.
pub fn finish(pending: Pending, route: &str, res: &Response, took: Duration) {
    let client = res.extensions().get::<ClientIp>().map(|ClientIp(ip)| tracing::field::display(ip));
    let error = res.extensions().get::<ErrorCode>().map(|ErrorCode(code)| *code);
    let message_id = res.headers().get(crate::handler::ID_HEADER).and_then(|v| v.to_str().ok());
    let request_id = pending.request_id.as_ref().and_then(|v| v.to_str().ok());
    tracing::info!(
        target: TARGET,
        method = %pending.method,
        path = %pending.path,
        route,
        status = res.status().as_u16(),
        micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        client,
        message_id,
        error,
        request_id,
        "request"
    );
}
