//! Access logs (`log.access`): one JSON line per answer, carrying the
//! message id the client got (so logs join with the envelope and the
//! database row), the client's own `x-request-id`, and the error code of a
//! refusal; none at all when off.

use std::time::Duration;

use serde_json::Value;
use spillway_e2e::Workspace;

const CONFIG: &str = r#"
[queue]
backend = "memory"

[log]
format = "json"
level = "{level}"
access = {access}

[[ingest.routes]]
path = "/ingest"
queue = "ingest"
content_types = ["application/json"]
"#;

/// Runs a gateway, sends a good and a refused request, stops it, and
/// returns the good request's message id and the gateway's log lines.
async fn run(level: &str, access: bool) -> (String, Vec<Value>) {
    let ws = Workspace::new(&CONFIG.replace("{level}", level).replace("{access}", &access.to_string()));
    let (mut gw, logs) = ws.serve_collecting_logs();
    let url = gw.url("/ingest");
    let http = reqwest::Client::new();
    let ok = http
        .post(&url)
        .header("content-type", "application/json")
        .header("x-request-id", "req-42")
        .body(r#"{"event":"click"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 202);
    let body: Value = ok.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    let refused = http.post(&url).header("content-type", "text/plain").body("hi").send().await.expect("post");
    assert_eq!(refused.status(), 415);

    gw.stop(Duration::from_secs(20)).await;
    let text = logs.join().expect("log reader");
    let lines = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (id, lines)
}

fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["target"] == "spillway::access").collect()
}

#[tokio::test]
async fn each_answer_is_one_line_with_the_message_id() {
    // `level = "warn"`: access lines come whatever the level.
    let (id, lines) = run("warn", true).await;
    let access = access_lines(&lines);
    assert_eq!(access.len(), 2, "one line per answer: {access:?}");
    let ok = access.iter().find(|l| l["fields"]["status"] == 202).expect("the 202's line");
    let f = &ok["fields"];
    assert_eq!(f["message_id"], id.as_str(), "the line names the stored message: {ok}");
    assert_eq!((f["method"].as_str(), f["path"].as_str()), (Some("POST"), Some("/ingest")));
    assert_eq!(f["route"], "/ingest");
    assert_eq!(f["request_id"], "req-42");
    assert_eq!(f["client"], "127.0.0.1");
    assert!(f["micros"].as_u64().is_some(), "{ok}");
    let refused = access.iter().find(|l| l["fields"]["status"] == 415).expect("the 415's line");
    assert_eq!(refused["fields"]["error"], "unsupported_media_type", "{refused}");
    assert!(refused["fields"].get("message_id").is_none(), "nothing was stored: {refused}");
}

#[tokio::test]
async fn off_by_default_whatever_the_level() {
    let (_, lines) = run("info", false).await;
    assert!(!lines.is_empty(), "the gateway logged nothing at all; the check below would prove nothing");
    assert!(access_lines(&lines).is_empty(), "access lines while off: {lines:?}");
}
