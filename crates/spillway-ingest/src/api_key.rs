//! API keys: a route may require one, sent in a header (`x-api-key` by
//! default), as API Gateway's "API key required" does. No key is a 401
//! `missing_api_key`, a wrong one a 403 `invalid_api_key`, both before the
//! body is read, and nothing is stored.
//!
//! # Guarantees
//!
//! - Keys come from the config (or its environment variables) and from
//!   files, one key per line (a mounted Kubernetes Secret), read when the
//!   configuration is checked. Rotating a key means a restart (a rolling
//!   one loses nothing).
//! - Only SHA-256 digests of the keys are kept, and a presented key is
//!   compared with every one of them in constant time (`subtle`), with no
//!   early exit: how long the check takes says nothing about which key, or
//!   how much of one, matched. The digests all have the same length, so not
//!   even a key's length leaks.
//! - A key shorter than [`MIN_KEY_LEN`] is a config error: short keys can
//!   be guessed.
//! - The matching key's position in the list identifies it for its own
//!   rate limit (`throttle.per_key`); the key itself is never logged.

use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{config::ConfigError, error::ApiError};

/// Shortest key accepted: 16 characters.
pub const MIN_KEY_LEN: usize = 16;

/// `[ingest.api_keys]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The request header that carries the key.
    pub header: String,
    /// Keys, inline (masked by `config check`). Prefer `files` for real ones.
    pub keys: Vec<String>,
    /// Files of keys, one per line; blank lines and `#` comments skipped.
    pub files: Vec<PathBuf>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self { header: "x-api-key".to_owned(), keys: Vec::new(), files: Vec::new() }
    }
}

/// The accepted keys, as digests.
pub struct ApiKeys {
    header: HeaderName,
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("header", &self.header).field("keys", &self.digests.len()).finish()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// `None` when no key is configured. Errors name their key under
    /// `ingest.api_keys`.
    pub fn compile(cfg: &ApiKeysConfig) -> Result<Option<Self>, ConfigError> {
        let bad = |key: String, message: String| ConfigError { key, message };
        let header = HeaderName::from_bytes(cfg.header.trim().as_bytes()).map_err(|_| {
            bad("ingest.api_keys.header".into(), format!("{:?} is not a header name", cfg.header))
        })?;
        let mut keys: Vec<(String, String)> = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("ingest.api_keys.keys[{i}]"), k.clone()))
            .collect();
        for (i, path) in cfg.files.iter().enumerate() {
            let key = format!("ingest.api_keys.files[{i}]");
            let text = crate::config::read_config_file(path)
                .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
                .map_err(|e| bad(key.clone(), format!("cannot read {}: {e}", path.display())))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
            keys.extend(lines.map(|l| (key.clone(), l.to_owned())));
        }
        let mut digests = Vec::with_capacity(keys.len());
        for (key, value) in keys {
            let value = value.trim();
            if value.chars().count() < MIN_KEY_LEN || value.chars().any(char::is_control) {
                return Err(bad(
                    key,
                    format!("a key needs at least {MIN_KEY_LEN} characters and no control characters"),
                ));
            }
            digests.push(digest(value.as_bytes()));
        }
        if digests.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { header, digests }))
    }

    /// The header that carries the key.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The matching key's position, or the 401/403 answer.
    pub fn check(&self, headers: &HeaderMap) -> Result<usize, ApiError> {
        let presented = headers
            .get(&self.header)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| ApiError::MissingApiKey { header: self.header.to_string() })?;
        let presented = digest(presented);
        // Every key is compared, whichever matches.
        let mut found = subtle::CtOption::new(0u64, 0u8.into());
        for (i, d) in self.digests.iter().enumerate() {
            let hit = d.ct_eq(&presented);
            found = subtle::CtOption::new(i as u64, hit).or_else(|| found);
        }
        Option::<u64>::from(found).and_then(|i| usize::try_from(i).ok()).ok_or(ApiError::InvalidApiKey)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const K1: &str = "k1-0123456789abcdef";
    const K2: &str = "k2-fedcba9876543210";

    fn keys(cfg: ApiKeysConfig) -> ApiKeys {
        ApiKeys::compile(&cfg).expect("compiles").expect("keys")
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn the_right_key_is_found_by_position() {
        let k = keys(ApiKeysConfig { keys: vec![K1.into(), K2.into()], ..Default::default() });
        assert_eq!(k.check(&with("x-api-key", K1)).expect("K1"), 0);
        assert_eq!(k.check(&with("x-api-key", K2)).expect("K2"), 1);
        assert_eq!(k.check(&with("x-api-key", &format!(" {K2} "))).expect("trimmed"), 1);
    }

    #[test]
    fn missing_is_401_and_wrong_is_403() {
        let k = keys(ApiKeysConfig { keys: vec![K1.into()], ..Default::default() });
        assert_eq!(k.check(&HeaderMap::new()).expect_err("none").code(), "missing_api_key");
        assert_eq!(k.check(&with("x-api-key", "  ")).expect_err("blank").code(), "missing_api_key");
        for wrong in [&K1[..K1.len() - 1], "k1-0123456789abcdeg", &format!("{K1}x"), K2] {
            let err = k.check(&with("x-api-key", wrong)).expect_err("wrong");
            assert_eq!((err.code(), err.status().as_u16()), ("invalid_api_key", 403), "{wrong}");
        }
        assert_eq!(k.check(&with("authorization", K1)).expect_err("other header").code(), "missing_api_key");
    }

    #[test]
    fn the_header_is_configurable() {
        let k = keys(ApiKeysConfig { header: "X-Token".into(), keys: vec![K1.into()], ..Default::default() });
        assert_eq!(k.check(&with("x-token", K1)).expect("found"), 0);
        assert_eq!(k.check(&with("x-api-key", K1)).expect_err("old header").code(), "missing_api_key");
    }

    #[test]
    fn keys_come_from_files_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# rotated 2026-11\n\n{K2}\n  {K1}  \n")).expect("write");
        let k = keys(ApiKeysConfig { files: vec![path], ..Default::default() });
        assert_eq!(k.check(&with("x-api-key", K2)).expect("K2"), 0);
        assert_eq!(k.check(&with("x-api-key", K1)).expect("K1"), 1);
    }

    #[test]
    fn no_keys_is_none_and_bad_ones_name_their_key() {
        assert!(ApiKeys::compile(&ApiKeysConfig::default()).expect("compiles").is_none());
        let short = ApiKeysConfig { keys: vec![K1.into(), "short".into()], ..Default::default() };
        assert_eq!(ApiKeys::compile(&short).expect_err("short").key, "ingest.api_keys.keys[1]");
        let missing = ApiKeysConfig { files: vec!["/nonexistent/keys".into()], ..Default::default() };
        assert_eq!(ApiKeys::compile(&missing).expect_err("missing").key, "ingest.api_keys.files[0]");
        // A device is not a key file: refused, not read forever.
        let device = ApiKeysConfig { files: vec!["/dev/zero".into()], ..Default::default() };
        assert!(ApiKeys::compile(&device).expect_err("device").message.contains("larger than"));
        let header =
            ApiKeysConfig { header: "bad header".into(), keys: vec![K1.into()], ..Default::default() };
        assert_eq!(ApiKeys::compile(&header).expect_err("header").key, "ingest.api_keys.header");
    }
}
