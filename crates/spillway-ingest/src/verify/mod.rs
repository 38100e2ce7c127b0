//! Webhook signatures: a route with `verify` stores a request only when
//! its signature, computed over the exact bytes received, matches one of
//! the route's secrets.
//!
//! - [`VerifyConfig`]: the route's `verify = { scheme, secrets | secret_files,
//!   tolerance }`, with presets for GitHub, Stripe, Slack, Shopify and
//!   Standard Webhooks, and a generic `hmac`.
//! - [`scheme`]: what each scheme signs and where its signature travels.
//! - [`secrets`]: the secrets, files re-read when they change.
//!
//! # Guarantees
//!
//! - Checked after the body is read in full and before anything is parsed
//!   or stored: a failure is a 401 with the JSON error body (and the
//!   route's CORS headers), nothing stored, counted by route and reason
//!   (`missing`, `malformed`, `mismatch`, `too_old`).
//! - Every secret is tried against every signature the request carries
//!   (several secrets at once: rotation; several signatures: the sender's
//!   rotation, as Stripe and Standard Webhooks do), each comparison in
//!   constant time (`subtle`), with no early exit.
//! - Where the scheme signs a timestamp (Stripe, Slack, Standard
//!   Webhooks), a timestamp further than `tolerance` from the gateway's
//!   clock, either way, is refused (`too_old`): a captured request cannot
//!   be replayed later. The signature is checked first, so `too_old` means
//!   a genuine but stale request.
//! - The stored message says which scheme verified it and which secret
//!   (its key id: the first 8 bytes of the secret's SHA-256, in hex, which
//!   says nothing about the secret), so a consumer can trust it.

pub mod scheme;
pub mod secrets;

use std::{path::PathBuf, time::Duration};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use self::scheme::Scheme;
use self::{scheme::Signed, secrets::Secrets};
use crate::config::ConfigError;

/// Requests whose signature did not verify, by route and reason.
pub const FAILURES: &str = "spillway_webhook_verify_failures_total";
/// Requests whose signature verified, by route and scheme.
pub const VERIFIED: &str = "spillway_webhook_verified_total";

/// A route's `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    pub scheme: Scheme,
    /// Secrets, inline (masked by `config check`). Prefer `secret_files`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Files of one secret each (a mounted Kubernetes Secret's keys),
    /// re-read when they change.
    #[serde(default)]
    pub secret_files: Vec<PathBuf>,
    /// How far a signed timestamp may be from the gateway's clock.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// `hmac` only: the header that carries the signature.
    #[serde(default)]
    pub header: Option<String>,
    /// `hmac` only.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// `hmac` only: how the signature is written.
    #[serde(default)]
    pub encoding: Encoding,
    /// `hmac` only: text before the signature in the header (`sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

/// The hash of an `hmac` route's signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

/// How an `hmac` route's signature is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// Why a request's signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the request carries no signature (or not every header the scheme signs)")]
    Missing,
    #[error("the signature or its timestamp cannot be read")]
    Malformed,
    #[error("the signature does not match the body with any of the route's secrets")]
    Mismatch,
    #[error("the signed timestamp is outside the route's tolerance")]
    TooOld,
}

impl Failure {
    /// The metric's `reason` label, and the end of the error code.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Mismatch => "mismatch",
            Self::TooOld => "too_old",
        }
    }
}

/// What verified a request: kept with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub scheme: &'static str,
    /// The matching secret's key id (`secrets::key_id`).
    pub key_id: String,
}

/// A route's compiled `verify`.
#[derive(Debug)]
pub struct Verifier {
    scheme: scheme::Compiled,
    secrets: Secrets,
    tolerance: Duration,
}

impl Verifier {
    /// Checks `cfg` (at config `key`, for errors), reads its secret files.
    pub fn new(cfg: &VerifyConfig, key: &str) -> Result<Self, ConfigError> {
        let scheme = scheme::Compiled::new(cfg, key)?;
        let secrets = Secrets::load(&cfg.secrets, &cfg.secret_files, scheme.secret_format(), key)?;
        Ok(Self { scheme, secrets, tolerance: cfg.tolerance })
    }

    /// Verifies a request: `headers` and the exact `body` received, at
    /// `now` (Unix seconds: the gateway's clock, injectable in tests).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Verified, Failure> {
        let signed = self.scheme.read(headers)?;
        let key_id = self.matching_key(&signed, body).ok_or(Failure::Mismatch)?;
        if let Some(ts) = signed.timestamp {
            let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
            if now.abs_diff(ts) > tolerance.unsigned_abs() {
                return Err(Failure::TooOld);
            }
        }
        Ok(Verified { scheme: self.scheme.name(), key_id })
    }

    /// The key id of a secret whose MAC over the signed content equals one
    /// of the request's signatures. Every secret and every signature is
    /// compared, whatever matched before.
    fn matching_key(&self, signed: &Signed, body: &[u8]) -> Option<String> {
        let mut found = None;
        for secret in self.secrets.current().iter() {
            let mac = self.scheme.mac(secret.bytes(), signed, body);
            let mut hit = subtle::Choice::from(0);
            for candidate in &signed.signatures {
                hit |= scheme::ct_eq(&mac, candidate);
            }
            if bool::from(hit) && found.is_none() {
                found = Some(secret.key_id().to_owned());
            }
        }
        found
    }

    pub fn scheme_name(&self) -> &'static str {
        self.scheme.name()
    }

    /// The headers every request must carry (the signature, and what else
    /// the scheme signs).
    pub fn headers(&self) -> Vec<axum::http::HeaderName> {
        self.scheme.headers()
    }
}

#[cfg(test)]
mod tests;
