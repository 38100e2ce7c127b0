//! SIGTERM during a burst: readiness goes false first, every request already
//! read gets its answer, every 2xx is in the queue, and the process exits 0.

use std::time::Duration;

use spillway_e2e::{queued_ids, Burst, Workspace};

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
    let burst = Burst::start(&gw.url("/ingest"), 16);
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz during the grace period");
    assert_eq!(ready.status(), 503, "readiness must go false before the server stops accepting");

    let exit =
        tokio::task::spawn_blocking(move || gw.child.wait()).await.expect("wait").expect("exit status");
    assert!(exit.success(), "spillway serve must exit 0 after draining: {exit:?}");
    let outcome = burst.finish().await;
    assert!(outcome.server_errors.is_empty(), "5xx during shutdown: {:?}", outcome.server_errors);
    assert!(!outcome.accepted.is_empty());
    let stored = queued_ids(&ws.queue().await, "ingest").await;
    assert_eq!(stored, outcome.accepted, "every 2xx is in the queue, and nothing else");
}
