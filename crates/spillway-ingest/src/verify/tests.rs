//! Each scheme against its provider's published example where there is
//! one (GitHub's, Slack's and Standard Webhooks' documentation and test
//! vectors), against the provider's own library where it publishes none
//! (Stripe: stripe-python made the signature below; tests/tests/webhooks.rs
//! has Stripe's and Standard Webhooks' libraries sign live requests), and
//! against a value computed apart (Python's `hmac`) for Shopify, which
//! publishes neither; then tampered bodies, wrong secrets, stale
//! timestamps and rotated secrets.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::{secrets::key_id, Algorithm, Encoding, Failure, Scheme, Verifier, VerifyConfig};

fn cfg(scheme: Scheme, secrets: &[&str]) -> VerifyConfig {
    VerifyConfig {
        scheme,
        secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
        secret_files: Vec::new(),
        tolerance: Duration::from_secs(300),
        header: None,
        algorithm: Algorithm::default(),
        encoding: Encoding::default(),
        prefix: None,
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::try_from(*k).expect("name"), HeaderValue::from_str(v).expect("value"));
    }
    h
}

fn verifier(c: &VerifyConfig) -> Verifier {
    Verifier::new(c, "verify").expect("a valid verify config")
}

// GitHub's "Testing the webhook payload validation" example.
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

#[test]
fn github_accepts_its_documented_example_and_refuses_tampering() {
    let v = verifier(&cfg(Scheme::Github, &[GH_SECRET]));
    let h = headers(&[("x-hub-signature-256", GH_SIG)]);
    let ok = v.verify(&h, GH_BODY, 0).expect("GitHub's example verifies");
    assert_eq!(ok.scheme, "github");
    assert_eq!(ok.key_id, "2f8894d90ffb7560", "the key id is the secret's SHA-256, 8 bytes in hex");
    assert_eq!(v.verify(&h, b"Hello, World?", 0), Err(Failure::Mismatch), "a tampered body");
    let wrong = verifier(&cfg(Scheme::Github, &["another secret"]));
    assert_eq!(wrong.verify(&h, GH_BODY, 0), Err(Failure::Mismatch), "a wrong secret");
    assert_eq!(v.verify(&HeaderMap::new(), GH_BODY, 0), Err(Failure::Missing));
    let sha1 = headers(&[("x-hub-signature-256", "sha1=757107ea0eb2509fc211221cce984b8a37570b6d")]);
    assert_eq!(v.verify(&sha1, GH_BODY, 0), Err(Failure::Malformed));
    let not_hex = headers(&[("x-hub-signature-256", "sha256=zz")]);
    assert_eq!(v.verify(&not_hex, GH_BODY, 0), Err(Failure::Malformed));
}

// Slack's "Verifying requests from Slack" walk-through.
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: i64 = 1_531_420_618;
const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

#[test]
fn slack_accepts_its_documented_example_within_the_tolerance_only() {
    let v = verifier(&cfg(Scheme::Slack, &[SLACK_SECRET]));
    let h = headers(&[("x-slack-signature", SLACK_SIG), ("x-slack-request-timestamp", "1531420618")]);
    assert!(v.verify(&h, SLACK_BODY, SLACK_TS + 10).is_ok(), "Slack's example verifies");
    assert_eq!(v.verify(&h, SLACK_BODY, SLACK_TS + 301), Err(Failure::TooOld), "replayed 5 min later");
    assert_eq!(v.verify(&h, SLACK_BODY, SLACK_TS - 301), Err(Failure::TooOld), "from 5 min ahead");
    assert!(v.verify(&h, SLACK_BODY, SLACK_TS + 300).is_ok(), "at the tolerance's edge");
    let mut tampered = SLACK_BODY.to_vec();
    tampered[6] ^= 1;
    assert_eq!(v.verify(&h, &tampered, SLACK_TS), Err(Failure::Mismatch));
    // The timestamp is signed: moving it breaks the signature.
    let moved = headers(&[("x-slack-signature", SLACK_SIG), ("x-slack-request-timestamp", "1531420619")]);
    assert_eq!(v.verify(&moved, SLACK_BODY, SLACK_TS), Err(Failure::Mismatch));
    let no_ts = headers(&[("x-slack-signature", SLACK_SIG)]);
    assert_eq!(v.verify(&no_ts, SLACK_BODY, SLACK_TS), Err(Failure::Missing));
    let bad_ts = headers(&[("x-slack-signature", SLACK_SIG), ("x-slack-request-timestamp", "soon")]);
    assert_eq!(v.verify(&bad_ts, SLACK_BODY, SLACK_TS), Err(Failure::Malformed));
}

