//! The documented way to reach a Kafka that wants TLS and SASL/SCRAM
//! (docs/configuration.md): librdkafka properties from the environment,
//! dots in their names (`SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD`), the rest
//! in the TOML file. `queue ensure`, `serve` and `consume` all go through
//! the test broker's SASL_SSL listener (`deploy/local/services.sh`), and
//! `config check` shows the password masked.

use std::time::Duration;

use spillway_e2e::{eventually, kafka_client, Workspace};
use spillway_queue::testkit::tls_file;

/// The test broker's SASL_SSL listener: the SSL one's port plus one.
fn sasl_brokers() -> String {
    let ssl = std::env::var("SPILLWAY_TEST_KAFKA_SSL").unwrap_or_else(|_| "127.0.0.1:9094".to_owned());
    let (host, port) = ssl.rsplit_once(':').expect("host:port");
    format!("{host}:{}", port.parse::<u16>().expect("a port") + 1)
}

fn unique(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

const PASSWORD: &str = "spillway-secret";

fn workspace(queue: &str) -> Workspace {
    let config = format!(
        r#"
[queue]
backend = "kafka"
brokers = "{brokers}"
partitions = 1

[[ingest.routes]]
path = "/ingest"
queue = "{queue}"

[consumer]
queue = "{queue}"
wait = "200ms"

[consumer.sink]
type = "stdout"
"#,
        brokers = sasl_brokers()
    );
    Workspace::new(&config)
        .with_env("SPILLWAY_QUEUE__OPTIONS__SECURITY.PROTOCOL", "SASL_SSL")
        .with_env("SPILLWAY_QUEUE__OPTIONS__SSL.CA.LOCATION", &tls_file("ca.crt"))
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.MECHANISMS", "SCRAM-SHA-512")
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.USERNAME", "spillway")
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD", PASSWORD)
}

#[tokio::test]
async fn serve_and_consume_over_sasl_ssl_configured_from_the_environment() {
    let queue = unique("e2e-sasl");
    let ws = workspace(&queue);

    let check = ws.cli(&["config", "check"]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}{}", String::from_utf8_lossy(&check.stderr));
    assert!(shown.contains("sasl.password") && shown.contains("SCRAM-SHA-512"), "{shown}");
    assert!(!shown.contains(PASSWORD), "config check shows the SASL password: {shown}");

    let ensure = ws.cli(&["queue", "ensure"]);
    assert!(
        ensure.status.success(),
        "queue ensure over SASL_SSL at {} failed (is the test broker's SASL_SSL listener up? \
         `deploy/local/services.sh fresh-kafka` opens it): {}",
        sasl_brokers(),
        String::from_utf8_lossy(&ensure.stderr)
    );
    let gw = ws.serve();
    let delivered = ws.dir.path().join("delivered.jsonl");
    let _consumer = ws.consume_to(&delivered);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let r = http.post(gw.url("/ingest")).body(r#"{"over":"sasl_ssl"}"#).send().await.expect("post");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    eventually(Duration::from_secs(30), "the message consumed over SASL_SSL", || async {
        std::fs::read_to_string(&delivered).is_ok_and(|t| t.contains("sasl_ssl"))
    })
    .await;
}

/// The same with a wrong password: `serve` stops at start, saying the
/// brokers refused the login and which mechanism, and nothing of the
/// password. (A running gateway whose sends fail this way answers 503 with
/// `Retry-After`: every Kafka error but a record's own size is the
/// operator's, see `kafka::queue_error`.)
#[tokio::test]
async fn a_refused_login_stops_serve_naming_the_cause_not_the_password() {
    let queue = unique("e2e-sasl-bad");
    let ws = workspace(&queue)
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD", "not-the-password")
        .with_env("SPILLWAY_QUEUE__SEND_TIMEOUT", "2s");
    let started = std::time::Instant::now();
    let out = ws.cli(&["serve"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve ran with a refused login: {said}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?} to give up", started.elapsed());
    // The error it stops with, not librdkafka's log lines before it.
    let error =
        said.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {said}"));
    assert!(error.contains("SASL authentication error") && error.contains("SCRAM-SHA-512"), "{error}");
    assert!(!said.contains("not-the-password"), "{said}");
}

/// The test broker's PLAINTEXT listener, where every client is a super
/// user (the ACLs are granted there).
fn plain_brokers() -> String {
    std::env::var("SPILLWAY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Takes back the Write grant of the test below, even when it fails: other
/// tests count on `spillway-limited` writing nothing.
struct Grant(String);

impl Drop for Grant {
    fn drop(&mut self) {
        kafka_client(&plain_brokers(), &["revoke-write", &self.0, "spillway-limited"]);
    }
}

/// A principal the broker's authorizer does not let write (a missing ACL,
/// the operator's to fix): every request is a 503 with `Retry-After` and a
/// JSON body, and nothing is stored; once Write is granted, the running
/// gateway accepts again without a restart, and only what it accepted is
/// delivered.
#[tokio::test]
async fn a_missing_write_acl_is_a_503_until_granted_then_accepted_without_a_restart() {
    // `spillway-limited` may describe and read topics named `acl-…`.
    let queue = unique("acl-e2e");
    let root = workspace(&queue);
    let ensure = root.cli(&["queue", "ensure"]);
    assert!(ensure.status.success(), "{}", String::from_utf8_lossy(&ensure.stderr));
    let limited = workspace(&queue)
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.USERNAME", "spillway-limited")
        .with_env("SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD", "limited-secret");
    let gw = limited.serve();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    for _ in 0..3 {
        let r = http.post(gw.url("/ingest")).body(r#"{"state":"refused"}"#).send().await.expect("post");
        assert_eq!(r.status(), 503, "a missing ACL told the client to drop its data");
        assert!(r.headers().contains_key("retry-after"), "{:?}", r.headers());
        let body: serde_json::Value = r.json().await.expect("a JSON error body");
        let text = body.to_string();
        assert_eq!(body["error"]["code"], "queue_unavailable", "{text}");
        assert!(!text.contains("limited-secret") && !text.contains("spillway-limited"), "{text}");
    }

    kafka_client(&plain_brokers(), &["allow-write", &queue, "spillway-limited"]);
    let _grant = Grant(queue.clone());
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(30), "a request accepted once Write is granted", || async {
        let r = http.post(gw.url("/ingest")).body(r#"{"state":"granted"}"#).send().await;
        r.is_ok_and(|r| r.status() == 202)
    })
    .await;
    eprintln!("accepted {:?} after the grant", started.elapsed());

    let delivered = root.dir.path().join("delivered.jsonl");
    let _consumer = root.consume_to(&delivered);
    eventually(Duration::from_secs(30), "the accepted message delivered", || async {
        std::fs::read_to_string(&delivered).is_ok_and(|t| t.contains("granted"))
    })
    .await;
    let got = std::fs::read_to_string(&delivered).expect("delivered");
    // One partition, in order: a refused request stored would come first.
    assert_eq!(got.lines().count(), 1, "only the accepted request is stored: {got}");
}
