//! The OpenAPI document of the routes, against the real binary:
//!
//! - `spillway openapi` and the admin listener's `/openapi.json` give the
//!   same document, and openapi-spec-validator (PyPI) accepts it as
//!   OpenAPI 3.1;
//! - schemathesis (PyPI) runs against a live gateway from it, a bounded
//!   number of examples per operation with every check: no 5xx at all
//!   (the queue is up: not even the documented 503), every answer's status,
//!   content type, headers and body as documented;
//! - nothing is stored for a refused request: each queue holds exactly as
//!   many messages as its route answered 2xx (less the idempotent
//!   replays, which store nothing).

use std::{collections::BTreeMap, process::Command};

use spillway_e2e::{venv, Workspace};

/// Routes with each feature the document describes: a schema, path
/// parameters, a catch-all, content types, a header key, an API key, an
/// idempotency key, CORS.
const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.api_keys]
files = ["{keys}"]

[ingest.cors]
allowed_origins = ["https://*.test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/signup/{tenant}"
queue = "signups"
methods = ["POST"]
require_api_key = false
idempotency = { header = "Idempotency-Key" }
success = { status = 201, body = '{"id":"${id}","ok":true}' }
[ingest.routes.schema]
type = "object"
required = ["user"]
properties.user = { type = "integer" }

[[ingest.routes]]
path = "/raw/{*rest}"
queue = "raw"
format = "raw"
methods = ["PUT", "POST"]
content_types = ["text/plain", "application/octet-stream"]
ordering_key = { header = "x-customer" }

[[ingest.routes]]
path = "/events"
queue = "events"
require_api_key = false
"#;

const KEY: &str = "a-partner-key-of-20-chars";

fn workspace() -> Workspace {
    let ws = Workspace::new(CONFIG);
    let keys = ws.dir.path().join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).expect("keys");
    let text = std::fs::read_to_string(ws.config()).expect("config");
    std::fs::write(ws.config(), text.replace("{keys}", &keys.display().to_string())).expect("config");
    let idempotency = ws.dir.path().join("idempotency");
    ws.with_env("SPILLWAY_INGEST__IDEMPOTENCY__PATH", &idempotency.display().to_string())
}

/// `name{labels} value` lines of a Prometheus text body, summed by `key`.
fn sum_by(metrics: &str, name: &str, key: impl Fn(&str) -> Option<String>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        if let (Some(k), Ok(v)) = (key(labels), value.parse::<f64>()) {
            *out.entry(k).or_insert(0.0) += v;
        }
    }
    out
}

fn label(labels: &str, name: &str) -> Option<String> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_validates_and_a_live_gateway_conforms_to_it() {
    let ws = workspace();
    let printed = ws.cli(&["openapi"]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let file = ws.dir.path().join("openapi.json");
    std::fs::write(&file, &printed.stdout).expect("write");
    let validated = Command::new(venv().join("bin/python"))
        .args(["-c", "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&file)
        .output()
        .expect("python");
    assert!(
        validated.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&validated.stderr)
    );

    let gw = ws.serve();
    let http = reqwest::Client::new();
    let served: serde_json::Value =
        http.get(gw.admin_url("/openapi.json")).send().await.expect("get").json().await.expect("json");
    assert_eq!(served, doc, "/openapi.json and `spillway openapi` differ");

    // An idempotency key sent again with another body is a 422 by design:
    // schemathesis counts it as a refused valid request unless told.
    let config = ws.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-path = \"/signup/{tenant}\"\n\
         checks.positive_data_acceptance.expected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"409\", \"422\"]\n",
    )
    .expect("config");
    let run = Command::new(venv().join("bin/schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(gw.admin_url("/openapi.json"))
        .args(["--url", &gw.url(""), "--checks", "all", "--max-examples", "30", "--seed", "1", "--no-color"])
        .args(["--header", &format!("x-api-key: {KEY}")])
        .current_dir(ws.dir.path())
        .output()
        .expect("run schemathesis (the venv: deploy/local/services.sh up)");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found answers the document does not describe:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(report.contains("No issues found"), "{report}");

    // Nothing stored for a refused request: per route, the 2xx answers
    // (less replays) are the messages in its queue.
    let metrics =
        http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let accepted = sum_by(&metrics, "spillway_http_requests_total", |l| {
        let status = label(l, "status")?;
        // 2xx answers of a route, not the preflights (204).
        (status.starts_with('2') && status != "204").then(|| label(l, "route")).flatten()
    });
    let replayed = sum_by(&metrics, "spillway_idempotency_replayed_total", |l| label(l, "route"));
    let refused = sum_by(&metrics, "spillway_http_requests_total", |l| {
        label(l, "status").filter(|s| s.starts_with('4')).map(|_| "all".to_owned())
    });
    assert!(
        refused.get("all").copied().unwrap_or(0.0) > 20.0,
        "schemathesis sent few bad requests: {metrics}"
    );
    let server_errors = sum_by(&metrics, "spillway_http_requests_total", |l| {
        label(l, "status").filter(|s| s.starts_with('5')).map(|_| "all".to_owned())
    });
    assert_eq!(server_errors.get("all"), None, "5xx answers with the queue up");
    for (route, queue) in [("/signup/{tenant}", "signups"), ("/raw/{*rest}", "raw"), ("/events", "events")] {
        let want = accepted.get(route).copied().unwrap_or(0.0) - replayed.get(route).copied().unwrap_or(0.0);
        assert!(want > 0.0, "{route}: no request was accepted");
        let stored = ws.stats(queue).await;
        assert_eq!(stored.visible as f64, want, "{route}: stored {stored:?}, accepted {want}");
    }
}
