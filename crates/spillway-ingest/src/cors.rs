//! CORS: which origins may call, and the layers that answer them.
//!
//! The allow-list is compiled once, at config load, into [`OriginMatcher`];
//! tower-http's `CorsLayer` gets it as a predicate. With credentials the
//! request's own `Origin` is reflected, never `*`. Around that layer,
//! [`TidyLayer`] makes three promises tower-http does not:
//!
//! - a response to an origin that is not allowed carries no CORS header at
//!   all (tower-http still sends `Access-Control-Allow-Credentials` and, on a
//!   preflight, the allowed methods);
//! - a preflight answers `204 No Content`;
//! - an `Origin` header that is not an origin, or two of them, is a `400`,
//!   with `Vary: Origin`.
//!
//! `Vary: Origin` is on every response of a CORS route, allowed or not, so a
//! cache never serves one origin's answer to another.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::Request,
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;

/// An origin as browsers send it: scheme, host, optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

/// Why a string is not an origin (or not an origin pattern).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSyntaxError(String);

impl fmt::Display for OriginSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_origin(s: &str, allow_wildcard: bool) -> Result<Origin<'_>, OriginSyntaxError> {
    let err = |why: &str| OriginSyntaxError(format!("{s:?} is not an origin: {why}"));
    // Byte by byte: every request with an `Origin` is parsed, and `str`'s
    // substring and char-set searches cost more to set up than these
    // few bytes take to scan.
    let split = s.as_bytes().windows(3).position(|w| w == b"://");
    let (scheme, rest) =
        split.map(|i| (&s[..i], &s[i + 3..])).ok_or_else(|| err("expected scheme://host[:port]"))?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err(err("bad scheme"));
    }
    if rest.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@')) {
        return Err(err("an origin has no path, query, fragment or user"));
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or_else(|| err("unclosed ["))?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
        };
        (&rest[..=end], port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    // Digits only: `u16::from_str` also takes a sign, and `:+443` is not
    // an origin's port (found by the origins fuzz target).
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| err("bad port"))?)
        }
        Some(_) => return Err(err("bad port")),
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    let ipv6 = host.len() > 2
        && host.starts_with('[')
        && host[1..host.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    let labels_ok = host.as_bytes().split(|&b| b == b'.').enumerate().all(|(i, label)| {
        (allow_wildcard && i == 0 && label == b"*")
            || (!label.is_empty() && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'))
    });
    if !ipv6 && !labels_ok {
        return Err(err("bad host"));
    }
    Ok(Origin { scheme, host, port })
}

/// One entry of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: any origin. Refused together with credentials.
    Any,
    Exact {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
    /// `scheme://*.suffix[:port]`: one or more labels before `.suffix`.
    /// Kept with its leading dot, so a match is one suffix comparison.
    Subdomains {
        scheme: String,
        dot_suffix: String,
        port: Option<u16>,
    },
}

/// The compiled allow-list.
#[derive(Debug, Clone)]
pub struct OriginMatcher {
    patterns: Vec<Pattern>,
}

impl OriginMatcher {
    /// Compiles the patterns. The error names the index of the bad entry.
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, (usize, OriginSyntaxError)> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| compile_pattern(p.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether `*` is in the list.
    pub fn allows_any(&self) -> bool {
        self.patterns.contains(&Pattern::Any)
    }

    /// Whether the `Origin` header value is allowed. Scheme and host compare
    /// without regard to case; ports must be equal (absent means the default).
    pub fn matches(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else { return false };
        let Ok(o) = parse_origin(origin, false) else { return false };
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact { scheme, host, port } => {
                o.scheme.eq_ignore_ascii_case(scheme) && o.host.eq_ignore_ascii_case(host) && o.port == *port
            }
            Pattern::Subdomains { scheme, dot_suffix, port } => {
                let cut = o.host.len().wrapping_sub(dot_suffix.len());
                o.scheme.eq_ignore_ascii_case(scheme)
                    && o.port == *port
                    && o.host.len() > dot_suffix.len()
                    && o.host.is_char_boundary(cut)
                    && o.host[cut..].eq_ignore_ascii_case(dot_suffix)
            }
        })
    }
}

