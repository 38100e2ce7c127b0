//! What each scheme signs, and where its signature travels.
//!
//! | scheme | header(s) | signed bytes | signature | timestamp |
//! |---|---|---|---|---|
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | the body | HMAC-SHA256 | – |
//! | `stripe` | `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]` | `<ts>.<body>` | HMAC-SHA256, any `v1` | `t` |
//! | `slack` | `X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp` | `v0:<ts>:<body>` | HMAC-SHA256 | the timestamp header |
//! | `shopify` | `X-Shopify-Hmac-Sha256: <base64>` | the body | HMAC-SHA256 | – |
//! | `standard-webhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> […]` | `<id>.<ts>.<body>` | HMAC-SHA256 with the `whsec_` secret's base64-decoded bytes, any `v1` | `webhook-timestamp` |
//! | `hmac` | `header`: `[prefix]<hex or base64>` | the body | HMAC-SHA256 or -SHA512 | – |
//!
//! Stripe's `whsec_…` secret is used as its text, as Stripe's libraries do;
//! Standard Webhooks' is base64 after the prefix, as its spec says.

use axum::http::{HeaderMap, HeaderName};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::{Algorithm, Encoding, Failure, VerifyConfig};
use crate::config::ConfigError;

/// A route's `verify.scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Github,
    Stripe,
    Slack,
    Shopify,
    StandardWebhooks,
    Hmac,
}

/// How a scheme's secrets are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// The secret's text is the key.
    Text,
    /// `whsec_<base64>`: the key is the decoded bytes (Standard Webhooks).
    WhsecBase64,
}

/// What a request says was signed: the bytes signed before the body, the
/// signed timestamp if any, and the signatures it carries.
#[derive(Debug)]
pub struct Signed {
    pub before_body: Vec<u8>,
    pub timestamp: Option<i64>,
    pub signatures: Vec<Vec<u8>>,
}

/// A scheme with its `hmac` settings checked.
#[derive(Debug)]
pub struct Compiled {
    scheme: Scheme,
    header: Option<HeaderName>,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
}

const GITHUB: HeaderName = HeaderName::from_static("x-hub-signature-256");
const STRIPE: HeaderName = HeaderName::from_static("stripe-signature");
const SLACK_SIGNATURE: HeaderName = HeaderName::from_static("x-slack-signature");
const SLACK_TIMESTAMP: HeaderName = HeaderName::from_static("x-slack-request-timestamp");
const SHOPIFY: HeaderName = HeaderName::from_static("x-shopify-hmac-sha256");
const SW_ID: HeaderName = HeaderName::from_static("webhook-id");
const SW_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const SW_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

