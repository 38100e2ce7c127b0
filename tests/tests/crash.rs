//! `kill -9` of the gateway in the middle of a burst: every request that got
//! a 2xx is in the queue after a restart. A 2xx means the SQLite commit was
//! fsynced, so nothing the client was told is stored may be lost.

use std::time::Duration;

use spillway_e2e::{queued_ids, Burst, Workspace};

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_request_survives_kill_9() {
    let ws = Workspace::new(CONFIG);
    let mut gw = ws.serve();
    let burst = Burst::start(&gw.url("/ingest"), 32);
    // Let the burst run, then pull the plug without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    let accepted = burst.finish().await.accepted;
    assert!(accepted.len() > 100, "the burst was too small to mean anything: {}", accepted.len());

    // Restart on the same data: it must come up on the crashed database.
    let gw2 = ws.serve();
    let res = reqwest::get(gw2.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(res.status(), 200);

    let stored = queued_ids(&ws.queue().await, "ingest").await;
    let lost: Vec<_> = accepted.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages were lost: {:?}",
        lost.len(),
        accepted.len(),
        lost
    );
}
