//! Rate limits over HTTP against the real binary: past a route's burst, or
//! a client's, the answer is a 429 with `Retry-After` and a JSON error a
//! browser can read (CORS headers), and nothing is stored. The client is
//! the one a trusted proxy names in `X-Forwarded-For`, and that address is
//! the envelope's `source_ip`.
//!
//! No clock is involved: the buckets refill once every 100 s, far longer
//! than the test runs, so every answer is decided by the count alone.

use std::{collections::BTreeSet, time::Duration};

use spillway_e2e::{raw, Workspace};

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest]
trusted_proxies = ["127.0.0.1"]

[ingest.cors]
allowed_origins = ["https://*.test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/route"
queue = "route"
throttle = { route = { rate = 1, burst = 3, per = "100s" } }

[[ingest.routes]]
path = "/client"
queue = "client"
throttle = { per_ip = { rate = 1, burst = 2, per = "100s" } }

[[ingest.routes]]
path = "/free"
queue = "free"
"#;

async fn post(http: &reqwest::Client, url: &str, forwarded_for: &str) -> reqwest::Response {
    http.post(url)
        .header("origin", "https://app.test.com")
        .header("x-forwarded-for", forwarded_for)
        .header("content-type", "application/json")
        .body(r#"{"event":"click"}"#)
        .send()
        .await
        .expect("post")
}

async fn assert_throttled(res: reqwest::Response, scope: &str) {
    assert_eq!(res.status(), 429);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a 429 says when to retry");
    assert!((1..=100).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        res.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.test.com"),
        "a browser must be able to read the 429"
    );
    let body: serde_json::Value = res.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "throttled");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(scope)), "{body}");
}

/// Every stored message's envelope `source_ip` in `queue`.
async fn source_ips(ws: &Workspace, queue: &str) -> Vec<String> {
    let consumer = ws.queue().await.consumer(queue).await.expect("consumer");
    let mut ips = Vec::new();
    loop {
        let batch = consumer.receive(100, Duration::from_millis(200)).await.expect("receive");
        if batch.is_empty() {
            return ips;
        }
        for d in batch {
            let envelope: serde_json::Value = serde_json::from_slice(&d.message.body).expect("an envelope");
            ips.push(envelope["source_ip"].as_str().unwrap_or("-").to_owned());
        }
    }
}

#[tokio::test]
async fn past_the_burst_a_429_with_retry_after_and_nothing_stored() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let http = reqwest::Client::new();

    // The route's bucket is shared by every client.
    for (i, client) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"].iter().enumerate() {
        assert_eq!(post(&http, &gw.url("/route"), client).await.status(), 202, "request {i}");
    }
    assert_throttled(post(&http, &gw.url("/route"), "198.51.100.4").await, "route").await;
    assert_eq!(ws.stats("route").await.visible, 3, "a throttled request was stored");
    // A head proxies could frame two ways is refused as such before any
    // other answer, and its connection closed, throttled or not.
    let smuggled = b"POST /route HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let res = raw(gw.addr, smuggled, false).await.expect("raw request");
    assert_eq!((res.status, res.error_code().expect("JSON error")), (400, "ambiguous_framing".to_owned()));
    assert_eq!(res.header("connection"), Some("close"));

    // Each client has a bucket of its own.
    for _ in 0..2 {
        assert_eq!(post(&http, &gw.url("/client"), "198.51.100.1").await.status(), 202);
    }
    assert_throttled(post(&http, &gw.url("/client"), "198.51.100.1").await, "client").await;
    // The proxy appended the real client; the first entry is the client's own claim.
    assert_eq!(post(&http, &gw.url("/client"), "198.51.100.1, 198.51.100.2").await.status(), 202);
    assert_eq!(ws.stats("client").await.visible, 3);
    let ips: BTreeSet<String> = source_ips(&ws, "client").await.into_iter().collect();
    assert_eq!(ips, BTreeSet::from(["198.51.100.1".to_owned(), "198.51.100.2".to_owned()]));

    // A route without limits is not limited.
    for _ in 0..10 {
        assert_eq!(post(&http, &gw.url("/free"), "198.51.100.1").await.status(), 202);
    }
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_its_own_address() {
    // Nothing is trusted: X-Forwarded-For is the client's own claim, so
    // changing it does not buy a new bucket.
    let ws = Workspace::new(&CONFIG.replace(r#"trusted_proxies = ["127.0.0.1"]"#, "trusted_proxies = []"));
    let gw = ws.serve();
    let http = reqwest::Client::new();
    assert_eq!(post(&http, &gw.url("/client"), "198.51.100.1").await.status(), 202);
    assert_eq!(post(&http, &gw.url("/client"), "198.51.100.2").await.status(), 202);
    assert_throttled(post(&http, &gw.url("/client"), "198.51.100.3").await, "client").await;
    assert_eq!(source_ips(&ws, "client").await, vec!["127.0.0.1".to_owned(); 2]);
}

#[test]
fn bad_limits_stop_start_up_naming_their_key() {
    for (config, key) in [
        ("[ingest]\nthrottle = { route = { rate = 0, burst = 1 } }", "ingest.throttle.route.rate"),
        ("[ingest]\ntrusted_proxies = [\"10.0.0.0/33\"]", "ingest.trusted_proxies[0]"),
        (
            "[[ingest.routes]]\npath = \"/a\"\nqueue = \"a\"\nthrottle = { per_ip = { rate = 1, burst = 0 } }",
            "ingest.routes[0].throttle.per_ip.burst",
        ),
    ] {
        let out = Workspace::new(config).cli(&["config", "check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(key), "{config}: {stderr}");
    }
}

/// A client with a /64 of IPv6 addresses is one client, whichever address
/// and port the proxy names (`[v6]:port`, as some proxies write it): its
/// burst of 2 is spent after two requests from two addresses, and a third
/// address of the same /64 is throttled. Another /64 is another client.
#[tokio::test]
async fn an_ipv6_client_is_its_64_whatever_address_and_port_it_uses() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let url = gw.url("/client");
    assert_eq!(post(&http, &url, "[2001:db8:7:7::1]:50001").await.status(), 202);
    assert_eq!(post(&http, &url, "[2001:db8:7:7:ffff::2]:50002").await.status(), 202);
    assert_throttled(post(&http, &url, "2001:db8:7:7:abcd::3").await, "client").await;
    assert_eq!(post(&http, &url, "[2001:db8:7:8::1]:50003").await.status(), 202, "another /64");
    // An IPv4 client with a port is that client, not the proxy.
    assert_eq!(post(&http, &url, "198.51.100.40:1234").await.status(), 202);
    assert_eq!(post(&http, &url, "198.51.100.40:5678").await.status(), 202);
    assert_throttled(post(&http, &url, "198.51.100.40").await, "client").await;
}
