//! Ingest settings as written in the config file, and their compiled form.
//!
//! [`IngestConfig`] is what figment reads; [`IngestConfig::compile`] checks
//! every value, once, and turns it into [`CompiledIngest`]: the routes, the
//! CORS policies and the publisher settings the router is built from. A bad
//! value is a [`ConfigError`] that names its key
//! (`ingest.routes[1].cors.allowed_origins[0]`), so the operator can find it;
//! nothing here panics on user input, and nothing that compiled panics later
//! (tower-http's CORS `assert!`s are checked here first).

use std::{collections::HashSet, sync::Arc, time::Duration};

use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use ipnet::IpNet;

use crate::{
    api_key::{ApiKeys, ApiKeysConfig},
    client_ip::TrustedProxies,
    cors::{CorsPolicy, OriginMatcher},
    schema::BodySchema,
    throttle::{Throttle, ThrottleConfig},
};

/// A configuration value that cannot work, with the key it came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// Files the configuration names (schemas, API keys) are read whole at
/// start-up; one larger than this is refused, so a wrong path (a device, a
/// log file) cannot hang or exhaust the start.
pub const MAX_CONFIG_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a file the configuration names, at most [`MAX_CONFIG_FILE_BYTES`].
pub(crate) fn read_config_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_CONFIG_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

/// Everything about the HTTP side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The routes. Default: `POST`/`PUT` on `/ingest` into the queue `ingest`.
    pub routes: Vec<RouteConfig>,
    /// CORS for every route that does not set its own.
    pub cors: CorsConfig,
    pub limits: LimitsConfig,
    pub publisher: PublisherConfig,
    /// Rate limits for every route that does not set its own. Off by default.
    pub throttle: ThrottleConfig,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the
    /// client, for per-client limits and the envelope's `source_ip`. Empty:
    /// the client is the peer. See [`crate::client_ip`].
    pub trusted_proxies: Vec<String>,
    /// Where trusted proxies name the client: `x-forwarded-for` (default)
    /// or `forwarded` (RFC 7239).
    pub forwarded_header: crate::client_ip::ForwardedHeader,
    /// API keys; with any configured, every route requires one unless it
    /// sets `require_api_key = false`. See [`crate::api_key`].
    pub api_keys: ApiKeysConfig,
    /// Where routes with `idempotency` keep their keys
    /// ([`crate::idempotency`]).
    pub idempotency: spillway_idempotency::StoresConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            routes: vec![RouteConfig::new("/ingest", "ingest")],
            cors: CorsConfig::default(),
            limits: LimitsConfig::default(),
            publisher: PublisherConfig::default(),
            throttle: ThrottleConfig::default(),
            trusted_proxies: Vec::new(),
            forwarded_header: crate::client_ip::ForwardedHeader::default(),
            api_keys: ApiKeysConfig::default(),
            idempotency: spillway_idempotency::StoresConfig::default(),
        }
    }
}

/// How the request is put into the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The versioned JSON envelope (`docs/envelope.md`): body plus request facts.
    #[default]
    Envelope,
    /// The body bytes alone; the facts travel as message attributes.
    Raw,
}

/// Where an ordering or dedup key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A request header. A request without it is refused with 400.
    Header(String),
    /// A JSON pointer into the body (`/customer/id`). A body without it is refused with 400.
    JsonPointer(String),
}

/// The answer on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessConfig {
    /// A 2xx status. Default 202 Accepted.
    pub status: u16,
    /// The body; `${id}` is replaced by the message id. Default:
    /// `{"id":"${id}","status":"accepted"}`.
    pub body: String,
    pub content_type: String,
}

impl Default for SuccessConfig {
    fn default() -> Self {
        Self {
            status: 202,
            body: r#"{"id":"${id}","status":"accepted"}"#.to_owned(),
            content_type: "application/json".to_owned(),
        }
    }
}

