//! A fault drill, end to end and short: `spillway-load drill` starts the
//! gateway (embedded queue) and a consumer (stdout sink) from a scenario
//! file, sends 100 requests a second for 5 s, `kill -9`s the consumer and
//! then the gateway, starts each again, and verifies that every accepted
//! request was delivered. The full-size drills (a million requests) are
//! benchmarks: benches/drill.sh.

use std::process::Command;

use spillway_e2e::{binary, free_port, load_binary};

#[test]
fn a_drill_with_kills_loses_nothing_and_restarts_what_it_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("spillway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
backend = "embedded"
path = "{data}"

[server]
listen = "127.0.0.1:{port}"

[queues.ingest.dead_letter]
visibility_timeout = "2s"

[[ingest.routes]]
path = "/ingest"
queue = "ingest"

[consumer]
queue = "ingest"
wait = "200ms"

[consumer.sink]
type = "stdout"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let delivered = dir.path().join("delivered.jsonl");
    let spillway = binary();
    let scenario = dir.path().join("drill.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"
[target]
url = "http://127.0.0.1:{port}/ingest"
timeout = "5s"

[load]
kind = "constant"
rate = 100
duration = "5s"

[verify]
jsonl = "{delivered}"
settle = "30s"

[processes.gateway]
cmd = ["{spillway}", "--config", "{config}", "serve"]
ready = "http://127.0.0.1:{port}/readyz"

[processes.consumer]
cmd = ["{spillway}", "--config", "{config}", "consume"]
stdout = "{delivered}"

[[faults]]
at = "1500ms"
kill = "consumer"
down = "300ms"

[[faults]]
at = "3s"
kill = "gateway"
down = "300ms"
"#,
            delivered = delivered.display(),
            spillway = spillway.display(),
            config = config.display(),
        ),
    )
    .expect("write scenario");
    let out = dir.path().join("results");
    let run = Command::new(load_binary())
        .args(["drill", "--quiet", "--out"])
        .arg(&out)
        .arg(&scenario)
        .output()
        .expect("run spillway-load drill");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("json");
    assert_eq!(r["sent"], 500);
    assert!(r["accepted"].as_u64().is_some_and(|n| n >= 250), "most requests accepted: {r}");
    assert_eq!(r["verification"]["lost"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["verification"]["delivered"], r["accepted"]);
    let faults = r["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 2, "{faults:?}");
    assert!(faults.iter().all(|f| !f["what"].as_str().unwrap_or("").contains("failed")), "{faults:?}");
    for p in ["gateway", "consumer"] {
        assert_eq!(r["processes"][p]["starts"], 2, "{p} started, killed, started again: {r}");
        assert!(r["processes"][p]["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{p}: {r}");
    }
}