fn compile_pattern(p: &str) -> Result<Pattern, OriginSyntaxError> {
    if p == "*" {
        return Ok(Pattern::Any);
    }
    let o = parse_origin(p, true)?;
    let scheme = o.scheme.to_ascii_lowercase();
    let host = o.host.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) if !suffix.contains('*') && !suffix.is_empty() => {
            Ok(Pattern::Subdomains { scheme, dot_suffix: format!(".{suffix}"), port: o.port })
        }
        _ if host.contains('*') => Err(OriginSyntaxError(format!(
            "{p:?}: `*` may only stand for the leading labels, as in https://*.example.com"
        ))),
        _ => Ok(Pattern::Exact { scheme, host, port: o.port }),
    }
}

/// The CORS settings of a route, compiled.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub matcher: Arc<OriginMatcher>,
    pub allow_credentials: bool,
    pub allowed_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub max_age: Duration,
    pub strict_origin: bool,
}

impl CorsPolicy {
    /// The tower-http layer for a route that accepts `methods`.
    pub fn layer(&self, methods: &[Method]) -> CorsLayer {
        let matcher = self.matcher.clone();
        let mut methods = methods.to_vec();
        methods.push(Method::OPTIONS);
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                matcher.matches(origin.as_bytes())
            }))
            .allow_credentials(self.allow_credentials)
            .allow_methods(methods)
            .allow_headers(self.allowed_headers.clone())
            .expose_headers(self.expose_headers.clone())
            .max_age(self.max_age)
            // `Vary` is added by `Tidy`, as one value built once:
            // tower-http joins its list into a new header value on every
            // request (and clones the list with the service).
            .vary(Vec::<HeaderName>::new())
    }
}

/// Answers 403 to an origin that is not allowed; requests without `Origin`
/// (servers, curl) are not affected. Only routes with `strict_origin` get
/// this layer.
///
/// This and [`TidyLayer`] are tower layers, not `axum::middleware::from_fn`,
/// which clones the inner service and boxes a future on every request
/// (`docs/benchmarks.md`, seventh session).
#[derive(Clone)]
pub struct GuardLayer(pub Arc<OriginMatcher>);

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, matcher: self.0.clone() }
    }
}

/// The service of [`GuardLayer`].
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    matcher: Arc<OriginMatcher>,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Early<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            if !self.matcher.matches(origin.as_bytes()) {
                return Early::answered(ApiError::Forbidden("origin not allowed".into()).into_response());
            }
        }
        Early::Passed { inner: self.inner.call(req) }
    }
}

/// The outermost layer of a CORS route; see the module doc.
#[derive(Clone, Copy, Debug, Default)]
pub struct TidyLayer;

impl<S> Layer<S> for TidyLayer {
    type Service = Tidy<S>;

    fn layer(&self, inner: S) -> Tidy<S> {
        Tidy { inner }
    }
}

/// The service of [`TidyLayer`].
#[derive(Clone)]
pub struct Tidy<S> {
    inner: S,
}

impl<S> Service<Request> for Tidy<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tidied<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if origin_malformed(&req) {
            let mut res = ApiError::bad_request("malformed_origin", "the Origin header is not an origin")
                .into_response();
            res.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
            return Tidied { early: Early::answered(res), tidy: None };
        }
        let preflight = req.method() == Method::OPTIONS;
        Tidied { early: Early::Passed { inner: self.inner.call(req) }, tidy: Some(preflight) }
    }
}

/// Two `Origin` headers are not an origin: reflecting either would be a guess.
fn origin_malformed(req: &Request) -> bool {
    let mut origins = req.headers().get_all(header::ORIGIN).iter();
    origins.next().is_some_and(|o| {
        let o = o.as_bytes();
        o != b"null" && std::str::from_utf8(o).map_or(true, |s| parse_origin(s, false).is_err())
    }) || origins.next().is_some()
}

