//! `spillway spool drain`: this machine's spool forwarded to the broker.
//!
//! It starts a forwarder per configured queue on the spool (beside the
//! gateway's own, if one runs: the spool hands each message to one of
//! them) and waits until every queue's spool is empty.

use anyhow::{bail, Context};

use super::open_backend;
use crate::{cli::SpoolCommand, settings::Settings};

pub(crate) async fn spool(s: Settings, cmd: SpoolCommand) -> anyhow::Result<()> {
    let SpoolCommand::Drain { timeout } = cmd;
    let Some(cfg) = s.queue.spool() else {
        bail!("no spool is configured (`queue.spool`): nothing to drain");
    };
    let backend = open_backend(&s).await?;
    let spool = spillway_queue::spool::Spool::open(cfg)
        .await
        .with_context(|| format!("opening the spool in {}", cfg.path.display()))?;
    for spec in s.queue_specs() {
        let producer =
            backend.producer(&spec.name).await.with_context(|| format!("queue `{}`", spec.name))?;
        spool.gate(&spec.name, producer).await.with_context(|| format!("the spool of `{}`", spec.name))?;
    }
    let left = spool.drain(timeout).await;
    spool.shutdown().await;
    if !left.is_empty() {
        let left: Vec<String> = left.iter().map(|(q, n)| format!("`{q}`: {n}")).collect();
        bail!(
            "the spool is not empty after {timeout:?} (is the broker taking messages?): {}",
            left.join(", ")
        );
    }
    println!("the spool in {} is empty: every message was forwarded", cfg.path.display());
    Ok(())
}
