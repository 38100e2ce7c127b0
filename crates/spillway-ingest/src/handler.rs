//! One request, from bytes on the wire to a durable message.
//!
//! The checks run cheapest first, and all of them before anything is queued,
//! so a refused request leaves no trace. [`accept`] is these steps, one
//! function each:
//!
//! 0. [`check_framing`]: framing that proxies could read two ways (both
//!    `Content-Length` and `Transfer-Encoding`, seen by [`crate::framing`]
//!    since hyper drops one of them) is a 400 and the connection closes,
//!    before anything else is answered on it;
//! 1. [`check_access`]: the client's rate limit ([`crate::throttle`], the
//!    client by [`crate::client_ip`]), the API key where the route requires
//!    one ([`crate::api_key`]: 401 when missing, 403 when wrong), then the
//!    key's and the route's rate limits: a 429 with `Retry-After`;
//!    [`check_head`]: `Content-Length` over the limit is a 413 without
//!    reading the body; a content type the route does not accept is a 415;
//! 2. [`admit`]: the body's bytes from the gateway's budget of bodies in
//!    memory ([`crate::admission`]): a 503 with `Retry-After` when spent;
//!    [`read_body`]: the body, read under the size limit (413) and the body
//!    timeout (408); a body that ends early (a lying `Content-Length`) is a 400;
//!    [`check_signature`]: on a route with `verify`, the webhook signature
//!    over the exact bytes read ([`crate::verify`]): 401 when it is
//!    missing, malformed, wrong or too old;
//! 3. [`check_json`]: a body that says it is JSON must parse: 400; on a
//!    route with a schema, every body must be JSON and match it: 400
//!    `schema_violation` naming each place (a non-JSON content type is a
//!    415 in step 1);
//! 4. [`request_facts`]: forwarded headers must be text, keys must be
//!    present (400); path parameters must be UTF-8 (400);
//!    on a route with `idempotency`, the request's key is claimed
//!    ([`crate::idempotency`]): a repeat gets the first answer again (and
//!    nothing is stored), a key in use is a 409, a reused one a 422;
//! 5. [`build_message`]: the envelope or the raw body, with attributes;
//! 6. publish: the answer is the route's 2xx only once the queue confirmed
//!    it, else a 503.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequestParts, Path, Request},
    http::{header, request::Parts, Extensions, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::value::RawValue;
use spillway_envelope::{encode_v1, RequestMeta, Verification, FORMAT_ATTRIBUTE};
use spillway_queue::OutgoingMessage;
use time::OffsetDateTime;

use crate::{
    access_log::{self, ClientIp},
    config::{CompiledRoute, Format, KeySource},
    error::ApiError,
    framing::AmbiguousFraming,
    idempotency::Begun,
    store::Stored,
};

/// What a route's handler needs.
pub struct RouteState {
    pub route: CompiledRoute,
    /// The route's queue: its publisher, and its spool where one is set.
    pub store: Arc<crate::store::Store>,
    /// The gateway's budget of body bytes in flight, shared by every route.
    pub admission: Arc<crate::admission::Admission>,
    /// The route's `idempotency`, its store open, when set.
    pub idempotency: Option<Arc<crate::idempotency::RouteIdempotency>>,
}

/// Handles one request to a route.
pub async fn ingest(state: Arc<RouteState>, req: Request) -> Response {
    let client = client_ip(req.extensions(), req.headers(), &state.route);
    let mut res = match accept(&state, req, client).await {
        Ok(Accepted::Now(id, stored)) => success(&state.route, &id, stored),
        Ok(Accepted::Before(r)) => replayed(&state.route, &r),
        Err(e) => e.into_response(),
    };
    if let Some(ip) = client.filter(|_| access_log::enabled()) {
        res.extensions_mut().insert(ClientIp(ip));
    }
    res
}

/// A request's message stored now, or, under an idempotency key, before.
enum Accepted {
    Now(String, Stored),
    Before(spillway_idempotency::Remembered),
}

async fn accept(state: &RouteState, req: Request, client: Option<IpAddr>) -> Result<Accepted, ApiError> {
    let route = &state.route;
    let received_at = OffsetDateTime::now_utc();
    let (mut parts, body) = req.into_parts();
    check_framing(&parts)?;
    check_access(&parts, route, client)?;
    let content_type = check_head(&parts, route)?;
    // Held until the answer: the body and its envelope are in memory till then.
    let _admitted = admit(state, &parts)?;
    let body = read_body(body, route).await?;
    let verified = check_signature(&parts, &body, route, received_at)?;
    let is_json = check_json(&body, content_type.as_deref(), route)?;
    let facts = request_facts(&mut parts, &body, is_json, route, client).await?;
    let ticket = match &state.idempotency {
        None => None,
        Some(idem) => match idem.begin(&route.name, &parts, &body, received_at.into()).await? {
            Begun::NoKey => None,
            Begun::Claimed(t) => Some(t),
            Begun::Replay(r) => return Ok(Accepted::Before(r)),
        },
    };
    let id = ulid::Ulid::new().to_string();
    let msg = build_message(route, &id, received_at, &parts, content_type, facts, body, is_json, verified);
    let stored = state.store.store(msg).await;
    if let Some(t) = ticket {
        let outcome = match &stored {
            Ok(s) => Ok((id.as_str(), route.success_status.as_u16(), *s)),
            Err(_) => Err(()),
        };
        t.finish(outcome, std::time::SystemTime::now()).await;
    }
    Ok(Accepted::Now(id, stored?))
}

/// Step 0: a head whose body proxies could frame two ways, that asks to
/// switch protocols, or whose `Host` is missing, repeated or invalid.
fn check_framing(parts: &Parts) -> Result<(), ApiError> {
    if parts.extensions.get::<AmbiguousFraming>().is_some_and(AmbiguousFraming::is_set) {
        return Err(ApiError::AmbiguousFraming);
    }
    if parts.headers.contains_key(axum::http::header::UPGRADE) {
        return Err(ApiError::UpgradeRefused);
    }
    check_host(parts)
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without
/// a `Host`, and to any request with more than one `Host` line or an
/// invalid one. A proxy in front may route on one `Host` while something
/// behind reads another; a gateway that stores such a request has taken
/// what the sender never addressed to it.
fn check_host(parts: &Parts) -> Result<(), ApiError> {
    let mut hosts = parts.headers.get_all(axum::http::header::HOST).iter();
    let refuse = |why: &str| Err(ApiError::bad_request("invalid_host", format!("{why} (RFC 9112 §3.2)")));
    match (hosts.next(), hosts.next()) {
        (None, _) if parts.version >= axum::http::Version::HTTP_11 => {
            refuse("an HTTP/1.1 request needs a Host header")
        }
        (None, _) => Ok(()),
        (Some(_), Some(_)) => refuse("more than one Host header"),
        (Some(h), None) if !valid_host(h.as_bytes()) => refuse("the Host header is not a host and port"),
        (Some(_), None) => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): an IP literal in brackets, or a
/// reg-name (unreserved, percent-encoded and sub-delims characters; an
/// IPv4 address is one), then an optional port of digits. Empty is valid:
/// a target without an authority sends an empty `Host`.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|&c| c == b']') else { return false };
        let literal = &h[1..end];
        if literal.is_empty() || !literal.iter().all(|c| c.is_ascii_hexdigit() || b":.vV".contains(c)) {
            return false;
        }
        match &h[end + 1..] {
            [] => (&h[..0], None),
            [b':', port @ ..] => (&h[..0], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().rposition(|&c| c == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let reg_name = host.iter().enumerate().all(|(i, &c)| match c {
        b'%' => host.get(i + 1..i + 3).is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit)),
        c => c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c),
    });
    reg_name && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Step 1: who may send, how often.
fn check_access(parts: &Parts, route: &CompiledRoute, client: Option<IpAddr>) -> Result<(), ApiError> {
    if let Some(throttle) = &route.throttle {
        throttle.check_client(client)?;
    }
    let key = route.api_keys.as_ref().map(|keys| keys.check(&parts.headers)).transpose()?;
    if let Some(throttle) = &route.throttle {
        throttle.check_key_and_route(key)?;
    }
    Ok(())
}

/// The client's address: the peer, or whom a trusted proxy names.
fn client_ip(extensions: &Extensions, headers: &HeaderMap, route: &CompiledRoute) -> Option<IpAddr> {
    let ConnectInfo(peer) = extensions.get::<ConnectInfo<SocketAddr>>()?;
    Some(route.trusted_proxies.client(peer.ip(), headers))
}

/// Step 1, continued: declared length and content type. Returns the
/// content type.
fn check_head(parts: &Parts, route: &CompiledRoute) -> Result<Option<String>, ApiError> {
    if let Some(len) = content_length(parts)? {
        if len > route.max_body_bytes as u64 {
            return Err(ApiError::PayloadTooLarge { limit: route.max_body_bytes });
        }
    }
    let content_type = content_type(parts)?;
    // A route with a schema takes JSON only; no content type is read as JSON.
    if route.schema.is_some() && content_type.as_deref().is_some_and(|c| !is_json_type(&essence(c))) {
        return Err(ApiError::UnsupportedMediaType {
            got: content_type,
            expected: vec!["application/json".to_owned()],
        });
    }
    if !route.content_types.is_empty() {
        let essence = content_type.as_deref().map(essence);
        if !essence.is_some_and(|e| route.content_types.iter().any(|c| c == &e)) {
            return Err(ApiError::UnsupportedMediaType {
                got: content_type,
                expected: route.content_types.clone(),
            });
        }
    }
    Ok(content_type)
}

/// Step 2b: the webhook signature, where the route has `verify`.
fn check_signature(
    parts: &Parts,
    body: &[u8],
    route: &CompiledRoute,
    received_at: OffsetDateTime,
) -> Result<Option<crate::verify::Verified>, ApiError> {
    let Some(verifier) = &route.verifier else { return Ok(None) };
    match verifier.verify(&parts.headers, body, received_at.unix_timestamp()) {
        Ok(v) => {
            metrics::counter!(crate::verify::VERIFIED, "route" => route.name.clone(), "scheme" => v.scheme)
                .increment(1);
            Ok(Some(v))
        }
        Err(f) => {
            metrics::counter!(crate::verify::FAILURES, "route" => route.name.clone(), "reason" => f.reason())
                .increment(1);
            Err(ApiError::BadSignature(f))
        }
    }
}

/// Step 3: a body that says it is JSON must parse, and a route's schema
/// must hold. Returns whether the body is JSON.
fn check_json(body: &[u8], content_type: Option<&str>, route: &CompiledRoute) -> Result<bool, ApiError> {
    if let Some(schema) = &route.schema {
        schema.check(body)?;
        return Ok(true);
    }
    let is_json = content_type.is_some_and(|c| is_json_type(&essence(c)));
    if is_json {
        serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}")))?;
    }
    Ok(is_json)
}

/// What the request says besides its body.
struct Facts {
    headers: BTreeMap<String, String>,
    ordering_key: Option<String>,
    dedup_key: Option<String>,
    path_params: BTreeMap<String, String>,
    source_ip: Option<String>,
}

/// Step 4: forwarded headers, keys, path parameters, the client's address.
async fn request_facts(
    parts: &mut Parts,
    body: &[u8],
    is_json: bool,
    route: &CompiledRoute,
    client: Option<IpAddr>,
) -> Result<Facts, ApiError> {
    let json = is_json.then_some(body);
    let headers = forwarded_headers(parts, route)?;
    let ordering_key = key(parts, json, route.ordering_key.as_ref(), "ordering key")?;
    let dedup_key = key(parts, json, route.dedup_key.as_ref(), "dedup key")?;
    let path_params = Path::<BTreeMap<String, String>>::from_request_parts(parts, &())
        .await
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let source_ip = client.map(crate::client_ip::text);
    Ok(Facts { headers, ordering_key, dedup_key, path_params, source_ip })
}

/// Step 5: the message as the queue will hold it.
#[allow(clippy::too_many_arguments)]
fn build_message(
    route: &CompiledRoute,
    id: &str,
    received_at: OffsetDateTime,
    parts: &Parts,
    content_type: Option<String>,
    facts: Facts,
    body: Bytes,
    is_json: bool,
    verified: Option<crate::verify::Verified>,
) -> OutgoingMessage {
    let mut attributes = BTreeMap::new();
    attributes.insert("spillway-route".to_owned(), route.name.clone());
    let verified = verified.map(|v| Verification { scheme: v.scheme.to_owned(), key_id: v.key_id });
    let payload = match route.format {
        Format::Envelope => {
            attributes.insert(FORMAT_ATTRIBUTE.to_owned(), "envelope".to_owned());
            let meta = RequestMeta {
                id: id.to_owned(),
                received_at,
                route: route.name.clone(),
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                path_params: facts.path_params,
                raw_query: parts.uri.query().map(str::to_owned),
                headers: facts.headers,
                source_ip: facts.source_ip,
                content_type,
                verified,
            };
            encode_v1(&meta, &body, is_json)
        }
        Format::Raw => {
            attributes.insert(FORMAT_ATTRIBUTE.to_owned(), "raw".to_owned());
            if let Some(ct) = content_type {
                attributes.insert("content-type".to_owned(), ct);
            }
            for (k, v) in facts.headers {
                attributes.insert(format!("header-{k}"), v);
            }
            for (k, v) in facts.path_params {
                attributes.insert(format!("param-{k}"), v);
            }
            if let Some(v) = verified {
                attributes.insert(VERIFIED_SCHEME_ATTRIBUTE.to_owned(), v.scheme);
                attributes.insert(VERIFIED_KEY_ATTRIBUTE.to_owned(), v.key_id);
            }
            body
        }
    };
    let mut msg = OutgoingMessage::new(id, payload);
    msg.attributes = attributes;
    msg.ordering_key = facts.ordering_key;
    msg.dedup_key = facts.dedup_key;
    msg
}

/// The success answer. Whatever the configured body says, the message id
/// is also in `x-spillway-id`, so a client (and the load harness's
/// delivery check) can always name what was accepted.
fn success(route: &CompiledRoute, id: &str, stored: Stored) -> Response {
    let body = route.success_body.join(id);
    let mut res = (route.success_status, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, route.success_content_type.clone());
    if let Ok(v) = HeaderValue::from_str(id) {
        res.headers_mut().insert(ID_HEADER, v);
    }
    if stored == Stored::Spool {
        res.headers_mut().insert(SPOOLED_HEADER, HeaderValue::from_static("true"));
    }
    res
}

/// On a `raw` route with `verify`: the scheme that verified the message,
/// and the matching secret's key id (an envelope has them in `verified`).
pub const VERIFIED_SCHEME_ATTRIBUTE: &str = "spillway-verified-scheme";
pub const VERIFIED_KEY_ATTRIBUTE: &str = "spillway-verified-key-id";

/// A repeat under an idempotency key: the first answer again, marked.
fn replayed(route: &CompiledRoute, r: &spillway_idempotency::Remembered) -> Response {
    let stored = if r.spooled { Stored::Spool } else { Stored::Queue };
    let mut res = success(route, &r.message_id, stored);
    if let Ok(status) = axum::http::StatusCode::from_u16(r.status) {
        *res.status_mut() = status;
    }
    res.headers_mut().insert(crate::idempotency::REPLAYED_HEADER, HeaderValue::from_static("true"));
    res
}

/// The response header that names the accepted message.
pub const ID_HEADER: header::HeaderName = header::HeaderName::from_static("x-spillway-id");

/// Set on an answer whose message is in the local spool, not yet in the
/// queue (`queue.spool`): stored as durably, forwarded later.
pub const SPOOLED_HEADER: header::HeaderName = header::HeaderName::from_static("x-spillway-spooled");

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

/// Step 2a: the body's bytes from the gateway's budget
/// ([`crate::admission`]): its declared length, or the route's limit when
/// it has none (chunked). Refused at once (503) when the budget is spent.
fn admit(state: &RouteState, parts: &Parts) -> Result<crate::admission::Admitted, ApiError> {
    let declared = content_length(parts)?.unwrap_or(state.route.max_body_bytes as u64);
    state.admission.admit(declared)
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
    json: Option<&[u8]>,
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
            let text =
                json.and_then(|j| pointer_text(j, p)).ok_or_else(|| missing(&format!("JSON pointer {p}")))?;
            Ok(Some(text))
        }
    }
}

