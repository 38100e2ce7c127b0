//! What a 2xx survives.
//!
//! [`Durability::PowerLoss`], the default, is SQLite's `synchronous=FULL` in
//! WAL mode: every commit fsyncs the WAL before the writer answers, so an
//! `Ok` (and the gateway's 2xx) survives `kill -9`, a kernel crash and a
//! power cut. [`Durability::ProcessCrash`] is `synchronous=NORMAL`: a commit
//! is written to the operating system, not fsync'd, so it survives the
//! process dying in any way, but a kernel crash or power cut can take back
//! the commits made since the WAL was last fsync'd. In that mode SQLite
//! fsyncs the WAL only at checkpoints, which by itself it runs every 1,000
//! pages of WAL (at a low rate, hours apart), so a [`Checkpointer`] thread
//! runs one every [`CHECKPOINT_EVERY`] while there is anything to copy: the
//! loss is then typically the last ~100 ms of 2xx answers, with no bound
//! guaranteed (a checkpoint that cannot keep up syncs less often). The
//! database stays consistent either way.
//!
//! Measured (docs/benchmarks.md): at 4 connections `process_crash` answered
//! 1.7x the requests with half the median latency; at 64 connections, where
//! group commits share each fsync, it gained nothing. And the default mode
//! keeps SQLite's own checkpoint inside the commit: moving it to this
//! thread made p99 2.6x worse (a PASSIVE checkpoint beside a writer that
//! never pauses never lets the WAL start over, so the WAL grew to the
//! backstop and the backstop's checkpoint stalled every commit behind it).

use std::{
    path::Path,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread,
    time::Duration,
};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// What an `Ok` from the embedded queue survives; see the module doc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `synchronous=FULL`: survives a power cut. The default.
    #[default]
    PowerLoss,
    /// `synchronous=NORMAL`: survives the process dying (`kill -9`, OOM,
    /// panic), not a kernel crash or power cut, which can take back the
    /// last commits (typically ~100 ms of them).
    ProcessCrash,
}

impl Durability {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PowerLoss => "power_loss",
            Self::ProcessCrash => "process_crash",
        }
    }

    /// SQLite's `synchronous` level for this durability.
    pub(crate) fn synchronous(self) -> &'static str {
        match self {
            Self::PowerLoss => "FULL",
            Self::ProcessCrash => "NORMAL",
        }
    }
}

/// How often the checkpoint thread copies the WAL into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The checkpoint thread of `process_crash`. Dropping this handle stops it.
pub(crate) struct Checkpointer {
    _stop: Sender<()>,
}

impl Checkpointer {
    /// Opens a connection of its own to `path` and starts the thread.
    pub(crate) fn spawn(path: &Path, durability: Durability) -> Result<Self, QueueError> {
        let conn = Connection::open(path).map_err(|e| {
            QueueError::unavailable(
                format!("embedded queue: cannot open {} to checkpoint", path.display()),
                e,
            )
        })?;
        // The checkpoint's fsyncs follow this connection's `synchronous`:
        // the same as the writer's, never OFF, or a checkpoint could reset a
        // WAL whose pages were not yet safe in the database file.
        super::schema::wait_when_busy(&conn)
            .and_then(|()| conn.execute_batch(&format!("PRAGMA synchronous = {};", durability.synchronous())))
            .map_err(|e| {
                QueueError::unavailable("embedded queue: cannot set up the checkpoint connection", e)
            })?;
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("spillway-checkpoint".to_owned())
            .spawn(move || loop {
                match stopped.recv_timeout(CHECKPOINT_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if let Err(e) = checkpoint(&conn) {
                    tracing::warn!(error = %e, "embedded queue: checkpoint failed; SQLite's own runs every 1,000 pages");
                }
            })
            .map_err(|e| QueueError::unavailable("embedded queue: cannot start the checkpoint thread", e))?;
        Ok(Self { _stop: stop })
    }
}

/// One `PASSIVE` checkpoint. Its row (busy, frames, copied) is not needed:
/// the next one copies whatever this one left.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
