//! One request, from bytes on the wire to a durable message.
//!
//! The checks run cheapest first, and all of them before anything is queued,
//! so a refused request leaves no trace:
//!
//! 1. `Content-Length` over the limit: 413 without reading the body;
//! 2. content type not accepted by the route: 415;
//! 3. the body, read under the size limit (413) and the body timeout (408);
//!    a body that ends early (a lying `Content-Length`) is a 400;
//! 4. a body that says it is JSON must parse: 400;
//! 5. forwarded headers must be text, keys must be present: 400;
//! 6. the message is built (envelope or raw) and published; the answer is
//!    the route's 2xx only once the queue confirmed it, else a 503.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts, Path, Request},
    http::{header, request::Parts, HeaderValue},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use spillway_envelope::{Envelope, EnvelopeV1, RequestMeta, FORMAT_ATTRIBUTE};
use spillway_queue::OutgoingMessage;
use time::OffsetDateTime;

use crate::{
    config::{CompiledRoute, Format, KeySource},
    error::ApiError,
    publisher::Publisher,
};

/// What a route's handler needs.
pub struct RouteState {
    pub route: CompiledRoute,
    pub publisher: Arc<Publisher>,
}

/// Handles one request to a route.
pub async fn ingest(state: Arc<RouteState>, req: Request) -> Response {
    match accept(&state, req).await {
        Ok(id) => success(&state.route, &id),
        Err(e) => e.into_response(),
    }
}

async fn accept(state: &RouteState, req: Request) -> Result<String, ApiError> {
    let route = &state.route;
    let received_at = OffsetDateTime::now_utc();
    let (mut parts, body) = req.into_parts();

    if let Some(len) = content_length(&parts)? {
        if len > route.max_body_bytes as u64 {
            return Err(ApiError::PayloadTooLarge { limit: route.max_body_bytes });
        }
    }
    let content_type = content_type(&parts)?;
    if !route.content_types.is_empty() {
        let essence = content_type.as_deref().map(essence);
        if !essence.is_some_and(|e| route.content_types.iter().any(|c| c == &e)) {
            return Err(ApiError::UnsupportedMediaType {
                got: content_type,
                expected: route.content_types.clone(),
            });
        }
    }
    let body = read_body(body, route).await?;
    let is_json = content_type.as_deref().is_some_and(|c| is_json_type(&essence(c)));
    let not_json =
        |e: serde_json::Error| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}"));
    // A JSON body is always checked; it is kept as a value only when a key is read from it.
    let json: Option<serde_json::Value> = match (is_json, needs_json_value(route)) {
        (true, true) => Some(serde_json::from_slice(&body).map_err(not_json)?),
        (true, false) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(not_json)?;
            None
        }
        (false, _) => None,
    };

    let headers = forwarded_headers(&parts, route)?;
    let ordering_key = key(&parts, json.as_ref(), route.ordering_key.as_ref(), "ordering key")?;
    let dedup_key = key(&parts, json.as_ref(), route.dedup_key.as_ref(), "dedup key")?;
    let path_params = Path::<BTreeMap<String, String>>::from_request_parts(&mut parts, &())
        .await
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let source_ip =
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string());

    let id = ulid::Ulid::new().to_string();
    let mut attributes = BTreeMap::new();
    attributes.insert("spillway-route".to_owned(), route.name.clone());
    let payload = match route.format {
        Format::Envelope => {
            attributes.insert(FORMAT_ATTRIBUTE.to_owned(), "envelope".to_owned());
            let meta = RequestMeta {
                id: id.clone(),
                received_at,
                route: route.name.clone(),
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                path_params,
                raw_query: parts.uri.query().map(str::to_owned),
                headers,
                source_ip,
                content_type: content_type.clone(),
            };
            Envelope::V1(EnvelopeV1::new(meta, &body, is_json)).to_bytes()
        }
        Format::Raw => {
            attributes.insert(FORMAT_ATTRIBUTE.to_owned(), "raw".to_owned());
            if let Some(ct) = &content_type {
                attributes.insert("content-type".to_owned(), ct.clone());
            }
            for (k, v) in headers {
                attributes.insert(format!("header-{k}"), v);
            }
            for (k, v) in path_params {
                attributes.insert(format!("param-{k}"), v);
            }
            body
        }
    };
    let mut msg = OutgoingMessage::new(id.clone(), payload);
    msg.attributes = attributes;
    msg.ordering_key = ordering_key;
    msg.dedup_key = dedup_key;
    state.publisher.publish(msg).await?;
    Ok(id)
}

fn success(route: &CompiledRoute, id: &str) -> Response {
    let body = route.success_body.replace("${id}", id);
    let mut res = (route.success_status, body).into_response();
    if let Ok(ct) = HeaderValue::from_str(&route.success_content_type) {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res
}

fn content_length(parts: &Parts) -> Result<Option<u64>, ApiError> {
    let Some(v) = parts.headers.get(header::CONTENT_LENGTH) else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalid_header", "Content-Length is not a number"))
}

fn content_type(parts: &Parts) -> Result<Option<String>, ApiError> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request("invalid_header", "Content-Type is not text"))
        })
        .transpose()
}

/// `application/json; charset=utf-8` → `application/json`.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_json_type(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

fn needs_json_value(route: &CompiledRoute) -> bool {
    matches!(route.ordering_key, Some(KeySource::JsonPointer(_)))
        || matches!(route.dedup_key, Some(KeySource::JsonPointer(_)))
}

async fn read_body(body: Body, route: &CompiledRoute) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, route.max_body_bytes);
    match tokio::time::timeout(route.body_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::RequestTimeout { secs: route.body_timeout.as_secs().max(1) }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit: route.max_body_bytes })
        }
        Ok(Err(e)) => {
            Err(ApiError::bad_request("incomplete_body", format!("the request body could not be read: {e}")))
        }
    }
}

fn forwarded_headers(parts: &Parts, route: &CompiledRoute) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for name in &route.forward_headers {
        let mut values = parts.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        let text: Result<Vec<&str>, _> = values.map(HeaderValue::to_str).collect();
        let text =
            text.map_err(|_| ApiError::bad_request("invalid_header", format!("header {name} is not text")))?;
        out.insert(name.as_str().to_owned(), text.join(", "));
    }
    Ok(out)
}

fn key(
    parts: &Parts,
    json: Option<&serde_json::Value>,
    source: Option<&KeySource>,
    what: &str,
) -> Result<Option<String>, ApiError> {
    let missing =
        |from: &str| ApiError::bad_request("missing_key", format!("the {what} ({from}) is missing"));
    match source {
        None => Ok(None),
        Some(KeySource::Header(h)) => {
            let v = parts.headers.get(h.as_str()).ok_or_else(|| missing(&format!("header {h}")))?;
            let v = v
                .to_str()
                .map_err(|_| ApiError::bad_request("invalid_header", format!("header {h} is not text")))?;
            Ok(Some(v.to_owned()))
        }
        Some(KeySource::JsonPointer(p)) => {
            let v = json.and_then(|j| j.pointer(p)).ok_or_else(|| missing(&format!("JSON pointer {p}")))?;
            Ok(Some(match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }))
        }
    }
}
