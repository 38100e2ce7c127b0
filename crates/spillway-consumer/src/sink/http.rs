//! `http`: POST each message to a URL.
//!
//! - 2xx: delivered.
//! - connection refused, DNS failure, timeout, 503: `Down`, the endpoint is not there.
//! - 408, 429, 500, 502, 504 and other 5xx: `Transient`, retried and counted;
//!   `circuit_threshold` of them in a row open the circuit ("5xx on every call").
//! - other 4xx: `Rejected`, retried or dead-lettered as `on_4xx` says.
//!
//! The request carries `X-Spillway-Message-Id` (for idempotency on the other
//! side) and `X-Spillway-Receive-Count`. The body is the message as queued.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::{
    header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE},
    StatusCode,
};
use spillway_queue::Delivery;

use super::{Sink, SinkSetupError};
use crate::{config::On4xx, SinkError};

/// See the module doc.
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    on_4xx: On4xx,
}

impl HttpSink {
    pub fn new(url: &str, on_4xx: On4xx, headers: &BTreeMap<String, String>) -> Result<Self, SinkSetupError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| SinkSetupError::Config { key: "url", message: format!("{url:?}: {e}") })?;
        let mut defaults = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| SinkSetupError::Config {
                key: "headers",
                message: format!("{k:?} is not a header name"),
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| SinkSetupError::Config {
                key: "headers",
                message: format!("value of {k} is not valid"),
            })?;
            defaults.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(defaults)
            .build()
            .map_err(|e| SinkSetupError::Unavailable(format!("http client: {e}")))?;
        Ok(Self { client, url, on_4xx })
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, d: &Delivery) -> Result<(), SinkError> {
        let content_type = d
            .message
            .attributes
            .get("content-type")
            .filter(|_| {
                d.message.attributes.get(spillway_envelope::FORMAT_ATTRIBUTE).map(String::as_str)
                    == Some("raw")
            })
            .cloned()
            .unwrap_or_else(|| "application/json".to_owned());
        let res = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .header("x-spillway-message-id", &d.message.id)
            .header("x-spillway-receive-count", d.receive_count)
            .body(d.message.body.clone())
            .send()
            .await
            .map_err(|e| SinkError::Down(format!("POST {}: {e}", self.url)))?;
        let status = res.status();
        if status.is_success() {
            return Ok(());
        }
        let text = res.text().await.unwrap_or_default();
        let reason =
            format!("POST {} answered {status}: {}", self.url, text.chars().take(500).collect::<String>());
        Err(match status {
            StatusCode::SERVICE_UNAVAILABLE => SinkError::Down(reason),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => SinkError::Transient(reason),
            s if s.is_server_error() => SinkError::Transient(reason),
            _ => SinkError::Rejected { reason, dead_letter: self.on_4xx == On4xx::DeadLetter },
        })
    }
}
