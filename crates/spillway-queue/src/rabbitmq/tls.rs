//! `amqps://`: the CA and client certificate files of `[queue.tls]`.
//!
//! lapin speaks TLS through rustls, trusting the system's roots and the
//! CA certificates of `ca_file`, and checks that the broker's certificate
//! names the URL's host. A client certificate (`cert_file` and `key_file`,
//! PEM) is sent when the broker asks for one (`ssl_options.verify =
//! verify_peer`), as brokers that log clients in by certificate
//! (`rabbitmq_auth_mechanism_ssl`) need.
//!
//! The files are read again at every connection, so certificates renewed
//! on disk (cert-manager, a Vault agent) are used from the next reconnect.

use std::path::PathBuf;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// One file of `[queue.tls]`, its key named when it cannot be read.
fn read_file(key: &str, path: &PathBuf) -> Result<Vec<u8>, QueueError> {
    std::fs::read(path).map_err(|e| {
        QueueError::unavailable_msg(format!("rabbitmq: queue.tls.{key}: cannot read {}: {e}", path.display()))
    })
}

/// `[queue.tls]` of the RabbitMQ backend; only for `amqps://` URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitTls {
    /// CA certificates (PEM) trusted besides the system's: a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM, its chain after it), sent when the
    /// broker asks for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl RabbitTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Refuses settings that could not take effect: files for a URL that
    /// is not `amqps://`, half a client certificate.
    pub(crate) fn check(&self, urls: &[String]) -> Result<(), QueueError> {
        if self.is_set() {
            if let Some(plain) = urls.iter().find(|u| !u.starts_with("amqps://")) {
                let scheme = plain.split("://").next().unwrap_or(plain);
                return Err(QueueError::Invalid(format!(
                    "queue.tls is set, but a URL is {scheme}://, not amqps://: its files would not be used"
                )));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(QueueError::Invalid(
                "queue.tls.cert_file and queue.tls.key_file go together: give both or neither".into(),
            ));
        }
        Ok(())
    }

    /// The files, read now, as lapin takes them.
    pub(crate) fn read(&self) -> Result<OwnedTLSConfig, QueueError> {
        let cert_chain = match (self.ca_pem()?, &self.ca_file) {
            (Some(pem), Some(path)) => Some(String::from_utf8(pem).map_err(|_| {
                QueueError::unavailable_msg(format!(
                    "rabbitmq: queue.tls.ca_file: {} is not PEM text",
                    path.display()
                ))
            })?),
            _ => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_file("cert_file", cert)?,
                key: read_file("key_file", key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig { identity, cert_chain })
    }

    /// `ca_file`'s bytes, read now; `None` without one. The AMQP
    /// connections and the management API's client both trust it.
    pub(crate) fn ca_pem(&self) -> Result<Option<Vec<u8>>, QueueError> {
        self.ca_file.as_ref().map(|path| read_file("ca_file", path)).transpose()
    }

    /// A connection error, with the settings that decide it when it is a
    /// certificate's.
    pub(crate) fn explain(&self, error: String) -> String {
        if !error.contains("certificate") && !error.contains("CertificateRequired") {
            return error;
        }
        let roots = match &self.ca_file {
            Some(p) => format!("queue.tls.ca_file ({}) or the system's roots", p.display()),
            None => "the system's roots (set queue.tls.ca_file for a private CA)".to_owned(),
        };
        format!("{error} (amqps: the broker's certificate must be signed by a CA in {roots}, and name the URL's host)")
    }
}
