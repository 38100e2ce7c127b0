//! Kafka over TLS and SASL, against the test broker's SSL listener and its
//! SASL_SSL listener (PLAIN and SCRAM users `spillway`, and the SCRAM user
//! `spillway-limited` its authorizer lets read but not write), which
//! `deploy/local/services.sh` starts with a throwaway CA. A round trip
//! uses every client the backend makes: the admin client (`ensure`), the
//! producer, the group member and the offset readers.
use std::{sync::Arc, time::Duration};

use super::{KafkaBackend, KafkaConfig};
use crate::{testkit::tls_file, Backend as _};

/// The SSL listener (`SPILLWAY_TEST_KAFKA_SSL`); its SASL_SSL listener is
/// the port above.
fn ssl_brokers() -> String {
    std::env::var("SPILLWAY_TEST_KAFKA_SSL").unwrap_or_else(|_| "127.0.0.1:9094".to_owned())
}

fn sasl_brokers() -> String {
    let ssl = ssl_brokers();
    let (host, port) = ssl.rsplit_once(':').expect("host:port");
    format!("{host}:{}", port.parse::<u16>().expect("a port") + 1)
}

fn config(brokers: String, options: &[(&str, &str)]) -> KafkaConfig {
    let mut c = KafkaConfig { partitions: 1, ..KafkaConfig::new(brokers) };
    c.options = options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    c
}

fn sasl(mechanism: &str, password: &str) -> KafkaConfig {
    let ca = tls_file("ca.crt");
    config(
        sasl_brokers(),
        &[
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", &ca),
            ("sasl.mechanisms", mechanism),
            ("sasl.username", "spillway"),
            ("sasl.password", password),
        ],
    )
}

/// Connects, sends one message, receives and acks it.
async fn round_trip(cfg: &KafkaConfig) {
    let b = KafkaBackend::connect(cfg).await.expect("clients");
    if let Err(e) = b.ready().await {
        panic!(
            "the TLS listener at {} refused ({e}): start the test broker with \
             `deploy/local/services.sh fresh-kafka`, which opens its SSL and SASL_SSL listeners",
            cfg.brokers
        );
    }
    crate::testkit::connectivity_round_trip(&b, &format!("kafka-tls-{:08x}", rand::random::<u32>())).await;
}

/// Waits for `ready` to fail, and returns its error's text.
async fn refused(cfg: &KafkaConfig) -> String {
    let b = KafkaBackend::connect(cfg).await.expect("clients are made without a connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match b.ready().await {
            Ok(()) => panic!("{} accepted a client it must refuse", cfg.brokers),
            // The first failure can come before librdkafka said why.
            Err(e) if e.to_string().contains("failed") || tokio::time::Instant::now() > deadline => {
                assert!(e.is_retryable(), "the operator's to fix, not the message's: {e}");
                return e.to_string();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test]
async fn ssl_with_the_servers_ca_round_trips() {
    let ca = tls_file("ca.crt");
    round_trip(&config(ssl_brokers(), &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)])).await;
}

#[tokio::test]
async fn sasl_ssl_scram_sha_256_round_trips() {
    round_trip(&sasl("SCRAM-SHA-256", "spillway-secret")).await;
}

#[tokio::test]
async fn sasl_ssl_scram_sha_512_round_trips() {
    round_trip(&sasl("SCRAM-SHA-512", "spillway-secret")).await;
}

#[tokio::test]
async fn sasl_ssl_plain_round_trips() {
    round_trip(&sasl("PLAIN", "spillway-secret")).await;
}

/// A CA that did not sign the broker's certificate: no connection, and the
/// error names the key to fix.
#[tokio::test]
async fn a_wrong_ca_is_refused_naming_ssl_ca_location() {
    let other = tls_file("other-ca.crt");
    let e =
        refused(&config(ssl_brokers(), &[("security.protocol", "SSL"), ("ssl.ca.location", &other)])).await;
    assert!(e.contains("certificate verify failed") && e.contains("ssl.ca.location"), "{e}");
}

/// A wrong SCRAM password: no connection, and the error says the login
/// was refused, and nothing of the password.
#[tokio::test]
async fn a_wrong_password_is_refused_naming_the_mechanism() {
    let e = refused(&sasl("SCRAM-SHA-256", "not-the-password")).await;
    assert!(e.contains("SASL authentication error") && e.contains("SCRAM-SHA-256"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");
}

/// A CA file that is not there is refused when the clients are made.
#[tokio::test]
async fn a_missing_ca_file_is_refused_at_connect_naming_it() {
    let cfg = config(
        ssl_brokers(),
        &[("security.protocol", "SSL"), ("ssl.ca.location", "/nonexistent/spillway-ca.crt")],
    );
    let e = KafkaBackend::connect(&cfg).await.err().expect("refused").to_string();
    assert!(e.contains("ssl.ca.location") && e.contains("/nonexistent/spillway-ca.crt"), "{e}");
}

/// An unsigned JWT (`alg: none`), which the test broker's OAUTHBEARER
/// listener takes (Kafka's unsecured validator; production brokers verify
/// a signature).
fn unsigned_jwt(sub: &str, exp: i64) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none"})),
        b64(serde_json::json!({"sub": sub, "iat": now, "exp": exp}))
    )
}

