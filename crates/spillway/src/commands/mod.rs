//! One file per command. Each loads the settings, opens the backend, and does its one job.

mod config;
mod consume;
mod dlq;
mod import;
mod queue;
mod serve;
mod spool;

use std::sync::Arc;

use anyhow::Context;
use spillway_queue::{Backend, PurgeTarget};
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{Cli, Command, PurgeArgs},
    settings::{LogFormat, Settings},
};

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    // Reads another product's files: no settings of its own to load.
    if let Command::Import(args) = &cli.command {
        return import::import(args);
    }
    let (settings, ingest) = Settings::load(cli.config.as_deref())?;
    init_logging(&settings);
    match cli.command {
        Command::Serve => serve::serve(settings, ingest).await,
        Command::Consume { queue } => consume::consume(settings, queue).await,
        Command::Dlq(cmd) => dlq::dlq(settings, cmd).await,
        Command::Queue(cmd) => queue::queue(settings, cmd).await,
        Command::Config(cmd) => config::config(&settings, cmd),
        Command::Spool(cmd) => spool::spool(settings, cmd).await,
        Command::Import(_) => Ok(()),
        Command::Openapi => {
            let doc = spillway_ingest::openapi::document(&ingest, env!("CARGO_PKG_VERSION"));
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
    }
}

fn init_logging(s: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let access = if s.log.access { "info" } else { "off" };
        let filter = EnvFilter::new(&s.log.level);
        match format!("{}={access}", spillway_ingest::access_log::TARGET).parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        }
    });
    // Colour codes only for a terminal: in a file or a log collector they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // `try_init` fails only if a subscriber is already set; then keep that one.
    let _ = match s.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens the backend and creates every configured queue.
pub(crate) async fn open_backend(s: &Settings) -> anyhow::Result<Arc<dyn Backend>> {
    let backend = spillway_queue::connect(&s.queue)
        .await
        .with_context(|| format!("opening the {} queue", s.queue.kind()))?;
    for spec in s.queue_specs() {
        backend.ensure(&spec).await.with_context(|| format!("creating queue `{}`", spec.name))?;
    }
    Ok(backend)
}

/// `queue purge` and `dlq purge`: refuses without `--yes`, then deletes the
/// target. Returns how many went, and from which queue.
pub(crate) async fn purge(
    backend: &dyn Backend,
    s: &Settings,
    args: PurgeArgs,
    target: PurgeTarget,
) -> anyhow::Result<(u64, String)> {
    let q = queue_name(s, args.queue.queue);
    let what = match target {
        PurgeTarget::Source => format!("`{q}`"),
        PurgeTarget::Dead => format!("the DLQ of `{q}`"),
    };
    if !args.yes {
        anyhow::bail!("purging {what} deletes its messages for good; add --yes");
    }
    Ok((backend.purge(&q, target).await?, q))
}

/// The queue a command works on: the flag, else `consumer.queue`.
pub(crate) fn queue_name(s: &Settings, flag: Option<String>) -> String {
    flag.unwrap_or_else(|| s.consumer.queue.clone())
}
