//! The whole configuration: compiled-in defaults, then a TOML file, then
//! `SPILLWAY_` environment variables (`__` separates levels:
//! `SPILLWAY_QUEUE__BACKEND=memory`, `SPILLWAY_SERVER__LISTEN=0.0.0.0:8080`).
//!
//! Loading is [`Settings::figment`] (merge) then [`Settings::from_figment`]
//! (extract, then [`Settings::compile`]: every check, in one place, once),
//! a pure function tested with `Toml::string` and a property test that feeds
//! arbitrary values into every key.
//! Every field has a default that works on the embedded queue, so
//! `spillway serve` with no file at all serves `/ingest`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use anyhow::bail;
use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};
use spillway_consumer::{config::MIN_VISIBILITY, ConsumerConfig};
use spillway_ingest::{CompiledIngest, IngestConfig, ServerLimits};
use spillway_queue::{BackendConfig, DeadLetterPolicy, QueueSpec};

/// Everything Spillway reads from its configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    pub(crate) server: ServerConfig,
    /// The backend: `backend = "embedded" | "memory"` and its settings.
    pub(crate) queue: BackendConfig,
    /// Per-queue policy; a queue used by a route but not listed gets the defaults.
    pub(crate) queues: BTreeMap<String, QueueSettings>,
    pub(crate) ingest: IngestConfig,
    pub(crate) consumer: ConsumerConfig,
    pub(crate) log: LogConfig,
    pub(crate) metrics: MetricsConfig,
}

/// Metrics. `serve` always answers `GET /metrics` on its own port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Where `spillway consume` serves `/metrics` and `/healthz`; off when unset.
    pub(crate) consumer_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Where to listen. Use `0.0.0.0:8080` in a container.
    pub(crate) listen: SocketAddr,
    /// The admin listener: `/metrics`, `/livez`, `/readyz` (and
    /// `/healthz`), apart from the traffic port and its connection cap, so
    /// a connection flood does not look like a dead pod and metrics are not
    /// public. Use `0.0.0.0:9090` in a container.
    pub(crate) admin_listen: SocketAddr,
    /// How often readiness asks the backend; probes read the last answer
    /// and never reach the broker (each check is one broker call: on SQS a
    /// `ListQueues`, on Kafka a metadata request).
    #[serde(with = "humantime_serde")]
    pub(crate) readiness_every: Duration,
    /// TLS on `listen`, for deployments without a TLS-terminating proxy:
    /// `cert_file`, `key_file` (PEM), reloaded when they change.
    pub(crate) tls: Option<spillway_ingest::tls::ServerTls>,
    /// On SIGTERM, `/readyz` answers 503 this long before the server stops
    /// accepting, so load balancers take the pod out first.
    #[serde(with = "humantime_serde")]
    pub(crate) shutdown_grace: Duration,
    /// Header-read timeout, head size, connection cap, drain timeout.
    pub(crate) limits: ServerLimits,
    /// Also run the consumer (the `[consumer]` section) inside `serve`, so
    /// one process accepts and drains. On the embedded queue its receives
    /// and acks then share the gateway's writer thread and commits, instead
    /// of a second process taking turns at the file's write lock; on the
    /// memory backend it is the only way to drain at all. Off by default:
    /// with a broker, or with a consumer that needs its own CPU, run
    /// `spillway consume` apart.
    pub(crate) consume: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            readiness_every: Duration::from_secs(2),
            tls: None,
            shutdown_grace: Duration::ZERO,
            limits: ServerLimits::default(),
            consume: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QueueSettings {
    pub(crate) dead_letter: DeadLetterPolicy,
    /// Defaults to 256 KiB, the SQS limit.
    pub(crate) max_message_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `spillway=debug,info`. `RUST_LOG` wins.
    pub(crate) level: String,
    pub(crate) format: LogFormat,
    /// One line per answered request (target `spillway::access`), whatever
    /// `level` says. Off by default: at full load a line each costs CPU the
    /// metrics do not. `RUST_LOG`, when set, decides instead.
    pub(crate) access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Text, access: false }
    }
}

/// `SPILLWAY_QUEUE__OPTIONS__<property>`, after the `SPILLWAY_` prefix.
const OPTIONS_ENV: &str = "queue__options__";

/// `SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD=…` as `queue.options` =
/// `{"sasl.password": …}`. A librdkafka property's name has dots, and the
/// environment provider nests on every dot after splitting on `__`, so it
/// read `options.sasl.password` as a table and refused the configuration:
/// these variables are read here, the rest of the name kept as one key
/// (lowercased, as librdkafka names are).
fn queue_options_from(vars: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.filter_map(|(k, v)| {
        let k = k.to_ascii_lowercase();
        let property = k.strip_prefix("spillway_")?.strip_prefix(OPTIONS_ENV)?;
        (!property.is_empty()).then(|| (property.to_owned(), v))
    })
    .collect()
}

