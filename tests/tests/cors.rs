//! CORS over real HTTP against `spillway serve`: the allow-list of the
//! original setup (`https://*.test.com`, `https://test.com`, credentials),
//! reflected on the preflight, on PUT/POST answers and on error answers.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use spillway_e2e::Workspace;

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.cors]
allowed_origins = ["https://*.test.com", "https://*.other.test", "https://test.com"]
allow_credentials = true

[ingest.limits]
max_body_bytes = 1024

[ingest.publisher]
send_timeout = "1s"
"#;

const ALLOWED: [&str; 3] = ["https://a.test.com", "https://test.com", "https://deep.sub.other.test"];
const REFUSED: [&str; 4] =
    ["https://evil.com", "https://test.com.evil.com", "https://atest.com", "http://a.test.com"];

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

fn vary_has_origin(res: &Response) -> bool {
    res.headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

fn assert_reflected(res: &Response, origin: &str) {
    let h = res.headers();
    assert_eq!(h.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(origin), "{h:?}");
    assert_eq!(
        h.get("access-control-allow-credentials").and_then(|v| v.to_str().ok()),
        Some("true"),
        "{h:?}"
    );
    assert!(vary_has_origin(res), "Vary: Origin missing: {h:?}");
}

fn assert_no_cors(res: &Response) {
    let h = res.headers();
    let cors: Vec<_> = h.keys().filter(|k| k.as_str().starts_with("access-control-")).collect();
    assert!(cors.is_empty(), "a refused origin got CORS headers: {cors:?}");
    assert!(vary_has_origin(res), "Vary: Origin missing on a refused origin: {h:?}");
}

#[tokio::test]
async fn preflight_and_put_reflect_allowed_origins() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let c = client();
    for origin in ALLOWED {
        let pre = c
            .request(Method::OPTIONS, gw.url("/ingest"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .expect("preflight");
        assert_eq!(pre.status(), 204, "preflight from {origin}");
        assert_reflected(&pre, origin);
        let methods =
            pre.headers().get("access-control-allow-methods").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(methods.contains("PUT") && methods.contains("POST"), "allowed methods: {methods}");
        let allowed_headers =
            pre.headers().get("access-control-allow-headers").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(allowed_headers.contains("content-type"), "{allowed_headers}");
        assert!(pre.headers().contains_key("access-control-max-age"));

        for method in [Method::PUT, Method::POST] {
            let res = c
                .request(method.clone(), gw.url("/ingest"))
                .header("origin", origin)
                .header("content-type", "application/json")
                .body(r#"{"event":"click"}"#)
                .send()
                .await
                .expect("send");
            assert_eq!(res.status(), 202, "{method} from {origin}");
            assert_reflected(&res, origin);
        }
    }
    assert_eq!(ws.stats("ingest").await.visible, 6);
}

#[tokio::test]
async fn refused_origins_get_no_cors_headers_and_still_vary() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let c = client();
    for origin in REFUSED {
        let pre = c
            .request(Method::OPTIONS, gw.url("/ingest"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .send()
            .await
            .expect("preflight");
        assert_no_cors(&pre);
        let res = c.put(gw.url("/ingest")).header("origin", origin).body("x").send().await.expect("put");
        // Not strict: the request itself goes through; the browser hides the answer.
        assert_eq!(res.status(), 202, "{origin}");
        assert_no_cors(&res);
    }
}

#[tokio::test]
async fn origins_match_without_regard_to_case() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let res = client()
        .post(gw.url("/ingest"))
        .header("ORIGIN", "HTTPS://A.TEST.COM")
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 202);
    assert_reflected(&res, "HTTPS://A.TEST.COM");
}

#[tokio::test]
async fn error_answers_carry_cors_headers_too() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let c = client();
    let origin = "https://a.test.com";

    let too_big =
        c.put(gw.url("/ingest")).header("origin", origin).body(vec![b'x'; 2048]).send().await.expect("413");
    assert_eq!(too_big.status(), 413);
    assert_reflected(&too_big, origin);

    let unknown = c.put(gw.url("/nope")).header("origin", origin).body("{}").send().await.expect("404");
    assert_eq!(unknown.status(), 404);
    assert_reflected(&unknown, origin);
    let unknown_refused =
        c.put(gw.url("/nope")).header("origin", "https://evil.com").send().await.expect("404");
    assert_eq!(unknown_refused.status(), 404);
    assert_no_cors(&unknown_refused);

    let wrong_method = c.get(gw.url("/ingest")).header("origin", origin).send().await.expect("405");
    assert_eq!(wrong_method.status(), 405);
    assert_reflected(&wrong_method, origin);

    // Make the queue unavailable: another process holds SQLite's write lock,
    // as a stuck disk or a long backup would. The gateway must answer 503
    // with Retry-After, quickly, and still with CORS.
    let db = rusqlite::Connection::open(ws.data().join("queue.db")).expect("open db");
    db.execute_batch("BEGIN EXCLUSIVE").expect("lock the queue");
    let down = c
        .put(gw.url("/ingest"))
        .header("origin", origin)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("503");
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"), "{:?}", down.headers());
    assert_reflected(&down, origin);
    let body: serde_json::Value = down.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "queue_unavailable");
    db.execute_batch("ROLLBACK").expect("unlock");
}

#[tokio::test]
async fn strict_origin_refuses_and_enqueues_nothing() {
    let strict =
        CONFIG.replace("allow_credentials = true\n", "allow_credentials = true\nstrict_origin = true\n");
    let ws = Workspace::new(&strict);
    let gw = ws.serve();
    let c = client();
    let res =
        c.post(gw.url("/ingest")).header("origin", "https://evil.com").body("x").send().await.expect("post");
    assert_eq!(res.status(), 403);
    assert_no_cors(&res);
    let ok =
        c.post(gw.url("/ingest")).header("origin", "https://test.com").body("x").send().await.expect("post");
    assert_eq!(ok.status(), 202);
    let no_origin = c.post(gw.url("/ingest")).body("x").send().await.expect("post");
    assert_eq!(no_origin.status(), 202, "servers and curl send no Origin and are not refused");
    assert_eq!(ws.stats("ingest").await.visible, 2);
}
