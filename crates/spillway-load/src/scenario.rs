//! A drill, as a TOML file (`benches/scenarios/*.toml`): what to run, the
//! load, where to verify, and the faults at their times.
//!
//! ```toml
//! [target]
//! url = "http://127.0.0.1:18080/ingest"
//!
//! [load]
//! kind = "constant"
//! rate = 2000
//! duration = "60s"
//!
//! [verify]
//! postgres = "postgres://postgres@127.0.0.1:5432/test"
//! table = "drill"
//!
//! [processes.gateway]
//! cmd = ["target/release/spillway", "--config", "benches/scenarios/embedded.toml", "serve"]
//! ready = "http://127.0.0.1:18080/readyz"
//!
//! [processes.consumer]
//! cmd = ["target/release/spillway", "--config", "benches/scenarios/embedded.toml", "consume"]
//!
//! [[faults]]
//! at = "10s"
//! kill = "consumer"          # kill -9; the supervisor starts it again after `down`
//!
//! [[faults]]
//! at = "30s"
//! run = ["rabbitmqctl", "stop_app"]
//! then = ["rabbitmqctl", "start_app"]
//! down = "5s"
//!
//! [[faults]]
//! at = "45s"
//! lock_table = "10s"         # the verify table, ACCESS EXCLUSIVE, for 10 s
//! ```

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{payload::Shape, schedule::Schedule};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scenario {
    pub(crate) target: TargetSpec,
    pub(crate) load: LoadSpec,
    #[serde(default)]
    pub(crate) payload: PayloadSpec,
    pub(crate) verify: Option<VerifySpec>,
    /// Processes the supervisor starts, watches and restarts, by name.
    #[serde(default)]
    pub(crate) processes: BTreeMap<String, ProcessSpec>,
    /// Commands run once before the processes start (create a table…).
    #[serde(default)]
    pub(crate) setup: Vec<Vec<String>>,
    /// Environment for the setup commands and every process (a process's
    /// own `env` wins): config overrides such as `SPILLWAY_QUEUE__PATH`.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) faults: Vec<FaultSpec>,
    /// Metrics read from a process every second (`crate::watch`).
    pub(crate) watch: Option<crate::watch::WatchSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSpec {
    pub(crate) url: String,
    #[serde(default = "default_method")]
    pub(crate) method: String,
    pub(crate) origin: Option<String>,
    #[serde(default = "default_in_flight")]
    pub(crate) max_in_flight: usize,
    #[serde(default = "default_connections")]
    pub(crate) connections: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
}

fn default_method() -> String {
    "POST".into()
}
fn default_in_flight() -> usize {
    4096
}
fn default_connections() -> usize {
    256
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// An open-loop [`Schedule`], or a closed loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum LoadSpec {
    Open(Schedule),
    Closed {
        closed: usize,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayloadSpec {
    #[serde(default = "default_shape")]
    pub(crate) shape: Shape,
    #[serde(default = "default_bytes")]
    pub(crate) bytes: usize,
}

impl Default for PayloadSpec {
    fn default() -> Self {
        Self { shape: default_shape(), bytes: default_bytes() }
    }
}

fn default_shape() -> Shape {
    Shape::Json
}
fn default_bytes() -> usize {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifySpec {
    pub(crate) postgres: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) jsonl: Option<PathBuf>,
    /// Drain this queue directly (no consumer in the scenario)…
    pub(crate) queue: Option<String>,
    /// …on the `[queue]` backend of this spillway config file.
    pub(crate) config: Option<PathBuf>,
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub(crate) settle: Duration,
}

fn default_settle() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessSpec {
    pub(crate) cmd: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// Polled after each start until it answers 2xx; `tcp://host:port`
    /// until it accepts a connection (a broker).
    pub(crate) ready: Option<String>,
    /// The folder it runs in (a broker with relative data paths).
    pub(crate) cwd: Option<PathBuf>,
    /// Where its standard output goes (the stdout sink's JSON lines),
    /// appended across restarts.
    pub(crate) stdout: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    #[serde(with = "humantime_serde")]
    pub(crate) at: Duration,
    /// `kill -9` this process; it is started again after `down`.
    pub(crate) kill: Option<String>,
    /// Run this command; then, after `down`, `then`.
    pub(crate) run: Option<Vec<String>>,
    pub(crate) then: Option<Vec<String>>,
    /// Lock the verify table (PostgreSQL) for this long.
    #[serde(default, with = "humantime_serde::option")]
    pub(crate) lock_table: Option<Duration>,
    #[serde(default = "default_down", with = "humantime_serde")]
    pub(crate) down: Duration,
}

fn default_down() -> Duration {
    Duration::from_secs(1)
}

impl FaultSpec {
    /// The fault in words, for the report and the charts.
    pub(crate) fn describe(&self) -> String {
        if let Some(p) = &self.kill {
            format!("kill -9 {p}")
        } else if let Some(cmd) = &self.run {
            cmd.join(" ")
        } else if let Some(d) = self.lock_table {
            format!("lock table {d:?}")
        } else {
            "nothing".into()
        }
    }
}

impl Scenario {
    pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::parse(&text, |name| std::env::var(name).ok())
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    /// A scenario from its text, `${NAME}`s expanded by `var`, checked.
    fn parse(text: &str, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let text = expand(text, var).map_err(anyhow::Error::msg)?;
        let mut s: Self = toml::from_str(&text)?;
        for p in s.processes.values_mut() {
            for (k, v) in &s.env {
                p.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if let LoadSpec::Open(schedule) = &s.load {
            schedule.check().map_err(anyhow::Error::msg)?;
        }
        for f in &s.faults {
            let actions = usize::from(f.kill.is_some())
                + usize::from(f.run.is_some())
                + usize::from(f.lock_table.is_some());
            anyhow::ensure!(actions == 1, "a fault at {:?} needs exactly one of kill, run, lock_table", f.at);
            if let Some(p) = &f.kill {
                anyhow::ensure!(
                    s.processes.contains_key(p),
                    "a fault kills `{p}`, which is not a process of the scenario"
                );
            }
            if f.lock_table.is_some() {
                anyhow::ensure!(
                    s.verify.as_ref().is_some_and(|v| v.postgres.is_some() && v.table.is_some()),
                    "lock_table needs [verify] postgres and table"
                );
            }
        }
        Ok(s)
    }
}

/// Replaces each `${NAME}` with `var(NAME)`: binaries and URLs differ
/// between machines (`CARGO_TARGET_DIR`), the scenario does not.
fn expand(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or("an unclosed `${`")?;
        let name = &after[..end];
        out.push_str(
            &var(name).ok_or_else(|| format!("the scenario needs the environment variable {name}"))?,
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// Every drill in `benches/scenarios` parses and passes the checks, so
    /// a drill that is run once an hour cannot rot unseen.
    #[test]
    fn every_bench_scenario_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("benches/scenarios") {
            let path = entry.expect("entry").path();
            if path.to_string_lossy().ends_with("-drill.toml") {
                let text = std::fs::read_to_string(&path).expect("read");
                if let Err(e) = super::Scenario::parse(&text, |_| Some("x".into())) {
                    panic!("{}: {e:#}", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 3, "only {n} drills found in {}", dir.display());
    }

    use super::*;

    #[test]
    fn variables_are_expanded_and_a_missing_one_is_named() {
        let var = |n: &str| (n == "BIN").then(|| "/opt/spillway".to_owned());
        assert_eq!(
            expand("cmd = [\"${BIN}\", \"serve\"]", var).as_deref(),
            Ok("cmd = [\"/opt/spillway\", \"serve\"]")
        );
        assert!(expand("${NOPE}", var).is_err_and(|e| e.contains("NOPE")));
        assert!(expand("${BIN", var).is_err());
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("scenario.rs");
        let example: String = text
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_owned() + "\n")
            .collect();
        let s: Scenario = toml::from_str(&example).expect("the example parses");
        assert_eq!(s.faults.len(), 3);
        assert!(matches!(s.load, LoadSpec::Open(Schedule::Constant { .. })));
        assert_eq!(s.faults[1].down, Duration::from_secs(5));
    }
}
