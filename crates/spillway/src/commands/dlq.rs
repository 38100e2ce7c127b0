//! `spillway dlq peek | redrive | purge`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use spillway_queue::PurgeTarget;

use super::{open_backend, purge, queue_name};
use crate::{cli::DlqCommand, settings::Settings};

pub(crate) async fn dlq(s: Settings, cmd: DlqCommand) -> anyhow::Result<()> {
    let backend = open_backend(&s).await?;
    match cmd {
        DlqCommand::Peek { queue, max, json } => {
            let q = queue_name(&s, queue.queue);
            let dead = backend.peek_dead(&q, max).await?;
            if json {
                for d in &dead {
                    let mut v = serde_json::to_value(d)?;
                    v["body"] = serde_json::Value::String(String::from_utf8_lossy(&d.body).into_owned());
                    println!("{v}");
                }
            } else {
                println!("{:<28} {:>8}  {:<26} LAST ERROR", "ID", "RECEIVES", "DEAD SINCE");
                for d in &dead {
                    let since = d.dead_lettered_at.format(&time::format_description::well_known::Rfc3339)?;
                    let err = d.last_error.as_deref().unwrap_or("-");
                    println!("{:<28} {:>8}  {:<26} {err}", d.id, d.receive_count, since);
                }
                println!("({} shown from `{q}`)", dead.len());
            }
        }
        DlqCommand::Redrive { queue, max, rate } => {
            let q = queue_name(&s, queue.queue);
            let total = backend.stats(&q).await?.dead;
            let goal = max.map_or(total, |m| m.min(total));
            let bar = ProgressBar::new(goal);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} redrive [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            let moved = spillway_consumer::redrive::redrive(backend.as_ref(), &q, Some(goal), rate, |n| {
                bar.set_position(n)
            })
            .await;
            bar.finish_and_clear();
            let moved = moved?;
            let left = backend.stats(&q).await?.dead;
            println!("redrove {moved} message(s) from the DLQ of `{q}` back into it; {left} left in the DLQ");
        }
        DlqCommand::Purge(args) => {
            let (n, q) = purge(backend.as_ref(), &s, args, PurgeTarget::Dead).await?;
            println!("purged {n} dead letter(s) from `{q}`");
        }
    }
    Ok(())
}
