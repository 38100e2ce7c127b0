//! `http`: POST each message to a URL.
//!
//! - 2xx: delivered.
//! - connection refused, DNS failure, timeout, 503: `Down`, the endpoint is not there.
//! - 3xx: `Down`. Redirects are **not followed**: a client that follows a
//!   301/302/303 turns the POST into a body-less GET, and a 200 to that GET
//!   would ack a message nobody received. A redirect means the configured URL
//!   is wrong for every message, so the circuit opens and nothing is lost or
//!   dead-lettered while an operator fixes `consumer.sink.url`.
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
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(SinkSetupError::Config {
                key: "url",
                message: format!("{url} is not an http:// or https:// URL with a host"),
            });
        }
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
            .redirect(reqwest::redirect::Policy::none())
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
            s if s.is_redirection() => SinkError::Down(format!("{reason} (a redirect is not a delivery)")),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => SinkError::Transient(reason),
            s if s.is_server_error() => SinkError::Transient(reason),
            _ => SinkError::Rejected { reason, dead_letter: self.on_4xx == On4xx::DeadLetter },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{extract::State, http::HeaderMap, routing::post, Router};
    use spillway_queue::{Receipt, ReceivedMessage};
    use time::OffsetDateTime;

    use super::*;

    type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

    /// A real HTTP endpoint on loopback that answers with the status it is
    /// told to and records what it received.
    async fn endpoint(status: u16) -> (String, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State((status, seen)): State<(u16, Seen)>, headers: HeaderMap, body: String| async move {
                        seen.lock().expect("lock").push((headers, body));
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    },
                ),
            )
            .with_state((status, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn delivery() -> Delivery {
        Delivery {
            queue: "q".into(),
            message: ReceivedMessage {
                id: "01TEST".into(),
                body: bytes::Bytes::from_static(br#"{"a":1}"#),
                attributes: Default::default(),
                ordering_key: None,
                enqueued_at: OffsetDateTime::UNIX_EPOCH,
            },
            receive_count: 2,
            first_received_at: OffsetDateTime::UNIX_EPOCH,
            receipt: Receipt("r".into()),
        }
    }

    async fn answer(status: u16, on_4xx: On4xx) -> Result<(), SinkError> {
        let (url, _) = endpoint(status).await;
        HttpSink::new(&url, on_4xx, &BTreeMap::new()).expect("sink").deliver(&delivery()).await
    }

    #[tokio::test]
    async fn two_hundreds_deliver_with_id_and_count_headers() {
        let (url, seen) = endpoint(204).await;
        let headers = BTreeMap::from([("authorization".to_owned(), "Bearer t".to_owned())]);
        HttpSink::new(&url, On4xx::Retry, &headers)
            .expect("sink")
            .deliver(&delivery())
            .await
            .expect("delivered");
        let seen = seen.lock().expect("lock");
        let (h, body) = &seen[0];
        assert_eq!(body, r#"{"a":1}"#);
        assert_eq!(h["x-spillway-message-id"], "01TEST");
        assert_eq!(h["x-spillway-receive-count"], "2");
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["content-type"], "application/json");
    }

    #[tokio::test]
    async fn statuses_map_to_whose_fault_it_is() {
        assert!(matches!(answer(503, On4xx::Retry).await, Err(SinkError::Down(_))));
        for s in [500, 502, 504, 408, 429] {
            assert!(matches!(answer(s, On4xx::Retry).await, Err(SinkError::Transient(_))), "{s}");
        }
        assert!(matches!(
            answer(400, On4xx::Retry).await,
            Err(SinkError::Rejected { dead_letter: false, .. })
        ));
        assert!(matches!(
            answer(422, On4xx::DeadLetter).await,
            Err(SinkError::Rejected { dead_letter: true, .. })
        ));
    }

    /// A redirect to an endpoint that answers 200 to the GET a client would
    /// turn the POST into: following it would ack what was never delivered.
    #[tokio::test]
    async fn a_redirect_is_not_followed_and_is_not_a_delivery() {
        let (target, seen_by_target) = endpoint(200).await;
        let got = Arc::new(Mutex::new(0u32));
        for status in [301u16, 302, 303, 307, 308] {
            let target = target.clone();
            let app = Router::new().route(
                "/moved",
                post(move || {
                    let target = target.clone();
                    async move {
                        (
                            axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::FOUND),
                            [(
                                axum::http::header::LOCATION,
                                if status < 307 { "/moved".to_owned() } else { target },
                            )],
                        )
                    }
                })
                .get({
                    let got = got.clone();
                    move || async move {
                        *got.lock().expect("lock") += 1;
                        "ok"
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/moved", listener.local_addr().expect("addr"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            let sink = HttpSink::new(&url, On4xx::Retry, &BTreeMap::new()).expect("sink");
            let answer = sink.deliver(&delivery()).await;
            assert!(
                matches!(answer, Err(SinkError::Down(ref r)) if r.contains("redirect")),
                "{status}: {answer:?}"
            );
        }
        assert!(seen_by_target.lock().expect("lock").is_empty(), "a redirect was followed");
        assert_eq!(*got.lock().expect("lock"), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        drop(listener);
        let sink = HttpSink::new(&url, On4xx::Retry, &BTreeMap::new()).expect("sink");
        assert!(matches!(sink.deliver(&delivery()).await, Err(SinkError::Down(_))));
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        assert!(matches!(
            HttpSink::new("not a url", On4xx::Retry, &BTreeMap::new()),
            Err(SinkSetupError::Config { key: "url", .. })
        ));
    }
}
