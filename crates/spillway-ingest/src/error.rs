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

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

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
    #[error(
        "the request has both Content-Length and Transfer-Encoding; proxies could read its body two ways"
    )]
    AmbiguousFraming,
    #[error("the request body did not arrive within {secs} s")]
    RequestTimeout { secs: u64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("the queue could not store the message: {0}")]
    Unavailable(String),
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
            Self::BadRequest { .. } | Self::AmbiguousFraming => StatusCode::BAD_REQUEST,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
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
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "queue_unavailable",
            Self::Unprocessable(_) => "message_rejected",
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
            QueueError::NotFound(q) => Self::Internal(format!("queue `{q}` does not exist")),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, code = self.code(), "request failed");
        } else {
            tracing::debug!(error = %self, code = self.code(), "request refused");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut res = (status, Json(body)).into_response();
        let headers = res.headers_mut();
        match &self {
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            // The body was not (fully) read, or its end is ambiguous: the
            // connection cannot be reused.
            Self::PayloadTooLarge { .. } | Self::RequestTimeout { .. } | Self::AmbiguousFraming => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}