fn oauthbearer(token_file: &std::path::Path) -> KafkaConfig {
    let ca = tls_file("ca.crt");
    let mut cfg = config(
        sasl_brokers(),
        &[("security.protocol", "SASL_SSL"), ("ssl.ca.location", &ca), ("sasl.mechanisms", "OAUTHBEARER")],
    );
    cfg.oauthbearer_token_file = Some(token_file.to_owned());
    cfg
}

/// Every client the backend makes (the admin client and the offset
/// readers too, which nothing polls) logs in with the file's token.
#[tokio::test]
async fn sasl_ssl_oauthbearer_with_a_token_file_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token.jwt");
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    std::fs::write(&file, unsigned_jwt("spillway", exp)).expect("write the token");
    round_trip(&oauthbearer(&file)).await;
}

#[tokio::test]
async fn an_expired_token_or_a_token_without_oauthbearer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token.jwt");
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 60;
    std::fs::write(&file, unsigned_jwt("spillway", past)).expect("write the token");
    let e = KafkaBackend::connect(&oauthbearer(&file)).await.err().expect("an expired token").to_string();
    assert!(e.contains("OAUTHBEARER") && e.contains("unexpired"), "{e}");

    let mut plain = config(brokers_plain(), &[]);
    plain.oauthbearer_token_file = Some(file);
    let e =
        KafkaBackend::connect(&plain).await.err().expect("a token file without the mechanism").to_string();
    assert!(e.contains("oauthbearer_token_file") && e.contains("sasl.mechanisms"), "{e}");
}

fn brokers_plain() -> String {
    super::tests::brokers()
}

/// `spillway-limited` may describe and read topics named `acl-…` and
/// write none (the test broker's ACLs, `deploy/local/services.sh`).
fn limited() -> KafkaConfig {
    let ca = tls_file("ca.crt");
    config(
        sasl_brokers(),
        &[
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", &ca),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "spillway-limited"),
            ("sasl.password", "limited-secret"),
        ],
    )
}

/// A principal the broker's authorizer lets describe but not create or
/// write (ACLs missing, the operator's to fix) adopts the topics an
/// operator made, and gets a retryable error that names the
/// authorization and what to grant, for every send, and the failed
/// producer is not replaced per send (each new one would fail the same
/// way, one login and producer id request per HTTP request).
#[tokio::test]
async fn a_principal_that_may_not_write_gets_a_retryable_error_naming_the_grant() {
    use crate::{Admin as _, OutgoingMessage, QueueSpec};
    let queue = format!("acl-{:08x}", rand::random::<u32>());
    let root = KafkaBackend::connect(&sasl("SCRAM-SHA-512", "spillway-secret")).await.expect("clients");
    root.ensure(&QueueSpec::new(&queue)).await.expect("ensure as a super user");
    let b = KafkaBackend::connect(&limited()).await.expect("clients");
    b.ready().await.expect("a principal that may describe is ready");
    // May not create: the topics an operator made are adopted (`serve`
    // ensures its queues at start), missing ones named.
    b.ensure(&QueueSpec::new(&queue)).await.expect("ensure adopts the topics it may not create");
    let missing = format!("acl-missing-{:08x}", rand::random::<u32>());
    let e = b.ensure(&QueueSpec::new(&missing)).await.expect_err("nothing to adopt").to_string();
    assert!(e.contains("does not exist and this principal may not create it"), "{e}");
    let p = b.producer(&queue).await.expect("a principal that may describe the topic gets a producer");
    let mut producers = Vec::new();
    for i in 0..4 {
        let e = p.send(OutgoingMessage::new(format!("m{i}"), "denied")).await.expect_err("refused");
        assert!(e.is_retryable(), "the operator's to fix, not the message's: {e}");
        let text = e.to_string();
        assert!(text.to_lowercase().contains("authorization") && text.contains("grant"), "send {i}: {text}");
        producers.push(b.shared.producer());
    }
    // The first failure may be replaced once; never again in the period.
    assert!(Arc::ptr_eq(&producers[1], &producers[3]), "the failed producer was replaced per send");
    let r = root.consumer(&queue).await.expect("consumer");
    let got = r.receive(10, Duration::from_millis(500)).await.expect("receive");
    assert!(got.is_empty(), "a refused send stored a message: {got:?}");
}

/// A principal that may not even describe the topics of a queue is told
/// so at `ensure` and `producer`, not that the queue does not exist.
#[tokio::test]
async fn a_principal_that_may_not_describe_is_told_so_not_that_the_queue_is_missing() {
    use crate::{Admin as _, QueueSpec};
    let queue = format!("hidden-{:08x}", rand::random::<u32>());
    let root = KafkaBackend::connect(&sasl("SCRAM-SHA-512", "spillway-secret")).await.expect("clients");
    root.ensure(&QueueSpec::new(&queue)).await.expect("ensure as a super user");
    let b = KafkaBackend::connect(&limited()).await.expect("clients");
    let e = b.ensure(&QueueSpec::new(&queue)).await.expect_err("ensure refused");
    assert!(e.is_retryable() && e.to_string().contains("TopicAuthorizationFailed"), "{e}");
    let e = b.producer(&queue).await.err().expect("producer refused");
    assert!(e.is_retryable() && e.to_string().contains("TopicAuthorizationFailed"), "{e}");
}
