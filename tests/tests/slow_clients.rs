//! Clients that never finish their request head: the header-read timeout
//! drops them, SIGTERM still exits, an oversized head gets 431, and the
//! connection cap holds a new connection until a slot is free. And a
//! keep-alive connection between requests: kept for `idle_timeout`, not
//! the header-read timeout.
//!
//! Each wait here has an outer bound far above the 1 s timeout under test;
//! without the timeout the connection would stay open forever and the
//! bound is what fails the test.

use std::time::Duration;

use spillway_e2e::{raw, Workspace};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

const CONFIG: &str = r#"
[server.limits]
header_read_timeout = "1s"
max_header_bytes = 8192
max_connections = 1

[queue]
backend = "embedded"
path = "{data}"
"#;

/// Far above the 1 s under test: a connection that outlives this is held forever.
const BOUND: Duration = Duration::from_secs(20);

/// Opens a connection and sends half a request head.
async fn half_head(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-").await.expect("write");
    s
}

/// Reads until the server closes the connection; returns when it did.
async fn closed_by_server(mut s: TcpStream) -> Instant {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server kept a half-sent request head open")
}

#[tokio::test]
async fn a_half_sent_head_is_dropped_and_holds_the_only_slot_until_then() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let idle = half_head(gw.addr).await;
    let closed = tokio::spawn(closed_by_server(idle));
    // max_connections = 1: this request waits for the half-sent head's slot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer =
        tokio::time::timeout(BOUND, raw(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false))
            .await
            .expect("the second connection was never served")
            .expect("healthz");
    let answered = Instant::now();
    assert_eq!(answer.status, 200);
    let closed = closed.await.expect("reader");
    assert!(closed <= answered, "the cap let a second connection in while the first held the only slot");
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let big = "a".repeat(20 * 1024);
    let req = format!("POST /ingest HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\n{{}}");
    let res = raw(gw.addr, req.as_bytes(), false).await.expect("an answer");
    assert_eq!(res.status, 431);
    assert_eq!(ws.stats("ingest").await.pending(), 0);
}

#[tokio::test]
async fn sigterm_exits_while_a_half_sent_head_is_open() {
    let ws = Workspace::new(CONFIG);
    let mut gw = ws.serve();
    let _idle = half_head(gw.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.sigterm();
    let exit = tokio::time::timeout(BOUND, tokio::task::spawn_blocking(move || gw.child.wait()))
        .await
        .expect("spillway serve did not exit while a half-sent head was open")
        .expect("wait task")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
}

/// Reads one response to a request without a body of interest: its head,
/// then `Content-Length` bytes. Returns the status line.
async fn response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("an answer").expect("read");
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

/// Between two requests a keep-alive connection idles past the
/// header-read timeout (1 s), which hyper's own timer closed it at (a
/// proxy's pooled connection then met a 502), and is still served; the
/// gateway closes it once it has idled `idle_timeout` (3 s).
#[tokio::test]
async fn a_keep_alive_connection_idles_past_the_head_timeout_until_the_idle_timeout() {
    let ws = Workspace::new(&CONFIG.replace("max_header_bytes", "idle_timeout = \"3s\"\nmax_header_bytes"));
    let gw = ws.serve();
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get).await.expect("first request");
    assert!(response(&mut s).await.contains(" 200 "));
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(get).await.expect("second request, 2 s later");
    assert!(response(&mut s).await.contains(" 200 "), "the connection was closed while idle");
    let answered = Instant::now();
    let closed = closed_by_server(s).await;
    let idled = closed - answered;
    assert!(idled >= Duration::from_millis(2500), "closed after {idled:?} idle, before idle_timeout");
}
