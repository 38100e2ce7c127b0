//! A route's `idempotency`: requests that carry the route's key header
//! (`Idempotency-Key`) are stored once per key (`spillway_idempotency`).
//!
//! After every check passed, and before the message is stored, the key is
//! claimed with the request's fingerprint (SHA-256 of method, path with
//! query, and body):
//!
//! - a new key: the request is stored as usual; its answer is remembered
//!   (status and message id) for the route's `window`, or, when storing
//!   failed, the key is given up so the client's retry can store it;
//! - a repeat of a stored request: the same answer (same status, same
//!   `x-spillway-id`, same body) with `Idempotent-Replayed: true`, and
//!   nothing stored;
//! - a repeat while the first is still being stored: 409
//!   `idempotency_key_in_flight` with `Retry-After`;
//! - the key with another request: 422 `idempotency_key_reused`.
//!
//! A request without the header is stored as any other. A key is 1 to 255
//! visible ASCII characters; anything else is a 400. An unreachable store
//! is a 503 with `Retry-After`: nothing is stored, as for a queue outage.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{header::HeaderName, request::Parts};
use sha2::{Digest, Sha256};
use spillway_idempotency::{
    local::LocalStore, postgres::PostgresStore, Claim, IdempotencyConfig, Remembered, Store, StoreError,
    StoreKind, StoresConfig,
};

use crate::{error::ApiError, store::Stored};

/// The answer header on a replayed answer (as Stripe names it).
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Answers replayed, and requests refused for their key, by route.
pub const REPLAYED: &str = "spillway_idempotency_replayed_total";
pub const REFUSED: &str = "spillway_idempotency_refused_total";
/// How often expired keys are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A route's compiled `idempotency`, its store opened.
#[derive(Debug)]
pub struct RouteIdempotency {
    header: HeaderName,
    window: Duration,
    lease: Duration,
    store: Arc<dyn Store>,
}

/// What [`RouteIdempotency::begin`] decided.
pub enum Begun {
    /// No key on the request: store it as any other.
    NoKey,
    /// The key is this request's: store, then [`Ticket::finish`].
    Claimed(Ticket),
    /// Stored before under this key: answer this again.
    Replay(Remembered),
}

/// A claimed key, to complete or give up once the store answered.
pub struct Ticket {
    store: Arc<dyn Store>,
    scope: String,
    key: String,
    window: Duration,
}

impl RouteIdempotency {
    /// Reads the request's key and claims it (`now`: when the request
    /// came in, the gateway's clock).
    pub async fn begin(
        &self,
        route: &str,
        parts: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Begun, ApiError> {
        let Some(v) = parts.headers.get(&self.header) else { return Ok(Begun::NoKey) };
        let key = v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    format!("{} must be 1 to {MAX_KEY_LEN} visible ASCII characters", self.header),
                )
            })?;
        let fingerprint = fingerprint(parts, body);
        let claim = self
            .store
            .claim(route, key, &fingerprint, unix_ms(now), self.lease)
            .await
            .map_err(unavailable)?;
        match claim {
            Claim::New => Ok(Begun::Claimed(Ticket {
                store: self.store.clone(),
                scope: route.to_owned(),
                key: key.to_owned(),
                window: self.window,
            })),
            Claim::Done(r) => {
                metrics::counter!(REPLAYED, "route" => route.to_owned()).increment(1);
                Ok(Begun::Replay(r))
            }
            Claim::InFlight { retry_after } => {
                metrics::counter!(REFUSED, "route" => route.to_owned(), "reason" => "in_flight").increment(1);
                Err(ApiError::IdempotencyInFlight { retry_after_secs: retry_after.as_secs().max(1) })
            }
            Claim::Mismatch => {
                metrics::counter!(REFUSED, "route" => route.to_owned(), "reason" => "reused").increment(1);
                Err(ApiError::IdempotencyKeyReused)
            }
        }
    }
}

impl Ticket {
    /// Remembers the answer (`stored`: the request's message `id` with
    /// `status`), or gives the key up when storing failed. A store that
    /// cannot take it is logged: the message is stored either way, and the
    /// claim ends with its lease.
    pub async fn finish(self, outcome: Result<(&str, u16, Stored), ()>, now: SystemTime) {
        let done = match outcome {
            Ok((id, status, stored)) => {
                let answer =
                    Remembered { status, message_id: id.to_owned(), spooled: stored == Stored::Spool };
                let until =
                    unix_ms(now).saturating_add(i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX));
                self.store.complete(&self.scope, &self.key, &answer, until).await
            }
            Err(()) => self.store.release(&self.scope, &self.key).await,
        };
        if let Err(e) = done {
            tracing::warn!(route = %self.scope, error = %e, "idempotency: could not record the outcome; the key is held until its lease ends");
        }
    }
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// What makes two requests the same: method, path with query, body.
fn fingerprint(parts: &Parts, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update([0]);
    h.update(parts.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The stores routes use, opened once each, with a sweeper each.
#[derive(Default)]
pub struct Stores {
    open: HashMap<StoreKind, Arc<dyn Store>>,
}

impl Stores {
    /// The route's `idempotency`, its store opened (once per kind).
    pub async fn route(
        &mut self,
        cfg: &IdempotencyConfig,
        stores: &StoresConfig,
        key: &str,
    ) -> Result<RouteIdempotency, crate::config::ConfigError> {
        let bad = |message: String| crate::config::ConfigError { key: key.to_owned(), message };
        let header = HeaderName::try_from(cfg.header.as_str())
            .map_err(|_| bad(format!("header: `{}` is not a header name", cfg.header)))?;
        if cfg.window.is_zero() {
            return Err(bad("window must be more than 0".into()));
        }
        let store = match self.open.get(&cfg.store) {
            Some(s) => s.clone(),
            None => {
                let s: Arc<dyn Store> = match cfg.store {
                    StoreKind::Local => {
                        Arc::new(LocalStore::open(&stores.path).map_err(|e| bad(e.to_string()))?)
                    }
                    StoreKind::Postgres => {
                        let url = stores.postgres_url.as_deref().ok_or_else(|| {
                            bad("store = \"postgres\" needs ingest.idempotency.postgres_url".into())
                        })?;
                        Arc::new(
                            PostgresStore::connect(url, &stores.table)
                                .await
                                .map_err(|e| bad(e.to_string()))?,
                        )
                    }
                };
                spawn_sweeper(s.clone());
                self.open.insert(cfg.store, s.clone());
                s
            }
        };
        Ok(RouteIdempotency { header, window: cfg.window, lease: stores.lease, store })
    }
}

fn spawn_sweeper(store: Arc<dyn Store>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            match store.sweep(unix_ms(SystemTime::now())).await {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "idempotency: expired keys deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "idempotency: sweep failed; trying again in a minute"),
            }
        }
    });
}
