//! The load harness end to end, a few seconds at a low rate: `spillway
//! serve` on the embedded queue, `spillway consume` into the stdout sink,
//! and `spillway-load` verifying every accepted id in the consumer's output
//! (lost = 0, exit 0), with its JSON, Markdown and charts written. And the
//! same harness pointed at output that misses the messages reports them
//! lost and exits 1: the check can fail.

use std::process::Command;

use spillway_e2e::{load_binary, Workspace};

const CONFIG: &str = r#"
[queue]
backend = "embedded"
path = "{data}"

[[ingest.routes]]
path = "/ingest"
queue = "ingest"

[consumer]
queue = "ingest"
wait = "200ms"

[consumer.sink]
type = "stdout"
"#;

fn harness(url: &str, jsonl: &std::path::Path, out: &std::path::Path, settle: &str) -> std::process::Output {
    Command::new(load_binary())
        .args(["run", "--url", url, "--rate", "60", "--duration", "3s", "--payload", "json", "--quiet"])
        .args(["--settle", settle, "--verify-jsonl"])
        .arg(jsonl)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run spillway-load")
}

#[test]
fn a_short_run_verifies_every_accepted_request_delivered() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    let delivered = ws.dir.path().join("delivered.jsonl");
    let _consumer = ws.consume_to(&delivered);
    let out_dir = ws.dir.path().join("results");
    let run = harness(&gw.url("/ingest"), &delivered, &out_dir, "30s");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json"))
            .expect("json");
    assert_eq!(results["sent"], 180, "60/s for 3 s");
    assert_eq!(results["accepted"], 180, "{results}");
    let v = &results["verification"];
    assert_eq!(v["accepted"], 180);
    assert_eq!(v["delivered"], 180);
    assert_eq!(v["lost"].as_array().map(Vec::len), Some(0));
    assert!(results["latency"]["p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{results}");
    for chart in ["throughput.svg", "latency.svg", "statuses.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(chart)).expect(chart);
        assert!(svg.contains("<svg"), "{chart} is not an SVG");
    }
    assert!(std::fs::read_to_string(out_dir.join("results.md")).expect("results.md").contains("**0**"));
}

#[test]
fn accepted_requests_missing_at_the_end_are_reported_lost() {
    let ws = Workspace::new(CONFIG);
    let gw = ws.serve();
    // No consumer writes here: everything accepted is missing.
    let nowhere = ws.dir.path().join("nothing.jsonl");
    let run = harness(&gw.url("/ingest"), &nowhere, &ws.dir.path().join("results"), "1s");
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stdout));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.dir.path().join("results/results.json")).expect("results"))
            .expect("json");
    assert_eq!(results["verification"]["lost"].as_array().map(Vec::len), Some(180));
}
