//! A route's webhook secrets: inline ones, and files of one secret each,
//! re-read when they change (a Kubernetes Secret's mounted keys change in
//! place when the Secret does), so rotating a secret needs no restart.
//!
//! A file is looked at (its modification time and length) at most once a
//! second, on a request. One that cannot be read or holds no valid secret
//! then keeps the secrets read before (a write caught half-way must not
//! lock every sender out), with a warning; at start it is a config error.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::scheme::SecretFormat;
use crate::config::ConfigError;

/// How often the files are looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// One secret: its key, and its key id.
pub struct Secret {
    key: Vec<u8>,
    key_id: String,
}

impl Secret {
    fn new(text: &str, format: SecretFormat) -> Result<Self, String> {
        let key = match format {
            SecretFormat::Text => text.as_bytes().to_vec(),
            SecretFormat::WhsecBase64 => base64::engine::general_purpose::STANDARD
                .decode(text.strip_prefix("whsec_").unwrap_or(text))
                .map_err(|e| format!("a Standard Webhooks secret is `whsec_` and base64: {e}"))?,
        };
        if key.is_empty() {
            return Err("a secret is empty".into());
        }
        Ok(Self { key_id: key_id(&key), key })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.key
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// The first 8 bytes of the key's SHA-256, in hex: names a secret in the
/// stored message and in logs without saying anything about it.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&Sha256::digest(key)[..8])
}

/// The secrets of one route.
#[derive(Debug)]
pub struct Secrets {
    inline: Vec<Arc<Secret>>,
    files: Vec<PathBuf>,
    format: SecretFormat,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<Vec<Arc<Secret>>>,
    /// Each file's modification time and length when last read.
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl Secrets {
    pub fn load(
        inline: &[String],
        files: &[PathBuf],
        format: SecretFormat,
        key: &str,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError { key: key.to_owned(), message };
        let inline = inline
            .iter()
            .map(|s| Secret::new(s.trim(), format).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if inline.is_empty() && files.is_empty() {
            return Err(invalid("needs `secrets` or `secret_files`".into()));
        }
        let mut from_files = Vec::new();
        for f in files {
            from_files.push(read(f, format).map_err(invalid)?);
        }
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let current = Arc::new(inline.iter().cloned().chain(from_files.into_iter().map(Arc::new)).collect());
        Ok(Self {
            inline,
            files: files.to_vec(),
            format,
            state: Mutex::new(State { current, stamps, checked: Instant::now() }),
        })
    }

    /// The secrets now: the files read again first if one changed.
    pub fn current(&self) -> Arc<Vec<Arc<Secret>>> {
        self.current_at(Instant::now())
    }

    /// [`Secrets::current`] with the time given (tests).
    pub fn current_at(&self, now: Instant) -> Arc<Vec<Arc<Secret>>> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.files.is_empty() || now.saturating_duration_since(s.checked) < RECHECK {
            return s.current.clone();
        }
        s.checked = now;
        let stamps: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
        if stamps == s.stamps {
            return s.current.clone();
        }
        let mut next: Vec<Arc<Secret>> = self.inline.clone();
        for f in &self.files {
            match read(f, self.format) {
                Ok(secret) => next.push(Arc::new(secret)),
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "verify: a secret file could not be read again; keeping the secrets read before");
                    return s.current.clone();
                }
            }
        }
        let ids: Vec<&str> = next.iter().map(|k| k.key_id()).collect();
        tracing::info!(key_ids = ?ids, "verify: secret files changed; using the secrets read now");
        s.current = Arc::new(next);
        s.stamps = stamps;
        s.current.clone()
    }
}

fn read(path: &Path, format: SecretFormat) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Secret::new(text.trim(), format).map_err(|e| format!("{}: {e}", path.display()))
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}
