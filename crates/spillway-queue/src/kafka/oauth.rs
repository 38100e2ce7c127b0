//! SASL/OAUTHBEARER with tokens Spillway supplies.
//!
//! librdkafka asks its application for a token by an event on a client's
//! main queue, and rdkafka answers that event only on clients whose queue
//! the application polls: not its admin client, nor the backend's metadata
//! and offset readers. So instead of answering events, [`Tokens`] sets the
//! token on every client itself (`rd_kafka_oauthbearer_set_token`, which
//! librdkafka lets an application call on any client, from any thread, at
//! any time): when the client is made, and again before the token expires.
//! The refresh events librdkafka still raises are dropped by rdkafka (no
//! context here asks for them).
//!
//! Tokens come from a [`TokenSource`]. `oauthbearer_token_file` reads a
//! JWT from a file that something else keeps fresh (a Kubernetes projected
//! service-account token, a Vault agent, a signer sidecar for MSK IAM),
//! its lifetime from the `exp` claim and its principal from `sub`; a
//! program that embeds the backend can bring its own source (MSK IAM's
//! SigV4-signed token) through [`super::KafkaBackend::connect_with_tokens`].

use std::{
    ffi::{c_char, CStr, CString},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use base64::Engine as _;
use rdkafka::{
    admin::AdminClient,
    client::ClientContext,
    consumer::{BaseConsumer, Consumer as _, ConsumerContext, StreamConsumer},
    producer::{FutureProducer, Producer as _},
    types::RDKafka,
};

use crate::QueueError;

/// A token to log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token itself (a JWT, or whatever the brokers accept).
    pub value: String,
    /// The Kafka principal it stands for.
    pub principal: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Where tokens come from. Called from a blocking thread: it may read a
/// file or call a signer.
pub trait TokenSource: Send + Sync + 'static {
    /// A token valid now.
    fn token(&self) -> Result<Token, String>;
}

/// A JWT in a file, read on every refresh.
#[derive(Debug, Clone)]
pub struct FileToken(pub PathBuf);

impl TokenSource for FileToken {
    fn token(&self) -> Result<Token, String> {
        let path = self.0.display();
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("oauthbearer_token_file: cannot read {path}: {e}"))?;
        let value = text.trim().to_owned();
        let claims = jwt_claims(&value).map_err(|e| format!("oauthbearer_token_file: {path}: {e}"))?;
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| format!("oauthbearer_token_file: {path}: the token has no `exp` claim"))?;
        let principal = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("oauthbearer_token_file: {path}: the token has no `sub` claim"))?
            .to_owned();
        Ok(Token { value, principal, expires_at_ms: expires.saturating_mul(1000) })
    }
}

/// The claims of a JWT (its middle part), not verified: the brokers do.
fn jwt_claims(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let payload = jwt.split('.').nth(1).ok_or("not a JWT (header.payload.signature)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the JWT's payload is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the JWT's payload is not a JSON object: {e}"))
}

/// Anything that holds a librdkafka client.
pub(crate) trait Native: Send + Sync {
    fn native(&self) -> *mut RDKafka;
}

impl<C: ClientContext + 'static> Native for FutureProducer<C> {
    fn native(&self) -> *mut RDKafka {
        self.client().native_ptr()
    }
}

impl<C: ConsumerContext + 'static> Native for BaseConsumer<C> {
    fn native(&self) -> *mut RDKafka {
        self.client().native_ptr()
    }
}

impl<C: ConsumerContext + 'static> Native for StreamConsumer<C> {
    fn native(&self) -> *mut RDKafka {
        self.client().native_ptr()
    }
}

impl<C: ClientContext + 'static> Native for AdminClient<C> {
    fn native(&self) -> *mut RDKafka {
        self.inner().native_ptr()
    }
}

/// Hands the current token to every client of the backend.
pub(crate) struct Tokens {
    source: Arc<dyn TokenSource>,
    clients: Mutex<Vec<Weak<dyn Native>>>,
    current: Mutex<Option<Token>>,
}

/// A token is renewed when this share of its life has passed.
const RENEW_AT: f64 = 0.8;
/// Checked at least this often, at most this often.
const RENEW_MIN: Duration = Duration::from_secs(1);
const RENEW_MAX: Duration = Duration::from_secs(300);

/// How long to wait before renewing a token that expires at `expires_at_ms`, now being `now_ms`.
pub(crate) fn renew_in(now_ms: i64, expires_at_ms: i64) -> Duration {
    let left = u64::try_from(expires_at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Duration::from_millis((left as f64 * RENEW_AT) as u64).clamp(RENEW_MIN, RENEW_MAX)
}

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp_nanos()
        .div_euclid(1_000_000)
        .try_into()
        .unwrap_or(i64::MAX)
}