/// One route: a path and methods, mapped to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in logs and in the envelope. Default: the path.
    #[serde(default)]
    pub name: Option<String>,
    /// `/events/{tenant}`: literal segments and `{params}`.
    pub path: String,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    pub queue: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub success: SuccessConfig,
    /// Request headers copied into the envelope (or attributes, for `raw`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Accepted content types (without parameters). Empty: any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Overrides `limits.max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Overrides the top-level `cors` for this route.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub ordering_key: Option<KeySource>,
    #[serde(default)]
    pub dedup_key: Option<KeySource>,
    /// A JSON Schema the body must match, written inline (TOML tables and
    /// arrays are JSON objects and arrays). A mismatch is a 400
    /// `schema_violation` naming each place; see [`crate::schema`].
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// The same, from a JSON file (relative paths from the working
    /// directory). Not together with `schema`.
    #[serde(default)]
    pub schema_file: Option<std::path::PathBuf>,
    /// Overrides `ingest.throttle` for this route (its own buckets either way).
    #[serde(default)]
    pub throttle: Option<ThrottleConfig>,
    /// Whether a request needs an API key. Default: yes when
    /// `ingest.api_keys` has any.
    #[serde(default)]
    pub require_api_key: Option<bool>,
    /// A webhook signature every request must carry (`crate::verify`).
    #[serde(default)]
    pub verify: Option<crate::verify::VerifyConfig>,
    /// Requests with the same key stored once (`crate::idempotency`).
    #[serde(default)]
    pub idempotency: Option<spillway_idempotency::IdempotencyConfig>,
}

fn default_methods() -> Vec<String> {
    vec!["POST".into(), "PUT".into()]
}

impl RouteConfig {
    /// A route with every default: POST and PUT, envelope, 202.
    pub fn new(path: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            name: None,
            path: path.into(),
            methods: default_methods(),
            queue: queue.into(),
            format: Format::default(),
            success: SuccessConfig::default(),
            forward_headers: Vec::new(),
            content_types: Vec::new(),
            max_body_bytes: None,
            cors: None,
            ordering_key: None,
            dedup_key: None,
            schema: None,
            schema_file: None,
            throttle: None,
            require_api_key: None,
            verify: None,
            idempotency: None,
        }
    }
}

