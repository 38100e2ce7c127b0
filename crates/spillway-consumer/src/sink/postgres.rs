//! `postgres`: INSERT each message into a table, `ON CONFLICT (id) DO NOTHING`,
//! so a redelivery is harmless.
//!
//! The table holds `id text primary key, queue text, payload jsonb,
//! enqueued_at timestamptz, inserted_at timestamptz`; the message body must be
//! JSON (the envelope always is). Errors are sorted by SQLSTATE class:
//!
//! - the database is not usable (`08` connection, `53` resources, `57` operator
//!   intervention incl. statement timeout, `55P03` lock wait, `40` rollback,
//!   `42P01` missing table, `42` other schema errors, no code at all): `Down`;
//! - this row is refused (`23` constraint violation, `22` data exception, such
//!   as a body that is not JSON): `Rejected`, retried and counted.
//!
//! `lock_timeout` and `statement_timeout` bound every statement on the server,
//! so a locked table answers in bounded time and the connection stays usable.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use spillway_queue::Delivery;
use tokio_postgres::{error::SqlState, NoTls};

use super::{Sink, SinkSetupError};
use crate::SinkError;

/// Connections kept open.
const POOL_SIZE: usize = 16;

/// See the module doc.
pub struct PostgresSink {
    pool: Pool,
    insert: String,
}

impl PostgresSink {
    /// Checks the settings without connecting.
    pub fn check(url: &str, table: &str, lock_timeout: Duration) -> Result<(), SinkSetupError> {
        Self::config(url, table, lock_timeout).map(|_| ())
    }

    fn config(
        url: &str,
        table: &str,
        lock_timeout: Duration,
    ) -> Result<(tokio_postgres::Config, String), SinkSetupError> {
        let table = quote_table(table)?;
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| SinkSetupError::Config { key: "url", message: format!("{e}") })?;
        if lock_timeout.is_zero() || lock_timeout > Duration::from_secs(3600) {
            return Err(SinkSetupError::Config {
                key: "lock_timeout",
                message: "must be more than 0 and at most 1h".into(),
            });
        }
        let ms = lock_timeout.as_millis();
        pg.options(format!("-c lock_timeout={ms} -c statement_timeout={}", ms * 2));
        Ok((pg, table))
    }

    pub async fn connect(
        url: &str,
        table: &str,
        create_table: bool,
        lock_timeout: Duration,
    ) -> Result<Self, SinkSetupError> {
        let (pg, table) = Self::config(url, table, lock_timeout)?;
        let manager =
            Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| SinkSetupError::Unavailable(format!("postgres pool: {e}")))?;
        if create_table {
            let client =
                pool.get().await.map_err(|e| SinkSetupError::Unavailable(format!("postgres: {e}")))?;
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (
                        id          text PRIMARY KEY,
                        queue       text NOT NULL,
                        payload     jsonb NOT NULL,
                        enqueued_at timestamptz NOT NULL,
                        inserted_at timestamptz NOT NULL DEFAULT now())"
                ))
                .await
                .map_err(|e| SinkSetupError::Unavailable(format!("postgres: create {table}: {e}")))?;
        }
        let insert = format!(
            "INSERT INTO {table} (id, queue, payload, enqueued_at) VALUES ($1, $2, $3::text::jsonb, $4)
             ON CONFLICT (id) DO NOTHING"
        );
        Ok(Self { pool, insert })
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let client = self.pool.get().await.map_err(|e| SinkError::Down(format!("postgres: {e}")))?;
        let body = std::str::from_utf8(&d.message.body).map_err(|_| SinkError::Rejected {
            reason: "body is not UTF-8 text, so not JSON".into(),
            dead_letter: true,
        })?;
        let enqueued_at = std::time::SystemTime::from(d.message.enqueued_at);
        let result = async {
            let st = client.prepare_cached(&self.insert).await?;
            client.execute(&st, &[&d.message.id, &d.queue, &body, &enqueued_at]).await
        }
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }
}

fn classify(e: &tokio_postgres::Error) -> SinkError {
    let Some(db) = e.as_db_error() else {
        return SinkError::Down(format!("postgres: {e}"));
    };
    let code = db.code();
    let text = format!("postgres {}: {}", code.code(), db.message());
    let class = &code.code()[..2];
    if code == &SqlState::LOCK_NOT_AVAILABLE || code == &SqlState::UNDEFINED_TABLE {
        return SinkError::Down(text);
    }
    match class {
        "23" | "22" => SinkError::Rejected { reason: text, dead_letter: false },
        _ => SinkError::Down(text),
    }
}

/// `events` → `"events"`, `app.events` → `"app"."events"`; anything else is refused.
fn quote_table(table: &str) -> Result<String, SinkSetupError> {
    let parts: Vec<&str> = table.split('.').collect();
    let ok = parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !p.as_bytes()[0].is_ascii_digit()
        });
    if !ok {
        return Err(SinkSetupError::Config {
            key: "table",
            message: format!("{table:?} is not a table name"),
        });
    }
    Ok(parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join("."))
}

#[cfg(test)]
mod tests {
    use super::quote_table;

    #[test]
    fn table_names_are_quoted_or_refused() {
        assert_eq!(quote_table("events").expect("ok"), "\"events\"");
        assert_eq!(quote_table("app.events").expect("ok"), "\"app\".\"events\"");
        for bad in ["", "a.b.c", "x; drop table y", "1abc", "a-b"] {
            assert!(quote_table(bad).is_err(), "{bad}");
        }
    }
}
