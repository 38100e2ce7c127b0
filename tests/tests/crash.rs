//! `kill -9` of the gateway in the middle of a burst: every request that got
//! a 2xx is in the queue after a restart. A 2xx means the SQLite commit was
//! fsynced, so nothing the client was told is stored may be lost.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use spillway_e2e::Workspace;

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_request_survives_kill_9() {
    let ws = Workspace::new(CONFIG);
    let mut gw = ws.serve();
    let url = gw.url("/ingest");
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");

    let mut senders = Vec::new();
    for worker in 0..32 {
        let (client, url, accepted) = (client.clone(), url.clone(), accepted.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let body = format!(r#"{{"worker":{worker},"seq":{i}}}"#);
                let Ok(res) =
                    client.post(&url).header("content-type", "application/json").body(body).send().await
                else {
                    return; // the gateway is gone
                };
                if res.status().is_success() {
                    let v: serde_json::Value = match res.json().await {
                        Ok(v) => v,
                        Err(_) => return, // killed while the answer was in flight: not acknowledged
                    };
                    let id = v["id"].as_str().map(str::to_owned).expect("a 2xx names its message id");
                    accepted.lock().expect("lock").insert(id);
                }
            }
        }));
    }
    // Let the burst run, then pull the plug without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    for s in senders {
        let _ = s.await;
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert!(accepted.len() > 100, "the burst was too small to mean anything: {}", accepted.len());

    // Restart on the same data: it must come up on the crashed database.
    let gw2 = ws.serve();
    let res = client.get(gw2.url("/readyz")).send().await.expect("readyz");
    assert_eq!(res.status(), 200);

    let queue = ws.queue().await;
    let consumer = queue.consumer("ingest").await.expect("consumer");
    let mut stored = HashSet::new();
    loop {
        let batch = consumer.receive(500, Duration::from_millis(200)).await.expect("receive");
        if batch.is_empty() {
            break;
        }
        stored.extend(batch.into_iter().map(|d| d.message.id));
    }
    let lost: Vec<_> = accepted.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages were lost: {:?}",
        lost.len(),
        accepted.len(),
        lost
    );
}
