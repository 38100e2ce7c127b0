//! A real browser: headless Chromium loads a page from an allowed origin that
//! PUTs to the gateway with `credentials: 'include'` and reads the answer; a
//! page from a refused origin cannot. The PUT with a JSON content type makes
//! Chromium send a real preflight first.
//!
//! Chromium resolves `*.localhost` to loopback, so `app.localhost`,
//! `evil.localhost` and `api.localhost` are three origins on this machine.
//! Needs Debian's `chromium` (`deploy/local/services.sh up` installs it) or
//! `SPILLWAY_CHROMIUM` pointing at a Chromium binary. Without it the test fails.

use std::{path::PathBuf, process::Stdio, time::Duration};

use axum::{
    extract::{Query, State},
    response::Html,
    routing::{get, post},
    Router,
};
use spillway_e2e::Workspace;
use tokio::sync::mpsc;

const PAGE: &str = r#"<!doctype html>
<title>spillway cors</title>
<script>
const params = new URLSearchParams(location.search);
(async () => {
  let result;
  try {
    const res = await fetch(params.get('target'), {
      method: 'PUT',
      credentials: 'include',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ from: location.origin }),
    });
    const body = await res.json();
    result = { ok: true, status: res.status, id: body.id };
  } catch (e) {
    result = { ok: false, error: String(e) };
  }
  await fetch('/report?name=' + params.get('name'), { method: 'POST', body: JSON.stringify(result) });
})();
</script>"#;

#[derive(serde::Deserialize)]
struct Name {
    name: String,
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("SPILLWAY_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.is_file(),
        "Chromium is needed at {} for the browser test: run `deploy/local/services.sh up` \
         (it installs Debian's chromium) or set SPILLWAY_CHROMIUM",
        path.display()
    );
    path
}

/// Opens `url` in headless Chromium and waits for the page's report.
async fn visit(
    url: &str,
    reports: &mut mpsc::Receiver<(String, serde_json::Value)>,
) -> (String, serde_json::Value) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await;
    let _ = browser.kill().await;
    report.expect("the page did not report within 60 s").expect("report channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_an_allowed_origin_reads_the_answer_and_a_refused_one_cannot() {
    let (tx, mut reports) = mpsc::channel(4);
    let pages = Router::new()
        .route("/page", get(|| async { Html(PAGE) }))
        .route(
            "/report",
            post(
                |State(tx): State<mpsc::Sender<(String, serde_json::Value)>>,
                 Query(n): Query<Name>,
                 body: String| async move {
                    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
                    let _ = tx.send((n.name, v)).await;
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind page server");
    let page_port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, pages).await });

    let ws = Workspace::new(&format!(
        r#"
[queue]
backend = "embedded"
path = "{{data}}"

[ingest.cors]
allowed_origins = ["http://app.localhost:{page_port}", "http://*.good.localhost:{page_port}"]
allow_credentials = true
"#
    ));
    let gw = ws.serve();
    let target = format!("http://api.localhost:{}/ingest", gw.addr.port());

    let (name, allowed) =
        visit(&format!("http://app.localhost:{page_port}/page?name=allowed&target={target}"), &mut reports)
            .await;
    assert_eq!(name, "allowed");
    assert_eq!(allowed["ok"], true, "the allowed origin could not read the answer: {allowed}");
    assert_eq!(allowed["status"], 202);
    assert!(allowed["id"].as_str().is_some_and(|id| id.len() == 26), "{allowed}");

    let (name, wild) =
        visit(&format!("http://x.good.localhost:{page_port}/page?name=wild&target={target}"), &mut reports)
            .await;
    assert_eq!(name, "wild");
    assert_eq!(wild["ok"], true, "a wildcard-matched origin could not read the answer: {wild}");

    let (name, refused) =
        visit(&format!("http://evil.localhost:{page_port}/page?name=refused&target={target}"), &mut reports)
            .await;
    assert_eq!(name, "refused");
    assert_eq!(refused["ok"], false, "a refused origin read the answer: {refused}");

    // The refused page's preflight failed, so its PUT was never sent.
    assert_eq!(ws.stats("ingest").await.visible, 2);
}
