//! CORS: which origins may call, and the layers that answer them.
//!
//! The allow-list is compiled once, at config load, into [`OriginMatcher`];
//! tower-http's `CorsLayer` gets it as a predicate. With credentials the
//! request's own `Origin` is reflected, never `*`. Around that layer,
//! [`tidy`] makes three promises tower-http does not:
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

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
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
    let (scheme, rest) = s.split_once("://").ok_or_else(|| err("expected scheme://host[:port]"))?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err(err("bad scheme"));
    }
    if rest.contains(['/', '?', '#', '@']) {
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
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| err("bad port"))?),
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    let ipv6 = host.len() > 2
        && host.starts_with('[')
        && host[1..host.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    let labels_ok = host.split('.').enumerate().all(|(i, label)| {
        (allow_wildcard && i == 0 && label == "*")
            || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
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
            .vary([
                header::ORIGIN,
                header::ACCESS_CONTROL_REQUEST_METHOD,
                header::ACCESS_CONTROL_REQUEST_HEADERS,
            ])
    }

    /// Answers 403 to an origin that is not allowed, when `strict_origin` is
    /// set; requests without `Origin` (servers, curl) are not affected.
    pub async fn guard(State(policy): State<Arc<Self>>, req: Request, next: Next) -> Response {
        if policy.strict_origin {
            if let Some(origin) = req.headers().get(header::ORIGIN) {
                if !policy.matcher.matches(origin.as_bytes()) {
                    return ApiError::Forbidden("origin not allowed".into()).into_response();
                }
            }
        }
        next.run(req).await
    }
}

/// The outermost layer of a CORS route; see the module doc.
pub async fn tidy(req: Request, next: Next) -> Response {
    // Two `Origin` headers are not an origin: reflecting either would be a guess.
    let mut origins = req.headers().get_all(header::ORIGIN).iter();
    let origin_malformed = origins.next().is_some_and(|o| {
        let o = o.as_bytes();
        o != b"null" && std::str::from_utf8(o).map_or(true, |s| parse_origin(s, false).is_err())
    }) || origins.next().is_some();
    if origin_malformed {
        let mut res =
            ApiError::bad_request("malformed_origin", "the Origin header is not an origin").into_response();
        res.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
        return res;
    }
    let preflight = req.method() == Method::OPTIONS;
    let mut res: Response<Body> = next.run(req).await;
    let headers = res.headers_mut();
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
