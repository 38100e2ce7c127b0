//! Moving dead letters back into their queue: in batches, at a set rate,
//! reporting progress after each batch.

use std::time::Duration;

use spillway_queue::{Admin, QueueError};

/// Messages moved per call, so progress shows and a rate can be kept.
pub const REDRIVE_BATCH: usize = 100;

/// Moves up to `max` dead letters of `queue` back (all if `None`), at most
/// `per_sec` a second if set. `progress` hears the running total after each
/// batch. Returns the total moved.
pub async fn redrive(
    admin: &dyn Admin,
    queue: &str,
    max: Option<u64>,
    per_sec: Option<u32>,
    mut progress: impl FnMut(u64),
) -> Result<u64, QueueError> {
    let mut moved = 0u64;
    loop {
        let left = max.map_or(u64::MAX, |m| m.saturating_sub(moved));
        if left == 0 {
            break;
        }
        let batch = usize::try_from(left).unwrap_or(usize::MAX).min(match per_sec {
            Some(r) => (r.max(1) as usize).min(REDRIVE_BATCH),
            None => REDRIVE_BATCH,
        });
        let started = tokio::time::Instant::now();
        let n = admin.redrive(queue, batch).await?;
        moved += n;
        progress(moved);
        if n < batch as u64 {
            break;
        }
        if let Some(r) = per_sec {
            let due = Duration::from_secs_f64(n as f64 / f64::from(r.max(1)));
            tokio::time::sleep_until(started + due).await;
        }
    }
    Ok(moved)
}
