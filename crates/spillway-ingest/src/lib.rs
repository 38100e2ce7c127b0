//! The HTTP side of Spillway: a request comes in, a durable message goes out,
//! and the client hears 2xx only once the queue confirmed it.
//!
//! # Layout
//!
//! Follow one request from top to bottom:
//!
//! - [`config`]: routes, CORS, limits and publisher settings, checked by
//!   [`config::IngestConfig::compile`] into the types below. A bad value is an
//!   error naming its key, never a panic.
//! - [`cors`]: origin patterns (exact, `*.` wildcard subdomains, ports),
//!   compiled once, handed to tower-http's `CorsLayer` as a predicate.
//! - [`routes`]: the route table as an axum `Router`, with the JSON 404/405
//!   answers and the health endpoints.
//! - [`handler`]: one request: limits, content type, body, the envelope, publish.
//! - [`api_key`], [`throttle`] and [`client_ip`]: API keys, rate limits
//!   per route, client and key, the client named by trusted proxies; all
//!   checked before the body is read.
//! - [`schema`]: a route's JSON Schema, compiled with the config; the body
//!   must match it.
//! - [`publisher`]: one task per queue that batches concurrent sends and
//!   awaits the backend's durable confirm.
//! - [`error`]: every failure as an HTTP answer, in one place.
//! - [`metrics`]: what is counted, per route and per queue; [`access_log`]:
//!   one log line per answer, when enabled.
//! - [`framing`]: follows request framing on each connection, to refuse a
//!   head with both `Content-Length` and `Transfer-Encoding` (smuggling).
//! - [`server`]: `serve(listener, router, limits, shutdown)`: hyper with a
//!   header-read timeout, a head size limit and a connection cap; drains
//!   before it returns.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod access_log;
pub mod admission;
pub mod api_key;
pub mod client_ip;
pub mod config;
pub mod cors;
pub mod error;
pub mod framing;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod publisher;
pub mod readiness;
pub mod routes;
pub mod schema;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod verify;

pub use config::{CompiledIngest, ConfigError, IngestConfig};
pub use error::ApiError;
pub use publisher::Publisher;
pub use readiness::Readiness;
pub use routes::{build_router, build_router_spooled};
pub use server::{serve, serve_exempting, ServerLimits};
