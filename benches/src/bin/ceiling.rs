//! The HTTP ceiling: a bare axum server that reads the body and answers 202
//! with a message id, storing nothing. What `spillway serve` reaches as a
//! fraction of this, on the same machine in the same run, is the cost of
//! routing, the envelope, and the durable queue (see docs/benchmarks.md).
//!
//! `ceiling [ADDR]`, default `127.0.0.1:8090`.
#![forbid(unsafe_code)]

use axum::{body::Body, http::StatusCode, routing::post, Router};
use http_body_util::BodyExt;

async fn accept(body: Body) -> (StatusCode, String) {
    let len = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    (StatusCode::ACCEPTED, spillway_benches::accepted_body(&ulid::Ulid::new().to_string(), len))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let app = Router::new().route("/ingest", post(accept).put(accept));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
