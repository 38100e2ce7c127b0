//! The local store: an SQLite file of the gateway's own (`path/idempotency.db`).
//!
//! Right for one replica, or for a route every repeat of which reaches the
//! same replica. With several replicas behind a plain Service, a repeat
//! that reaches another pod is stored again: use the PostgreSQL store.
//!
//! WAL with `synchronous = NORMAL`: a key survives the process dying, not
//! the machine losing power (then a retry stores the request again: a
//! duplicate the consumer's dedup by content would have to catch, never a
//! loss). One connection behind a mutex, on the blocking pool.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{ms, Claim, Remembered, Row, Store, StoreError};

/// The database file in the store's folder.
pub const FILE: &str = "idempotency.db";

#[derive(Debug, Clone)]
pub struct LocalStore {
    conn: Arc<Mutex<Connection>>,
}

impl LocalStore {
    /// Opens (or creates) `dir/idempotency.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::Config(format!("opening {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS idempotency (
                 scope TEXT NOT NULL,
                 key TEXT NOT NULL,
                 fingerprint BLOB NOT NULL,
                 status INTEGER,
                 message_id TEXT,
                 spooled INTEGER NOT NULL DEFAULT 0,
                 expires_at INTEGER NOT NULL,
                 PRIMARY KEY (scope, key)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);",
        )
        .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("local store task: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("local store: {e}")))
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let (scope, key, fp) = (scope.to_owned(), key.to_owned(), fingerprint.to_vec());
        let until = now_ms.saturating_add(ms(lease));
        let row = self
            .run(move |c| {
                // A new key, or one whose record ended, becomes ours; a live
                // one is read back as it is.
                let took = c
                    .prepare_cached(
                        "INSERT INTO idempotency (scope, key, fingerprint, status, message_id, spooled, expires_at)
                         VALUES (?1, ?2, ?3, NULL, NULL, 0, ?4)
                         ON CONFLICT (scope, key) DO UPDATE SET
                             fingerprint = excluded.fingerprint, status = NULL, message_id = NULL,
                             spooled = 0, expires_at = excluded.expires_at
                         WHERE expires_at <= ?5
                         RETURNING 1",
                    )?
                    .query_row(params![scope, key, fp, until, now_ms], |_| Ok(()))
                    .optional()?;
                if took.is_some() {
                    return Ok(None);
                }
                c.prepare_cached(
                    "SELECT fingerprint, status, message_id, spooled, expires_at FROM idempotency
                     WHERE scope = ?1 AND key = ?2",
                )?
                .query_row(params![scope, key], |r| {
                    Ok(Some(Row {
                        fingerprint: r.get(0)?,
                        status: r.get::<_, Option<i64>>(1)?.and_then(|s| u16::try_from(s).ok()),
                        message_id: r.get(2)?,
                        spooled: r.get::<_, i64>(3)? != 0,
                        expires_at_ms: r.get(4)?,
                    }))
                })
            })
            .await?;
        Ok(match row {
            None => Claim::New,
            Some(row) => row.decide(fingerprint, now_ms),
        })
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        answer: &Remembered,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let (scope, key, a) = (scope.to_owned(), key.to_owned(), answer.clone());
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE idempotency SET status = ?3, message_id = ?4, spooled = ?5, expires_at = ?6
                 WHERE scope = ?1 AND key = ?2 AND status IS NULL",
            )?
            .execute(params![scope, key, a.status, a.message_id, a.spooled, expires_at_ms])
        })
        .await
        .map(|_| ())
    }

    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.run(move |c| {
            c.prepare_cached("DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND status IS NULL")?
                .execute(params![scope, key])
        })
        .await
        .map(|_| ())
    }

    async fn sweep(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            c.prepare_cached("DELETE FROM idempotency WHERE expires_at <= ?1")?.execute(params![now_ms])
        })
        .await
        .map(|n| n as u64)
    }
}
