//! Idempotency-Key against the real binary: concurrent duplicates store
//! exactly one message and every 2xx names it; a repeat replays the first
//! answer; the same key with another body is a 422; a repeat while the
//! first is still being stored (RabbitMQ behind a frozen proxy) is a 409
//! with `Retry-After`, and the key is free again once the first failed;
//! two gateway processes sharing the PostgreSQL store recognise each
//! other's keys.

use std::time::Duration;

use spillway_e2e::{amqp_url, pg_url, Proxy, Workspace};

const HEADER: &str = "idempotency-key";

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
) -> (u16, Option<String>, reqwest::header::HeaderMap, String) {
    let res = http.post(url).header(HEADER, key).body(body.to_owned()).send().await.expect("post");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let id = headers.get("x-spillway-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = res.text().await.unwrap_or_default();
    (status, id, headers, text)
}

fn embedded(extra: &str) -> Workspace {
    Workspace::new(&format!(
        "[queue]\nbackend = \"embedded\"\npath = \"{{data}}\"\n{extra}\n\
         [[ingest.routes]]\npath = \"/ingest\"\nqueue = \"events\"\nidempotency = {{ window = \"24h\" }}\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_store_one_message_and_a_repeat_replays_its_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = embedded(&format!("[ingest.idempotency]\npath = \"{}\"\n", dir.path().display()));
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let url = gw.url("/ingest");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move { post(&http, &url, "order-7", r#"{"order":7}"#).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, id, headers, body) = t.await.expect("task");
        match status {
            202 => {
                ids.insert(id.expect("an id"));
            }
            409 => assert!(headers.contains_key("retry-after"), "{body}"),
            other => panic!("a duplicate answered {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 2xx names the one stored message: {ids:?}");
    assert_eq!(ws.stats("events").await.visible, 1, "16 requests with one key: one message");
    let first = ids.into_iter().next().expect("one id");

    let (status, id, headers, _) = post(&http, &url, "order-7", r#"{"order":7}"#).await;
    assert_eq!((status, id.as_deref()), (202, Some(first.as_str())), "a repeat gets the first answer");
    assert_eq!(headers.get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));

    let (status, _, _, body) = post(&http, &url, "order-7", r#"{"order":8}"#).await;
    assert_eq!(status, 422, "the key with another body: {body}");
    assert!(body.contains("idempotency_key_reused"), "{body}");
    let (status, _, _, body) = post(&http, &url, "bad key with spaces", "{}").await;
    assert_eq!(status, 400, "{body}");
    let (status, id, _, _) = post(&http, &url, "order-8", r#"{"order":8}"#).await;
    assert!(status == 202 && id.as_deref() != Some(first.as_str()), "another key is another message");
    let no_key = http.post(&url).body("{}").send().await.expect("post");
    assert_eq!(no_key.status(), 202, "no key: stored as any request");
    assert_eq!(ws.stats("events").await.visible, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_while_the_first_is_being_stored_is_409_and_a_failed_first_frees_the_key() {
    let url = amqp_url();
    let port: u16 =
        url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).expect("port");
    let proxy = Proxy::start(port).await;
    let proxied = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let queue = format!("spillway-e2e-idem-{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = Workspace::new(&format!(
        "[queue]\nbackend = \"rabbitmq\"\nurl = \"{proxied}\"\n[ingest.publisher]\nsend_timeout = \"2s\"\n\
         [ingest.idempotency]\npath = \"{}\"\n\
         [[ingest.routes]]\npath = \"/ingest\"\nqueue = \"{queue}\"\nidempotency = {{ window = \"1h\" }}\n",
        dir.path().display()
    ));
    let purge = ws.cli(&["queue", "purge", "--yes", "--queue", &queue]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let gw = ws.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let url = gw.url("/ingest");
    let first = {
        let frozen = proxy.freeze();
        let (h, u) = (http.clone(), url.clone());
        let first = tokio::spawn(async move { post(&h, &u, "pay-1", r#"{"pay":1}"#).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, headers, body) = post(&http, &url, "pay-1", r#"{"pay":1}"#).await;
        assert_eq!(status, 409, "a repeat while the first is being stored: {body}");
        assert!(body.contains("idempotency_key_in_flight"), "{body}");
        assert!(headers.contains_key("retry-after"));
        let first = first.await.expect("task");
        drop(frozen);
        first
    };
    assert_eq!(first.0, 503, "the first could not be stored within send_timeout: {}", first.3);
    // Its key was given up: the client's retry stores it.
    let mut retry = (0, None, reqwest::header::HeaderMap::new(), String::new());
    for _ in 0..20 {
        retry = post(&http, &url, "pay-1", r#"{"pay":1}"#).await;
        if retry.0 == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(retry.0, 202, "the retry after a failed first: {}", retry.3);
    assert!(retry.2.get("idempotent-replayed").is_none(), "stored now, not replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_the_postgres_store_recognise_each_others_keys() {
    let table = format!("idem_e2e_{}", std::process::id());
    let store = format!("[ingest.idempotency]\npostgres_url = \"{}\"\ntable = \"{table}\"\n", pg_url());
    let route =
        "[[ingest.routes]]\npath = \"/ingest\"\nqueue = \"events\"\nidempotency = { store = \"postgres\" }\n";
    let one =
        Workspace::new(&format!("[queue]\nbackend = \"embedded\"\npath = \"{{data}}\"\n{store}{route}"));
    let two =
        Workspace::new(&format!("[queue]\nbackend = \"embedded\"\npath = \"{{data}}\"\n{store}{route}"));
    let (g1, g2) = (one.serve(), two.serve());
    let http = reqwest::Client::new();
    let (status, id1, _, body) = post(&http, &g1.url("/ingest"), "shared-1", r#"{"n":1}"#).await;
    assert_eq!(status, 202, "{body}");
    let (status, id2, headers, body) = post(&http, &g2.url("/ingest"), "shared-1", r#"{"n":1}"#).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(id2, id1, "the other gateway answers with the first one's message");
    assert!(headers.contains_key("idempotent-replayed"));
    assert_eq!(one.stats("events").await.visible, 1);
    assert_eq!(two.stats("events").await.visible, 0, "nothing stored by the second gateway");
    let (status, _, _, _) = post(&http, &g2.url("/ingest"), "shared-1", r#"{"n":2}"#).await;
    assert_eq!(status, 422, "a reused key is refused on either gateway");
    let db = spillway_e2e::pg().await;
    let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await;
}
