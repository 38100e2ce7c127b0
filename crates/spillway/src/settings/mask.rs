//! What `config check` must not print: every value that looks like a
//! secret, wherever it sits in the configuration.
//!
//! - the value of a key that names a secret (`password`, `sasl.password`,
//!   `secret_access_key`, a sink header `x-api-key` or `authorization`, …);
//! - the password in a URL's userinfo (`postgres://app:…@db/x`);
//! - a URL query parameter that names a secret (`?password=…`,
//!   `&X-Amz-Signature=…`);
//! - a libpq `key=value` connection string's secret (`password=…`, quoted
//!   or not).
//!
//! Masking more than needed costs a reader a value they can look up in the
//! file; masking less leaks a credential into a terminal, a CI log or a
//! ticket. So the name test is by substring, generously.

/// Lower-case fragments of a key or parameter name that holds a secret.
const SECRET_NAMES: [&str; 13] = [
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "authorization",
    "auth",
    "credential",
    "cookie",
    "signature",
    "private",
];

const MASK: &str = "***";

/// Whether a key or parameter called `name` holds a secret.
pub(crate) fn names_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| name.contains(s))
}

/// Masks `v` in place: every string under a secret's key, and the secret
/// parts of every other string.
pub(crate) fn mask(v: &mut serde_json::Value, secret: bool) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                mask(child, secret || names_a_secret(k));
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| mask(i, secret)),
        serde_json::Value::String(s) if secret => *s = MASK.to_owned(),
        serde_json::Value::String(s) => *s = mask_text(s),
        _ => {}
    }
}

/// The secret parts of one string masked: a URL's password and secret
/// query parameters, or a `key=value` string's secret values.
pub(crate) fn mask_text(s: &str) -> String {
    if s.contains("://") {
        mask_url(s)
    } else if s.contains('=') {
        mask_key_values(s)
    } else {
        s.to_owned()
    }
}

/// `scheme://user:pass@host/p?password=x&a=b` → `scheme://user:***@host/p?password=***&a=b`.
fn mask_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_owned() };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{user}:{MASK}@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if names_a_secret(k) => format!("{k}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `host=db password='a b' user=x` → `host=db password=*** user=x`:
/// libpq's `key=value` form, values quoted with `'` or not.
fn mask_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let key = before.rsplit(|c: char| c.is_whitespace()).next().unwrap_or("").trim();
        out.push_str(before);
        out.push('=');
        let after = &after[1..];
        let value_len = if let Some(quoted) = after.strip_prefix('\'') {
            // Up to the closing quote; `\'` inside is an escaped quote.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            (end + 2).min(after.len())
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        if names_a_secret(key) {
            out.push_str(MASK);
        } else {
            out.push_str(&after[..value_len]);
        }
        rest = &after[value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{mask_text, names_a_secret};

    #[test]
    fn urls_lose_their_password_and_secret_parameters() {
        assert_eq!(mask_text("postgres://app:hunter2@db/events"), "postgres://app:***@db/events");
        assert_eq!(
            mask_text("https://hooks.test/in?token=abc&tenant=7&X-Amz-Signature=f00#top"),
            "https://hooks.test/in?token=***&tenant=7&X-Amz-Signature=***#top"
        );
        assert_eq!(
            mask_text("postgres://db/x?sslmode=require&password=hunter2"),
            "postgres://db/x?sslmode=require&password=***"
        );
        assert_eq!(mask_text("https://test.com"), "https://test.com");
    }

    #[test]
    fn key_value_strings_lose_their_secrets_quoted_or_not() {
        assert_eq!(
            mask_text("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(mask_text("host=db password='a b\\' c' dbname=x"), "host=db password=*** dbname=x");
        assert_eq!(mask_text("rate=5"), "rate=5");
    }

    #[test]
    fn secret_names_are_found_in_any_spelling() {
        for name in [
            "sasl.password",
            "x-api-key",
            "Authorization",
            "secret_access_key",
            "api_keys",
            "ssl.key.password",
        ] {
            assert!(names_a_secret(name), "{name}");
        }
        for name in ["url", "brokers", "ca_file", "access_key_id", "table"] {
            assert!(!names_a_secret(name), "{name}");
        }
    }
}
