//! An OpenAPI 3.1 document of the configured routes: what `spillway
//! openapi` prints and the admin listener serves at `/openapi.json`.
//!
//! Built from the compiled routes, so it says what the gateway does, not
//! what a file meant: each route's methods, path parameters, accepted
//! content types (the JSON Schema when the route has one), body limit,
//! the headers a request must carry (API key, webhook signature, ordering
//! or dedup key, idempotency key), the success answer (its body's shape,
//! from the template) and every error answer with its JSON body and the
//! codes it may carry ([`crate::error::ANSWERS`]). `tests/tests/openapi.rs`
//! validates it and runs schemathesis against a live gateway from it.

use serde_json::{json, Map, Value};

use crate::{
    config::{CompiledIngest, CompiledRoute, KeySource},
    error::ANSWERS,
};

/// What each error status means, for the document.
fn describe(status: u16) -> &'static str {
    match status {
        400 => "the request cannot be read as one message (its code says why); nothing was stored",
        401 => "no API key, or a webhook signature missing, malformed, wrong or too old; nothing was stored",
        403 => "a wrong API key, or an origin refused by `strict_origin`; nothing was stored",
        404 => "no route has this path",
        405 => "the route does not take this method (`Allow` lists those it takes)",
        408 => "the body did not arrive in time; nothing was stored",
        409 => "a request with this idempotency key is still being stored: retry after `Retry-After`",
        413 => "the body (or the message it makes) is over the limit; nothing was stored",
        415 => "the content type is not one the route takes; nothing was stored",
        422 => "the idempotency key came with another request, or the queue refused the message; nothing was stored",
        429 => "over a rate limit: retry after `Retry-After`; nothing was read or stored",
        503 => "the queue could not store the message now, or the gateway is at a limit: nothing was stored, retry after `Retry-After`",
        _ => "an error",
    }
}

/// The JSON error body, with the codes `status` may carry.
fn error_body(codes: &[&str]) -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string", "enum": codes },
                    "message": { "type": "string" },
                    "details": {
                        "type": "array",
                        "description": "schema_violation: the first places that do not match",
                        "items": {
                            "type": "object",
                            "required": ["path", "message"],
                            "properties": { "path": { "type": "string" }, "message": { "type": "string" } }
                        }
                    }
                }
            }
        }
    })
}

/// A schema for the success body: the template with `${id}` as a string,
/// read as JSON (each value's type; every key required); not JSON: a string.
fn success_schema(route: &CompiledRoute) -> Value {
    let body = route.success_body.join("x");
    fn of(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let props: Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), of(v))).collect();
                json!({ "type": "object", "required": m.keys().collect::<Vec<_>>(), "properties": props })
            }
            Value::Array(_) => json!({ "type": "array" }),
            Value::String(_) => json!({ "type": "string" }),
            Value::Number(_) => json!({ "type": "number" }),
            Value::Bool(_) => json!({ "type": "boolean" }),
            Value::Null => json!({ "type": "null" }),
        }
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) => of(&v),
        Err(_) => json!({ "type": "string" }),
    }
}

/// `/events/{tenant}/{*rest}` → (`/events/{tenant}/{rest}`, [tenant, rest]).
fn path_and_params(path: &str) -> (String, Vec<(String, bool)>) {
    let mut params = Vec::new();
    let segments: Vec<String> = path
        .split('/')
        .map(|seg| match crate::config::path_param(seg) {
            Some((name, rest)) => {
                params.push((name.to_owned(), rest));
                format!("{{{name}}}")
            }
            None => seg.to_owned(),
        })
        .collect();
    (segments.join("/"), params)
}

fn header_param(name: &str, required: bool, description: &str) -> Value {
    json!({ "name": name, "in": "header", "required": required, "description": description, "schema": { "type": "string" } })
}

