//! What a 2xx survives, and keeping WAL checkpoints off the commit path.
//!
//! # Durability
//!
//! [`Durability::PowerLoss`], the default, is SQLite's `synchronous=FULL` in
//! WAL mode: every commit fsyncs the WAL before the writer answers, so an
//! `Ok` (and the gateway's 2xx) survives `kill -9`, a kernel crash and a
//! power cut. [`Durability::ProcessCrash`] is `synchronous=NORMAL`: a commit
//! is written to the operating system, not fsync'd, so it survives the
//! process dying in any way, but a kernel crash or power cut can take back
//! the commits made since the WAL was last fsync'd. That happens at every
//! checkpoint, which [`Checkpointer`] runs every [`CHECKPOINT_EVERY`] while
//! there is anything to copy: so typically the last ~100 ms of 2xx answers,
//! with no bound guaranteed (a checkpoint that cannot keep up syncs less
//! often). The database itself stays consistent either way.
//!
//! # Checkpoints
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that takes the WAL
//! past `wal_autocheckpoint` pages: that commit copies the WAL into the
//! database file and fsyncs it, and every request in its group commit waits.
//! Here the writer's connection checkpoints only as a backstop
//! ([`BACKSTOP_PAGES`], should the thread below fall behind), and a thread of
//! its own, on a connection of its own, runs a `PASSIVE` checkpoint every
//! [`CHECKPOINT_EVERY`]. `PASSIVE` never waits for the writer or for
//! readers; it copies what it can, and once it has caught up the writer
//! starts the WAL again from its beginning, so the WAL stays small. A
//! checkpoint with nothing to copy reads the WAL's header and returns.

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

/// The writer's own `wal_autocheckpoint`: a backstop only (64 MiB of 4 KiB
/// pages), reached if the checkpoint thread cannot keep up.
pub(crate) const BACKSTOP_PAGES: u32 = 16_384;

/// The checkpoint thread. Dropping this handle stops it.
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
        conn.execute_batch(&format!(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = {};",
            durability.synchronous()
        ))
        .map_err(|e| QueueError::unavailable("embedded queue: cannot set up the checkpoint connection", e))?;
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("spillway-checkpoint".to_owned())
            .spawn(move || loop {
                match stopped.recv_timeout(CHECKPOINT_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if let Err(e) = checkpoint(&conn) {
                    tracing::warn!(error = %e, "embedded queue: checkpoint failed; the writer's backstop checkpoints instead");
                }
            })
            .map_err(|e| QueueError::unavailable("embedded queue: cannot start the checkpoint thread", e))?;
        Ok(Self { _stop: stop })
    }
}

/// One `PASSIVE` checkpoint: `(frames in the WAL, frames copied)`.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))
}
