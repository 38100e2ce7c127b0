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
            let mut rows = Vec::new();
            for name in names {
                rows.push((name.clone(), backend.stats(&name).await?));
            }
            if json {
                let map: serde_json::Map<_, _> = rows
                    .into_iter()
                    .map(|(n, st)| (n, serde_json::to_value(st).unwrap_or_default()))
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                let mut out = format!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}\n",
                    "QUEUE", "VISIBLE", "DELAYED", "IN FLIGHT", "DEAD"
                );
                for (n, st) in rows {
                    let _ = writeln!(
                        out,
                        "{n:<24} {:>10} {:>10} {:>10} {:>10}",
                        st.visible, st.delayed, st.in_flight, st.dead
                    );
                }
                print!("{out}");
            }
        }
    }
    Ok(())
}