/// CORS settings. An empty `allowed_origins` turns CORS off for the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://test.com`, `https://*.test.com` (one or more labels), with an
    /// optional port; `*` for any origin (not with credentials).
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`; the origin is reflected.
    pub allow_credentials: bool,
    /// Request headers a browser may send.
    pub allowed_headers: Vec<String>,
    /// Response headers a browser script may read.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Answer 403, and enqueue nothing, when `Origin` is present and not allowed.
    pub strict_origin: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            allowed_headers: vec!["content-type".into(), "authorization".into(), "x-api-key".into()],
            expose_headers: Vec::new(),
            max_age: Duration::from_secs(600),
            strict_origin: false,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Larger bodies get 413, before they are read when `Content-Length` says so.
    pub max_body_bytes: usize,
    /// A body that has not fully arrived by then gets 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Request bodies held in memory at once, across all routes
    /// ([`crate::admission`]); over it, 503 before the body is read.
    pub max_body_bytes_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 192 * 1024,
            body_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// How the publisher batches sends to the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Most messages per `send_batch`.
    pub max_batch: usize,
    /// Wait this long for more messages before a batch goes. 0: send as soon
    /// as a slot is free (group commit: the batch is whatever arrived while
    /// the previous one was being stored).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Batches in flight at once. Unset: [`BATCH_UNIT_IN_FLIGHT`] for a
    /// backend that stores a batch as one unit, [`CONFIRMS_EACH_IN_FLIGHT`]
    /// for one that confirms message by message (see
    /// [`PublisherConfig::max_in_flight_for`]).
    pub max_in_flight: Option<usize>,
    /// Requests waiting for a batch; beyond that, 503 at once.
    pub backlog: usize,
    /// A send not confirmed by then is a 503 (its outcome is unknown).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            linger: Duration::ZERO,
            max_in_flight: None,
            backlog: 16 * 1024,
            send_timeout: Duration::from_secs(5),
        }
    }
}

/// Batches in flight by default for a backend whose batch is one unit (the
/// embedded queue's commit, SQS's `SendMessageBatch`): few and large, so
/// each commit or call carries many requests.
pub const BATCH_UNIT_IN_FLIGHT: usize = 4;

/// Batches in flight by default for a backend that confirms each message
/// (Kafka, RabbitMQ): the broker's round trip, not the gateway's CPU, is
/// the limit there, so a request should not wait for a free slot. Measured
/// against 4 on both brokers (docs/benchmarks.md): more requests served at
/// less CPU each.
pub const CONFIRMS_EACH_IN_FLIGHT: usize = 64;

impl PublisherConfig {
    /// `max_in_flight`, or its default for a backend that confirms each
    /// message (`Producer::confirms_each`) or not.
    pub fn max_in_flight_for(&self, confirms_each: bool) -> usize {
        self.max_in_flight.unwrap_or(if confirms_each {
            CONFIRMS_EACH_IN_FLIGHT
        } else {
            BATCH_UNIT_IN_FLIGHT
        })
    }
}

/// A route with every value checked and parsed.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub name: String,
    pub path: String,
    pub methods: Vec<Method>,
    pub queue: String,
    pub format: Format,
    pub success_status: StatusCode,
    /// The success body split at each `${id}`: rendering joins the parts
    /// with the id, without searching the template on every request.
    pub success_body: Vec<String>,
    /// Parsed once here, so a bad value is a config error naming its key.
    pub success_content_type: HeaderValue,
    pub forward_headers: Vec<HeaderName>,
    pub content_types: Vec<String>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub cors: Option<Arc<CorsPolicy>>,
    pub ordering_key: Option<KeySource>,
    pub dedup_key: Option<KeySource>,
    /// The body must match this (and be JSON), when set.
    pub schema: Option<Arc<BodySchema>>,
    /// Rate limits, when set; checked before the body is read.
    pub throttle: Option<Arc<Throttle>>,
    /// Who the client is (shared by every route).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The keys a request must carry one of, when the route requires one.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// The webhook signature a request must carry, when set.
    pub verifier: Option<Arc<crate::verify::Verifier>>,
    /// `idempotency`, as configured: its store is opened with the router.
    pub idempotency: Option<spillway_idempotency::IdempotencyConfig>,
}

impl CompiledRoute {
    /// The `Allow` header value.
    pub fn allow(&self) -> String {
        self.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// Everything the router needs, checked.
#[derive(Debug, Clone)]
pub struct CompiledIngest {
    pub routes: Vec<CompiledRoute>,
    /// `limits.max_body_bytes_in_flight`: the admission budget.
    pub max_body_bytes_in_flight: usize,
    /// `trusted_proxies`, compiled: also exempt from the per-client
    /// connection cap.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The top-level CORS policy, which also covers answers to unknown paths.
    pub global_cors: Option<Arc<CorsPolicy>>,
    pub publisher: PublisherConfig,
    /// `ingest.idempotency`: where the routes' keys are kept.
    pub idempotency: spillway_idempotency::StoresConfig,
}

/// Paths the server answers itself.
pub const RESERVED_PATHS: [&str; 4] = ["/healthz", "/livez", "/readyz", "/metrics"];

impl IngestConfig {
    /// Checks every value; the first bad one is the error.
    pub fn compile(&self) -> Result<CompiledIngest, ConfigError> {
        if self.routes.is_empty() {
            return Err(invalid("ingest.routes", "at least one route is needed"));
        }
        let p = &self.publisher;
        for (key, n) in [
            ("max_batch", p.max_batch),
            ("max_in_flight", p.max_in_flight.unwrap_or(1)),
            ("backlog", p.backlog),
        ] {
            if n == 0 {
                return Err(invalid(format!("ingest.publisher.{key}"), "must be at least 1"));
            }
        }
        let in_flight = p.max_in_flight.unwrap_or(CONFIRMS_EACH_IN_FLIGHT);
        if in_flight > tokio::sync::Semaphore::MAX_PERMITS || in_flight > u32::MAX as usize {
            return Err(invalid("ingest.publisher.max_in_flight", "is too large"));
        }
        // 0 would answer 503 to requests whose messages were stored.
        if p.send_timeout.is_zero() {
            return Err(invalid("ingest.publisher.send_timeout", "must be more than 0"));
        }
        if self.limits.body_timeout.is_zero() {
            return Err(invalid("ingest.limits.body_timeout", "must be more than 0"));
        }
        // Checked here, once, even if every route sets its own limits.
        self.throttle.check("ingest.throttle")?;
        let trusted_proxies = Arc::new(self.trusted_proxies()?);
        let api_keys = ApiKeys::compile(&self.api_keys)?.map(Arc::new);
        let mut shapes = HashSet::new();
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("ingest.routes[{i}]");
                let shape = check_path(&r.path).map_err(|m| invalid(format!("{key}.path"), m))?;
                if !shapes.insert(shape) {
                    return Err(invalid(
                        format!("{key}.path"),
                        format!("{:?} overlaps an earlier route", r.path),
                    ));
                }
                self.compile_route(r, &key, &trusted_proxies, api_keys.as_ref())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let global_cors = compile_cors(&self.cors, "ingest.cors")?.map(Arc::new);
        // A budget under one largest body would refuse every such request.
        let largest = routes.iter().map(|r| r.max_body_bytes).max().unwrap_or(0);
        if self.limits.max_body_bytes_in_flight < largest {
            return Err(invalid(
                "ingest.limits.max_body_bytes_in_flight",
                format!("must be at least the largest max_body_bytes ({largest})"),
            ));
        }
        Ok(CompiledIngest {
            routes,
            max_body_bytes_in_flight: self.limits.max_body_bytes_in_flight,
            trusted_proxies,
            global_cors,
            publisher: self.publisher.clone(),
            idempotency: self.idempotency.clone(),
        })
    }

    fn trusted_proxies(&self) -> Result<TrustedProxies, ConfigError> {
        let nets = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p.trim();
                p.parse::<IpNet>().or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(|_| {
                    invalid(
                        format!("ingest.trusted_proxies[{i}]"),
                        format!("{p:?} is not an address or CIDR range"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies::new(nets).reading(self.forwarded_header))
    }

    fn compile_route(
        &self,
        r: &RouteConfig,
        key: &str,
        trusted_proxies: &Arc<TrustedProxies>,
        api_keys: Option<&Arc<ApiKeys>>,
    ) -> Result<CompiledRoute, ConfigError> {
        let api_keys = match (r.require_api_key, api_keys) {
            (Some(true), None) => {
                return Err(invalid(
                    format!("{key}.require_api_key"),
                    "no keys in ingest.api_keys (keys or files) to require",
                ))
            }
            (Some(false), _) => None,
            (_, keys) => keys.cloned(),
        };
        if r.queue.trim().is_empty() {
            return Err(invalid(format!("{key}.queue"), "must name a queue"));
        }
        if r.methods.is_empty() {
            return Err(invalid(format!("{key}.methods"), "at least one method is needed"));
        }
        let methods = r
            .methods
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| invalid(format!("{key}.methods[{j}]"), format!("{m:?} is not a method")))?;
                if matches!(method, Method::OPTIONS | Method::HEAD | Method::CONNECT | Method::TRACE) {
                    return Err(invalid(format!("{key}.methods[{j}]"), format!("{m} cannot carry an event")));
                }
                Ok(method)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let success_status = StatusCode::from_u16(r.success.status)
            .ok()
            .filter(StatusCode::is_success)
            .ok_or_else(|| invalid(format!("{key}.success.status"), "must be a 2xx status"))?;
        let success_content_type = HeaderValue::from_str(&r.success.content_type)
            .map_err(|_| invalid(format!("{key}.success.content_type"), "is not a valid header value"))?;
        let forward_headers = header_names(&r.forward_headers, &format!("{key}.forward_headers"))?;
        for (name, src) in [("ordering_key", &r.ordering_key), ("dedup_key", &r.dedup_key)] {
            match src {
                Some(KeySource::Header(h)) => {
                    header_names(std::slice::from_ref(h), &format!("{key}.{name}.header"))?;
                }
                Some(KeySource::JsonPointer(p)) if !p.is_empty() && !p.starts_with('/') => {
                    return Err(invalid(
                        format!("{key}.{name}.json_pointer"),
                        "a JSON pointer starts with `/`",
                    ));
                }
                _ => {}
            }
        }
        let (cors_key, cors) = match &r.cors {
            Some(c) => (format!("{key}.cors"), c),
            None => ("ingest.cors".to_owned(), &self.cors),
        };
        let max_body_bytes = r.max_body_bytes.unwrap_or(self.limits.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(invalid(format!("{key}.max_body_bytes"), "must be at least 1"));
        }
        let schema = match (&r.schema, &r.schema_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!("{key}.schema_file"), "set `schema` or `schema_file`, not both"))
            }
            (Some(s), None) => Some(BodySchema::compile(s, &format!("{key}.schema"))?),
            (None, Some(path)) => Some(BodySchema::from_file(path, &format!("{key}.schema_file"))?),
            (None, None) => None,
        };
        let throttle = match &r.throttle {
            Some(t) => Throttle::compile(t, &format!("{key}.throttle"))?,
            None => Throttle::compile(&self.throttle, "ingest.throttle")?,
        };
        let verifier = r
            .verify
            .as_ref()
            .map(|v| crate::verify::Verifier::new(v, &format!("{key}.verify")))
            .transpose()?;
        Ok(CompiledRoute {
            name: r.name.clone().unwrap_or_else(|| r.path.clone()),
            path: r.path.clone(),
            methods,
            queue: r.queue.clone(),
            format: r.format,
            success_status,
            success_body: r.success.body.split("${id}").map(str::to_owned).collect(),
            success_content_type,
            forward_headers,
            content_types: r.content_types.iter().map(|c| c.trim().to_ascii_lowercase()).collect(),
            max_body_bytes,
            body_timeout: self.limits.body_timeout,
            cors: compile_cors(cors, &cors_key)?.map(Arc::new),
            ordering_key: r.ordering_key.clone(),
            dedup_key: r.dedup_key.clone(),
            schema: schema.map(Arc::new),
            throttle: throttle.map(Arc::new),
            trusted_proxies: trusted_proxies.clone(),
            api_keys,
            verifier: verifier.map(Arc::new),
            idempotency: r.idempotency.clone(),
        })
    }
}

fn header_names(names: &[String], key: &str) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, h)| {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| invalid(format!("{key}[{i}]"), format!("{h:?} is not a header name")))
        })
        .collect()
}

fn compile_cors(c: &CorsConfig, key: &str) -> Result<Option<CorsPolicy>, ConfigError> {
    if c.allowed_origins.is_empty() {
        return Ok(None);
    }
    let matcher = OriginMatcher::compile(&c.allowed_origins)
        .map_err(|(i, e)| invalid(format!("{key}.allowed_origins[{i}]"), e.to_string()))?;
    if c.allow_credentials && matcher.allows_any() {
        return Err(invalid(
            format!("{key}.allowed_origins"),
            "`*` together with allow_credentials would let every site send credentialed requests; list the origins",
        ));
    }
    let allowed_headers = header_names(&c.allowed_headers, &format!("{key}.allowed_headers"))?;
    let expose_headers = header_names(&c.expose_headers, &format!("{key}.expose_headers"))?;
    // tower-http `assert!`s these away at start-up: a wildcard means nothing
    // to a browser on a credentialed request, so refuse it here, by key.
    for (field, names) in [("allowed_headers", &allowed_headers), ("expose_headers", &expose_headers)] {
        if let Some(i) = names.iter().position(|h| h.as_str() == "*") {
            if c.allow_credentials {
                return Err(invalid(
                    format!("{key}.{field}[{i}]"),
                    "`*` does not work with allow_credentials: browsers ignore it on credentialed requests; list the headers",
                ));
            }
        }
    }
    if c.max_age.as_secs() > u64::from(u32::MAX) {
        return Err(invalid(format!("{key}.max_age"), "is too long"));
    }
    Ok(Some(CorsPolicy {
        matcher: Arc::new(matcher),
        allow_credentials: c.allow_credentials,
        allowed_headers,
        expose_headers,
        max_age: c.max_age,
        strict_origin: c.strict_origin,
    }))
}

/// A `{name}` or `{*name}` segment of a route path: the name, and whether
/// it catches the rest of the path.
pub(crate) fn path_param(seg: &str) -> Option<(&str, bool)> {
    let inner = seg.strip_prefix('{')?.strip_suffix('}')?;
    Some(match inner.strip_prefix('*') {
        Some(name) => (name, true),
        None => (inner, false),
    })
}

/// Checks a route path and returns its shape (params blanked) for overlap checks.
/// Rejects what would make axum panic when the route is added.
fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with `/`"));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!("{path} is reserved for health checks"));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut shape = String::new();
    let mut names = HashSet::new();
    for (i, seg) in segments.iter().enumerate() {
        shape.push('/');
        if let Some((name, wild)) = path_param(seg) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{seg:?}: a parameter is {{name}} with letters, digits and `_`"));
            }
            if wild && i + 1 != segments.len() {
                return Err(format!("{seg:?}: a catch-all parameter must be the last segment"));
            }
            if !names.insert(name) {
                return Err(format!("parameter {name:?} appears twice"));
            }
            shape.push_str(if wild { "{*}" } else { "{}" });
        } else if seg.contains(['{', '}', '*', ':']) {
            return Err(format!("{seg:?}: `{{`, `}}`, `*` and `:` only appear in {{param}} segments"));
        } else if seg.is_empty() && i + 1 != segments.len() {
            return Err("empty segment (`//`)".to_owned());
        } else {
            shape.push_str(seg);
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> IngestConfig {
        toml::from_str(toml_text).expect("toml")
    }

    #[test]
    fn unset_max_in_flight_follows_the_backend_and_a_set_one_wins() {
        let unset = PublisherConfig::default();
        assert_eq!(unset.max_in_flight_for(false), BATCH_UNIT_IN_FLIGHT);
        assert_eq!(unset.max_in_flight_for(true), CONFIRMS_EACH_IN_FLIGHT);
        let set = PublisherConfig { max_in_flight: Some(8), ..PublisherConfig::default() };
        assert_eq!((set.max_in_flight_for(false), set.max_in_flight_for(true)), (8, 8));
        let zero = parse("[[routes]]\npath = \"/a\"\nqueue = \"q\"\n[publisher]\nmax_in_flight = 0\n");
        let err = zero.compile().expect_err("0 batches in flight");
        assert!(err.to_string().contains("ingest.publisher.max_in_flight"), "{err}");
    }

    /// `ingest.throttle` is checked even when no route uses it: a bad value
    /// there must not pass `config check` just because every route sets
    /// its own limits.
    #[test]
    fn a_bad_default_throttle_is_refused_even_when_every_route_overrides_it() {
        let cfg = parse(
            "[throttle]\nroute = { rate = 0, burst = 1 }\n\
             [[routes]]\npath = \"/a\"\nqueue = \"q\"\nthrottle = { route = { rate = 1, burst = 1 } }\n",
        );
        let err = cfg.compile().expect_err("rate 0 in ingest.throttle");
        assert_eq!(err.key, "ingest.throttle.route.rate");
    }

    #[test]
    fn the_default_serves_ingest() {
        let routes = IngestConfig::default().compile().expect("compiles").routes;
        assert_eq!(routes[0].path, "/ingest");
        assert_eq!(routes[0].methods, vec![Method::POST, Method::PUT]);
        assert_eq!(routes[0].success_status, StatusCode::ACCEPTED);
        assert!(routes[0].cors.is_none());
    }

    #[test]
    fn a_bad_origin_names_its_key() {
        let c = parse(
            r#"
            [[routes]]
            path = "/a"
            queue = "q"
            [routes.cors]
            allowed_origins = ["https://ok.com", "https://bad.*.com"]
            "#,
        );
        let e = c.compile().expect_err("bad origin");
        assert_eq!(e.key, "ingest.routes[0].cors.allowed_origins[1]");
    }

    #[test]
    fn any_origin_with_credentials_is_refused() {
        let c = parse("[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n");
        assert_eq!(c.compile().expect_err("refused").key, "ingest.cors.allowed_origins");
    }

    #[test]
    fn bad_paths_methods_and_statuses_name_their_keys() {
        for (route, key) in [
            ("path = \"nope\"", "ingest.routes[0].path"),
            ("path = \"/a/{b\"", "ingest.routes[0].path"),
            ("path = \"/a/{*rest}/b\"", "ingest.routes[0].path"),
            ("path = \"/healthz\"", "ingest.routes[0].path"),
            ("path = \"/a\"\nmethods = [\"GE T\"]", "ingest.routes[0].methods[0]"),
            ("path = \"/a\"\nmethods = [\"OPTIONS\"]", "ingest.routes[0].methods[0]"),
            ("path = \"/a\"\nsuccess = { status = 404 }", "ingest.routes[0].success.status"),
            (
                "path = \"/a\"\nsuccess = { content_type = \"a\\nb\" }",
                "ingest.routes[0].success.content_type",
            ),
            ("path = \"/a\"\nforward_headers = [\"bad header\"]", "ingest.routes[0].forward_headers[0]"),
        ] {
            let c = parse(&format!("[[routes]]\nqueue = \"q\"\n{route}\n"));
            assert_eq!(c.compile().expect_err(route).key, key, "{route}");
        }
    }

    #[test]
    fn wildcard_headers_with_credentials_are_refused_by_key() {
        for (field, key) in [
            ("allowed_headers", "ingest.cors.allowed_headers[1]"),
            ("expose_headers", "ingest.cors.expose_headers[1]"),
        ] {
            let c = parse(&format!(
                "[cors]\nallowed_origins = [\"https://a.com\"]\nallow_credentials = true\n{field} = [\"x-a\", \"*\"]\n"
            ));
            assert_eq!(c.compile().expect_err(field).key, key);
        }
        let c = parse("[cors]\nallowed_origins = [\"https://a.com\"]\nallowed_headers = [\"*\"]\n");
        let compiled = c.compile().expect("without credentials a wildcard is allowed");
        let policy = compiled.global_cors.expect("policy");
        // What tower-http checks when the layer is applied: no panic.
        let _ = tower::Layer::layer(
            &policy.layer(&[Method::POST]),
            tower::service_fn(|_: ()| async { Ok::<_, ()>(()) }),
        );
    }

    #[test]
    fn zero_timeouts_are_refused_by_key() {
        assert_eq!(
            parse("[publisher]\nsend_timeout = \"0s\"\n").compile().expect_err("0").key,
            "ingest.publisher.send_timeout"
        );
        assert_eq!(
            parse("[limits]\nbody_timeout = \"0s\"\n").compile().expect_err("0").key,
            "ingest.limits.body_timeout"
        );
    }

    #[test]
    fn overlapping_routes_are_refused() {
        let c = parse(
            "[[routes]]\npath = \"/a/{x}\"\nqueue = \"q\"\n[[routes]]\npath = \"/a/{y}\"\nqueue = \"q\"\n",
        );
        assert_eq!(c.compile().expect_err("overlap").key, "ingest.routes[1].path");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<IngestConfig>("[cors]\nallowed_origin = []\n").is_err());
    }
}