fn operation(route: &CompiledRoute, method: &str, params: &[(String, bool)]) -> Value {
    let mut parameters: Vec<Value> = params
        .iter()
        .map(|(name, rest)| {
            let description = if *rest { "the rest of the path (slashes included)" } else { "one path segment" };
            json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string", "minLength": 1 } })
        })
        .collect();
    for (key, what) in [(&route.ordering_key, "ordering key"), (&route.dedup_key, "dedup key")] {
        if let Some(KeySource::Header(h)) = key {
            parameters.push(header_param(
                h,
                true,
                &format!("the message's {what}; missing: 400 missing_key"),
            ));
        }
    }
    if let Some(v) = &route.verifier {
        for h in v.headers() {
            parameters.push(header_param(
                h.as_str(),
                true,
                &format!("the `{}` webhook signature; wrong or missing: 401", v.scheme_name()),
            ));
        }
    }
    if let Some(i) = &route.idempotency {
        parameters.push(json!({
            "name": i.header, "in": "header", "required": false,
            "description": "an idempotency key: a repeat replays the first answer (`Idempotent-Replayed: true`)",
            "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$" }
        }));
    }
    let limit = format!("at most {} bytes (413 beyond)", route.max_body_bytes);
    let content: Map<String, Value> = match &route.schema {
        Some(schema) => {
            [("application/json".to_owned(), json!({ "schema": schema.source() }))].into_iter().collect()
        }
        None if !route.content_types.is_empty() => {
            route.content_types.iter().map(|ct| (ct.clone(), json!({ "schema": {} }))).collect()
        }
        None => [("*/*".to_owned(), json!({ "schema": {} }))].into_iter().collect(),
    };
    let success = json!({
        "description": "stored durably; the body names the message",
        "headers": { "x-spillway-id": { "description": "the message id", "schema": { "type": "string" } } },
        "content": {
            route.success_content_type.to_str().unwrap_or("application/json"): { "schema": success_schema(route) }
        }
    });
    let mut responses = Map::new();
    responses.insert(route.success_status.as_u16().to_string(), success);
    for (status, _) in ANSWERS {
        if *status == 409 && route.idempotency.is_none() {
            continue;
        }
        let mut answer = json!({
            "description": describe(*status),
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/Error{status}") } } }
        });
        if matches!(status, 409 | 429 | 503) {
            answer["headers"] =
                json!({ "Retry-After": { "description": "seconds", "schema": { "type": "integer" } } });
        }
        if *status == 405 {
            answer["headers"] = json!({ "Allow": { "description": "the methods the route takes", "schema": { "type": "string" } } });
        }
        responses.insert(status.to_string(), answer);
    }
    responses.insert(
        "431".to_owned(),
        json!({ "description": "the request head (line and headers) is over `server.limits.max_header_bytes`; the connection is closed, without a body" }),
    );
    let mut op = json!({
        "operationId": format!("{}_{}", op_name(&route.name), method),
        "summary": format!("{} into the queue `{}`", method.to_ascii_uppercase(), route.queue),
        "parameters": parameters,
        // A route with a schema or content types needs a body (and its
        // type); any other takes an empty one too.
        "requestBody": {
            "required": route.schema.is_some() || !route.content_types.is_empty(),
            "description": limit,
            "content": content
        },
        "responses": responses,
    });
    if route.api_keys.is_some() {
        op["security"] = json!([{ "api_key": [] }]);
    }
    op
}

/// A route name as an operation id: letters, digits and `_`.
fn op_name(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    s.trim_matches('_').to_owned()
}

/// The document. `version` is the gateway's.
pub fn document(ingest: &CompiledIngest, version: &str) -> Value {
    let mut paths = Map::new();
    let mut key_header = None;
    for route in &ingest.routes {
        let (path, params) = path_and_params(&route.path);
        let mut item = Map::new();
        for m in &route.methods {
            let method = m.as_str().to_ascii_lowercase();
            item.insert(method.clone(), operation(route, &method, &params));
        }
        if let Some(k) = &route.api_keys {
            key_header = Some(k.header().as_str().to_owned());
        }
        paths.insert(path, Value::Object(item));
    }
    let mut schemas = Map::new();
    for (status, codes) in ANSWERS {
        schemas.insert(format!("Error{status}"), error_body(codes));
    }
    let mut components = json!({ "schemas": schemas });
    if let Some(h) = key_header {
        components["securitySchemes"] = json!({ "api_key": { "type": "apiKey", "in": "header", "name": h } });
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Spillway ingest",
            "version": version,
            "description": "The configured routes of a Spillway gateway: every 2xx means the message was stored durably; every error is a JSON body with a stable code, and nothing was stored."
        },
        "paths": paths,
        "components": components,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::path_and_params;
    use crate::config::IngestConfig;

    fn compiled(toml: &str) -> crate::CompiledIngest {
        let cfg: IngestConfig = toml::from_str(toml).expect("toml");
        cfg.compile().expect("compile")
    }

    #[test]
    fn catch_all_parameters_become_path_parameters() {
        let (p, params) = path_and_params("/e/{tenant}/{*rest}");
        assert_eq!(p, "/e/{tenant}/{rest}");
        assert_eq!(params, vec![("tenant".to_owned(), false), ("rest".to_owned(), true)]);
    }

    #[test]
    fn a_route_is_documented_with_its_schema_headers_and_answers() {
        let c = compiled(
            r#"
[[routes]]
path = "/signup/{tenant}"
queue = "signups"
methods = ["POST"]
ordering_key = { header = "x-customer" }
idempotency = { header = "Idempotency-Key" }
success = { status = 201, body = '{"id":"${id}","ok":true}' }
[routes.schema]
type = "object"
required = ["user"]
"#,
        );
        let doc = super::document(&c, "0.1.0");
        let op = &doc["paths"]["/signup/{tenant}"]["post"];
        assert_eq!(op["requestBody"]["content"]["application/json"]["schema"]["required"], json!(["user"]));
        let names: Vec<&str> =
            op["parameters"].as_array().expect("params").iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["tenant", "x-customer", "Idempotency-Key"]);
        assert_eq!(
            op["responses"]["201"]["content"]["application/json"]["schema"]["properties"]["ok"]["type"],
            "boolean"
        );
        for status in
            ["400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "429", "431", "503"]
        {
            assert!(op["responses"].get(status).is_some(), "{status} undocumented");
        }
        assert_eq!(
            doc["components"]["schemas"]["Error503"]["properties"]["error"]["properties"]["code"]["enum"],
            json!(["over_capacity", "queue_unavailable", "too_many_connections"])
        );
        assert!(op.get("security").is_none());
    }
}
