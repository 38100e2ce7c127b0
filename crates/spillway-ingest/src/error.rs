//! Every failure as an HTTP answer, in one place.
//!
//! The body is always JSON, `{"error": {"code": "...", "message": "..."}}`,
//! with a stable `code` a client can switch on. Queue errors map here too:
//! whatever may succeed later is a 503 with `Retry-After`, never a 2xx.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;
use spillway_queue::QueueError;

use crate::schema::Violation;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Every error answer the traffic port gives, by status, with the codes it
/// may carry: what `spillway openapi` documents. `too_many_connections` is
/// written by the server before a request is read (`server.rs`); 431 is
/// hyper's own answer, without a body, so it is not here. No answer is a
/// 411: a body without a length is read as chunked, or as empty. A test
/// builds every variant below and checks its status and code are listed,
/// and reads the crate's sources for every `bad_request` code.
pub const ANSWERS: &[(u16, &[&str])] = &[
    (
        400,
        &[
            "ambiguous_framing",
            "incomplete_body",
            "invalid_header",
            "invalid_host",
            "invalid_idempotency_key",
            "invalid_json",
            "invalid_message",
            "invalid_path",
            "malformed_origin",
            "missing_key",
            "schema_violation",
            "upgrade_refused",
        ],
    ),
    (
        401,
        &[
            "missing_api_key",
            "signature_malformed",
            "signature_mismatch",
            "signature_missing",
            "signature_too_old",
        ],
    ),
    (403, &["forbidden", "invalid_api_key"]),
    (404, &["not_found"]),
    (405, &["method_not_allowed"]),
    (408, &["request_timeout"]),
    (409, &["idempotency_key_in_flight"]),
    (413, &["payload_too_large"]),
    (415, &["unsupported_media_type"]),
    (422, &["idempotency_key_reused", "message_rejected"]),
    (429, &["throttled"]),
    (503, &["over_capacity", "queue_unavailable", "too_many_connections"]),
];

