//! The PostgreSQL store: one table shared by every gateway replica, so a
//! repeat is recognised whichever pod it reaches. The table is created by
//! the gateway when missing; expired keys are deleted by each gateway's
//! sweeper (`DELETE … WHERE expires_at <= now`, indexed).
//!
//! A claim is one `INSERT … ON CONFLICT DO UPDATE … WHERE expired
//! RETURNING`: PostgreSQL serialises conflicting inserts on the primary
//! key, so of concurrent claims from any number of replicas exactly one
//! wins. Times are the gateway's (`now_ms` from the caller), not the
//! server's, so one clock decides both the claim and its expiry.
//!
//! The store's sessions run with `synchronous_commit = off`: a key is
//! visible to every replica at once, and written to disk within the
//! server's `wal_writer_delay` (200 ms by default) rather than before each
//! answer. A PostgreSQL crash can forget the keys of that last moment: a
//! repeat of one of those requests is then stored again (a duplicate, never
//! a loss). Waiting for the flush instead cost two disk flushes per request
//! (docs/benchmarks.md).

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use spillway_pg::Tls;

use crate::{ms, Claim, Remembered, Row, Store, StoreError};

/// Connections per gateway.
const POOL_SIZE: usize = 16;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
    tls: std::sync::Arc<Tls>,
    claim: String,
    read: String,
    complete: String,
    release: String,
    sweep: String,
}

impl PostgresStore {
    /// Connects, creates `table` if it is missing.
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(StoreError::Config(format!("table `{table}`: letters, digits, `_` and `.` only")));
        }
        let (rest, tls) = Tls::split(url).map_err(StoreError::Config)?;
        let mut pg: tokio_postgres::Config =
            rest.parse().map_err(|e| StoreError::Config(format!("postgres_url: {e}")))?;
        pg.ssl_mode(tls.pg_mode());
        // Bounded statements: a locked table answers in bounded time.
        pg.options(
            "-c lock_timeout=2000 -c statement_timeout=5000 -c client_min_messages=warning -c synchronous_commit=off",
        );
        let connector = tls.connector().map_err(StoreError::Config)?;
        let manager =
            Manager::from_config(pg, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Config(format!("postgres pool: {e}")))?;
        let store = Self {
            pool,
            tls: std::sync::Arc::new(tls),
            claim: format!(
                "INSERT INTO {table} AS r (scope, key, fingerprint, status, message_id, spooled, expires_at)
                 VALUES ($1, $2, $3, NULL, NULL, false, $4)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     fingerprint = EXCLUDED.fingerprint, status = NULL, message_id = NULL,
                     spooled = false, expires_at = EXCLUDED.expires_at
                 WHERE r.expires_at <= $5
                 RETURNING 1"
            ),
            read: format!(
                "SELECT fingerprint, status, message_id, spooled, expires_at FROM {table} WHERE scope = $1 AND key = $2"
            ),
            complete: format!(
                "UPDATE {table} SET status = $3, message_id = $4, spooled = $5, expires_at = $6
                 WHERE scope = $1 AND key = $2 AND status IS NULL"
            ),
            release: format!("DELETE FROM {table} WHERE scope = $1 AND key = $2 AND status IS NULL"),
            sweep: format!("DELETE FROM {table} WHERE expires_at <= $1"),
        };
        let index = format!("{}_expiry", table.replace('.', "_"));
        let client = store.client().await?;
        client
            // Under a lock: two gateways starting at once would otherwise
            // race in CREATE TABLE IF NOT EXISTS (a duplicate-key error).
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('spillway-idempotency:{table}'));
                 CREATE TABLE IF NOT EXISTS {table} (
                     scope       text NOT NULL,
                     key         text NOT NULL,
                     fingerprint bytea NOT NULL,
                     status      integer,
                     message_id  text,
                     spooled     boolean NOT NULL DEFAULT false,
                     expires_at  bigint NOT NULL,
                     PRIMARY KEY (scope, key));
                 CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at);
                 COMMIT;"
            ))
            .await
            .map_err(|e| StoreError::Unavailable(format!("creating {table}: {}", describe(&e))))?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(self.tls.explain(&e.to_string())))
    }
}

fn unavailable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {}", describe(&e)))
}

/// The server's message where there is one (`db error` alone says little).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let c = self.client().await?;
        let until = now_ms.saturating_add(ms(lease));
        let fp: &[u8] = fingerprint;
        // Prepared once per pooled connection: a text query would be
        // prepared again on every call, one more round trip each.
        let claim = c.prepare_cached(&self.claim).await.map_err(unavailable)?;
        let took = c.query_opt(&claim, &[&scope, &key, &fp, &until, &now_ms]).await.map_err(unavailable)?;
        if took.is_some() {
            return Ok(Claim::New);
        }
        let read = c.prepare_cached(&self.read).await.map_err(unavailable)?;
        let Some(r) = c.query_opt(&read, &[&scope, &key]).await.map_err(unavailable)? else {
            // Released or swept between the two statements: ask again.
            return Ok(Claim::InFlight { retry_after: Duration::from_secs(1) });
        };
        let row = Row {
            fingerprint: r.get(0),
            status: r.get::<_, Option<i32>>(1).and_then(|s| u16::try_from(s).ok()),
            message_id: r.get(2),
            spooled: r.get(3),
            expires_at_ms: r.get(4),
        };
        Ok(row.decide(fingerprint, now_ms))
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        answer: &Remembered,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let status = i32::from(answer.status);
        let complete = c.prepare_cached(&self.complete).await.map_err(unavailable)?;
        c.execute(&complete, &[&scope, &key, &status, &answer.message_id, &answer.spooled, &expires_at_ms])
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        let release = c.prepare_cached(&self.release).await.map_err(unavailable)?;
        c.execute(&release, &[&scope, &key]).await.map(|_| ()).map_err(unavailable)
    }

    async fn sweep(&self, now_ms: i64) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let sweep = c.prepare_cached(&self.sweep).await.map_err(unavailable)?;
        c.execute(&sweep, &[&now_ms]).await.map_err(unavailable)
    }
}
