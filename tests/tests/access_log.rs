//! Access logs (`log.access`): one JSON line per answer, carrying the
//! message id the client got (so logs join with the envelope and the
//! database row), the client's own `x-request-id`, and the error code of a
//! refusal; none at all when off.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use spillway_e2e::{binary, Workspace};

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
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(ws.config())
        .arg("serve")
        .env("SPILLWAY_SERVER__LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spillway serve");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let url = format!("http://{addr}/ingest");
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

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "the gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
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