/// A request that did not end in a stored message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type {got:?} is not accepted; expected one of {expected:?}")]
    UnsupportedMediaType { got: Option<String>, expected: Vec<String> },
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The body is JSON but does not match the route's schema: `details`
    /// are the first violations (at most `schema::MAX_DETAILS`), `total`
    /// how many there were.
    #[error("the body does not match the route's schema: {}", describe(details, *total))]
    SchemaViolation { details: Vec<Violation>, total: usize },
    #[error(
        "the request has both Content-Length and Transfer-Encoding; proxies could read its body two ways"
    )]
    AmbiguousFraming,
    /// An `Upgrade` header on an ingest route: the gateway switches to no
    /// other protocol, and a proxy in front might have.
    #[error("the request asks to switch protocols (Upgrade); this route takes plain HTTP/1.1 requests only")]
    UpgradeRefused,
    #[error("the request body did not arrive within {secs} s")]
    RequestTimeout { secs: u64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("this route needs an API key in the {header} header")]
    MissingApiKey { header: String },
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// A repeat of a request whose key is still being stored.
    #[error("a request with this idempotency key is still being stored; retry after {retry_after_secs} s")]
    IdempotencyInFlight { retry_after_secs: u64 },
    /// The idempotency key came with another request before.
    #[error("this idempotency key was used with a different request (method, path or body)")]
    IdempotencyKeyReused,
    /// A route with `verify`: the webhook signature did not verify.
    #[error("webhook signature: {0}")]
    BadSignature(crate::verify::Failure),
    /// Over a rate limit (`scope`: `client`, `API key` or `route`); nothing
    /// was read or stored.
    #[error("too many requests for this {scope}; retry after {retry_after_secs} s")]
    Throttled { scope: &'static str, retry_after_secs: u64 },
    #[error("the queue could not store the message: {0}")]
    Unavailable(String),
    /// The gateway holds as many request bodies as its memory budget
    /// allows ([`crate::admission`]); nothing was read or stored.
    #[error("the gateway is at its limit of request bodies in memory; nothing was stored, retry after {RETRY_AFTER_SECS} s")]
    OverCapacity,
    #[error("the queue refused the message: {0}")]
    Unprocessable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadRequest { .. }
            | Self::SchemaViolation { .. }
            | Self::AmbiguousFraming
            | Self::UpgradeRefused => StatusCode::BAD_REQUEST,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Forbidden(_) | Self::InvalidApiKey => StatusCode::FORBIDDEN,
            Self::MissingApiKey { .. } | Self::BadSignature(_) => StatusCode::UNAUTHORIZED,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::OverCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unprocessable(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyInFlight { .. } => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::BadRequest { code, .. } => code,
            Self::SchemaViolation { .. } => "schema_violation",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::UpgradeRefused => "upgrade_refused",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Forbidden(_) => "forbidden",
            Self::MissingApiKey { .. } => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::BadSignature(f) => match f {
                crate::verify::Failure::Missing => "signature_missing",
                crate::verify::Failure::Malformed => "signature_malformed",
                crate::verify::Failure::Mismatch => "signature_mismatch",
                crate::verify::Failure::TooOld => "signature_too_old",
            },
            Self::Throttled { .. } => "throttled",
            Self::Unavailable(_) => "queue_unavailable",
            Self::OverCapacity => "over_capacity",
            Self::Unprocessable(_) => "message_rejected",
            Self::IdempotencyInFlight { .. } => "idempotency_key_in_flight",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::TooLarge { limit, .. } => Self::PayloadTooLarge { limit },
            QueueError::Rejected(m) => Self::Unprocessable(m),
            QueueError::Invalid(m) => Self::bad_request("invalid_message", m),
            // A queue that is not there is the operator's to fix (deleted,
            // never ensured, a broker restarted without its queues): the
            // client keeps its data and retries, as for any outage.
            QueueError::NotFound(q) => Self::Unavailable(format!(
                "queue `{q}` does not exist; an operator must create it (`spillway queue ensure`)"
            )),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl ApiError {
    /// What the client is told. A server-side failure's details (a
    /// broker's error text: an AWS account id, a role's ARN, a host name)
    /// are for the log, which has them; the client needs only to know that
    /// its message was not stored and when to retry.
    fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => format!(
                "the queue could not store the message now; nothing was stored, retry after {RETRY_AFTER_SECS} s"
            ),
            Self::Internal(_) => "internal error; nothing was stored".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            if let Some(suppressed) = WARNINGS.admit(unix_seconds()) {
                tracing::warn!(error = %self, code = self.code(), suppressed, "request failed");
            }
        } else {
            tracing::debug!(error = %self, code = self.code(), "request refused");
        }
        let mut body = json!({ "error": { "code": self.code(), "message": self.public_message() } });
        if let Self::SchemaViolation { details, .. } = &self {
            body["error"]["details"] =
                details.iter().map(|v| json!({ "path": v.path, "message": v.message })).collect();
        }
        let mut res = (status, Json(body)).into_response();
        if crate::access_log::enabled() {
            res.extensions_mut().insert(crate::access_log::ErrorCode(self.code()));
        }
        let headers = res.headers_mut();
        match &self {
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            // Refused before its body was read: the connection cannot be reused.
            Self::OverCapacity => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::Throttled { retry_after_secs, .. } | Self::IdempotencyInFlight { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            // The body was not (fully) read, or its end is ambiguous: the
            // connection cannot be reused.
            Self::PayloadTooLarge { .. }
            | Self::RequestTimeout { .. }
            | Self::AmbiguousFraming
            | Self::UpgradeRefused => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

/// `/user: "user" is a required property (and 2 more)`.
fn describe(details: &[Violation], total: usize) -> String {
    let Some(first) = details.first() else { return "no details".to_owned() };
    let place = if first.path.is_empty() { "the body" } else { first.path.as_str() };
    match total.saturating_sub(1) {
        0 => format!("{place}: {}", first.message),
        more => format!("{place}: {} (and {more} more)", first.message),
    }
}

/// At most one "request failed" warning a second. A broker outage at
/// thousands of requests a second must not become thousands of log lines a
/// second (they cost CPU the gateway needs to recover, and bury the first
/// line that says what happened). Each warning carries how many were left
/// out since the last; every request is still counted in the metrics.
struct Throttle {
    second: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

static WARNINGS: Throttle = Throttle::new();

impl Throttle {
    const fn new() -> Self {
        Self {
            second: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last)` if a warning may be logged in
    /// `second`; `None` (and one more left out) otherwise.
    fn admit(&self, second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let last = self.second.load(Ordering::Relaxed);
        if second > last
            && self.second.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;

    #[test]
    fn one_warning_a_second_and_the_count_of_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.admit(100), Some(0));
        for _ in 0..4999 {
            assert_eq!(t.admit(100), None);
        }
        assert_eq!(t.admit(101), Some(4999), "the next second's warning says how many were left out");
        assert_eq!(t.admit(101), None);
        assert_eq!(t.admit(99), None, "a clock that steps back does not open the gate");
        assert_eq!(t.admit(105), Some(2));
    }
}

#[cfg(test)]
mod queue_error_tests {
    use axum::{http::header, response::IntoResponse};
    use spillway_queue::QueueError;

    use super::ApiError;

    /// Every queue error that is not about the message itself is a 503
    /// with `Retry-After`: the client keeps its data and tries again.
    #[test]
    fn a_missing_queue_is_a_503_with_retry_after_not_a_500() {
        let res = ApiError::from(QueueError::NotFound("events".into())).into_response();
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key(header::RETRY_AFTER), "{:?}", res.headers());
        let unavailable = ApiError::from(QueueError::unavailable_msg("broker gone")).into_response();
        assert_eq!(unavailable.status(), 503);
        assert!(unavailable.headers().contains_key(header::RETRY_AFTER));
    }

    /// A 503's body says what the client needs (not stored, retry), never
    /// the broker's text: an AWS refusal names the account and the role.
    #[tokio::test]
    async fn a_503_body_keeps_the_brokers_details_to_the_log() {
        let aws = "sqs send on `q`: AccessDenied: User: arn:aws:sts::123456789012:assumed-role/ingest/i-0 \
                   is not authorized to perform: sqs:sendmessage";
        let res = ApiError::from(QueueError::unavailable_msg(aws)).into_response();
        assert_eq!(res.status(), 503);
        let body = axum::body::to_bytes(res.into_body(), 4096).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["error"]["code"], "queue_unavailable");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("retry"), "{message}");
        assert!(!message.contains("123456789012") && !message.contains("arn:"), "{message}");
    }
}

#[cfg(test)]
mod answers_tests {
    use super::{ApiError, ANSWERS};
    use crate::verify::Failure;

    fn listed(status: u16, code: &str) -> bool {
        ANSWERS.iter().any(|(s, codes)| *s == status && codes.contains(&code))
    }

    #[test]
    fn every_error_answer_is_listed_for_the_openapi_document() {
        let all = [
            ApiError::NotFound,
            ApiError::MethodNotAllowed { allow: "POST".into() },
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType { got: None, expected: Vec::new() },
            ApiError::SchemaViolation { details: Vec::new(), total: 0 },
            ApiError::AmbiguousFraming,
            ApiError::UpgradeRefused,
            ApiError::RequestTimeout { secs: 1 },
            ApiError::Forbidden("x".into()),
            ApiError::MissingApiKey { header: "x-api-key".into() },
            ApiError::InvalidApiKey,
            ApiError::IdempotencyInFlight { retry_after_secs: 1 },
            ApiError::IdempotencyKeyReused,
            ApiError::BadSignature(Failure::Missing),
            ApiError::BadSignature(Failure::Malformed),
            ApiError::BadSignature(Failure::Mismatch),
            ApiError::BadSignature(Failure::TooOld),
            ApiError::Throttled { scope: "route", retry_after_secs: 1 },
            ApiError::Unavailable("x".into()),
            ApiError::OverCapacity,
            ApiError::Unprocessable("x".into()),
        ];
        for e in all {
            assert!(listed(e.status().as_u16(), e.code()), "{} {} is not in ANSWERS", e.status(), e.code());
        }
    }

    #[test]
    fn every_bad_request_code_in_the_sources_is_listed() {
        let re = regex::Regex::new(r#"bad_request\(\s*"([a-z_]+)""#).expect("regex");
        let mut found = 0;
        let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source");
                    for c in re.captures_iter(&text) {
                        found += 1;
                        assert!(
                            listed(400, &c[1]),
                            "{}: bad_request code `{}` is not in ANSWERS",
                            path.display(),
                            &c[1]
                        );
                    }
                }
            }
        }
        assert!(found >= 8, "the scan found {found} codes: the pattern no longer matches the sources");
    }
}