impl Settings {
    /// Defaults, then the file (which must exist if given), then the environment.
    pub(crate) fn figment(file: Option<&Path>) -> anyhow::Result<Figment> {
        // No `Serialized::defaults` layer: serde's `default` fills what is
        // missing, and a merged default would leak fields of the default
        // backend (`queue.path`) into another one chosen by the environment.
        let mut f = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            f = f.merge(Toml::file(path));
        }
        // `SPILLWAY_TEST_*` belongs to the test and bench harness (where
        // its brokers are), never to a setting: a shell that exports one
        // must not make every `spillway` it starts refuse its config.
        let f = f.merge(
            Env::prefixed("SPILLWAY_")
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !k.starts_with("test_") && !k.starts_with(OPTIONS_ENV)
                })
                .split("__")
                .ignore(&["config"]),
        );
        let options = queue_options_from(std::env::vars());
        Ok(if options.is_empty() { f } else { f.merge(Serialized::default("queue.options", options)) })
    }

    /// Extracts and compiles. The error names the key.
    pub(crate) fn from_figment(f: &Figment) -> anyhow::Result<(Self, CompiledIngest)> {
        let s: Settings = f.extract().map_err(|e| anyhow::anyhow!("{e}"))?;
        let ingest = s.compile()?;
        Ok((s, ingest))
    }

    /// Every check, in one place: what `serve`, `consume` and `config
    /// check` all run before they start. Nothing that passes here may panic
    /// or misbehave later because of a configured value. Returns the
    /// compiled ingest settings the router is built from.
    pub(crate) fn compile(&self) -> anyhow::Result<CompiledIngest> {
        let ingest = self.ingest.compile()?;
        self.server.limits.check("server.limits")?;
        if let Some(tls) = &self.server.tls {
            // Reads the files: a missing or mismatched one stops `config check` too.
            spillway_ingest::tls::acceptor(tls).map_err(|m| anyhow::anyhow!("invalid configuration: {m}"))?;
        }
        if self.server.readiness_every.is_zero() {
            bail!("invalid configuration at `server.readiness_every`: must be more than 0");
        }
        if self.server.admin_listen == self.server.listen && self.server.listen.port() != 0 {
            bail!("invalid configuration at `server.admin_listen`: must differ from `server.listen`");
        }
        // An empty name is named where it was written.
        let empty = |name: &str| name.trim().is_empty();
        if empty(&self.consumer.queue) {
            bail!("invalid configuration at `consumer.queue`: a queue name is empty");
        }
        if let Some(i) = self.ingest.routes.iter().position(|r| empty(&r.queue)) {
            bail!("invalid configuration at `ingest.routes[{i}].queue`: a queue name is empty");
        }
        for spec in self.queue_specs() {
            let key = |k: &str| format!("queues.{}.{k}", spec.name);
            if spec.name.trim().is_empty() {
                bail!("invalid configuration at `queues`: a queue name is empty");
            }
            if spec.dead_letter.max_receive_count == 0 {
                bail!(
                    "invalid configuration at `{}`: must be at least 1",
                    key("dead_letter.max_receive_count")
                );
            }
            if spec.dead_letter.visibility_timeout < MIN_VISIBILITY {
                bail!(
                    "invalid configuration at `{}`: must be at least {MIN_VISIBILITY:?}, so a consumer can keep held messages hidden",
                    key("dead_letter.visibility_timeout")
                );
            }
            if spec.max_message_bytes == 0 {
                bail!("invalid configuration at `{}`: must be at least 1", key("max_message_bytes"));
            }
        }
        self.consumer.check()?;
        // A sink URL given is checked for every command; one left unset is
        // refused only where a consumer runs (`consume`, `serve` with
        // `server.consume`, `config check` unless `--for serve`): the
        // gateway's pods need not get the database's secret.
        if self.consumer.sink.url().is_some() {
            spillway_consumer::check_sink(&self.consumer.sink)?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("invalid configuration at `log.level`: {e}"))?;
        Ok(ingest)
    }

    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<(Self, CompiledIngest)> {
        Self::from_figment(&Self::figment(file)?)
    }

    /// Every queue the config names: routes, the consumer, and `[queues]`.
    pub(crate) fn queue_specs(&self) -> Vec<QueueSpec> {
        let mut names: BTreeSet<String> = self.queues.keys().cloned().collect();
        names.extend(self.ingest.routes.iter().map(|r| r.queue.clone()));
        names.insert(self.consumer.queue.clone());
        names.into_iter().map(|n| self.queue_spec(&n)).collect()
    }

    pub(crate) fn queue_spec(&self, name: &str) -> QueueSpec {
        let mut spec = QueueSpec::new(name);
        if let Some(q) = self.queues.get(name) {
            spec.dead_letter = q.dead_letter;
            if let Some(m) = q.max_message_bytes {
                spec.max_message_bytes = m;
            }
        }
        spec
    }

    /// The configuration as JSON with secrets masked (see [`mask`]).
    pub(crate) fn masked(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        mask::mask(&mut v, false);
        v
    }
}

