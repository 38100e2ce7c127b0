//! Connecting as operators set it up: `amqps://` against the test
//! broker's TLS listener (`deploy/local/services.sh` opens it with the test
//! CA's certificate and checks a client certificate when one is sent), and
//! a user without permissions.
use std::{path::PathBuf, time::Duration};

use super::{RabbitBackend, RabbitConfig, RabbitTls};
use crate::testkit::tls_dir;

/// `SPILLWAY_TEST_AMQPS`, or the single node's TLS listener.
fn url() -> String {
    std::env::var("SPILLWAY_TEST_AMQPS")
        .unwrap_or_else(|_| "amqps://guest:guest@127.0.0.1:5671/%2f".to_owned())
}

fn config(name: &str, tls: RabbitTls) -> RabbitConfig {
    RabbitConfig {
        spool: None,
        url: url(),
        urls: Vec::new(),
        connection_name: name.to_owned(),
        confirm_timeout: Duration::from_secs(10),
        management_url: None,
        publisher_channels: 1,
        tls,
    }
}

fn ca_only(file: &str) -> RabbitTls {
    RabbitTls { ca_file: Some(tls_dir().join(file)), ..RabbitTls::default() }
}

/// Ensures a queue, sends one message, receives and acks it.
async fn round_trip(b: &RabbitBackend) {
    crate::testkit::connectivity_round_trip(b, &format!("amqps-{:08x}", rand::random::<u32>())).await;
    b.delete_ensured().await.expect("the test's queues deleted");
}

async fn connect(cfg: &RabbitConfig) -> RabbitBackend {
    RabbitBackend::connect(cfg).await.unwrap_or_else(|e| {
        panic!("no amqps listener answers at {} ({e}): `deploy/local/services.sh up` opens it", cfg.url)
    })
}

#[tokio::test]
async fn amqps_with_a_private_ca_round_trips() {
    round_trip(&connect(&config("spillway-amqps-ca", ca_only("ca.crt"))).await).await;
}

/// The broker asks for a client certificate and checks the one it gets:
/// the connection it lists under our name carries the certificate's subject.
#[tokio::test]
async fn a_client_certificate_is_presented_and_accepted() {
    let name = format!("spillway-amqps-client-{:08x}", rand::random::<u32>());
    let tls = RabbitTls {
        ca_file: Some(tls_dir().join("ca.crt")),
        cert_file: Some(tls_dir().join("client.crt")),
        key_file: Some(tls_dir().join("client.key")),
    };
    let b = connect(&config(&name, tls)).await;
    round_trip(&b).await;
    let management = std::env::var("SPILLWAY_TEST_AMQP_MANAGEMENT")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned());
    let base = reqwest::Url::parse(&management).expect("management url");
    let mut subjects = Vec::new();
    // The management plugin lists a connection within its refresh (5 s).
    for _ in 0..40 {
        let mut api = base.clone();
        api.set_username("").ok();
        api.set_password(None).ok();
        let listed: serde_json::Value = reqwest::Client::new()
            .get(format!("{}api/connections?columns=client_properties,peer_cert_subject,ssl", api))
            .basic_auth(base.username(), base.password())
            .send()
            .await
            .expect("management API")
            .json()
            .await
            .expect("json");
        subjects = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c.pointer("/client_properties/connection_name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| n.starts_with(&name))
            })
            .map(|c| (c["ssl"].as_bool(), c["peer_cert_subject"].as_str().map(str::to_owned)))
            .collect();
        if !subjects.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!subjects.is_empty(), "the broker lists no connection named {name}");
    for (ssl, subject) in subjects {
        assert_eq!(ssl, Some(true));
        assert_eq!(subject.as_deref(), Some("CN=spillway"), "the client certificate's subject");
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_ca_file() {
    let e = RabbitBackend::connect(&config("spillway-amqps-wrong", ca_only("other-ca.crt")))
        .await
        .err()
        .expect("connected to a broker its CA did not sign")
        .to_string();
    assert!(
        e.contains("UnknownIssuer") && e.contains("queue.tls.ca_file") && e.contains("other-ca.crt"),
        "{e}"
    );
}

#[tokio::test]
async fn tls_files_for_a_plain_url_and_missing_files_are_refused() {
    let mut plain = config("spillway-amqps-plain", ca_only("ca.crt"));
    plain.url = "amqp://guest:guest@127.0.0.1:5672/%2f".into();
    let e = RabbitBackend::connect(&plain).await.err().expect("refused").to_string();
    assert!(e.contains("queue.tls") && e.contains("amqp://"), "{e}");

    let missing = RabbitTls { ca_file: Some(PathBuf::from("/nonexistent/ca.pem")), ..RabbitTls::default() };
    let e = RabbitBackend::connect(&config("spillway-amqps-missing", missing))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("queue.tls.ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");

    let half = RabbitTls { cert_file: Some(tls_dir().join("client.crt")), ..ca_only("ca.crt") };
    let e = RabbitBackend::connect(&config("spillway-amqps-half", half))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("key_file"), "{e}");
}

/// A user the broker lets in but gives no permission on the vhost (the
/// operator's slip, made by `deploy/local/services.sh`): declaring and
/// publishing are refused with ACCESS_REFUSED, which must be `Unavailable`
/// (a 503 the client retries), never a 4xx that tells it to drop its data.
#[tokio::test]
async fn access_refused_is_the_operators_not_the_messages() {
    let admin = RabbitBackend::connect(&RabbitConfig {
        url: plain_url(),
        ..config("spillway-acl-admin", RabbitTls::default())
    })
    .await
    .expect("guest connects");
    let name = format!("acl-{:08x}", rand::random::<u32>());
    crate::Admin::ensure(&admin, &crate::QueueSpec::new(&name)).await.expect("guest declares");

    let denied_url = plain_url().replacen("guest:guest", "spillway-denied:denied-secret", 1);
    let denied = RabbitBackend::connect(&RabbitConfig {
        url: denied_url,
        ..config("spillway-acl-denied", RabbitTls::default())
    })
    .await
    .unwrap_or_else(|e| {
        panic!("the user spillway-denied cannot log in ({e}): `deploy/local/services.sh up` makes it")
    });
    let declared = crate::Admin::ensure(&denied, &crate::QueueSpec::new(format!("{name}-x"))).await;
    let e = declared.expect_err("a user without permissions declared a queue");
    assert!(e.is_retryable() && e.to_string().contains("ACCESS_REFUSED"), "{e:?}");
    let sent = async {
        crate::Backend::producer(&denied, &name).await?.send(crate::OutgoingMessage::new("m", "x")).await
    }
    .await;
    let e = sent.expect_err("a user without permissions published");
    assert!(e.is_retryable(), "ACCESS_REFUSED on publish must be a 503: {e:?}");
    admin.delete_ensured().await.expect("cleanup");
}

fn plain_url() -> String {
    std::env::var("SPILLWAY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}
