//! API keys over HTTP against the real binary: a route that requires one
//! answers 401 without it and 403 with a wrong one, with CORS headers and
//! nothing stored; keys come from the config and from a file; each key has
//! its own rate limit; `config check` never prints a key.

use spillway_e2e::Workspace;

const K1: &str = "k1-inline-0123456789abcdef";
const K2: &str = "k2-from-file-fedcba9876543210";

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.api_keys]
keys = ["{k1}"]
files = ["{keys_file}"]

[ingest.cors]
allowed_origins = ["https://*.test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/secure"
queue = "secure"
throttle = { per_key = { rate = 1, burst = 2, per = "100s" } }

[[ingest.routes]]
path = "/public"
queue = "public"
require_api_key = false
"#;

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = http.post(url).header("origin", "https://app.test.com").body(r#"{"event":"click"}"#);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let res = req.send().await.expect("post");
    let status = res.status().as_u16();
    let origin =
        res.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, origin, res.json().await.unwrap_or(serde_json::Value::Null))
}

fn workspace() -> (Workspace, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("# the Secret's file\n{K2}\n")).expect("write keys");
    let config = CONFIG.replace("{k1}", K1).replace("{keys_file}", &keys_file.display().to_string());
    (Workspace::new(&config), dir)
}

#[tokio::test]
async fn a_route_that_requires_a_key_refuses_without_one_and_stores_nothing() {
    let (ws, _keys) = workspace();
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let secure = gw.url("/secure");

    let (status, origin, body) = post(&http, &secure, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_api_key")), "{body}");
    assert_eq!(origin.as_deref(), Some("https://app.test.com"), "a browser must be able to read the 401");
    let (status, origin, body) = post(&http, &secure, Some("k1-inline-0123456789abcdeX")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("invalid_api_key")), "{body}");
    assert!(origin.is_some());
    assert_eq!(ws.stats("secure").await.pending(), 0, "a refused request was stored");

    // Both sources of keys work; each key has its own bucket of 2.
    assert_eq!(post(&http, &secure, Some(K1)).await.0, 202);
    assert_eq!(post(&http, &secure, Some(K2)).await.0, 202);
    assert_eq!(post(&http, &secure, Some(K1)).await.0, 202);
    let (status, _, body) = post(&http, &secure, Some(K1)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("throttled")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("API key")), "{body}");
    assert_eq!(post(&http, &secure, Some(K2)).await.0, 202, "K2's bucket is its own");
    assert_eq!(ws.stats("secure").await.visible, 4);

    // A route may opt out.
    assert_eq!(post(&http, &gw.url("/public"), None).await.0, 202);

    // A browser may send the key: the preflight allows the header.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &secure)
        .header("origin", "https://app.test.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key, content-type")
        .send()
        .await
        .expect("preflight");
    let allowed = preflight.headers().get("access-control-allow-headers").and_then(|v| v.to_str().ok());
    assert!(allowed.is_some_and(|h| h.contains("x-api-key")), "{allowed:?}");
}

#[test]
fn config_check_masks_the_keys_and_a_requirement_without_keys_is_an_error() {
    let (ws, _keys) = workspace();
    let out = ws.cli(&["config", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains(K1), "config check printed an API key:\n{stdout}");

    let ws = Workspace::new("[[ingest.routes]]\npath = \"/a\"\nqueue = \"a\"\nrequire_api_key = true\n");
    let out = ws.cli(&["config", "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ingest.routes[0].require_api_key"), "{stderr}");
    let ws = Workspace::new("[ingest.api_keys]\nkeys = [\"short\"]\n");
    let stderr = String::from_utf8_lossy(&ws.cli(&["config", "check"]).stderr).into_owned();
    assert!(stderr.contains("ingest.api_keys.keys[0]"), "{stderr}");
}