/// The value at a JSON pointer (RFC 6901) as key text: a string's content,
/// anything else exactly as written in the body. Walking raw values keeps a
/// number's own text: parsed into an `f64`, two different 25-digit ids would
/// become one key, and the second message would be dropped as a duplicate.
fn pointer_text(body: &[u8], pointer: &str) -> Option<String> {
    let mut at: &RawValue = serde_json::from_slice(body).ok()?;
    if !pointer.is_empty() {
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            let text = at.get().trim_start();
            at = if text.starts_with('{') {
                let map: std::collections::HashMap<String, &RawValue> =
                    serde_json::from_str(at.get()).ok()?;
                map.get(&token).copied()?
            } else if text.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(at.get()).ok()?;
                let leading_zero = token.len() > 1 && token.starts_with('0');
                if leading_zero {
                    return None;
                }
                items.get(token.parse::<usize>().ok()?).copied()?
            } else {
                return None;
            };
        }
    }
    let text = at.get().trim();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else {
        Some(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::pointer_text;

    /// Every `${id}` of the configured body becomes the id; the content
    /// type and `x-spillway-id` are set.
    #[tokio::test]
    async fn the_success_answer_names_the_id() {
        use axum::body::to_bytes;

        use crate::config::{IngestConfig, RouteConfig};
        let mut cfg = IngestConfig::default();
        let mut route = RouteConfig { path: "/a".into(), queue: "q".into(), ..cfg.routes[0].clone() };
        route.success.body = "${id}:${id}, done".into();
        route.success.content_type = "text/plain".into();
        cfg.routes = vec![route];
        let compiled = cfg.compile().expect("compiles");
        let res = super::success(&compiled.routes[0], "01ABC", super::Stored::Queue);
        assert_eq!(res.headers()["content-type"], "text/plain");
        assert_eq!(res.headers()[super::ID_HEADER], "01ABC");
        let body = to_bytes(res.into_body(), 1024).await.expect("body");
        assert_eq!(&body[..], b"01ABC:01ABC, done");
        let plain = IngestConfig::default().compile().expect("compiles");
        let body = to_bytes(super::success(&plain.routes[0], "X", super::Stored::Queue).into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], br#"{"id":"X","status":"accepted"}"#);
    }

    #[test]
    fn hosts_are_a_host_and_an_optional_port() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8443",
            "[2001:db8::1]",
            "",
            "a_b.%41",
            "x:",
        ] {
            assert!(super::valid_host(ok.as_bytes()), "{ok:?} refused");
        }
        for bad in [
            "exa mple.com",
            "user@example.com",
            "example.com:80a",
            "[::1",
            "[zz]",
            "a/b",
            "%4",
            "a\"b",
            "[::1]x",
        ] {
            assert!(!super::valid_host(bad.as_bytes()), "{bad:?} accepted");
        }
    }

    #[test]
    fn big_numbers_keep_their_exact_text() {
        let a = br#"{"user": {"id": 12345678901234567890123}}"#;
        let b = br#"{"user": {"id": 12345678901234567890124}}"#;
        let (ka, kb) = (pointer_text(a, "/user/id"), pointer_text(b, "/user/id"));
        assert_eq!(ka.as_deref(), Some("12345678901234567890123"));
        assert_ne!(ka, kb, "two different ids must not collide");
        assert_eq!(pointer_text(br#"{"n": 1.10}"#, "/n").as_deref(), Some("1.10"));
        assert_eq!(
            pointer_text(br#"{"n": 18446744073709551616}"#, "/n").as_deref(),
            Some("18446744073709551616")
        );
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let body = br#"{"a/b": {"m~n": ["x", {"k": "v\u00e9"}]}, "s": "text", "t": true}"#;
        assert_eq!(pointer_text(body, "/a~1b/m~0n/1/k").as_deref(), Some("vé"));
        assert_eq!(pointer_text(body, "/a~1b/m~0n/0").as_deref(), Some("x"));
        assert_eq!(pointer_text(body, "/s").as_deref(), Some("text"));
        assert_eq!(pointer_text(body, "/t").as_deref(), Some("true"));
        for missing in ["/nope", "/s/x", "/a~1b/m~0n/2", "/a~1b/m~0n/01", "no-slash"] {
            assert_eq!(pointer_text(body, missing), None, "{missing}");
        }
    }
}
