//! The database layout and the settings that make it durable.
//!
//! One table of queues, one of messages. A message is dead (in the queue's
//! dead-letter queue) when `dead_at` is set; it is in flight while `receipt`
//! is set and `visible_at` is in the future. The dead-letter queue is a flag,
//! not a table, so moving a message there and back is one UPDATE.
//!
//! A live message with an ordering key is `blocked` while an earlier live
//! message of the same key exists: only each key's head is unblocked, and the
//! ready index leads with `blocked`, so a receive walks straight to what it
//! can deliver. Without the flag it had to step over every message waiting
//! behind a key's head, one index probe each: a receive cost time in
//! proportion to the largest key's backlog, inside the writer, so every send
//! waited too (`docs/benchmarks.md`, "Receive at depth").

use rusqlite::Connection;

use super::durability::Durability;
use crate::QueueError;

/// WAL mode with the `synchronous` level of `durability`: with `FULL` (the
/// default) a commit that returned survives `kill -9` and power loss (see
/// [`super::durability`]). The busy handler ([`wait_when_busy`]) is set
/// before them, so that even switching to WAL waits for a busy file instead
/// of failing.
fn durable_pragmas(durability: Durability) -> String {
    format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {};",
        durability.synchronous()
    )
}

/// How long a connection waits for a lock another process holds, at least.
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often it looks again meanwhile.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(250);

/// Lets a second process (a consumer beside the gateway) share the file: a
/// connection that finds the lock taken tries again every [`BUSY_POLL`] for
/// [`BUSY_PATIENCE`]. SQLite's own `busy_timeout` backs off to 1, 2, 5, 10 …
/// 100 ms between tries, and a writer that always holds the lock again
/// within a millisecond leaves a process on that schedule waiting through
/// many of its commits.
pub(crate) fn wait_when_busy(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(busy))
}

