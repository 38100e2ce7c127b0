//! The documented way to reach a Kafka that wants TLS and SASL/SCRAM
//! (docs/configuration.md): librdkafka properties from the environment,
//! dots in their names (`SPILLWAY_QUEUE__OPTIONS__SASL.PASSWORD`), the rest
//! in the TOML file. `queue ensure`, `serve` and `consume` all go through
//! the test broker's SASL_SSL listener (`deploy/local/services.sh`), and
//! `config check` shows the password masked.

use std::time::Duration;

use spillway_e2e::{eventually, Workspace};
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