impl Tokens {
    pub(crate) fn new(source: Arc<dyn TokenSource>) -> Arc<Self> {
        Arc::new(Self { source, clients: Mutex::new(Vec::new()), current: Mutex::new(None) })
    }

    /// The token in use, fetched when there is none yet or it has expired.
    fn current(&self) -> Result<Token, QueueError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(t) if t.expires_at_ms > now_ms() => Ok(t.clone()),
            _ => {
                let t =
                    self.source.token().map_err(|e| QueueError::unavailable_msg(format!("kafka: {e}")))?;
                *current = Some(t.clone());
                Ok(t)
            }
        }
    }

    /// Gives a client the current token now, and every later one.
    pub(crate) fn register(&self, client: Arc<dyn Native>) -> Result<(), QueueError> {
        self.set_now(&*client)?;
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&client));
        Ok(())
    }

    /// Gives a short-lived client the current token now (it is not kept).
    pub(crate) fn set_now(&self, client: &dyn Native) -> Result<(), QueueError> {
        set_token(client, &self.current()?).map_err(|e| QueueError::unavailable_msg(format!("kafka: {e}")))
    }

    /// Fetches a fresh token and sets it on every live client; returns
    /// when to do it again.
    fn renew(&self) -> Duration {
        let token = match self.source.token() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "kafka: no fresh OAUTHBEARER token; keeping the one in use");
                return RENEW_MIN * 5;
            }
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.retain(|c| c.strong_count() > 0);
        for client in clients.iter().filter_map(Weak::upgrade) {
            if let Err(e) = set_token(&*client, &token) {
                tracing::warn!(error = %e, "kafka: a client refused the OAUTHBEARER token");
            }
        }
        drop(clients);
        let wait = renew_in(now_ms(), token.expires_at_ms);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(token);
        wait
    }

    /// Renews in the background until the backend is dropped.
    pub(crate) fn spawn(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut wait = weak
                .upgrade()
                .and_then(|t| t.current().ok())
                .map_or(RENEW_MIN, |t| renew_in(now_ms(), t.expires_at_ms));
            loop {
                tokio::time::sleep(wait).await;
                let Some(tokens) = weak.upgrade() else { return };
                wait = tokio::task::spawn_blocking(move || tokens.renew()).await.unwrap_or(RENEW_MIN);
            }
        });
    }
}

/// `rd_kafka_oauthbearer_set_token` on one client.
#[allow(unsafe_code)]
fn set_token(client: &dyn Native, token: &Token) -> Result<(), String> {
    let value = CString::new(token.value.as_str()).map_err(|_| "the token holds a NUL byte")?;
    let principal = CString::new(token.principal.as_str()).map_err(|_| "the principal holds a NUL byte")?;
    let mut err: [c_char; 512] = [0; 512];
    // SAFETY: `client` holds its librdkafka handle alive for the call (the
    // caller borrows it, or holds a strong reference); the strings are
    // NUL-terminated and outlive the call, which copies them; no
    // extensions are passed (a null array of length 0, as documented);
    // `err` is writable for its length, and librdkafka NUL-terminates what
    // it writes there.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native(),
            value.as_ptr(),
            token.expires_at_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if code == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: librdkafka wrote a NUL-terminated message into `err` (or left
    // it zeroed, an empty string); the last byte is never overwritten.
    let said = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
    Err(format!("the OAUTHBEARER token was refused: {said} ({code:?})"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{jwt_claims, renew_in};

    #[test]
    fn a_token_is_renewed_at_four_fifths_of_its_life_within_bounds() {
        assert_eq!(renew_in(0, 100_000), Duration::from_secs(80));
        assert_eq!(renew_in(0, 3_600_000), Duration::from_secs(300), "at least every 5 minutes");
        assert_eq!(renew_in(10_000, 0), Duration::from_secs(1), "expired: at once, but not in a loop");
    }

    #[test]
    fn claims_are_read_from_the_jwt_payload() {
        // {"alg":"none"} . {"sub":"spillway","exp":1700000000} .
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzcGlsbHdheSIsImV4cCI6MTcwMDAwMDAwMH0.";
        let claims = jwt_claims(jwt).expect("claims");
        assert_eq!(claims["sub"], "spillway");
        assert_eq!(claims["exp"], 1_700_000_000);
        assert!(jwt_claims("not a jwt").is_err());
    }
}
