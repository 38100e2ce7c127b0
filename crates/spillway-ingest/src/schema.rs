//! A route's JSON Schema: the body must match it, or the request is a 400
//! that says where and why, and nothing is stored.
//!
//! The schema is compiled once, when the configuration is checked, so a
//! schema that is not one is a config error naming its key, never a 500 at
//! the first request. It comes inline (`schema`, written as TOML, which maps
//! onto JSON) or from a JSON file (`schema_file`).
//!
//! # Guarantees
//!
//! - External `$ref`s are not fetched: the crate is built without its HTTP
//!   and file resolvers, so a schema that needs one fails to compile. A
//!   request never waits on the network for its validation.
//! - `format` is asserted (`"format": "email"` rejects `"x"`), which is what
//!   people writing one expect, though drafts since 2019-09 only annotate.
//! - Error messages never echo the client's values (the validator's masked
//!   messages), so a 400 stays small whatever the body holds; at most
//!   [`MAX_DETAILS`] violations are listed.
//! - The body is validated as parsed JSON; what is stored is the body's own
//!   bytes, so a number too large for a float is validated approximately but
//!   stored exactly.

use std::{fmt, path::Path};

use crate::{config::ConfigError, error::ApiError};

/// Violations listed in one answer; the message says how many there were.
pub const MAX_DETAILS: usize = 10;

/// One violation: where in the body (a JSON pointer, `""` for the whole
/// body) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

/// A compiled schema.
pub struct BodySchema {
    validator: jsonschema::Validator,
    /// The schema as written: `spillway openapi` documents the route with it.
    source: serde_json::Value,
}

impl fmt::Debug for BodySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySchema").finish_non_exhaustive()
    }
}

impl BodySchema {
    /// Compiles `schema`; the error names `key`.
    pub fn compile(schema: &serde_json::Value, key: &str) -> Result<Self, ConfigError> {
        let validator = jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| {
            ConfigError { key: key.to_owned(), message: format!("is not a usable JSON Schema: {e}") }
        })?;
        Ok(Self { validator, source: schema.clone() })
    }

    /// The schema as configured.
    pub fn source(&self) -> &serde_json::Value {
        &self.source
    }

    /// Reads and compiles the JSON file at `path`; errors name `key`.
    pub fn from_file(path: &Path, key: &str) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError { key: key.to_owned(), message };
        let text = crate::config::read_config_file(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let schema: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("{} is not JSON: {e}", path.display())))?;
        Self::compile(&schema, key)
    }

    /// Checks a request body: not JSON is `invalid_json`, JSON that does
    /// not match is `schema_violation` with the first violations.
    pub fn check(&self, body: &[u8]) -> Result<(), ApiError> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}")))?;
        let mut details = Vec::new();
        let mut total = 0usize;
        for e in self.validator.iter_errors(&value) {
            total += 1;
            if details.len() < MAX_DETAILS {
                details.push(Violation {
                    path: e.instance_path().as_str().to_owned(),
                    message: e.masked().to_string(),
                });
            }
        }
        if total == 0 {
            return Ok(());
        }
        Err(ApiError::SchemaViolation { details, total })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> BodySchema {
        BodySchema::compile(
            &json!({
                "type": "object",
                "required": ["event", "user"],
                "properties": {
                    "event": { "type": "string", "enum": ["click", "view"] },
                    "user": { "type": "integer", "minimum": 1 },
                    "email": { "type": "string", "format": "email" }
                }
            }),
            "ingest.routes[0].schema",
        )
        .expect("compiles")
    }

    fn violations(body: &str) -> (Vec<Violation>, usize) {
        match schema().check(body.as_bytes()) {
            Err(ApiError::SchemaViolation { details, total }) => (details, total),
            other => panic!("expected a schema violation for {body}, got {other:?}"),
        }
    }

    #[test]
    fn a_matching_body_passes() {
        schema().check(br#"{"event":"click","user":42,"email":"a@test.com"}"#).expect("matches");
    }

    #[test]
    fn each_violation_names_its_place() {
        let (details, total) = violations(r#"{"event":"scroll","user":0}"#);
        assert_eq!(total, 2);
        let paths: Vec<&str> = details.iter().map(|d| d.path.as_str()).collect();
        assert!(paths.contains(&"/event") && paths.contains(&"/user"), "{details:?}");
        let (details, _) = violations(r#"{"user":7}"#);
        assert_eq!(details[0].path, "", "a missing property is the object's fault: {details:?}");
        assert!(details[0].message.contains("event"), "{details:?}");
    }

    #[test]
    fn formats_are_asserted() {
        let (details, _) = violations(r#"{"event":"view","user":1,"email":"not an address"}"#);
        assert_eq!(details[0].path, "/email", "{details:?}");
    }

    #[test]
    fn messages_do_not_echo_the_body() {
        let secret = "s3cr3t-".repeat(1000);
        let (details, _) = violations(&format!(r#"{{"event":"{secret}","user":1}}"#));
        assert!(
            details.iter().all(|d| !d.message.contains("s3cr3t") && d.message.len() < 200),
            "{details:?}"
        );
    }

    #[test]
    fn at_most_max_details_are_listed_but_all_are_counted() {
        let many = BodySchema::compile(&json!({ "type": "array", "items": { "type": "string" } }), "k")
            .expect("compiles");
        let body = format!("[{}]", vec!["1"; 25].join(","));
        match many.check(body.as_bytes()) {
            Err(ApiError::SchemaViolation { details, total }) => {
                assert_eq!((details.len(), total), (MAX_DETAILS, 25));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_json_is_invalid_json() {
        let err = schema().check(b"{nope").expect_err("not JSON");
        assert_eq!(err.code(), "invalid_json");
    }

    #[test]
    fn a_bad_schema_is_a_config_error_naming_its_key() {
        let err = BodySchema::compile(&json!({ "type": 5 }), "ingest.routes[2].schema").expect_err("bad");
        assert_eq!(err.key, "ingest.routes[2].schema");
        let err =
            BodySchema::compile(&json!({ "$ref": "https://example.com/s.json" }), "k").expect_err("remote");
        assert_eq!(err.key, "k", "a remote $ref is not fetched: {}", err.message);
    }

    #[test]
    fn a_schema_file_is_read_and_its_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("event.json");
        std::fs::write(&path, r#"{"type":"object","required":["event"]}"#).expect("write");
        let s = BodySchema::from_file(&path, "k").expect("compiles");
        assert!(s.check(br#"{"event":1}"#).is_ok());
        assert!(s.check(br#"{}"#).is_err());
        let err = BodySchema::from_file(&dir.path().join("missing.json"), "ingest.routes[0].schema_file")
            .expect_err("missing");
        assert_eq!(err.key, "ingest.routes[0].schema_file");
        std::fs::write(&path, "not json").expect("write");
        assert!(BodySchema::from_file(&path, "k").expect_err("not JSON").message.contains("not JSON"));
    }
}
