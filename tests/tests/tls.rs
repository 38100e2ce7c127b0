//! TLS on the gateway's own listener (`[server.tls]`): served with the
//! test CA's certificate, refused to a client that does not trust it and
//! in cleartext, and reloaded when the files change, without a restart.

use std::{path::Path, process::Command, time::Duration};

use spillway_e2e::{eventually, Workspace};
use spillway_queue::testkit::tls_dir;

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[server.tls]
cert_file = "{dir}/server.crt"
key_file = "{dir}/server.key"
reload_every = "200ms"

[[ingest.routes]]
path = "/ingest"
queue = "ingest"
"#;

/// A client that trusts only the PEM certificate at `ca`.
fn client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("a CA file");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// A gateway whose certificate files are copies in its own folder (so the
/// test can replace them).
fn workspace() -> Workspace {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = dir.keep();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(tls_dir().join(f), files.join(f)).expect("copy the test certificate");
    }
    Workspace::new(&CONFIG.replace("{dir}", &files.display().to_string()))
}

fn cert_files(ws: &Workspace) -> std::path::PathBuf {
    let text = std::fs::read_to_string(ws.config()).expect("config");
    let line = text.lines().find(|l| l.starts_with("cert_file")).expect("cert_file");
    Path::new(line.split('"').nth(1).expect("a path")).parent().expect("its folder").to_owned()
}

async fn post(http: &reqwest::Client, url: &str) -> Result<reqwest::StatusCode, reqwest::Error> {
    http.post(url).body(r#"{"over":"tls"}"#).send().await.map(|r| r.status())
}

#[tokio::test]
async fn the_gateway_serves_https_and_reloads_its_certificate() {
    let ws = workspace();
    let gw = ws.serve();
    let url = format!("https://{}/ingest", gw.addr);
    let trusting_ca = client(&tls_dir().join("ca.crt"));
    assert_eq!(post(&trusting_ca, &url).await.expect("https"), 202);
    assert!(
        post(&client(&tls_dir().join("other-ca.crt")), &url).await.is_err(),
        "a client that trusts another CA"
    );
    let plain = reqwest::Client::new()
        .post(format!("http://{}/ingest", gw.addr))
        .body("{}")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.map_or(true, |r| r.status() != 202), "served in cleartext");

    // A renewal: a new certificate, from the other CA, written over the files.
    let files = cert_files(&ws);
    let fresh = tempfile::tempdir().expect("tempdir");
    let at = |f: &str| fresh.path().join(f);
    std::fs::write(at("ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").expect("ext");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=renewed"),
        os("-keyout"),
        at("server.key").as_os_str(),
        os("-out"),
        at("server.csr").as_os_str(),
    ]);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        at("server.csr").as_os_str(),
        os("-CA"),
        tls_dir().join("other-ca.crt").as_os_str(),
        os("-CAkey"),
        tls_dir().join("other-ca.key").as_os_str(),
        os("-set_serial"),
        os("7"),
        os("-days"),
        os("1"),
        os("-extfile"),
        at("ext").as_os_str(),
        os("-out"),
        at("server.crt").as_os_str(),
    ]);
    for f in ["server.key", "server.crt"] {
        // As cert-manager does: a new file renamed over the old one.
        std::fs::copy(at(f), files.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(files.join(format!("{f}.new")), files.join(f)).expect("rename");
    }
    let trusting_renewed = client(&tls_dir().join("other-ca.crt"));
    eventually(Duration::from_secs(10), "the renewed certificate served", || async {
        post(&trusting_renewed, &url).await.is_ok_and(|s| s == 202)
    })
    .await;
    assert!(
        post(&client(&tls_dir().join("ca.crt")), &url).await.is_err(),
        "the old certificate is still served"
    );
    assert_eq!(ws.stats("ingest").await.pending(), 2);
}

#[test]
fn a_key_that_is_not_there_stops_config_check_naming_it() {
    let ws = Workspace::new(&CONFIG.replace("{dir}", "/nonexistent/tls"));
    let out = ws.cli(&["config", "check"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("server.tls.cert_file") && said.contains("/nonexistent/tls/server.crt"), "{said}");
}
