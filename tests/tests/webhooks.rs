//! Webhook signatures against the real binary: GitHub's documented example
//! is stored with what verified it; tampered, unsigned and stale requests
//! are 401 with the JSON body and CORS headers and leave nothing in the
//! queue; Stripe's and Standard Webhooks' own libraries (stripe-python,
//! standardwebhooks) sign live requests the gateway accepts, and Stripe's
//! library refuses what the gateway refuses; a secret file rotated under a
//! running gateway is used without a restart.

use std::time::Duration;

use spillway_e2e::{eventually, interop, Workspace};

const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
const STRIPE_SECRET: &str = "whsec_e2e_stripe_secret";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ORIGIN: &str = "https://app.test.com";

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[ingest.cors]
allowed_origins = ["https://*.test.com"]
allow_credentials = true

[[ingest.routes]]
path = "/hooks/github"
queue = "github"
verify = { scheme = "github", secret_files = ["{github_file}"] }

[[ingest.routes]]
path = "/hooks/stripe"
queue = "stripe"
verify = { scheme = "stripe", secrets = ["{stripe_secret}"], tolerance = "5m" }

[[ingest.routes]]
path = "/hooks/sw"
queue = "sw"
format = "raw"
verify = { scheme = "standard-webhooks", secrets = ["{sw_secret}"] }
"#;

fn workspace(github_secret: &str) -> (Workspace, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let github_file = dir.path().join("github-secret");
    std::fs::write(&github_file, format!("{github_secret}\n")).expect("write secret");
    let config = CONFIG
        .replace("{github_file}", &github_file.display().to_string())
        .replace("{stripe_secret}", STRIPE_SECRET)
        .replace("{sw_secret}", SW_SECRET);
    (Workspace::new(&config), dir, github_file)
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs(),
    )
    .expect("seconds")
}

/// Status, the reflected CORS origin, and the error code (if any).
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut req = http.post(url).header("origin", ORIGIN).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("post");
    let status = res.status().as_u16();
    let origin =
        res.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let v: serde_json::Value = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, origin, v["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn githubs_documented_example_is_stored_with_what_verified_it_and_bad_signatures_leave_no_trace() {
    let (ws, _dir, _) = workspace(GH_SECRET);
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let url = gw.url("/hooks/github");
    let sig = [("x-hub-signature-256", GH_SIG)];
    let (status, origin, _) = post(&http, &url, "Hello, World!", &sig).await;
    assert_eq!(status, 202, "GitHub's documented example");
    assert_eq!(origin.as_deref(), Some(ORIGIN));
    for (body, headers, code) in [
        ("Hello, World?", &sig[..], "signature_mismatch"),
        ("Hello, World!", &[][..], "signature_missing"),
        ("Hello, World!", &[("x-hub-signature-256", "sha256=not-hex")][..], "signature_malformed"),
    ] {
        let (status, origin, got) = post(&http, &url, body, headers).await;
        assert_eq!((status, got.as_str()), (401, code), "{body} {headers:?}");
        assert_eq!(origin.as_deref(), Some(ORIGIN), "a refusal carries the CORS headers too");
    }
    assert_eq!(ws.stats("github").await.visible, 1, "only the verified request is stored");
    let c = ws.queue().await.consumer("github").await.expect("consumer");
    let got = c.receive(10, Duration::from_millis(200)).await.expect("receive");
    let envelope: serde_json::Value = serde_json::from_slice(&got[0].message.body).expect("an envelope");
    assert_eq!(envelope["verified"], serde_json::json!({"scheme": "github", "key_id": "2f8894d90ffb7560"}));
    assert_eq!(envelope["body"], "Hello, World!");
    let metrics =
        http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for reason in ["mismatch", "missing", "malformed"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("spillway_webhook_verify_failures_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains("route=\"/hooks/github\"")
                && l.ends_with(" 1")),
            "no failure counted for {reason}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn stripe_and_standard_webhooks_signed_by_their_own_libraries_are_accepted_and_stale_ones_refused() {
    let (ws, _dir, _) = workspace(GH_SECRET);
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let body = r#"{"id":"evt_e2e","object":"event","type":"invoice.paid"}"#;

    let ts = now().to_string();
    let header = interop("webhook_signer.py", "stripe", &[STRIPE_SECRET, &ts, body]);
    let (status, _, code) =
        post(&http, &gw.url("/hooks/stripe"), body, &[("stripe-signature", &header)]).await;
    assert_eq!(status, 202, "stripe-python's signature: {code}");
    let tampered = body.replace("invoice.paid", "invoice.void");
    assert_eq!(interop("webhook_signer.py", "stripe-check", &[STRIPE_SECRET, &header, &tampered]), "refused");
    let (status, _, code) =
        post(&http, &gw.url("/hooks/stripe"), &tampered, &[("stripe-signature", &header)]).await;
    assert_eq!((status, code.as_str()), (401, "signature_mismatch"), "what Stripe's own check refuses");
    let stale = (now() - 600).to_string();
    let old = interop("webhook_signer.py", "stripe", &[STRIPE_SECRET, &stale, body]);
    let (status, _, code) = post(&http, &gw.url("/hooks/stripe"), body, &[("stripe-signature", &old)]).await;
    assert_eq!((status, code.as_str()), (401, "signature_too_old"), "a replay 10 minutes later");
    assert_eq!(ws.stats("stripe").await.visible, 1);

    let sw_body = r#"{"type":"user.created","data":{"id":42}}"#;
    let sig = interop("webhook_signer.py", "standard-webhooks", &[SW_SECRET, "msg_e2e_1", &ts, sw_body]);
    let headers =
        [("webhook-id", "msg_e2e_1"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", &sig)];
    let (status, _, code) = post(&http, &gw.url("/hooks/sw"), sw_body, &headers).await;
    assert_eq!(status, 202, "standardwebhooks' signature: {code}");
    let replayed_as =
        [("webhook-id", "msg_e2e_2"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", &sig)];
    let (status, _, code) = post(&http, &gw.url("/hooks/sw"), sw_body, &replayed_as).await;
    assert_eq!((status, code.as_str()), (401, "signature_mismatch"), "the id is signed");
    let c = ws.queue().await.consumer("sw").await.expect("consumer");
    let got = c.receive(10, Duration::from_millis(200)).await.expect("receive");
    assert_eq!(got.len(), 1);
    let attrs = &got[0].message.attributes;
    assert_eq!(attrs.get("spillway-verified-scheme").map(String::as_str), Some("standard-webhooks"));
    assert!(attrs.get("spillway-verified-key-id").is_some_and(|k| k.len() == 16), "{attrs:?}");
}

#[tokio::test]
async fn a_secret_file_rotated_under_a_running_gateway_is_used_without_a_restart() {
    let (ws, _dir, github_file) = workspace("the secret before the rotation");
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let url = gw.url("/hooks/github");
    let sig = [("x-hub-signature-256", GH_SIG)];
    let (status, _, code) = post(&http, &url, "Hello, World!", &sig).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "signature_mismatch"),
        "signed with a secret not yet configured"
    );
    // As Kubernetes updates a mounted Secret: a new file moved into place.
    let next = github_file.with_extension("new");
    std::fs::write(&next, format!("{GH_SECRET}\n")).expect("write");
    std::fs::rename(&next, &github_file).expect("rename");
    eventually(Duration::from_secs(10), "the rotated secret in use", || async {
        post(&http, &url, "Hello, World!", &sig).await.0 == 202
    })
    .await;
}
