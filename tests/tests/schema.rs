//! A route's JSON Schema (`schema` inline, `schema_file` from a file), over
//! HTTP against the real binary: a body that does not match is a 400
//! `schema_violation` naming each place, with the CORS headers a browser
//! needs to read it, and nothing is stored; a matching body is stored.

use serde_json::Value;
use spillway_e2e::Workspace;

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.cors]
allowed_origins = ["https://*.test.com", "https://test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/events"
queue = "ingest"
[ingest.routes.schema]
type = "object"
required = ["event", "user"]
additionalProperties = false
[ingest.routes.schema.properties]
event = { type = "string", enum = ["click", "view"] }
user = { type = "integer", minimum = 1 }
email = { type = "string", format = "email" }

[[ingest.routes]]
path = "/files"
queue = "ingest"
schema_file = "{schema_file}"
"#;

struct Answer {
    status: u16,
    origin: Option<String>,
    credentials: Option<String>,
    body: Value,
}

async fn post(http: &reqwest::Client, url: &str, content_type: Option<&str>, body: &str) -> Answer {
    let mut req = http.post(url).header("origin", "https://app.test.com").body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.expect("post");
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (origin, credentials) =
        (header("access-control-allow-origin"), header("access-control-allow-credentials"));
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    Answer { status, origin, credentials, body }
}

#[tokio::test]
async fn a_body_that_does_not_match_is_refused_with_its_places_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema_file = dir.path().join("file.schema.json");
    std::fs::write(&schema_file, r#"{"type":"object","required":["event"]}"#).expect("write schema");
    let ws = Workspace::new(&CONFIG.replace("{schema_file}", &schema_file.display().to_string()));
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let json = Some("application/json");
    let events = gw.url("/events");

    let bad = post(&http, &events, json, r#"{"event":"scroll","user":0,"extra":1}"#).await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert_eq!(bad.body["error"]["code"], "schema_violation", "{:?}", bad.body);
    let places: Vec<&str> = bad.body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    for place in ["/event", "/user", ""] {
        assert!(places.contains(&place), "{place:?} not named in {:?}", bad.body);
    }
    assert_eq!(bad.origin.as_deref(), Some("https://app.test.com"), "a browser must be able to read the 400");
    assert_eq!(bad.credentials.as_deref(), Some("true"));

    let missing = post(&http, &events, json, r#"{"event":"click"}"#).await;
    assert_eq!((missing.status, missing.body["error"]["code"].as_str()), (400, Some("schema_violation")));
    assert!(
        missing.body["error"]["message"].as_str().is_some_and(|m| m.contains("user")),
        "{:?}",
        missing.body
    );
    let format = post(&http, &events, json, r#"{"event":"click","user":1,"email":"nope"}"#).await;
    assert_eq!(format.body["error"]["details"][0]["path"], "/email", "{:?}", format.body);
    let text = post(&http, &events, Some("text/plain"), r#"{"event":"click","user":1}"#).await;
    assert_eq!((text.status, text.body["error"]["code"].as_str()), (415, Some("unsupported_media_type")));
    let broken = post(&http, &events, None, "{nope").await;
    assert_eq!((broken.status, broken.body["error"]["code"].as_str()), (400, Some("invalid_json")));
    let from_file = post(&http, &gw.url("/files"), json, r#"{"other":1}"#).await;
    assert_eq!((from_file.status, from_file.body["error"]["code"].as_str()), (400, Some("schema_violation")));
    let stats = ws.stats("ingest").await;
    assert_eq!(stats.pending() + stats.dead, 0, "a refused body was stored: {stats:?}");

    // Matching bodies are stored; no content type is read as JSON.
    assert_eq!(
        post(&http, &events, json, r#"{"event":"click","user":1,"email":"a@test.com"}"#).await.status,
        202
    );
    assert_eq!(post(&http, &events, None, r#"{"event":"view","user":2}"#).await.status, 202);
    assert_eq!(post(&http, &gw.url("/files"), json, r#"{"event":"x"}"#).await.status, 202);
    assert_eq!(ws.stats("ingest").await.visible, 3);
}

#[test]
fn a_schema_that_is_not_one_stops_start_up_naming_its_key() {
    let ws = Workspace::new(
        r#"
[[ingest.routes]]
path = "/events"
queue = "ingest"
schema = { type = 5 }
"#,
    );
    let out = ws.cli(&["config", "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad schema passed config check");
    assert!(stderr.contains("ingest.routes[0].schema"), "the error names the key: {stderr}");

    let ws = Workspace::new(
        r#"
[[ingest.routes]]
path = "/events"
queue = "ingest"
schema_file = "/nonexistent/event.schema.json"
"#,
    );
    let out = ws.cli(&["config", "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ingest.routes[0].schema_file"), "{stderr}");
}
