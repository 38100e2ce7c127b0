//! The origin matcher never allows an origin the list does not name: every
//! match is checked against a slow reference written from RFC 6454's
//! serialisation (`scheme "://" host [ ":" port ]`, port as digits) and the
//! documented pattern rules (exact, or `*.` for one or more leading labels).
//!
//! Input: the first line is the origin, each further line a pattern.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway_ingest::cors::OriginMatcher;

struct Parts {
    scheme: String,
    host: String,
    port: Option<u32>,
}

fn parts(s: &str) -> Option<Parts> {
    let (scheme, rest) = s.split_once("://")?;
    if scheme.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        match &rest[end + 1..] {
            "" => (&rest[..=end], None),
            p => (&rest[..=end], Some(p.strip_prefix(':')?)),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n = p.trim_start_matches('0');
            Some(if n.is_empty() { 0 } else { n.parse::<u32>().ok().filter(|n| *n <= 65535)? })
        }
        Some(_) => return None,
    };
    Some(Parts { scheme: scheme.to_ascii_lowercase(), host: host.to_ascii_lowercase(), port })
}

fn label_ok(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `origin` is one the patterns name.
fn reference(origin: &str, patterns: &[&str]) -> bool {
    // `*` names every origin.
    if patterns.contains(&"*") {
        return true;
    }
    let Some(o) = parts(origin) else { return false };
    let ipv6 = o.host.starts_with('[');
    if !ipv6 && !o.host.split('.').all(label_ok) {
        return false;
    }
    patterns.iter().any(|p| {
        let Some(pp) = parts(p) else { return false };
        if pp.scheme != o.scheme || pp.port != o.port {
            return false;
        }
        match pp.host.strip_prefix("*.") {
            Some(suffix) => {
                !ipv6
                    && o.host.len() > suffix.len() + 1
                    && o.host.ends_with(suffix)
                    && o.host[..o.host.len() - suffix.len()].ends_with('.')
            }
            None => o.host == pp.host,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let Some(origin) = lines.next() else { return };
    let patterns: Vec<&str> = lines.collect();
    let Ok(matcher) = OriginMatcher::compile(&patterns) else { return };
    if matcher.matches(origin.as_bytes()) {
        assert!(reference(origin, &patterns), "{origin:?} matched {patterns:?}, which do not name it");
    }
});