/// What a cache must key a CORS route's answers on: the origin, and on a
/// preflight what it asks for.
const VARY: HeaderValue =
    HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers");

/// A refused origin's answer carries no `access-control-*` header at all,
/// and a preflight's 200 becomes 204. Every answer varies by [`VARY`].
fn tidy_answer(mut res: Response, preflight: bool) -> Response {
    let headers = res.headers_mut();
    // Appended: the route's own `Vary`, if it has one, stays.
    headers.append(header::VARY, VARY);
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        let cors: Vec<HeaderName> =
            headers.keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
        for name in cors {
            headers.remove(name);
        }
    }
    if preflight && res.status() == StatusCode::OK {
        *res.status_mut() = StatusCode::NO_CONTENT;
    }
    res
}

pin_project_lite::pin_project! {
    /// The answer of [`Tidy`]: the inner answer, tidied.
    pub struct Tidied<F> {
        #[pin]
        early: Early<F>,
        // `Some(preflight)` for an answer from further in; `None` for
        // Tidy's own (a malformed `Origin`), which is final as it is.
        tidy: Option<bool>,
    }
}

impl<F, E> Future for Tidied<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.early.poll(cx))?;
        Poll::Ready(Ok(match *this.tidy {
            Some(preflight) => tidy_answer(res, preflight),
            None => res,
        }))
    }
}

pin_project_lite::pin_project! {
    /// An answer a layer gave itself, or the inner service's.
    #[project = EarlyProj]
    pub enum Early<F> {
        Answered { answer: Option<Response> },
        Passed { #[pin] inner: F },
    }
}

impl<F> Early<F> {
    fn answered(res: Response) -> Self {
        Self::Answered { answer: Some(res) }
    }
}

impl<F, E> Future for Early<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EarlyProj::Answered { answer } => {
                Poll::Ready(Ok(answer.take().expect("an answer is polled once")))
            }
            EarlyProj::Passed { inner } => inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> OriginMatcher {
        OriginMatcher::compile(patterns).expect("valid patterns")
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_only() {
        let m = m(&["https://*.test.com", "https://test.com"]);
        for ok in ["https://a.test.com", "https://a.b.test.com", "https://test.com", "HTTPS://A.Test.COM"] {
            assert!(m.matches(ok.as_bytes()), "{ok} should match");
        }
        for bad in [
            "https://evil.com",
            "https://test.com.evil.com",
            "https://atest.com",
            "http://a.test.com",
            "https://a.test.com:8443",
            "https://.test.com",
            "https://test.com/",
            "null",
            "https://a.test.com.",
        ] {
            assert!(!m.matches(bad.as_bytes()), "{bad} must not match");
        }
    }

    #[test]
    fn ports_must_match_exactly() {
        let m = m(&["http://*.localhost:8080", "http://localhost:3000"]);
        assert!(m.matches(b"http://app.localhost:8080"));
        assert!(m.matches(b"http://localhost:3000"));
        assert!(!m.matches(b"http://app.localhost"));
        assert!(!m.matches(b"http://localhost:3001"));
        // A port is digits: no sign, not empty (the origins fuzz target).
        assert!(!m.matches(b"http://localhost:+3000"));
        assert!(!m.matches(b"http://localhost:"));
    }

    #[test]
    fn malformed_patterns_are_errors_with_their_index() {
        for bad in [
            "test.com",
            "https://",
            "https://a.*.com",
            "https://*",
            "https://x.com/path",
            "https://x.com:99999",
            "https://x.com:+443",
        ] {
            let err = OriginMatcher::compile(&["https://ok.com", bad]).expect_err(bad);
            assert_eq!(err.0, 1, "{bad}");
        }
    }

    #[test]
    fn ipv6_and_any() {
        let m = m(&["http://[::1]:8080"]);
        assert!(m.matches(b"http://[::1]:8080"));
        assert!(OriginMatcher::compile(&["*"]).expect("any").allows_any());
    }
}
