//! `spillway queue stats | ensure`.

use std::fmt::Write as _;

use spillway_queue::PurgeTarget;

use super::{open_backend, purge};
use crate::{cli::QueueCommand, settings::Settings};

pub(crate) async fn queue(s: Settings, cmd: QueueCommand) -> anyhow::Result<()> {
    let backend = open_backend(&s).await?;
    match cmd {
        QueueCommand::Ensure => {
            for spec in s.queue_specs() {
                println!(
                    "ensured `{}` (max_receive_count {}, visibility {:?})",
                    spec.name, spec.dead_letter.max_receive_count, spec.dead_letter.visibility_timeout
                );
            }
        }
        QueueCommand::Purge(args) => {
            let (n, q) = purge(backend.as_ref(), &s, args, PurgeTarget::Source).await?;
            println!("purged {n} message(s) from `{q}`; its dead-letter queue is untouched");
        }
        QueueCommand::Stats { queue, json } => {
            let names: Vec<String> =
                if queue.is_empty() { s.queue_specs().into_iter().map(|q| q.name).collect() } else { queue };
            // The spool of this machine's gateway, where one is set: what
            // is waiting there for the broker.
            // Read only: a machine without one shows 0, and none is made.
            let spool = match s.queue.spool() {
                Some(cfg) if spillway_queue::spool::Spool::exists(cfg) => {
                    Some(spillway_queue::spool::Spool::open(cfg).await?)
                }
                _ => None,
            };
            let mut rows = Vec::new();
            for name in names {
                let spooled = match (&spool, s.queue.spool()) {
                    (Some(sp), _) => Some(spooled(sp.local(), &name).await?),
                    (None, Some(_)) => Some(0),
                    (None, None) => None,
                };
                rows.push((name.clone(), backend.stats(&name).await?, spooled));
            }
            if json {
                let map: serde_json::Map<_, _> = rows
                    .into_iter()
                    .map(|(n, st, spooled)| {
                        let mut v = serde_json::to_value(st).unwrap_or_default();
                        if let (Some(n), Some(obj)) = (spooled, v.as_object_mut()) {
                            obj.insert("spooled".into(), n.into());
                        }
                        (n, v)
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                let spool_header =
                    if s.queue.spool().is_some() { format!(" {:>10}", "SPOOLED") } else { String::new() };
                let mut out = format!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}{spool_header}\n",
                    "QUEUE", "VISIBLE", "DELAYED", "IN FLIGHT", "DEAD"
                );
                for (n, st, spooled) in rows {
                    let spooled = spooled.map(|n| format!(" {n:>10}")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{n:<24} {:>10} {:>10} {:>10} {:>10}{spooled}",
                        st.visible, st.delayed, st.in_flight, st.dead
                    );
                }
                print!("{out}");
            }
        }
    }
    Ok(())
}

/// Messages of `queue` in the spool (waiting, delayed or being forwarded);
/// 0 for a queue the spool never held.
async fn spooled(local: &spillway_queue::embedded::EmbeddedBackend, queue: &str) -> anyhow::Result<u64> {
    use spillway_queue::{Admin as _, QueueError};
    match local.stats(queue).await {
        Ok(st) => Ok(st.visible + st.delayed + st.in_flight),
        Err(QueueError::NotFound(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