impl Compiled {
    pub fn new(cfg: &VerifyConfig, key: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError { key: key.to_owned(), message };
        let header = match (cfg.scheme, &cfg.header) {
            (Scheme::Hmac, Some(h)) => Some(
                HeaderName::try_from(h.as_str())
                    .map_err(|_| invalid(format!("`{h}` is not a header name")))?,
            ),
            (Scheme::Hmac, None) => return Err(invalid("scheme `hmac` needs `header`".into())),
            (_, Some(_)) => return Err(invalid("`header` is for scheme `hmac` only".into())),
            (_, None) => None,
        };
        if cfg.scheme != Scheme::Hmac && cfg.prefix.is_some() {
            return Err(invalid("`prefix` is for scheme `hmac` only".into()));
        }
        Ok(Self {
            scheme: cfg.scheme,
            header,
            algorithm: cfg.algorithm,
            encoding: cfg.encoding,
            prefix: cfg.prefix.clone().unwrap_or_default(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self.scheme {
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Hmac => "hmac",
        }
    }

    /// The headers a request must carry for this scheme.
    pub fn headers(&self) -> Vec<HeaderName> {
        match self.scheme {
            Scheme::Github => vec![GITHUB],
            Scheme::Stripe => vec![STRIPE],
            Scheme::Slack => vec![SLACK_SIGNATURE, SLACK_TIMESTAMP],
            Scheme::Shopify => vec![SHOPIFY],
            Scheme::StandardWebhooks => vec![SW_ID, SW_TIMESTAMP, SW_SIGNATURE],
            Scheme::Hmac => self.header.iter().cloned().collect(),
        }
    }

    pub fn secret_format(&self) -> SecretFormat {
        match self.scheme {
            Scheme::StandardWebhooks => SecretFormat::WhsecBase64,
            _ => SecretFormat::Text,
        }
    }

    /// What the request's headers say was signed.
    pub fn read(&self, headers: &HeaderMap) -> Result<Signed, Failure> {
        let unsigned = |signatures| Ok(Signed { before_body: Vec::new(), timestamp: None, signatures });
        match self.scheme {
            Scheme::Github => {
                let v = text(headers, &GITHUB)?;
                unsigned(vec![hex_of(v.strip_prefix("sha256=").ok_or(Failure::Malformed)?)?])
            }
            Scheme::Shopify => unsigned(vec![base64_of(text(headers, &SHOPIFY)?)?]),
            Scheme::Hmac => {
                let header = self.header.as_ref().ok_or(Failure::Missing)?;
                let v = text(headers, header)?;
                let v = v.strip_prefix(self.prefix.as_str()).ok_or(Failure::Malformed)?;
                let sig = match self.encoding {
                    Encoding::Hex => hex_of(v)?,
                    Encoding::Base64 => base64_of(v)?,
                };
                unsigned(vec![sig])
            }
            Scheme::Stripe => {
                let v = text(headers, &STRIPE)?;
                let mut ts = None;
                let mut signatures = Vec::new();
                for item in v.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) if ts.is_none() => ts = Some(timestamp(t)?),
                        // Stripe's own libraries skip what does not decode.
                        Some(("v1", s)) => signatures.extend(hex_of(s).ok()),
                        _ => {}
                    }
                }
                let ts = ts.ok_or(Failure::Malformed)?;
                if signatures.is_empty() {
                    return Err(Failure::Malformed);
                }
                Ok(Signed { before_body: format!("{ts}.").into_bytes(), timestamp: Some(ts), signatures })
            }
            Scheme::Slack => {
                let sig = text(headers, &SLACK_SIGNATURE)?;
                let ts_text = text(headers, &SLACK_TIMESTAMP)?;
                let ts = timestamp(ts_text)?;
                let sig = hex_of(sig.strip_prefix("v0=").ok_or(Failure::Malformed)?)?;
                Ok(Signed {
                    before_body: format!("v0:{ts_text}:").into_bytes(),
                    timestamp: Some(ts),
                    signatures: vec![sig],
                })
            }
            Scheme::StandardWebhooks => {
                let id = text(headers, &SW_ID)?;
                let ts_text = text(headers, &SW_TIMESTAMP)?;
                let sigs = text(headers, &SW_SIGNATURE)?;
                let ts = timestamp(ts_text)?;
                // Space-separated `version,signature` pairs; `v1` is the
                // symmetric one (others, such as `v1a`, are not ours).
                let signatures: Vec<Vec<u8>> = sigs
                    .split(' ')
                    .filter_map(|p| p.strip_prefix("v1,"))
                    .filter_map(|s| base64_of(s).ok())
                    .collect();
                if signatures.is_empty() {
                    return Err(Failure::Malformed);
                }
                Ok(Signed {
                    before_body: format!("{id}.{ts_text}.").into_bytes(),
                    timestamp: Some(ts),
                    signatures,
                })
            }
        }
    }

    /// The MAC of `signed` and `body` under `key`.
    pub fn mac(&self, key: &[u8], signed: &Signed, body: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], before: &[u8], body: &[u8]) -> Vec<u8> {
            // HMAC takes a key of any length: new_from_slice cannot fail.
            let Ok(mut m) = <M as Mac>::new_from_slice(key) else { return Vec::new() };
            m.update(before);
            m.update(body);
            m.finalize().into_bytes().to_vec()
        }
        match self.algorithm {
            Algorithm::Sha512 if self.scheme == Scheme::Hmac => {
                run::<Hmac<Sha512>>(key, &signed.before_body, body)
            }
            _ => run::<Hmac<Sha256>>(key, &signed.before_body, body),
        }
    }
}

/// Constant-time equality of two MACs; different lengths are unequal (a
/// length is the algorithm's, public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    if a.len() != b.len() || a.is_empty() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}

fn text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, Failure> {
    let v = headers.get(name).ok_or(Failure::Missing)?;
    v.to_str().map(str::trim).map_err(|_| Failure::Malformed)
}

fn timestamp(t: &str) -> Result<i64, Failure> {
    t.trim().parse::<i64>().map_err(|_| Failure::Malformed)
}

fn hex_of(s: &str) -> Result<Vec<u8>, Failure> {
    hex::decode(s.trim()).map_err(|_| Failure::Malformed)
}

fn base64_of(s: &str) -> Result<Vec<u8>, Failure> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|_| Failure::Malformed)
}
