//! An origin regex (from a Velocity template's `$origin.matches("…")`) as
//! Spillway's origin patterns, or nothing.
//!
//! API Gateway setups reflect the `Origin` with a regex per allowed family
//! of sites; Spillway lists patterns (`https://*.test.com`: one or more
//! labels). The common regex shapes are rewritten, and every rewrite is
//! then *checked*: the regex and the patterns must agree on a set of probe
//! origins built around each host (the bare host, one and two labels
//! deeper, a look-alike suffix `https://eviltest.com`, the host followed by
//! more, the other scheme, a port). A regex whose rewrite disagrees on any
//! probe is reported, never guessed: an import must not widen who may
//! send with credentials. The probes are origins a browser can send
//! (scheme, host, port: never a path), so `.+\.test\.com`, which a path
//! would also pass, counts as `https://*.test.com`.

use spillway_ingest::cors::OriginMatcher;

/// Spillway patterns equivalent to `regex` on every probe, or why not.
pub fn from_regex(regex: &str) -> Result<Vec<String>, String> {
    let body = regex.strip_prefix('^').unwrap_or(regex);
    let body = body.strip_suffix('$').unwrap_or(body);
    let mut patterns = Vec::new();
    for alt in split_alternatives(unwrap_group(body)) {
        patterns
            .extend(rewrite(alt).ok_or_else(|| format!("`{regex}` is not one of the shapes recognised"))?);
    }
    verify(regex, &patterns)?;
    Ok(patterns)
}

