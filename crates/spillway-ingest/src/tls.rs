//! TLS on the gateway's own listener, for deployments with no
//! TLS-terminating proxy in front (a VM, a NodePort, a TCP load balancer).
//!
//! rustls, HTTP/1.1 only (ALPN `http/1.1`). The certificate chain and key
//! are PEM files, read at start (a bad one stops start-up, naming its key)
//! and read again when either file's modification time changes, checked
//! every `reload_every`: cert-manager or a Vault agent renews them in place
//! and new connections get the new certificate without a restart. A file
//! that does not parse on reload keeps the old certificate, with a warning
//! (a renewal caught half-written is read again at the next check).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock, Weak},
    time::{Duration, SystemTime},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain, PEM, the server's certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for a change.
    #[serde(default = "default_reload_every", with = "humantime_serde")]
    pub reload_every: Duration,
}

fn default_reload_every() -> Duration {
    Duration::from_secs(10)
}

/// The certificate in use, swapped when the files change.
#[derive(Debug)]
pub struct Reloading {
    cfg: ServerTls,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last read.
    stamp: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Reloading {
    fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        load(&self.cfg, &self.provider)
    }

    /// Reads the files again if either changed since the last read.
    /// Returns whether a new certificate is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = (modified(&self.cfg.cert_file), modified(&self.cfg.key_file));
        if *self.stamp.read().unwrap_or_else(PoisonError::into_inner) == now {
            return false;
        }
        match self.load() {
            Ok(key) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
                *self.stamp.write().unwrap_or_else(PoisonError::into_inner) = now;
                tracing::info!(cert_file = %self.cfg.cert_file.display(), "server.tls: certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "server.tls: the changed files do not load; keeping the certificate in use");
                false
            }
        }
    }
}

/// Reads and checks the files: the chain, the key, and that they belong together.
fn load(cfg: &ServerTls, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let cert = &cfg.cert_file;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("server.tls.cert_file: cannot read {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("server.tls.cert_file: {} holds no certificate", cert.display()));
    }
    let key_file = &cfg.key_file;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("server.tls.key_file: cannot read {}: {e}", key_file.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("server.tls.key_file: {}: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "server.tls: the key in {} is not the certificate's in {}: {e}",
            key_file.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The acceptor for `cfg`, its certificate loaded now, and the handle
/// that reloads it.
pub fn acceptor(cfg: &ServerTls) -> Result<(TlsAcceptor, Arc<Reloading>), String> {
    if cfg.reload_every.is_zero() {
        return Err("server.tls.reload_every: must be more than 0".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let first = load(cfg, &provider)?;
    let reloading = Arc::new(Reloading {
        cfg: cfg.clone(),
        provider: provider.clone(),
        current: RwLock::new(first),
        stamp: RwLock::new((modified(&cfg.cert_file), modified(&cfg.key_file))),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(reloading.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), reloading))
}

/// Checks the files every `reload_every` until the acceptor is dropped.
pub fn spawn_reloader(reloading: &Arc<Reloading>) {
    let every = reloading.cfg.reload_every;
    let weak: Weak<Reloading> = Arc::downgrade(reloading);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(r) = weak.upgrade() else { return };
            r.reload_if_changed();
        }
    });
}
