//! `spillway`: the one binary.
//!
//! - `serve`: the HTTP gateway (ingest) on the configured queue backend;
//! - `consume`: drain a queue into the configured sink;
//! - `dlq peek | redrive | purge`: the dead-letter queue;
//! - `queue stats | ensure`: inspect and create queues;
//! - `config check`: validate and print the effective configuration.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod cli;
mod commands;
mod settings;
mod signal;
mod telemetry;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a request allocates many small,
/// short-lived buffers on one thread and frees them on another, which glibc's
/// arenas handle poorly (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
