//! `spillway import`, the real binary:
//!
//! - the seed's own setup as a serverless.yml (`docs/examples/seed-serverless.yml`)
//!   imported, accepted by `config check`, then run end to end against an
//!   SQS server with the same checks as `docs/examples/seed.toml`
//!   (`spillway_e2e::seed`);
//! - the seed as an API Gateway export, with a usage plan: `config check`
//!   accepts it once the key file it names exists, and the route then
//!   refuses a request without a key and stores one with it;
//! - the plugin README's examples: every route carried or reported, and
//!   `--strict` exits 3 on what was not carried;
//! - malformed and unsupported inputs: a clear message, a non-zero exit,
//!   nothing on standard output.

use std::process::{Command, Output};

use spillway_e2e::{binary, Workspace};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn import(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("import")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run spillway import")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn imported(args: &[&str]) -> (String, String) {
    let out = import(args);
    assert!(out.status.success(), "import {args:?}: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_serverless_file_imported_runs_the_seed_end_to_end() {
    let seed = root().join("docs/examples/seed-serverless.yml");
    let (toml, report) = imported(&[seed.to_str().expect("path")]);
    assert!(report.contains("0 not carried"), "{report}");
    let ws = Workspace::new(&toml);
    let check = ws.cli(&["config", "check"]);
    assert!(check.status.success(), "config check refused the import: {}\n{toml}", text(&check.stderr));
    // API Gateway answered the PUT with 200: so does the imported route.
    spillway_e2e::seed::the_seed_checks(&toml, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_export_imported_requires_its_api_key() {
    let fixtures = root().join("crates/spillway-import/fixtures");
    let export = fixtures.join("seed-export-oas30.json");
    let plans = fixtures.join("usage-plans.json");
    let (toml, report) =
        imported(&[export.to_str().expect("path"), "--usage-plans", plans.to_str().expect("path")]);
    assert!(report.contains("paths./health.get"), "{report}");
    assert!(toml.contains("files = [\"/etc/spillway-keys/keys\"]"), "{toml}");
    // Where the Secret would be mounted: here, a file of the test's own.
    let ws = Workspace::new(
        &toml
            .replace("[queue]\nbackend = \"sqs\"", "[queue]\nbackend = \"embedded\"\npath = \"{data}\"")
            .replace("region = \"us-east-1\"\n", "")
            .replace("retention = ", "# retention = "),
    );
    let keys = ws.dir.path().join("keys");
    std::fs::write(&keys, "a-partner-key-of-20-chars\n").expect("keys");
    let keys_list = format!("[\"{}\"]", keys.display());
    let ws = ws.with_env("SPILLWAY_INGEST__API_KEYS__FILES", &keys_list);
    let check = ws.cli(&["config", "check"]);
    assert!(check.status.success(), "{}\n{toml}", text(&check.stderr));
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let put = |key: Option<&str>| {
        let r = http.put(gw.url("/my/path")).header("content-type", "application/json").body("{}");
        match key {
            Some(k) => r.header("x-api-key", k),
            None => r,
        }
    };
    assert_eq!(put(None).send().await.expect("put").status(), 401);
    assert_eq!(put(Some("a-partner-key-of-20-chars")).send().await.expect("put").status(), 200);
    // A content type the template did not cover: API Gateway's 415.
    let xml = http
        .put(gw.url("/my/path"))
        .header("x-api-key", "a-partner-key-of-20-chars")
        .header("content-type", "application/xml")
        .body("<a/>")
        .send()
        .await
        .expect("put");
    assert_eq!(xml.status(), 415);
    assert_eq!(ws.stats("my-queue").await.visible, 1, "only the request with a key was stored");
}

#[test]
fn the_plugin_readme_examples_are_carried_or_reported_and_strict_says_so() {
    let readme = root().join("crates/spillway-import/fixtures/plugin-readme.yml");
    let path = readme.to_str().expect("path");
    let (toml, report) = imported(&[path]);
    for want in ["kinesis", "SNS is not supported", "OPEN", "cognitoIdentityId", "quota"] {
        assert!(report.contains(want), "the report does not say `{want}`:\n{report}");
    }
    let ws = Workspace::new(&toml);
    let keys = ws.dir.path().join("keys");
    std::fs::write(&keys, "a-partner-key-of-20-chars\n").expect("keys");
    let check = ws.cli_env(
        &["config", "check"],
        &[("SPILLWAY_INGEST__API_KEYS__FILES", &format!("[\"{}\"]", keys.display()))],
    );
    assert!(check.status.success(), "{}\n{toml}", text(&check.stderr));
    let strict = import(&["--strict", path]);
    assert_eq!(strict.status.code(), Some(3), "{}", text(&strict.stderr));
}

#[test]
fn malformed_and_unsupported_inputs_fail_with_a_message_and_no_output() {
    let dir = tempfile::tempdir().expect("dir");
    for (name, body, want) in [
        ("broken.yml", "custom: [1, 2\nprovider: x", "not YAML or JSON"),
        ("list.yml", "- a\n- b\n", "not a mapping"),
        ("other.yml", "name: x\n", "neither a serverless.yml"),
        (
            "sns.yml",
            "provider: {}\ncustom: {apiGatewayServiceProxies: [{sns: {path: /a, topicName: t}}]}\n",
            "no route",
        ),
        ("lambda.json", r#"{"openapi":"3.0.1","paths":{"/a":{"post":{}}}}"#, "API Gateway extensions"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("write");
        let out = import(&[path.to_str().expect("path")]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out.stderr).contains(want), "{name}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
    }
    let missing = import(&["/nonexistent/serverless.yml"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("/nonexistent/serverless.yml"), "{}", text(&missing.stderr));
}
