//! SIGTERM during a burst: readiness goes false first, every request already
//! read gets its answer, every 2xx is in the queue, and the process exits 0.

use std::{
    collections::HashSet,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use spillway_e2e::Workspace;

const CONFIG: &str = r#"
[server]
shutdown_grace = "1s"

[queue]
backend = "embedded"
path = "{data}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_and_loses_nothing() {
    let ws = Workspace::new(CONFIG);
    let mut gw = ws.serve();
    let url = gw.url("/ingest");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let server_errors = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (client, url, accepted, server_errors) =
            (client.clone(), url.clone(), accepted.clone(), server_errors.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let Ok(res) = client.post(&url).body("{}").send().await else { return };
                let status = res.status();
                if status.is_server_error() {
                    server_errors.lock().expect("lock").push(status.as_u16());
                }
                if status.is_success() {
                    let Ok(v) = res.json::<serde_json::Value>().await else { return };
                    accepted.lock().expect("lock").insert(v["id"].as_str().unwrap_or_default().to_owned());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client.get(gw.url("/readyz")).send().await.expect("readyz during the grace period");
    assert_eq!(ready.status(), 503, "readiness must go false before the server stops accepting");

    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait();
        (s, gw)
    })
    .await
    .expect("wait");
    assert!(status.0.expect("exit status").success(), "spillway serve must exit 0 after draining");
    for s in senders {
        let _ = s.await;
    }
    assert!(
        server_errors.lock().expect("lock").is_empty(),
        "5xx during shutdown: {:?}",
        server_errors.lock()
    );
    let accepted = accepted.lock().expect("lock").clone();
    assert!(!accepted.is_empty());
    let stats = ws.stats("ingest").await;
    assert_eq!(stats.visible, accepted.len() as u64, "every 2xx is in the queue, and nothing else");
}