/// SQLite's busy handler: `tries` is how many times it was called for this
/// lock already; `true` means try again.
fn busy(tries: i32) -> bool {
    #[cfg(test)]
    BUSY_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !patient(tries) {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// How often [`busy`] ran: tests check that a wait went through it.
#[cfg(test)]
pub(crate) static BUSY_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether `tries` polls are still within [`BUSY_PATIENCE`].
fn patient(tries: i32) -> bool {
    BUSY_POLL * u32::try_from(tries).unwrap_or(u32::MAX) < BUSY_PATIENCE
}

/// For the memory backend: nothing to fsync.
const MEMORY_PRAGMAS: &str = "
    PRAGMA journal_mode = MEMORY;
    PRAGMA synchronous = OFF;
";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS queues (
        name                   TEXT PRIMARY KEY,
        max_receive_count      INTEGER NOT NULL,
        visibility_timeout_ms  INTEGER NOT NULL,
        max_message_bytes      INTEGER NOT NULL,
        live                   INTEGER NOT NULL DEFAULT 0,
        dead                   INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS messages (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,
        queue              TEXT    NOT NULL,
        id                 TEXT    NOT NULL,
        body               BLOB    NOT NULL,
        attributes         TEXT    NOT NULL,
        ordering_key       TEXT,
        dedup_key          TEXT,
        enqueued_at        INTEGER NOT NULL,
        visible_at         INTEGER NOT NULL,
        receive_count      INTEGER NOT NULL DEFAULT 0,
        receipt_gen        INTEGER NOT NULL DEFAULT 0,
        receipt            INTEGER,
        first_received_at  INTEGER,
        last_received_at   INTEGER,
        last_error         TEXT,
        dead_at            INTEGER,
        blocked            INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, dead_at, blocked, visible_at, seq);
    CREATE INDEX IF NOT EXISTS messages_group ON messages (queue, ordering_key, blocked, seq)
        WHERE ordering_key IS NOT NULL AND dead_at IS NULL;
    CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (queue, dedup_key)
        WHERE dedup_key IS NOT NULL AND dead_at IS NULL;
";

/// The layout's version, in `PRAGMA user_version`. 1: the `live` and `dead`
/// counters on `queues`. 2: `blocked`, and the two indexes that lead with it.
const VERSION: i64 = 2;

/// Version 0 → 1: a database written before the counters existed gets the
/// columns and one full count, once.
const ADD_COUNTERS: &str = "
    ALTER TABLE queues ADD COLUMN live INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queues ADD COLUMN dead INTEGER NOT NULL DEFAULT 0;
";
/// Version 1 → 2: the `blocked` flag, set once for every message that waits
/// behind an earlier live message of its key; the two indexes are rebuilt
/// with it.
const ADD_BLOCKED: &str = "
    ALTER TABLE messages ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
    DROP INDEX IF EXISTS messages_ready;
    DROP INDEX IF EXISTS messages_group;
";
const BLOCK: &str = "
    UPDATE messages SET blocked = 1
    WHERE ordering_key IS NOT NULL AND dead_at IS NULL AND seq NOT IN (
        SELECT min(seq) FROM messages WHERE ordering_key IS NOT NULL AND dead_at IS NULL
        GROUP BY queue, ordering_key);
";
const RECOUNT: &str = "
    UPDATE queues SET
        live = (SELECT count(*) FROM messages WHERE queue = queues.name AND dead_at IS NULL),
        dead = (SELECT count(*) FROM messages WHERE queue = queues.name AND dead_at IS NOT NULL);
";

/// Applies the settings (`None`: an in-memory database, nothing to sync),
/// creates the tables if they are missing, and brings an older layout up to
/// date.
pub(crate) fn prepare(conn: &Connection, durability: Option<Durability>) -> Result<(), QueueError> {
    let pragmas = durability.map_or_else(|| MEMORY_PRAGMAS.to_owned(), durable_pragmas);
    let migrate = || -> rusqlite::Result<()> {
        if durability.is_some() {
            wait_when_busy(conn)?;
        }
        conn.execute_batch(&pragmas)?;
        // A file already at this layout needs no write lock: a second
        // process (`queue stats` beside a busy gateway) must not queue for
        // the lock the gateway's writer holds almost all the time.
        if conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? == VERSION {
            return Ok(());
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < VERSION {
            let had_queues: bool = conn.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'queues'",
                [],
                |r| r.get(0),
            )?;
            let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
                conn.query_row(
                    "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                    [table, column],
                    |r| r.get(0),
                )
            };
            if had_queues && !has_column("queues", "live")? {
                conn.execute_batch(ADD_COUNTERS)?;
            }
            let add_blocked = had_queues && !has_column("messages", "blocked")?;
            if add_blocked {
                conn.execute_batch(ADD_BLOCKED)?;
            }
            conn.execute_batch(SCHEMA)?;
            if add_blocked {
                conn.execute_batch(BLOCK)?;
            }
            conn.execute_batch(RECOUNT)?;
            conn.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
        } else {
            conn.execute_batch(SCHEMA)?;
        }
        conn.execute_batch("COMMIT")
    };
    // Two processes opening a new file at once (`serve` and `consume`
    // started together) can get SQLITE_BUSY at once, without the busy
    // handler: SQLite refuses to wait where waiting could deadlock (the
    // switch to WAL, a lock upgrade). The whole preparation is idempotent,
    // so it is tried again for a while.
    let deadline = std::time::Instant::now() + PREPARE_PATIENCE;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match migrate() {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let busy = matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                );
                if !busy || std::time::Instant::now() >= deadline {
                    return Err(QueueError::unavailable("embedded queue: cannot prepare the database", e));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// How long opening waits for another process preparing the same file.
const PREPARE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// A second connection to the same file, for reads that must not wait for
/// the writer (WAL lets readers run beside a writer).
pub(crate) fn open_reader(path: &std::path::Path) -> Result<Connection, QueueError> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| {
        QueueError::unavailable(format!("embedded queue: cannot open {} to read", path.display()), e)
    })?;
    wait_when_busy(&conn)
        .map_err(|e| QueueError::unavailable("embedded queue: cannot set up the read connection", e))?;
    Ok(conn)
}

/// `(journal_mode, synchronous)` of this connection.
pub(crate) fn read_durability(conn: &Connection) -> Result<(String, i64), QueueError> {
    let read = || -> rusqlite::Result<(String, i64)> {
        let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        Ok((journal.to_ascii_lowercase(), synchronous))
    };
    read().map_err(|e| QueueError::unavailable("embedded queue: cannot read pragmas", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls every 250 µs, for 5 s: 20,000 tries, then SQLITE_BUSY.
    #[test]
    fn the_busy_handler_polls_for_its_patience_then_gives_up() {
        assert!(patient(0));
        assert!(patient(19_999));
        assert!(!patient(20_000));
        assert!(!patient(i32::MAX));
        assert!(!busy(20_000), "gives up without sleeping");
    }
}
