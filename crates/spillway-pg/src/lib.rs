//! PostgreSQL connections as libpq makes them: TLS read from the
//! connection string as libpq reads it, so a URL that works with `psql`
//! works here. Shared by the PostgreSQL sink and the idempotency store.
//!
//! | `sslmode`      | TLS                     | the server's certificate                    |
//! |----------------|-------------------------|---------------------------------------------|
//! | `disable`      | never                   | —                                           |
//! | `prefer` (default) | when the server offers it | not checked                           |
//! | `require`      | always                  | not checked; checked against `sslrootcert` when one is given (libpq's rule) |
//! | `verify-ca`    | always                  | signed by `sslrootcert`                     |
//! | `verify-full`  | always                  | signed by `sslrootcert` and naming the host |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! system's roots, which are also what `verify-*` uses without it (libpq
//! would look for `~/.postgresql/root.crt`, which a container does not
//! have). `sslcert` and `sslkey` give a client certificate.
//!
//! tokio-postgres parses only `disable`, `prefer` and `require`, and none of
//! the file parameters, so they are taken out of the string here and the
//! rest is left to it. In the `key=value` form, a string with quotes is
//! left whole to tokio-postgres (its `sslmode` then takes the first three).

use std::{collections::BTreeMap, sync::Arc};

use percent_encoding::percent_decode_str;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection string's parameters read here rather than by tokio-postgres.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`, all five that a client may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported: use disable or prefer".into()),
            other => {
                return Err(format!(
                    "sslmode={other:?} is none of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The TLS parameters of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl Tls {
    /// Takes the TLS parameters out of a connection string (URL or
    /// `key=value` form); returns the rest, for tokio-postgres, and them.
    pub fn split(url: &str) -> Result<(String, Self), String> {
        let mut found: BTreeMap<&'static str, String> = BTreeMap::new();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url.split_once('?') {
                None => url.to_owned(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&') {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        match KEYS.iter().find(|key| **key == k) {
                            Some(key) => {
                                let v = percent_decode_str(v)
                                    .decode_utf8()
                                    .map_err(|_| format!("{key} is not UTF-8 once decoded"))?;
                                found.insert(key, v.into_owned());
                            }
                            None => kept.push(pair),
                        }
                    }
                    if kept.is_empty() {
                        base.to_owned()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else if url.contains('\'') {
            url.to_owned()
        } else {
            let mut kept = Vec::new();
            for word in url.split_whitespace() {
                let key = word.split_once('=').and_then(|(k, _)| KEYS.iter().find(|key| **key == k));
                match (key, word.split_once('=')) {
                    (Some(key), Some((_, v))) => {
                        found.insert(key, v.to_owned());
                    }
                    _ => kept.push(word),
                }
            }
            kept.join(" ")
        };
        let mode = match found.remove("sslmode") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let tls = Self {
            mode,
            root_cert: found.remove("sslrootcert"),
            cert: found.remove("sslcert"),
            key: found.remove("sslkey"),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("sslcert and sslkey go together: give both or neither".into());
        }
        Ok((rest, tls))
    }

    /// What tokio-postgres negotiates: it knows no verification modes,
    /// which the connector below carries out.
    pub fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }

    /// The mode as libpq carries it out: `require` with a CA file checks
    /// the chain, as `verify-ca` does.
    fn effective(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        }
    }

    /// The connector: reads the CA and client files now, so a missing or
    /// unreadable one stops start-up (and `config check`) naming its key.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match self.effective() {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            }
            SslMode::VerifyCa => {
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), provider)
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
            }
            SslMode::VerifyFull => builder.with_root_certificates(self.roots()?),
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("sslcert: cannot read {cert}: {e}"))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey: cannot read {key}: {e}"))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            None | Some("system") => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(format!(
                        "sslmode={}: no sslrootcert given and no system root certificates found",
                        self.mode.name()
                    ));
                }
            }
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("sslrootcert: cannot read {path}: {e}"))?;
                let (_, refused) = roots.add_parsable_certificates(certs);
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert: {path} holds no usable CA certificate ({refused} refused)"
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// A connection error, with the TLS settings that decide it when it is
    /// a TLS failure (the handshake, a certificate, a server without TLS).
    pub fn explain(&self, error: &str) -> String {
        if !error.contains("TLS") && !error.contains("certificate") {
            return error.to_owned();
        }
        let roots = self.root_cert.as_deref().unwrap_or("the system's roots");
        match self.effective() {
            SslMode::VerifyCa | SslMode::VerifyFull => format!(
                "{error} (sslmode={}: the server's certificate must be signed by a CA in sslrootcert, {roots}{})",
                self.mode.name(),
                if self.effective() == SslMode::VerifyFull { ", and name the host" } else { "" }
            ),
            m => format!("{error} (sslmode={})", m.name()),
        }
    }
}

/// `prefer` and `require` without a CA: encrypted, the certificate not
/// checked (libpq's behaviour); the handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::{SslMode, Tls};

    #[test]
    fn tls_parameters_are_taken_out_of_a_url_and_the_rest_kept() {
        let (rest, tls) = Tls::split(
            "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=s&sslrootcert=%2Fetc%2Fca.pem",
        )
        .expect("parsed");
        assert_eq!(rest, "postgres://u:p@db:5432/x?application_name=s");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, tls) = Tls::split("postgres://db/x").expect("parsed");
        assert_eq!((rest.as_str(), tls.mode), ("postgres://db/x", SslMode::Prefer), "libpq's default");
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_form() {
        let (rest, tls) =
            Tls::split("host=db dbname=x sslmode=verify-ca sslrootcert=/ca.pem").expect("parsed");
        assert_eq!(rest, "host=db dbname=x");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn unknown_modes_and_half_a_client_certificate_are_refused() {
        assert!(Tls::split("postgres://db/x?sslmode=verify").expect_err("bad mode").contains("verify-full"));
        assert!(Tls::split("postgres://db/x?sslmode=allow").expect_err("allow").contains("allow"));
        assert!(Tls::split("postgres://db/x?sslcert=/c.pem").expect_err("half").contains("sslkey"));
    }

    #[test]
    fn require_with_a_ca_checks_the_chain_as_libpq_does() {
        let (_, tls) = Tls::split("postgres://db/x?sslmode=require&sslrootcert=/ca.pem").expect("parsed");
        assert_eq!(tls.effective(), SslMode::VerifyCa);
    }
}