/// `(a|b)` → `a|b` when the group spans the whole text.
fn unwrap_group(s: &str) -> &str {
    let inner = s.strip_prefix("(?:").or_else(|| s.strip_prefix('(')).and_then(|t| t.strip_suffix(')'));
    match inner {
        Some(t) if balanced(t) => t,
        _ => s,
    }
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    let mut escaped = false;
    for c in s.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Splits at `|` outside groups and classes.
fn split_alternatives(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut class, mut escaped, mut start) = (Vec::new(), 0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        match (escaped, class, c) {
            (true, _, _) => escaped = false,
            (false, _, '\\') => escaped = true,
            (false, false, '[') => class = true,
            (false, true, ']') => class = false,
            (false, false, '(') => depth += 1,
            (false, false, ')') => depth -= 1,
            (false, false, '|') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Character classes that stand for a DNS label (or more).
const LABELS: [&str; 10] = [
    "[a-z0-9-]+",
    "[a-zA-Z0-9-]+",
    "[A-Za-z0-9-]+",
    "[-a-z0-9]+",
    "[\\w-]+",
    "[-\\w]+",
    "[^.]+",
    "[^./]+",
    ".+",
    ".*",
];

/// One alternative: scheme, then an optional subdomain part, then a literal
/// host (and port).
fn rewrite(alt: &str) -> Option<Vec<String>> {
    let (schemes, rest): (Vec<&str>, &str) = if let Some(r) = alt.strip_prefix("https?://") {
        (vec!["http", "https"], r)
    } else if let Some(r) =
        alt.strip_prefix("(http|https)://").or_else(|| alt.strip_prefix("(https|http)://"))
    {
        (vec!["http", "https"], r)
    } else if let Some(r) = alt.strip_prefix("https://") {
        (vec!["https"], r)
    } else if let Some(r) = alt.strip_prefix("http://") {
        (vec!["http"], r)
    } else {
        return None;
    };
    // (bare host allowed, subdomains allowed)
    let mut shape = (true, false);
    let mut host = rest;
    'prefix: for label in LABELS {
        for (open, close, bare) in
            [("(", "\\.)*", true), ("(", "\\.)+", false), ("(?:", "\\.)*", true), ("(?:", "\\.)+", false)]
        {
            let p = format!("{open}{label}{close}");
            if let Some(r) = rest.strip_prefix(p.as_str()) {
                (shape, host) = ((bare, true), r);
                break 'prefix;
            }
        }
        let p = format!("{label}\\.");
        if let Some(r) = rest.strip_prefix(p.as_str()) {
            (shape, host) = ((false, true), r);
            break;
        }
    }
    let host = unescape(host)?;
    let mut out = Vec::new();
    for scheme in schemes {
        if shape.0 {
            out.push(format!("{scheme}://{host}"));
        }
        if shape.1 {
            out.push(format!("{scheme}://*.{host}"));
        }
    }
    Some(out)
}

/// `test\.com` → `test.com`; `None` when anything but a literal host and
/// port is left.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('.' | '-' | '/' | ':') => out.push(e),
                _ => return None,
            },
            c if c.is_ascii_alphanumeric() || c == '-' || c == ':' => out.push(c.to_ascii_lowercase()),
            // An unescaped dot matches any character: `test.com` also
            // allows `testXcom`; the probes say whether that matters.
            '.' => out.push('.'),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The probes around each pattern's host on which the regex and the
/// patterns must agree.
fn probes(patterns: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in patterns {
        let Some((scheme, host)) = p.split_once("://") else { continue };
        let host = host.trim_start_matches("*.");
        let (name, port) = match host.rsplit_once(':') {
            Some((n, port)) => (n, format!(":{port}")),
            None => (host, String::new()),
        };
        let other = if scheme == "https" { "http" } else { "https" };
        for probe in [
            format!("{scheme}://{name}{port}"),
            format!("{scheme}://a.{name}{port}"),
            format!("{scheme}://a-b.c.{name}{port}"),
            format!("{scheme}://evil{name}{port}"),
            format!("{scheme}://{name}.evil.example{port}"),
            format!("{scheme}://{}{port}", name.replace('.', "x")),
            format!("{other}://{name}{port}"),
            format!("{other}://a.{name}{port}"),
            format!("{scheme}://{name}:8443"),
            format!("{scheme}://a.{name}:8443"),
        ] {
            out.push(probe);
        }
    }
    out
}

fn verify(regex: &str, patterns: &[String]) -> Result<(), String> {
    let anchored = format!("^(?:{})$", regex.trim_start_matches('^').trim_end_matches('$'));
    let re =
        regex::Regex::new(&anchored).map_err(|e| format!("`{regex}` is not a regex this tool reads: {e}"))?;
    let matcher = OriginMatcher::compile(patterns)
        .map_err(|(i, e)| format!("`{}` from `{regex}`: {e}", patterns[i]))?;
    for probe in probes(patterns) {
        let (theirs, ours) = (re.is_match(&probe), matcher.matches(probe.as_bytes()));
        if theirs != ours {
            let verdict = if theirs { "allows" } else { "refuses" };
            return Err(format!(
                "`{regex}` {verdict} `{probe}` and the patterns {patterns:?} do not: no Spillway pattern says exactly what it says"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::from_regex;

    #[test]
    fn the_common_shapes_become_patterns() {
        assert_eq!(from_regex(r"https://([a-z0-9-]+\.)+test\.com").expect("+"), vec!["https://*.test.com"]);
        assert_eq!(
            from_regex(r"^https://([a-zA-Z0-9-]+\.)*test\.com$").expect("*"),
            vec!["https://test.com", "https://*.test.com"]
        );
        assert_eq!(from_regex(r"https://test\.com").expect("literal"), vec!["https://test.com"]);
        assert_eq!(
            from_regex(r"https?://localhost:3000").expect("scheme"),
            vec!["http://localhost:3000", "https://localhost:3000"]
        );
        assert_eq!(
            from_regex(r"(https://([^.]+\.)+other\.test|https://test\.com)").expect("alternatives"),
            vec!["https://*.other.test", "https://test.com"]
        );
    }

    #[test]
    fn a_regex_that_says_something_else_is_refused_with_the_probe_that_shows_it() {
        // Exactly one label: Spillway's `*.` would also allow two.
        let err = from_regex(r"https://[a-z]+\.test\.com").expect_err("one label");
        assert!(err.contains("not one of the shapes"), "{err}");
        let err = from_regex(r"https://[^.]+\.test\.com").expect_err("one label");
        assert!(err.contains("refuses `https://a-b.c.test.com`"), "{err}");
        let err = from_regex(r"https://([a-z0-9-]+\.)?test\.com").expect_err("optional label");
        assert!(err.contains("shapes"), "{err}");
        // An unescaped dot: `https://testxcom` passes the regex.
        let err = from_regex(r"https://test.com").expect_err("dot");
        assert!(err.contains("allows `https://testxcom`"), "{err}");
        // `.*` before the host without a dot: `https://eviltest.com` passes.
        let err = from_regex(r"https://.*test\.com").expect_err("suffix");
        assert!(err.contains("shapes"), "{err}");
        // Anything but a literal host left.
        assert!(from_regex(r"https://(foo|bar)\.test\.com").is_err());
    }
}
