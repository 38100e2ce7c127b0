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
//!
//! TLS follows the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, as
//! libpq does (`spillway_pg`).

#[cfg(test)]
mod tls_tests;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use spillway_queue::Delivery;
use tokio_postgres::error::SqlState;

use spillway_pg::Tls;

use super::{Sink, SinkSetupError};
use crate::SinkError;

/// Connections kept open.
const POOL_SIZE: usize = 16;

/// See the module doc.
pub struct PostgresSink {
    pool: Pool,
    tls: Tls,
    insert: String,
    insert_many: String,
}

impl PostgresSink {
    /// Checks the settings without connecting; reads the TLS files the
    /// URL names.
    pub fn check(url: &str, table: &str, lock_timeout: Duration) -> Result<(), SinkSetupError> {
        let (_, _, tls) = Self::config(url, table, lock_timeout)?;
        tls.connector().map(|_| ()).map_err(|message| SinkSetupError::Config { key: "url", message })
    }

    fn config(
        url: &str,
        table: &str,
        lock_timeout: Duration,
    ) -> Result<(tokio_postgres::Config, String, Tls), SinkSetupError> {
        let table = quote_table(table)?;
        let (url, tls) = Tls::split(url).map_err(|message| SinkSetupError::Config { key: "url", message })?;
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| SinkSetupError::Config { key: "url", message: format!("{e}") })?;
        pg.ssl_mode(tls.pg_mode());
        if lock_timeout.is_zero() || lock_timeout > Duration::from_secs(3600) {
            return Err(SinkSetupError::Config {
                key: "lock_timeout",
                message: "must be more than 0 and at most 1h".into(),
            });
        }
        let ms = lock_timeout.as_millis();
        pg.options(format!("-c lock_timeout={ms} -c statement_timeout={}", ms * 2));
        Ok((pg, table, tls))
    }

    pub async fn connect(
        url: &str,
        table: &str,
        create_table: bool,
        lock_timeout: Duration,
    ) -> Result<Self, SinkSetupError> {
        let (pg, table, tls) = Self::config(url, table, lock_timeout)?;
        let connector = tls.connector().map_err(|message| SinkSetupError::Config { key: "url", message })?;
        let manager =
            Manager::from_config(pg, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| SinkSetupError::Unavailable(format!("postgres pool: {e}")))?;
        if create_table {
            let client =
                pool.get().await.map_err(|e| SinkSetupError::Unavailable(connect_error(&tls, &e)))?;
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
        // One statement for any batch size: arrays, unnested.
        let insert_many = format!(
            "INSERT INTO {table} (id, queue, payload, enqueued_at)
             SELECT i, q, p::jsonb, e FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS r(i, q, p, e)
             ON CONFLICT (id) DO NOTHING"
        );
        Ok(Self { pool, tls, insert, insert_many })
    }
}

impl PostgresSink {
    /// Inserts the rows `rows` (indices into `ds`) in one statement. On a
    /// refusal of some row (a constraint, bad JSON) the set is split in two
    /// and each half tried again, until the refused rows stand alone: one
    /// poison message fails by itself and the rest of its batch lands, in
    /// about 2·log2(n) extra statements per bad row. Any other error fails
    /// every row of the set the same way.
    fn insert_split<'a>(
        &'a self,
        client: &'a deadpool_postgres::Client,
        ds: &'a [Delivery],
        rows: &'a [usize],
        out: &'a mut [Result<(), SinkError>],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if rows.is_empty() {
                return;
            }
            let err = match self.insert_rows(client, ds, rows).await {
                Ok(()) => return,
                Err(e) => classify(&e),
            };
            if matches!(err, SinkError::Rejected { .. }) && rows.len() > 1 {
                let (a, b) = rows.split_at(rows.len() / 2);
                self.insert_split(client, ds, a, out).await;
                self.insert_split(client, ds, b, out).await;
            } else {
                for &i in rows {
                    out[i] = Err(err.clone());
                }
            }
        })
    }

    async fn insert_rows(
        &self,
        client: &deadpool_postgres::Client,
        ds: &[Delivery],
        rows: &[usize],
    ) -> Result<(), tokio_postgres::Error> {
        let ids: Vec<&str> = rows.iter().map(|&i| ds[i].message.id.as_str()).collect();
        let queues: Vec<&str> = rows.iter().map(|&i| ds[i].queue.as_str()).collect();
        // Checked to be UTF-8 by the caller.
        let payloads: Vec<&str> =
            rows.iter().map(|&i| std::str::from_utf8(&ds[i].message.body).unwrap_or_default()).collect();
        let enqueued: Vec<std::time::SystemTime> =
            rows.iter().map(|&i| std::time::SystemTime::from(ds[i].message.enqueued_at)).collect();
        let st = client.prepare_cached(&self.insert_many).await?;
        client.execute(&st, &[&ids, &queues, &payloads, &enqueued]).await.map(|_| ())
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn batches(&self) -> bool {
        true
    }

    /// One statement (one transaction) for the batch; see [`PostgresSink::insert_split`].
    async fn deliver_batch(&self, ds: &[Delivery]) -> Vec<Result<(), SinkError>> {
        let mut out: Vec<Result<(), SinkError>> = ds.iter().map(|_| Ok(())).collect();
        let mut rows = Vec::with_capacity(ds.len());
        for (i, d) in ds.iter().enumerate() {
            if std::str::from_utf8(&d.message.body).is_ok() {
                rows.push(i);
            } else {
                out[i] = Err(not_text());
            }
        }
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let down = SinkError::Down(connect_error(&self.tls, &e));
                return ds.iter().map(|_| Err(down.clone())).collect();
            }
        };
        self.insert_split(&client, ds, &rows, &mut out).await;
        out
    }

    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let client = self.pool.get().await.map_err(|e| SinkError::Down(connect_error(&self.tls, &e)))?;
        let body = std::str::from_utf8(&d.message.body).map_err(|_| not_text())?;
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

