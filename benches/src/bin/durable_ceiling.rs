//! The durable ceiling: the bare server of `ceiling`, plus the cheapest
//! durable store we have (the segment log of [`spillway_benches::segment`]:
//! one `write` and one `fdatasync` per group of waiting requests). Each
//! request's body is appended, and the 202 goes out only after the
//! `fdatasync` that holds it, as Spillway's contract demands.
//!
//! No routing rules, checks, envelope, retries, receive or dead letters:
//! this is not a queue. It is the floor under any gateway that answers
//! after a durable write on this machine, so `benches/load.sh` can show how
//! much of the distance between Spillway and `ceiling` any design must pay
//! (`docs/benchmarks.md`, issue 18, eighth session).
//!
//! `durable_ceiling ADDR DATA_DIR [sync|nosync]`: `nosync` skips the
//! `fdatasync` (writes only), to tell the disk's share from the hand-offs'.
#![forbid(unsafe_code)]

use std::{path::PathBuf, sync::mpsc};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use spillway_benches::segment::{self, Job, Msg};
use tokio::sync::oneshot;

async fn accept(State(log): State<mpsc::Sender<Job>>, body: Bytes) -> (StatusCode, String) {
    let id = ulid::Ulid::new().to_string();
    let answer = spillway_benches::accepted_body(&id, body.len());
    let (reply, stored) = oneshot::channel();
    let msg = Msg { id, attributes: Default::default(), body };
    if log.send(Job { msgs: vec![msg], reply }).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    match stored.await {
        Ok(Ok(())) => (StatusCode::ACCEPTED, answer),
        _ => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, dir, sync) = match args.as_slice() {
        [_, addr, dir] => (addr, dir, segment::SyncMode::Data),
        [_, addr, dir, mode] if mode == "sync" => (addr, dir, segment::SyncMode::Data),
        [_, addr, dir, mode] if mode == "nosync" => (addr, dir, segment::SyncMode::None),
        _ => {
            eprintln!("usage: durable_ceiling ADDR DATA_DIR [sync|nosync]");
            std::process::exit(2);
        }
    };
    let log = segment::spawn(&PathBuf::from(dir), sync)?;
    let app = Router::new().route("/ingest", post(accept).put(accept)).with_state(log);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("durable ceiling listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
