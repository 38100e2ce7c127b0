//! What `deploy/` ships, checked against this binary.
//!
//! - The Kubernetes manifests (`deploy/kustomize`): every overlay renders
//!   with kustomize, every resource is valid Kubernetes, and every
//!   container starts with a configuration this `spillway` binary accepts,
//!   naming the overlay's backend. The checks themselves are in
//!   `deploy/kustomize/check.py`, which says what each one is.
//! - The Grafana dashboard (`deploy/grafana/spillway.json`): every metric
//!   it queries is one the gateway exports, so a renamed metric cannot leave
//!   a panel silently empty.
//!
//! Needs kustomize (or kubectl), the venv (`deploy/local/services.sh up`) and the
//! machine's PostgreSQL (`SPILLWAY_TEST_PG`); each fails loudly when missing.

use std::{collections::BTreeSet, path::PathBuf, process::Command, time::Duration};

use spillway_e2e::{
    binary, eventually, ids, pg, post_accepted, serve_consume_into_postgres, venv, Workspace,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_overlay_renders_validates_and_starts_with_a_valid_config() {
    let out = Command::new(venv().join("bin/python"))
        .arg(root().join("deploy/kustomize/check.py"))
        .arg(binary())
        .output()
        .expect("run deploy/kustomize/check.py (needs kustomize and the venv: deploy/local/services.sh up installs both)");
    assert!(
        out.status.success(),
        "the manifests fail their check:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `spillway_*` metric names in the dashboard's queries, as exported
/// (a histogram's `_bucket` series under the histogram's name).
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
            let mut rest = expr;
            while let Some(at) = rest.find("spillway_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name.strip_suffix("_bucket").unwrap_or(&name).to_owned());
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
    assert!(wanted.len() >= 8, "the dashboard's queries name only {wanted:?}");
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
    // The consumer counts its ack just after the sink call returns: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            http.get(gw.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
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