mod mask;
#[cfg(test)]
mod prop;

#[cfg(test)]
mod tests {
    use figment::Jail;

    use super::*;

    fn from_toml(text: &str) -> anyhow::Result<Settings> {
        Settings::from_figment(&Figment::from(Toml::string(text))).map(|(s, _)| s)
    }

    #[test]
    fn no_config_serves_ingest_on_the_embedded_queue() {
        let s = from_toml("").expect("defaults are valid");
        assert_eq!(s.queue.kind(), "embedded");
        assert_eq!(s.ingest.routes[0].path, "/ingest");
        assert_eq!(s.queue_specs().len(), 1);
        assert_eq!(s.queue_specs()[0].dead_letter.max_receive_count, 5);
    }

    #[test]
    fn the_embedded_queue_fsyncs_every_commit_unless_told_otherwise() {
        use spillway_queue::{embedded::Durability, BackendConfig};
        let durability = |text: &str| match from_toml(text).expect("valid").queue {
            BackendConfig::Embedded { durability, .. } => durability,
            other => panic!("not embedded: {other:?}"),
        };
        assert_eq!(durability(""), Durability::PowerLoss);
        assert_eq!(
            durability("[queue]\nbackend = \"embedded\"\ndurability = \"process_crash\"\n"),
            Durability::ProcessCrash
        );
        let e = from_toml("[queue]\nbackend = \"embedded\"\ndurability = \"sometimes\"\n")
            .expect_err("bad durability")
            .to_string();
        // The tagged `[queue]` table hides the inner key from figment; the
        // error names the table and the values allowed.
        assert!(e.contains("queue") && e.contains("power_loss") && e.contains("process_crash"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let e = from_toml("[server]\nlisten = \"nope\"\n").expect_err("bad listen").to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = from_toml("[queue]\nbackend = \"carrier-pigeon\"\n").expect_err("bad backend").to_string();
        assert!(e.contains("queue"), "{e}");
        let e =
            from_toml("[ingest.cors]\nallowed_origins = [\"https://*.a.*.com\"]\n").expect_err("bad origin");
        assert!(format!("{e:#}").contains("ingest.cors.allowed_origins[0]"), "{e:#}");
        let e = from_toml("[queue]\nbackend = \"memory\"\npath = \"/x\"\n").expect_err("memory has no path");
        assert!(e.to_string().contains("path"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn environment_overrides_the_file_and_test_variables_are_ignored() {
        Jail::expect_with(|jail| {
            jail.create_file("spillway.toml", "[server]\nlisten = \"127.0.0.1:9000\"\n")?;
            jail.set_env("SPILLWAY_QUEUE__BACKEND", "memory");
            jail.set_env("SPILLWAY_SERVER__LISTEN", "127.0.0.1:9100");
            // The harness's own variables are not settings.
            jail.set_env("SPILLWAY_TEST_ELASTICMQ", "http://127.0.0.1:9324");
            let (s, _) = Settings::load(Some(Path::new("spillway.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.queue.kind(), "memory");
            assert_eq!(s.server.listen.port(), 9100);
            Ok(())
        });
    }

    /// A librdkafka property with dots, from the environment, as the
    /// docs show it (`SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD`): one key in
    /// `queue.options`, merged with the file's, and masked by `config
    /// check`. It could not parse before (the dots nested it).
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn kafka_options_with_dots_come_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "spillway.toml",
                "[queue]\nbackend = \"kafka\"\nbrokers = \"k:9092\"\n[queue.options]\n\"security.protocol\" = \"SASL_SSL\"\n",
            )?;
            jail.set_env("SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD", "hunter2");
            jail.set_env("SPILLWAY_QUEUE__OPTIONS__SASL.MECHANISM", "SCRAM-SHA-512");
            let (s, _) = Settings::load(Some(Path::new("spillway.toml"))).map_err(|e| e.to_string())?;
            let BackendConfig::Kafka(k) = &s.queue else { return Err("not kafka".into()) };
            let got: Vec<(&str, &str)> = k.options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                got,
                [
                    ("sasl.mechanism", "SCRAM-SHA-512"),
                    ("sasl.password", "hunter2"),
                    ("security.protocol", "SASL_SSL")
                ]
            );
            let text = s.masked().to_string();
            assert!(!text.contains("hunter2"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_masked() {
        let s = from_toml(
            "[consumer.sink]\ntype = \"postgres\"\nurl = \"postgres://app:hunter2@db/events\"\n\
             [ingest.cors]\nallowed_origins = [\"https://test.com\"]\n",
        )
        .expect("valid");
        let text = s.masked().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://app:***@db/events"), "{text}");
    }
}
