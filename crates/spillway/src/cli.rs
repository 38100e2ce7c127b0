//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "spillway", version, about = "A durable HTTP ingest gateway")]
pub(crate) struct Cli {
    /// TOML config file. Without it: defaults plus `SPILLWAY_` environment variables.
    #[arg(long, short, global = true, env = "SPILLWAY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the HTTP gateway.
    Serve,
    /// Drain a queue into the configured sink.
    Consume {
        /// The queue (default: `consumer.queue`).
        #[arg(long)]
        queue: Option<String>,
    },
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The local spool in front of the broker (`queue.spool`).
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Turn an API Gateway setup into a spillway.toml (printed): a
    /// serverless.yml with the serverless-apigateway-service-proxy plugin,
    /// or an API Gateway OpenAPI/Swagger export with its extensions. What
    /// could not be carried over, and what will behave differently, goes
    /// to standard error.
    Import(ImportArgs),
    /// Print the OpenAPI 3.1 document of the configured routes (the admin
    /// listener serves it at `/openapi.json` too).
    Openapi,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// serverless.yml, or the export (JSON or YAML).
    pub(crate) file: PathBuf,
    /// The output of `aws apigateway get-usage-plans` (an export carries no
    /// usage plans): their throttles become per-API-key rate limits.
    #[arg(long)]
    pub(crate) usage_plans: Option<PathBuf>,
    /// Exit with status 3 when anything could not be carried over.
    #[arg(long)]
    pub(crate) strict: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SpoolCommand {
    /// Forward everything in this machine's spool to the broker, and wait
    /// until it is empty (before a pod with a spool is removed for good).
    Drain {
        /// Give up after this long, exit code 1 (e.g. `30s`, `5m`).
        #[arg(long, default_value = "5m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub(crate) struct QueueArg {
    /// The queue (default: `consumer.queue`).
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Show dead letters without removing them.
    Peek {
        #[command(flatten)]
        queue: QueueArg,
        /// How many.
        #[arg(long, default_value_t = 10)]
        max: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back into the queue, receive count reset.
    Redrive {
        #[command(flatten)]
        queue: QueueArg,
        /// At most this many (default: all).
        #[arg(long)]
        max: Option<u64>,
        /// At most this many a second.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Delete every dead letter.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    pub(crate) queue: QueueArg,
    /// Required: purging cannot be undone.
    #[arg(long)]
    pub(crate) yes: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Counts per queue: visible, delayed, in flight, dead.
    Stats {
        /// Only these queues (default: every queue in the config).
        #[arg(long, short)]
        queue: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Create every configured queue and its DLQ (idempotent).
    Ensure,
    /// Delete every live message (visible, delayed, in flight) of a queue; its DLQ is kept.
    Purge(PurgeArgs),
}

/// The command a configuration is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    Serve,
    Consume,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate, and print the effective configuration with secrets masked.
    Check {
        /// Check as this command would start: `serve` needs no sink URL
        /// unless `server.consume` is on. Without it, everything is
        /// checked, the sink's URL included.
        #[arg(long = "for", value_enum)]
        role: Option<Role>,
    },
}
