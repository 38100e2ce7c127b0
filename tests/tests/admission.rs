//! Admission by bytes (`ingest.limits.max_body_bytes_in_flight`): while
//! slow clients hold bodies up to the budget, another request is a 503
//! with `Retry-After` before its body is read, and nothing of it is
//! stored; once they are answered, the budget is free again.

use std::time::Duration;

use spillway_e2e::{raw, Workspace};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.limits]
max_body_bytes = 40000
max_body_bytes_in_flight = 65536
body_timeout = "20s"

[[ingest.routes]]
path = "/ingest"
queue = "ingest"
"#;

fn head(len: usize) -> String {
    format!("POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
}

#[tokio::test]
async fn a_request_over_the_bytes_in_flight_gets_503_before_its_body_is_read() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    // A slow client: 40,000 bytes declared, 10 sent; it holds 40 KiB of the 64.
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(head(40_000).as_bytes()).await.expect("head");
    slow.write_all(&[b'a'; 10]).await.expect("a little body");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = "b".repeat(40_000);
    let refused = raw(gw.addr, format!("{}{body}", head(40_000)).as_bytes(), false).await.expect("an answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code().expect("a JSON error"), "over_capacity");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    // A small one fits in what is left.
    let small =
        raw(gw.addr, format!("{}{}", head(1000), "c".repeat(1000)).as_bytes(), false).await.expect("answer");
    assert_eq!(small.status, 202, "{small:?}");

    // The slow client finishes: answered, and the budget is free again.
    slow.write_all(&[b'a'; 39_990]).await.expect("the rest");
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
        .await
        .expect("answer")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let again = raw(gw.addr, format!("{}{body}", head(40_000)).as_bytes(), false).await.expect("an answer");
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(
        ws.stats("ingest").await.pending(),
        3,
        "the slow one, the small one, the last one: not the refused one"
    );
}

/// `server.limits.max_connections_per_client`: a client holding its share
/// of connections gets a 503 with `Retry-After` on the next one, which is
/// closed; others are served, and so is it once one of its own closes.
#[tokio::test]
async fn a_client_over_its_connection_share_gets_503() {
    let ws = Workspace::new(
        &CONFIG
            .replace("[ingest.limits]", "[server.limits]\nmax_connections_per_client = 2\n\n[ingest.limits]"),
    );
    let gw = ws.serve();
    let first = TcpStream::connect(gw.addr).await.expect("first");
    let _second = TcpStream::connect(gw.addr).await.expect("second");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = raw(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false).await.expect("an answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code().expect("JSON"), "too_many_connections");
    assert!(refused.header("retry-after").is_some());
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = raw(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false).await.expect("an answer");
    assert_eq!(served.status, 200, "{served:?}");
}
