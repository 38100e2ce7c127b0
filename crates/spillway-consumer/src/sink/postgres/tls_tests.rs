//! The sink's TLS against the test PostgreSQL servers (spillway-pg reads
//! the settings; these check the connections they give).

use std::time::Duration;

use spillway_queue::testkit::tls_file;

use super::PostgresSink;
use crate::sink::SinkSetupError;

fn port() -> u16 {
    std::env::var("SPILLWAY_TEST_PG_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5432)
}

/// The URL of the test server at `host` (with `hostaddr` 127.0.0.1), port `port`.
fn url(host: &str, port: u16, params: &str) -> String {
    format!("postgres://postgres@{host}:{port}/postgres?hostaddr=127.0.0.1&{params}")
}

async fn connect(url: &str) -> Result<PostgresSink, SinkSetupError> {
    let table = format!("tls_probe_{}", std::process::id());
    PostgresSink::connect(url, &table, true, Duration::from_secs(5)).await
}

/// Whether the sink's connection is encrypted, as the server sees it.
async fn encrypted(url: &str) -> bool {
    let sink = connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e} (start the test servers with `deploy/local/services.sh up`)"));
    let client = sink.pool.get().await.expect("a pooled connection");
    client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn each_sslmode_gets_the_connection_libpq_would() {
    let ca = tls_file("ca.crt");
    let p = port();
    assert!(!encrypted(&url("127.0.0.1", p, "sslmode=disable")).await, "disable");
    assert!(encrypted(&url("127.0.0.1", p, "sslmode=prefer")).await, "prefer, offered");
    assert!(encrypted(&url("127.0.0.1", p, "application_name=x")).await, "prefer is the default");
    assert!(encrypted(&url("127.0.0.1", p, "sslmode=require")).await, "require");
    assert!(encrypted(&url("127.0.0.1", p, &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);
    assert!(encrypted(&url("localhost", p, &format!("sslmode=verify-full&sslrootcert={ca}"))).await);
    // Without TLS on offer, `prefer` goes on in the clear.
    assert!(!encrypted(&url("127.0.0.1", p + 1, "sslmode=prefer")).await, "prefer, not offered");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_sslrootcert() {
    let other = tls_file("other-ca.crt");
    for mode in ["verify-ca", "verify-full", "require"] {
        let e = connect(&url("localhost", port(), &format!("sslmode={mode}&sslrootcert={other}")))
            .await
            .err()
            .unwrap_or_else(|| panic!("sslmode={mode} connected with a CA that signed nothing"))
            .to_string();
        assert!(
            e.contains("UnknownIssuer") && e.contains("sslrootcert") && e.contains(&other),
            "{mode}: {e}"
        );
    }
}

/// The certificate names localhost and 127.0.0.1: under another name,
/// `verify-full` refuses and `verify-ca` (the chain only) does not.
#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let ca = tls_file("ca.crt");
    let e = connect(&url("db.example", port(), &format!("sslmode=verify-full&sslrootcert={ca}")))
        .await
        .err()
        .expect("verify-full connected under a name the certificate lacks")
        .to_string();
    assert!(e.contains("not valid for name \"db.example\"") && e.contains("name the host"), "{e}");
    assert!(encrypted(&url("db.example", port(), &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    let e = connect(&url("127.0.0.1", port() + 1, "sslmode=require"))
        .await
        .err()
        .expect("sslmode=require went on in the clear")
        .to_string();
    assert!(e.contains("server does not support TLS") && e.contains("sslmode=require"), "{e}");
}

#[test]
fn a_ca_file_that_is_not_there_stops_config_check() {
    let e = PostgresSink::check(
        "postgres://db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "events",
        Duration::from_secs(5),
    )
    .expect_err("refused")
    .to_string();
    assert!(
        e.contains("consumer.sink.url") && e.contains("sslrootcert") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}