/// A pooled connection that could not be had: its causes, and the TLS
/// settings that decided it when it is a TLS failure.
fn connect_error(tls: &Tls, e: &dyn std::error::Error) -> String {
    format!("postgres: {}", tls.explain(&chain(e)))
}

/// An error and its causes, joined: tokio-postgres says "error performing
/// TLS handshake" and keeps why (an unknown issuer, a server without TLS)
/// in its source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

fn not_text() -> SinkError {
    SinkError::Rejected { reason: "body is not UTF-8 text, so not JSON".into(), dead_letter: true }
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
    use spillway_queue::{Delivery, Receipt, ReceivedMessage};
    use time::OffsetDateTime;

    use super::{quote_table, PostgresSink};
    use crate::{Sink, SinkError};

    fn pg_url() -> String {
        std::env::var("SPILLWAY_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    fn delivery(id: &str, body: &[u8]) -> Delivery {
        Delivery {
            queue: "q".into(),
            message: ReceivedMessage {
                id: id.into(),
                body: bytes::Bytes::copy_from_slice(body),
                attributes: Default::default(),
                ordering_key: None,
                enqueued_at: OffsetDateTime::UNIX_EPOCH,
            },
            receive_count: 1,
            first_received_at: OffsetDateTime::UNIX_EPOCH,
            receipt: Receipt("r".into()),
        }
    }

    /// One statement for the batch; a refused row is isolated by splitting,
    /// so it fails alone and the rest of the batch lands.
    #[tokio::test]
    async fn a_batch_lands_in_one_statement_and_bad_rows_fail_alone() {
        let table = format!("sink_batch_{}", std::process::id());
        let sink = PostgresSink::connect(&pg_url(), &table, true, std::time::Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is needed at {} ({e}); start it with deploy/local/services.sh up",
                    pg_url()
                )
            });
        let client = sink.pool.get().await.expect("client");
        client
            .batch_execute(&format!(
                "TRUNCATE \"{table}\"; ALTER TABLE \"{table}\" ADD CONSTRAINT no_poison CHECK (NOT (payload ? 'poison'))"
            ))
            .await
            .expect("constraint");
        let mut batch: Vec<Delivery> =
            (0..16).map(|i| delivery(&format!("m{i}"), format!(r#"{{"n":{i}}}"#).as_bytes())).collect();
        batch[3] = delivery("poison", br#"{"poison":true}"#);
        batch[9] = delivery("not-json", b"not json");
        batch[12] = delivery("not-text", &[0xff, 0xfe]);
        batch[14] = delivery("m0", br#"{"n":0}"#); // a redelivery of m0 in the same batch
        let answers = sink.deliver_batch(&batch).await;
        for (d, a) in batch.iter().zip(&answers) {
            match d.message.id.as_str() {
                "poison" | "not-json" => {
                    assert!(
                        matches!(a, Err(SinkError::Rejected { dead_letter: false, .. })),
                        "{}: {a:?}",
                        d.message.id
                    )
                }
                "not-text" => {
                    assert!(matches!(a, Err(SinkError::Rejected { dead_letter: true, .. })), "{a:?}")
                }
                id => assert!(a.is_ok(), "{id}: {a:?}"),
            }
        }
        let rows: i64 =
            client.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.expect("count").get(0);
        assert_eq!(rows, 12, "16 messages, 3 refused, one id twice");
        client.batch_execute(&format!("DROP TABLE \"{table}\"")).await.expect("drop");
    }

    #[test]
    fn table_names_are_quoted_or_refused() {
        assert_eq!(quote_table("events").expect("ok"), "\"events\"");
        assert_eq!(quote_table("app.events").expect("ok"), "\"app\".\"events\"");
        for bad in ["", "a.b.c", "x; drop table y", "1abc", "a-b"] {
            assert!(quote_table(bad).is_err(), "{bad}");
        }
    }
}
