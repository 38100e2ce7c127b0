//! Idempotency-Key: a client that sends a request again with the same key
//! (a retry after a timeout, a webhook sender's redelivery) gets the first
//! answer again, and nothing new is stored.
//!
//! A key is **claimed** before the message is stored, and **completed**
//! with the answer once it is (or **released** when storing failed, so the
//! client's retry can store it). A claim is one atomic insert, so of any
//! number of requests with one key at once exactly one stores. The others
//! get:
//!
//! - [`Claim::Done`]: the key was completed with the same request: the
//!   remembered answer (same status, same message id);
//! - [`Claim::InFlight`]: the first is still being stored: 409 with
//!   `Retry-After`;
//! - [`Claim::Mismatch`]: the key was used with a different request
//!   (method, path or body): 422.
//!
//! A completed key is kept for the route's `window`; a claim that was never
//! completed (its process died while storing) for a short `lease`, after
//! which a retry may claim it again. Both are times the caller passes
//! (`now_ms`), so tests drive them without waiting.
//!
//! Two stores: [`local`] (an SQLite file of the gateway's own: one replica,
//! or a sticky route) and [`postgres`] (shared by every replica). What
//! `spillway_ingest` does with a claim is in its `idempotency` module.

pub mod local;
pub mod postgres;

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A route's `idempotency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The request header with the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// How long a completed key is remembered.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Which store keeps the keys (`[ingest.idempotency]` says where).
    #[serde(default)]
    pub store: StoreKind,
}

fn default_header() -> String {
    "Idempotency-Key".to_owned()
}

fn default_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Where a route's keys are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Local,
    Postgres,
}

/// `[ingest.idempotency]`: the stores' settings, shared by every route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoresConfig {
    /// The local store's folder (`idempotency.db` in it).
    pub path: PathBuf,
    /// The PostgreSQL store's connection string (TLS as libpq: `sslmode`…).
    pub postgres_url: Option<String>,
    /// The PostgreSQL store's table, created if missing.
    pub table: String,
    /// How long a claim holds a key that is never completed.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for StoresConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./spillway-idempotency"),
            postgres_url: None,
            table: "spillway_idempotency".to_owned(),
            lease: Duration::from_secs(60),
        }
    }
}

/// The answer a completed key gives again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub status: u16,
    pub message_id: String,
    /// Stored in the local spool rather than the queue (`x-spillway-spooled`).
    pub spooled: bool,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is the caller's: store, then [`Store::complete`] or
    /// [`Store::release`].
    New,
    /// Completed with the same request: its answer.
    Done(Remembered),
    /// Another request with the key is being stored.
    InFlight { retry_after: Duration },
    /// The key was used with another request.
    Mismatch,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot answer now (503 with `Retry-After`: the request
    /// was not stored).
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
    #[error("idempotency store: {0}")]
    Config(String),
}

/// Where keys are kept. `scope` is the route; `fingerprint` the SHA-256 of
/// what makes two requests the same (method, path, body).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Claims `key` for `lease`, or says who has it.
    ///
    /// # Cancel safety
    ///
    /// The claim is one statement: dropped, it happened or it did not. One
    /// that happened holds the key for `lease` at most.
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: i64,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Records the answer of a claimed key, kept until `expires_at_ms`.
    ///
    /// # Cancel safety
    ///
    /// One statement: dropped, the claim stays until its lease ends, and a
    /// retry after that stores the request again.
    async fn complete(
        &self,
        scope: &str,
        key: &str,
        answer: &Remembered,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Gives a claimed key up (storing failed), so a retry may claim it.
    ///
    /// # Cancel safety
    ///
    /// One statement: dropped, the key is free once its lease ends.
    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Deletes the keys expired at `now_ms`; returns how many.
    ///
    /// # Cancel safety
    ///
    /// One statement: dropped, the next sweep does it.
    async fn sweep(&self, now_ms: i64) -> Result<u64, StoreError>;
}

/// A key's row, as both stores read it back after a claim did not insert.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) fingerprint: Vec<u8>,
    /// `None`: claimed, not completed.
    pub(crate) status: Option<u16>,
    pub(crate) message_id: Option<String>,
    pub(crate) spooled: bool,
    pub(crate) expires_at_ms: i64,
}

impl Row {
    /// What a claim that found this live row answers.
    pub(crate) fn decide(self, fingerprint: &[u8; 32], now_ms: i64) -> Claim {
        if self.fingerprint.as_slice() != fingerprint.as_slice() {
            return Claim::Mismatch;
        }
        match (self.status, self.message_id) {
            (Some(status), Some(message_id)) => {
                Claim::Done(Remembered { status, message_id, spooled: self.spooled })
            }
            _ => {
                let ms = u64::try_from(self.expires_at_ms.saturating_sub(now_ms)).unwrap_or(0);
                Claim::InFlight { retry_after: Duration::from_millis(ms).max(Duration::from_secs(1)) }
            }
        }
    }
}

/// Milliseconds in `d`, for the stores' arithmetic.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