// The Standard Webhooks test vector (its libraries' tests).
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_TS: i64 = 1_614_265_330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn sw_headers(sig: &str) -> HeaderMap {
    headers(&[("webhook-id", SW_ID), ("webhook-timestamp", "1614265330"), ("webhook-signature", sig)])
}

#[test]
fn standard_webhooks_accepts_its_test_vector_among_several_signatures() {
    let v = verifier(&cfg(Scheme::StandardWebhooks, &[SW_SECRET]));
    assert!(v.verify(&sw_headers(SW_SIG), SW_BODY, SW_TS).is_ok(), "the test vector verifies");
    let several = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,c2lnbmF0dXJl {SW_SIG}");
    assert!(v.verify(&sw_headers(&several), SW_BODY, SW_TS).is_ok(), "any v1 signature may match");
    assert_eq!(
        v.verify(&sw_headers("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="), SW_BODY, SW_TS),
        Err(Failure::Mismatch)
    );
    assert_eq!(v.verify(&sw_headers(SW_SIG), br#"{"test": 2432232315}"#, SW_TS), Err(Failure::Mismatch));
    assert_eq!(v.verify(&sw_headers(SW_SIG), SW_BODY, SW_TS + 3600), Err(Failure::TooOld));
    assert_eq!(v.verify(&sw_headers("v1a,c2lnbmF0dXJl"), SW_BODY, SW_TS), Err(Failure::Malformed));
    // The secret's `whsec_` prefix is optional.
    let bare = verifier(&cfg(Scheme::StandardWebhooks, &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]));
    assert!(bare.verify(&sw_headers(SW_SIG), SW_BODY, SW_TS).is_ok());
    // The id is signed.
    let other_id = headers(&[
        ("webhook-id", "msg_other"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", SW_SIG),
    ]);
    assert_eq!(v.verify(&other_id, SW_BODY, SW_TS), Err(Failure::Mismatch));
    assert!(
        Verifier::new(&cfg(Scheme::StandardWebhooks, &["whsec_not base64!"]), "verify").is_err(),
        "a secret that is not base64 is a config error"
    );
}

// Made by stripe-python 16.1.0 (`WebhookSignature._compute_signature`, what it signs
// test events with) for t = 1700000000: tests/interop/webhook_signer.py.
const STRIPE_SECRET: &str = "whsec_stripe_test_secret";
const STRIPE_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
const STRIPE_V1: &str = "f0b45ad397b7d5f0c0a066aba48c4fdbf1e7da80b9ce240806f9bd530f378263";

#[test]
fn stripe_takes_any_v1_of_several_and_checks_t() {
    let v = verifier(&cfg(Scheme::Stripe, &[STRIPE_SECRET]));
    let sig = |s: &str| headers(&[("stripe-signature", s)]);
    let good = format!("t=1700000000,v1={STRIPE_V1}");
    assert!(v.verify(&sig(&good), STRIPE_BODY, 1_700_000_000).is_ok());
    let rotated = format!("t=1700000000,v1={},v1={STRIPE_V1},v0=6ffbb59b2300aae6", "0".repeat(64));
    assert!(v.verify(&sig(&rotated), STRIPE_BODY, 1_700_000_100).is_ok(), "Stripe sends a v1 per secret");
    assert_eq!(v.verify(&sig(&good), STRIPE_BODY, 1_700_000_301), Err(Failure::TooOld));
    let moved = format!("t=1700000001,v1={STRIPE_V1}");
    assert_eq!(v.verify(&sig(&moved), STRIPE_BODY, 1_700_000_000), Err(Failure::Mismatch));
    assert_eq!(v.verify(&sig(&format!("v1={STRIPE_V1}")), STRIPE_BODY, 0), Err(Failure::Malformed), "no t");
    assert_eq!(v.verify(&sig("t=1700000000,v0=abcd"), STRIPE_BODY, 1_700_000_000), Err(Failure::Malformed));
}

#[test]
fn shopify_and_generic_hmac() {
    // Computed apart: base64(HMAC-SHA256("shopify-app-secret", body)).
    let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    let v = verifier(&cfg(Scheme::Shopify, &["shopify-app-secret"]));
    let h = headers(&[("x-shopify-hmac-sha256", "0qOPB+qCuD6PqdjeIalQfDaZqdpEKmDncWovN8XEnt0=")]);
    assert!(v.verify(&h, body, 0).is_ok());
    assert_eq!(v.verify(&h, b"{}", 0), Err(Failure::Mismatch));

    // base64(HMAC-SHA512("generic-secret-0001", "hello")) after `sig=`.
    let mut c = cfg(Scheme::Hmac, &["generic-secret-0001"]);
    c.header = Some("x-signature".into());
    c.algorithm = Algorithm::Sha512;
    c.encoding = Encoding::Base64;
    c.prefix = Some("sig=".into());
    let v = verifier(&c);
    let sig = "sig=LLc97E1ZcMQI/x5qJcmyNEg4f1hIZ6QmMTiHLRQ281FU1tXbnObmBtOOew6cZ2pt72U/WNaSHbe4yHb6AblS4Q==";
    assert!(v.verify(&headers(&[("x-signature", sig)]), b"hello", 0).is_ok());
    assert_eq!(v.verify(&headers(&[("x-signature", &sig[4..])]), b"hello", 0), Err(Failure::Malformed));
    c.algorithm = Algorithm::Sha256;
    assert_eq!(verifier(&c).verify(&headers(&[("x-signature", sig)]), b"hello", 0), Err(Failure::Mismatch));

    let mut no_header = cfg(Scheme::Hmac, &["x"]);
    no_header.header = None;
    assert!(Verifier::new(&no_header, "verify").is_err(), "hmac needs a header");
    let mut stray = cfg(Scheme::Github, &["x"]);
    stray.prefix = Some("sha256=".into());
    assert!(Verifier::new(&stray, "verify").is_err(), "prefix is for hmac only");
    assert!(Verifier::new(&cfg(Scheme::Github, &[]), "verify").is_err(), "no secret at all");
}

#[test]
fn rotation_accepts_either_secret_and_names_the_one_that_matched() {
    let v = verifier(&cfg(Scheme::Github, &["the new secret", GH_SECRET]));
    let ok = v
        .verify(&headers(&[("x-hub-signature-256", GH_SIG)]), GH_BODY, 0)
        .expect("the old secret still works");
    assert_eq!(ok.key_id, key_id(GH_SECRET.as_bytes()));
    assert_ne!(ok.key_id, key_id(b"the new secret"));
}

#[test]
fn a_secret_file_is_read_again_when_it_changes_and_kept_when_it_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("github-secret");
    std::fs::write(&file, "the old secret\n").expect("write");
    let mut c = cfg(Scheme::Github, &[]);
    c.secret_files = vec![file.clone()];
    let v = verifier(&c);
    let h = headers(&[("x-hub-signature-256", GH_SIG)]);
    assert_eq!(v.verify(&h, GH_BODY, 0), Err(Failure::Mismatch));
    std::fs::write(&file, format!("{GH_SECRET}\n")).expect("rotate");
    let later = Instant::now() + Duration::from_secs(2);
    assert_eq!(v.secrets.current_at(later).len(), 1);
    assert!(v.verify(&h, GH_BODY, 0).is_ok(), "the rotated secret is used without a restart");
    // A file emptied mid-update keeps the secret read before.
    std::fs::write(&file, "").expect("empty");
    let _ = v.secrets.current_at(later + Duration::from_secs(2));
    assert!(v.verify(&h, GH_BODY, 0).is_ok());
}
