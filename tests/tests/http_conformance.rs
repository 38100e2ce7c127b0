//! An HTTP/1.1 conformance probe against a live gateway, from raw sockets:
//! framing (RFC 9112) and semantics (RFC 9110), request smuggling shapes,
//! and the `Host` rules. Each case says what the RFC requires; the probe
//! counts the answers on the connection (a second request hidden in a body
//! must never get an answer of its own) and the messages stored (a request
//! that is refused must leave nothing behind: the queue grows by exactly
//! the number of 2xx answers).
//!
//! Where the RFC lets a server choose (a bare LF, obs-fold, duplicate equal
//! `Content-Length`s), the case accepts either choice but still requires
//! one answer per request and nothing stored without a 2xx.

use std::time::Duration;

use spillway_e2e::Workspace;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This many answers, each a 2xx.
    Accepted(usize),
    /// One answer, with one of these statuses.
    Status(&'static [u16]),
    /// One answer, not a 2xx (and no second one): refused.
    Refused,
    /// The RFC allows a choice: at most this many answers, none a 5xx.
    Either(usize),
    /// Never processed: no answer (the connection closed, or the server
    /// still waits), or one that is not a 2xx.
    Unanswered,
}

struct Case {
    name: &'static str,
    /// What the RFC requires, for the failure message.
    rfc: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

/// A message cut short: the client sends it and closes its side, so the
/// server sees the end of the stream inside the body.
fn cut_short(name: &'static str, rfc: &'static str, bytes: Vec<u8>) -> Case {
    Case { name, rfc, bytes, expect: Expect::Unanswered }
}

/// A request to `/ingest` with `Host: localhost`, the given header lines,
/// and the body as written (framing is the case's business).
fn post(headers: &[&str], body: &str) -> Vec<u8> {
    raw("POST /ingest HTTP/1.1", &[&["Host: localhost"], headers].concat(), body)
}

fn raw(line: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

fn ok(name: &'static str, rfc: &'static str, bytes: Vec<u8>) -> Case {
    Case { name, rfc, bytes, expect: Expect::Accepted(1) }
}

fn refused(name: &'static str, rfc: &'static str, bytes: Vec<u8>) -> Case {
    Case { name, rfc, bytes, expect: Expect::Refused }
}

fn either(name: &'static str, rfc: &'static str, bytes: Vec<u8>) -> Case {
    Case { name, rfc, bytes, expect: Expect::Either(1) }
}

fn cases() -> Vec<Case> {
    let long = "a".repeat(20 * 1024);
    vec![
        // Framing: Content-Length.
        ok("content-length", "§6.2: the body is Content-Length octets", post(&["Content-Length: 2"], "{}")),
        refused("two different Content-Lengths", "RFC 9110 §8.6: MUST treat as unrecoverable error (400)", post(&["Content-Length: 2", "Content-Length: 3"], "{}x")),
        refused("comma-joined different lengths", "RFC 9110 §8.6: a list of different values is invalid", post(&["Content-Length: 2, 3"], "{}x")),
        either("two equal Content-Lengths", "RFC 9110 §8.6: MAY accept identical values, or reject", post(&["Content-Length: 2", "Content-Length: 2"], "{}")),
        either("comma-joined equal lengths", "RFC 9110 §8.6: MAY accept `2, 2`, or reject", post(&["Content-Length: 2, 2"], "{}")),
        refused("Content-Length with a sign", "§6.3: Content-Length is 1*DIGIT; invalid → 400", post(&["Content-Length: +2"], "{}")),
        refused("negative Content-Length", "§6.3: invalid Content-Length → 400", post(&["Content-Length: -2"], "{}")),
        refused("Content-Length not a number", "§6.3: invalid Content-Length → 400", post(&["Content-Length: two"], "{}")),
        refused("Content-Length over u64", "§6.3: invalid Content-Length → 400 (or 413)", post(&["Content-Length: 99999999999999999999999"], "{}")),
        cut_short("body shorter than Content-Length", "§8: an incomplete message is not processed", post(&["Content-Length: 10"], "{}")),
        // Framing: chunked.
        ok("chunked", "§7.1", post(&["Transfer-Encoding: chunked"], "2\r\n{}\r\n0\r\n\r\n")),
        ok("chunk extension", "§7.1.1: MUST ignore unrecognised chunk extensions", post(&["Transfer-Encoding: chunked"], "2;ext=1\r\n{}\r\n0\r\n\r\n")),
        ok("quoted chunk extension", "§7.1.1: chunk-ext-val may be a quoted-string", post(&["Transfer-Encoding: chunked"], "2;name=\"v w\"\r\n{}\r\n0\r\n\r\n")),
        ok("trailer fields", "§7.1.2: a trailer section after the last chunk", post(&["Transfer-Encoding: chunked"], "2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n")),
        ok("upper-case chunk size", "§7.1: chunk-size is HEXDIG (case-insensitive)", post(&["Transfer-Encoding: chunked"], "A\r\n{\"a\":\"bc\"}\r\n0\r\n\r\n")),
        ok("Transfer-Encoding in another case", "RFC 9110 §10.1.4: coding names are case-insensitive", post(&["Transfer-Encoding: Chunked"], "2\r\n{}\r\n0\r\n\r\n")),
        either("bare LF in chunk lines", "§2.2: MAY recognise a lone LF as a line terminator", post(&["Transfer-Encoding: chunked"], "2\n{}\n0\n\n")),
        refused("chunk size not hex", "§7.1: chunk-size is 1*HEXDIG → 400", post(&["Transfer-Encoding: chunked", "Connection: close"], "zz\r\n{}\r\n0\r\n\r\n")),
        refused("negative chunk size", "§7.1: chunk-size is 1*HEXDIG → 400", post(&["Transfer-Encoding: chunked", "Connection: close"], "-2\r\n{}\r\n0\r\n\r\n")),
        refused("chunk size over u64", "§7.1: MUST anticipate and reject overflow", post(&["Transfer-Encoding: chunked", "Connection: close"], "fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n")),
        refused("chunk data longer than its size", "§7.1: the CRLF after chunk-data is required", post(&["Transfer-Encoding: chunked", "Connection: close"], "2\r\n{}xx\r\n0\r\n\r\n")),
        cut_short("chunked body never ends", "§8: an incomplete message is not processed", post(&["Transfer-Encoding: chunked"], "2\r\n{}\r\n")),
        // Smuggling shapes.
        refused("CL.TE", "§6.1: Content-Length with Transfer-Encoding: MAY reject, and a server that does not MUST close; the gateway refuses with 400", post(&["Content-Length: 6", "Transfer-Encoding: chunked"], "0\r\n\r\nGET /ingest HTTP/1.1\r\nHost: localhost\r\n\r\n")),
        refused("TE.CL", "§6.1: as CL.TE, the headers the other way round", post(&["Transfer-Encoding: chunked", "Content-Length: 4"], "5c\r\nPOST /ingest HTTP/1.1\r\nHost: localhost\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n")),
        refused("TE.TE, a second unknown coding", "§6.1: chunked must be the final coding; an unknown coding → 501", post(&["Transfer-Encoding: chunked", "Transfer-Encoding: x"], "2\r\n{}\r\n0\r\n\r\n")),
        refused("TE.TE, xchunked", "RFC 9110 §10.1.4 / §6.1: an unknown coding → 501", post(&["Transfer-Encoding: xchunked"], "2\r\n{}\r\n0\r\n\r\n")),
        refused("TE.TE, chunked then identity", "§6.1: chunked must be the final coding → 400", post(&["Transfer-Encoding: chunked, identity", "Connection: close"], "2\r\n{}\r\n0\r\n\r\n")),
        refused("TE with space before the colon", "§5.1: whitespace before the colon MUST be rejected with 400", post(&["Transfer-Encoding : chunked", "Connection: close"], "2\r\n{}\r\n0\r\n\r\n")),
        either("TE folded onto the next line (obs-fold)", "§5.2: reject with 400, or replace obs-fold with SP", post(&["Transfer-Encoding:", " chunked"], "2\r\n{}\r\n0\r\n\r\n")),
        refused("HTTP/1.0 with Transfer-Encoding", "§6.1: a 1.0 message with TE: the framing is faulty (MUST close after)", raw("POST /ingest HTTP/1.0", &["Host: localhost", "Transfer-Encoding: chunked", "Content-Length: 9"], "0\r\n\r\nxxxx")),
        // Header syntax.
        refused("space before the colon", "§5.1: MUST reject with 400", post(&["Content-Length : 2"], "{}")),
        refused("invalid header name", "RFC 9110 §5.1: a field name is a token → 400", post(&["Content-Length: 2", "Bad\u{1}Name: x"], "{}")),
        refused("header name with a space", "RFC 9110 §5.1: a field name is a token → 400", post(&["Content-Length: 2", "Bad Name: x"], "{}")),
        either("obs-fold in another header", "§5.2: reject with 400, or replace obs-fold with SP", post(&["Content-Length: 2", "X-Folded: a", " b"], "{}")),
        either("NUL in a header value", "RFC 9110 §5.5: MUST reject, or replace with SP", post(&["Content-Length: 2", "X-Nul: a\0b"], "{}")),
        refused("header section over the limit", "RFC 6585 §5: 431 for header fields too large", post(&["Content-Length: 2", &format!("X-Long: {long}")], "{}")),
        // Request line and target.
        ok("absolute-form target", "§3.2.2: a server MUST accept the absolute-form", raw("POST http://localhost/ingest HTTP/1.1", &["Host: localhost", "Content-Length: 2"], "{}")),
        refused("authority-form with POST", "§3.2.3: authority-form is only for CONNECT → 400", raw("POST localhost:80 HTTP/1.1", &["Host: localhost", "Content-Length: 2"], "{}")),
        refused("lower-case method", "RFC 9110 §9.1: methods are case-sensitive; `post` is not POST", raw("post /ingest HTTP/1.1", &["Host: localhost", "Content-Length: 2"], "{}")),
        refused("request line over the limit", "§3: 414 or 400 for a too long target (431 from the head limit)", raw(&format!("POST /ingest?{long} HTTP/1.1"), &["Host: localhost", "Content-Length: 2"], "{}")),
        Case { name: "HTTP/2.0 in an HTTP/1 request line", rfc: "RFC 9110 §15.6.6: 505 for an unsupported major version (or 400)", bytes: raw("POST /ingest HTTP/2.0", &["Host: localhost", "Content-Length: 2"], "{}"), expect: Expect::Status(&[400, 505]) },
        cut_short("HTTP/2 preface on HTTP/1", "the gateway speaks HTTP/1.1 only: the preface is not a request (closed, or refused)", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        // Host (§3.2).
        refused("HTTP/1.1 without Host", "§3.2: MUST respond 400 to an HTTP/1.1 request without Host", raw("POST /ingest HTTP/1.1", &["Content-Length: 2"], "{}")),
        refused("two Host headers", "§3.2: MUST respond 400 to more than one Host line", post(&["Host: other", "Content-Length: 2"], "{}")),
        refused("Host with a space", "§3.2: MUST respond 400 to an invalid Host", raw("POST /ingest HTTP/1.1", &["Host: exa mple.com", "Content-Length: 2"], "{}")),
        refused("Host with userinfo", "§3.2: Host is uri-host [:port]; userinfo is invalid → 400", raw("POST /ingest HTTP/1.1", &["Host: user@example.com", "Content-Length: 2"], "{}")),
        refused("Host with a bad port", "§3.2: the port is digits → 400", raw("POST /ingest HTTP/1.1", &["Host: example.com:80x", "Content-Length: 2"], "{}")),
        ok("Host with a port", "§3.2", raw("POST /ingest HTTP/1.1", &["Host: localhost:8080", "Content-Length: 2"], "{}")),
        ok("HTTP/1.0 without Host", "§3.2 asks Host of HTTP/1.1 requests only", raw("POST /ingest HTTP/1.0", &["Content-Length: 2"], "{}")),
        // Connections.
        Case { name: "two pipelined requests", rfc: "§9.3.2: a server MAY process pipelined requests, answering in order", bytes: [post(&["Content-Length: 2"], "{}"), post(&["Content-Length: 2"], "{}")].concat(), expect: Expect::Accepted(2) },
        Case { name: "a refused request then a pipelined one", rfc: "§9.3.2 with §6.3: after an unreadable body the connection closes; the next request gets no answer", bytes: [post(&["Content-Length: 2", "Transfer-Encoding: chunked"], "0\r\n\r\n"), post(&["Content-Length: 2"], "{}")].concat(), expect: Expect::Refused },
        Case { name: "HTTP/1.0 keep-alive", rfc: "§9.3: a 1.0 client asks for persistence with `Connection: keep-alive`", bytes: [raw("POST /ingest HTTP/1.0", &["Connection: keep-alive", "Content-Length: 2"], "{}"), raw("POST /ingest HTTP/1.0", &["Content-Length: 2"], "{}")].concat(), expect: Expect::Accepted(2) },
        Case { name: "Connection: close", rfc: "§9.6: the server closes after answering; a request after it gets no answer", bytes: [post(&["Connection: close", "Content-Length: 2"], "{}"), post(&["Content-Length: 2"], "{}")].concat(), expect: Expect::Accepted(1) },
        Case { name: "HTTP/1.0 without keep-alive", rfc: "§9.3: a 1.0 connection closes after the answer", bytes: [raw("POST /ingest HTTP/1.0", &["Content-Length: 2"], "{}"), raw("POST /ingest HTTP/1.0", &["Content-Length: 2"], "{}")].concat(), expect: Expect::Accepted(1) },
        either("an unknown Expect", "RFC 9110 §10.1.1: 417 MAY answer an expectation it cannot meet", post(&["Expect: something", "Content-Length: 2"], "{}")),
    ]
}

/// The answers on the connection: status codes of the final answers, in
/// order (interim 1xx answers skipped). Reads until the server closes or
/// is quiet for a while.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], close_after: bool) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may close before it read everything: that is an answer too.
    let _ = s.write_all(bytes).await;
    if close_after {
        let _ = s.shutdown().await;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    statuses(&got)
}

fn statuses(mut data: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = res.parse(data) else { break };
        let code = res.code.unwrap_or(0);
        let len = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if code >= 200 {
            out.push(code);
        }
        let end = (head + if code >= 200 { len } else { 0 }).min(data.len());
        data = &data[end..];
    }
    out
}

fn check(case: &Case, got: &[u16]) -> Result<(), String> {
    let oks = got.iter().filter(|s| (200..300).contains(*s)).count();
    let fine = match case.expect {
        Expect::Accepted(n) => got.len() == n && oks == n,
        Expect::Status(list) => got.len() == 1 && list.contains(&got[0]),
        Expect::Refused => got.len() == 1 && oks == 0 && got[0] != 500,
        Expect::Either(n) => {
            got.len() <= n && !got.is_empty() && got.iter().all(|s| *s < 500 || *s == 501 || *s == 505)
        }
        Expect::Unanswered => got.len() <= 1 && oks == 0 && got.iter().all(|s| *s != 500),
    };
    if fine {
        Ok(())
    } else {
        Err(format!("{}: got {got:?}, expected {:?} ({})", case.name, case.expect, case.rfc))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_each_case_as_rfc_9112_and_9110_require_and_stores_only_what_it_accepts() {
    let ws = Workspace::new("[queue]\nbackend = \"embedded\"\npath = \"{data}\"\n");
    let gw = ws.serve();
    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut stored_before = ws.stats("ingest").await.visible;
    for case in &cases {
        let got = exchange(gw.addr, &case.bytes, matches!(case.expect, Expect::Unanswered)).await;
        let oks = got.iter().filter(|s| (200..300).contains(*s)).count() as u64;
        if let Err(e) = check(case, &got) {
            failures.push(e);
        }
        let stored = ws.stats("ingest").await.visible;
        if stored - stored_before != oks {
            failures.push(format!(
                "{}: {} stored for {oks} 2xx answers ({got:?})",
                case.name,
                stored - stored_before
            ));
        }
        stored_before = stored;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_and_a_body_over_the_limit_is_refused_unsent() {
    let ws = Workspace::new("[queue]\nbackend = \"embedded\"\npath = \"{data}\"\n");
    let gw = ws.serve();
    // The head alone: a 100 Continue must come before the body is sent.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(&post(&["Expect: 100-continue", "Content-Length: 2"], "")).await.expect("head");
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an interim answer")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "RFC 9110 §10.1.1: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"{}").await.expect("body");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the answer")
        .expect("read");
    assert_eq!(statuses(&buf[..n]), vec![202], "{:?}", String::from_utf8_lossy(&buf[..n]));
    // Over the limit: the final 413 comes without waiting for the body.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(&post(&["Expect: 100-continue", "Content-Length: 999999999"], "")).await.expect("head");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    assert_eq!(statuses(&buf[..n]), vec![413], "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(ws.stats("ingest").await.visible, 1);
}
