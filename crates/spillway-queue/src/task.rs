//! Work that a caller's dropped future must not cut short.

use std::future::Future;

use crate::QueueError;

/// Runs `work` in a task of its own and waits for it. Dropping the returned
/// future leaves the work running to its end: the broker backends run each
/// receive and each settle this way, so a caller cancelled midway (a
/// shutdown's `select!`) never leaves a message half taken or half
/// settled. `what` names the work in the error a panicked task gives.
pub(crate) async fn run_to_end<T, F>(what: &'static str, work: F) -> Result<T, QueueError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, QueueError>> + Send + 'static,
{
    tokio::spawn(work).await.map_err(|e| QueueError::unavailable(format!("{what}: task failed"), e))?
}
