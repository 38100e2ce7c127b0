//! Bad input gets a clear answer and leaves no trace: the right status, a
//! JSON error body, nothing enqueued (checked through queue stats), and the
//! gateway still running afterwards.

use spillway_e2e::{raw, RawResponse, Workspace};

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.limits]
max_body_bytes = 1024
body_timeout = "1s"

[ingest.cors]
allowed_origins = ["https://*.test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/ingest"
queue = "ingest"
forward_headers = ["x-tenant"]

[[ingest.routes]]
path = "/json/{tenant}"
queue = "ingest"
content_types = ["application/json", "application/vnd.spillway+json"]

[[ingest.routes]]
path = "/ordered"
queue = "ingest"
ordering_key = { header = "x-customer" }
dedup_key = { json_pointer = "/event/id" }

[[ingest.routes]]
path = "/strict"
queue = "ingest"
[ingest.routes.cors]
allowed_origins = ["https://test.com"]
strict_origin = true
"#;

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    half_close: bool,
    status: u16,
    code: &'static str,
}

fn req(head: &str, body: &[u8]) -> Vec<u8> {
    let mut r = head.replace('\n', "\r\n").into_bytes();
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

fn cases() -> Vec<Case> {
    let big = vec![b'x'; 2000];
    vec![
        Case {
            name: "body over the limit, announced by Content-Length",
            request: req("POST /ingest HTTP/1.1\nHost: x\nContent-Length: 2000\n", &big),
            half_close: false,
            status: 413,
            code: "payload_too_large",
        },
        Case {
            name: "body over the limit, chunked without a length",
            request: req(
                "POST /ingest HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n",
                format!("7d0\r\n{}\r\n0\r\n\r\n", "x".repeat(2000)).as_bytes(),
            ),
            half_close: false,
            status: 413,
            code: "payload_too_large",
        },
        Case {
            name: "wrong method (GET)",
            request: req("GET /ingest HTTP/1.1\nHost: x\n", b""),
            half_close: false,
            status: 405,
            code: "method_not_allowed",
        },
        Case {
            name: "wrong method (DELETE)",
            request: req("DELETE /ingest HTTP/1.1\nHost: x\nContent-Length: 0\n", b""),
            half_close: false,
            status: 405,
            code: "method_not_allowed",
        },
        Case {
            name: "unknown route",
            request: req("POST /nowhere HTTP/1.1\nHost: x\nContent-Length: 2\n", b"{}"),
            half_close: false,
            status: 404,
            code: "not_found",
        },
        Case {
            name: "a lying Content-Length: the body ends early",
            request: req("POST /ingest HTTP/1.1\nHost: x\nContent-Length: 100\n", b"only ten.."),
            half_close: true,
            status: 400,
            code: "incomplete_body",
        },
        Case {
            name: "an invalid (non-text) forwarded header",
            request: [
                b"POST /ingest HTTP/1.1\r\nHost: x\r\nX-Tenant: caf\xe9\xff\r\nContent-Length: 2\r\n\r\n".as_slice(),
                b"{}",
            ]
            .concat(),
            half_close: false,
            status: 400,
            code: "invalid_header",
        },
        Case {
            name: "a Content-Type that is not text",
            request: [b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: a\xff\r\nContent-Length: 2\r\n\r\n".as_slice(), b"{}"]
                .concat(),
            half_close: false,
            status: 400,
            code: "invalid_header",
        },
        Case {
            name: "a malformed Origin",
            request: req("POST /ingest HTTP/1.1\nHost: x\nOrigin: not an origin\nContent-Length: 2\n", b"{}"),
            half_close: false,
            status: 400,
            code: "malformed_origin",
        },
        Case {
            name: "two Origin headers",
            request: req(
                "POST /ingest HTTP/1.1\nHost: x\nOrigin: https://a.test.com\nOrigin: https://b.test.com\nContent-Length: 2\n",
                b"{}",
            ),
            half_close: false,
            status: 400,
            code: "malformed_origin",
        },
        Case {
            name: "Content-Length and Transfer-Encoding: chunked together",
            request: req(
                "POST /ingest HTTP/1.1\nHost: x\nContent-Length: 7\nTransfer-Encoding: chunked\n",
                b"2\r\n{}\r\n0\r\n\r\n",
            ),
            half_close: false,
            status: 400,
            code: "ambiguous_framing",
        },
        Case {
            name: "an Upgrade on an ingest route",
            request: req(
                "POST /ingest HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\nContent-Length: 2\n",
                b"{}",
            ),
            half_close: false,
            status: 400,
            code: "upgrade_refused",
        },
        Case {
            name: "a non-JSON body on a JSON-only route",
            request: req(
                "POST /json/acme HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 9\n",
                b"not json!",
            ),
            half_close: false,
            status: 400,
            code: "invalid_json",
        },
        Case {
            name: "an empty body that claims to be JSON",
            request: req("POST /json/acme HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 0\n", b""),
            half_close: false,
            status: 400,
            code: "invalid_json",
        },
        Case {
            name: "a broken +json body",
            request: req(
                "POST /json/acme HTTP/1.1\nHost: x\nContent-Type: application/vnd.spillway+json\nContent-Length: 5\n",
                b"{\"a\":",
            ),
            half_close: false,
            status: 400,
            code: "invalid_json",
        },
        Case {
            name: "text/plain on a JSON-only route",
            request: req("POST /json/acme HTTP/1.1\nHost: x\nContent-Type: text/plain\nContent-Length: 2\n", b"{}"),
            half_close: false,
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "no Content-Type on a JSON-only route",
            request: req("POST /json/acme HTTP/1.1\nHost: x\nContent-Length: 2\n", b"{}"),
            half_close: false,
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "a path parameter that is not UTF-8",
            request: req(
                "POST /json/%FF%FE HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 2\n",
                b"{}",
            ),
            half_close: false,
            status: 400,
            code: "invalid_path",
        },
        Case {
            name: "the ordering key header is missing",
            request: req(
                "POST /ordered HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: 18\n",
                br#"{"event":{"id":1}}"#,
            ),
            half_close: false,
            status: 400,
            code: "missing_key",
        },
        Case {
            name: "the dedup key JSON pointer finds nothing",
            request: req(
                "POST /ordered HTTP/1.1\nHost: x\nX-Customer: c1\nContent-Type: application/json\nContent-Length: 11\n",
                br#"{"other":1}"#,
            ),
            half_close: false,
            status: 400,
            code: "missing_key",
        },
        Case {
            name: "an origin refused by a strict route",
            request: req("POST /strict HTTP/1.1\nHost: x\nOrigin: https://evil.com\nContent-Length: 2\n", b"{}"),
            half_close: false,
            status: 403,
            code: "forbidden",
        },
        Case {
            name: "a body that never finishes",
            request: req("POST /ingest HTTP/1.1\nHost: x\nContent-Length: 50\n", b"slow..."),
            half_close: false,
            status: 408,
            code: "request_timeout",
        },
    ]
}

#[tokio::test]
async fn each_bad_input_gets_its_status_a_json_error_and_enqueues_nothing() {
    let ws = Workspace::new(CONFIG);
    let mut gw = ws.serve();
    let all = cases();
    assert!(all.len() >= 15);
    let mut failures = Vec::new();
    for case in all {
        let res: RawResponse = match raw(gw.addr, &case.request, case.half_close).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let code = res.error_code().unwrap_or_else(|e| format!("<{e}>"));
        if res.status != case.status || code != case.code {
            failures.push(format!(
                "{}: got {} {code}, want {} {}",
                case.name, res.status, case.status, case.code
            ));
        }
        if !res.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
            failures.push(format!("{}: error body is not JSON: {:?}", case.name, res.header("content-type")));
        }
        if case.status == 405 && res.header("allow") != Some("POST, PUT") {
            failures.push(format!("{}: 405 without Allow: {:?}", case.name, res.headers));
        }
        let stats = ws.stats("ingest").await;
        if stats.pending() != 0 || stats.dead != 0 {
            failures.push(format!("{}: something was enqueued: {stats:?}", case.name));
        }
        if !gw.alive() {
            failures.push(format!("{}: the gateway died", case.name));
            break;
        }
    }
    assert!(failures.is_empty(), "bad inputs answered wrongly:\n{}", failures.join("\n"));
    // And it still serves good requests.
    let ok = reqwest::Client::new().post(gw.url("/ingest")).body("{}").send().await.expect("post");
    assert_eq!(ok.status(), 202);
    assert_eq!(ws.stats("ingest").await.visible, 1);
}

/// A first request that hyper takes but a simpler tracker would give up
/// on (two `Content-Length: 0` headers; an `Upgrade` it answers without
/// switching)
/// does not switch the CL+TE refusal off for the request after it on the
/// same connection: that one is still refused, and nothing is stored.
#[tokio::test]
async fn the_framing_refusal_holds_for_every_request_of_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    for first in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
        let smuggled = "POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        s.write_all(format!("{first}{smuggled}").as_bytes()).await.expect("write");
        let mut all = String::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_string(&mut all)).await;
        assert!(read.is_ok(), "the connection stayed open: {all}");
        assert!(all.starts_with("HTTP/1.1 200"), "{first:?}: {all}");
        assert!(all.contains("HTTP/1.1 400") && all.contains("ambiguous_framing"), "{first:?}: {all}");
    }
    assert_eq!(ws.stats("ingest").await.pending(), 0, "the smuggled body was stored");
}
