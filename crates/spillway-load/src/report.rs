//! The results of a run: JSON for tools, Markdown for people.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Serialize;

use crate::{
    record::{Latency, Second},
    verify::Verdict,
};

/// A fault injected during the run, for the report and the charts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultEvent {
    /// Seconds from the start.
    pub(crate) at: f64,
    pub(crate) what: String,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    /// How the load was shaped, in words (`open loop, constant 500/s for 10s`).
    pub(crate) load: String,
    pub(crate) target: String,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    /// Answers by status (`error`: transport errors and timeouts).
    pub(crate) statuses: BTreeMap<String, u64>,
    pub(crate) accepted_per_second: f64,
    /// From each request's due time (open loop) or send (closed loop).
    pub(crate) latency: Latency,
    pub(crate) verification: Option<Verdict>,
    pub(crate) faults: Vec<FaultEvent>,
    /// What each supervised process used (drills).
    pub(crate) processes: BTreeMap<String, ProcessUsage>,
    pub(crate) timeline: Vec<Second>,
    /// A drill's `[watch]`ed metrics over time, to the end of verification.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) watched: crate::watch::Watched,
}

/// CPU and memory of one process of a drill, over all its lives.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessUsage {
    pub(crate) cpu_seconds: f64,
    pub(crate) cpu_seconds_per_million_accepted: f64,
    pub(crate) peak_rss_kib: u64,
    pub(crate) starts: u32,
    pub(crate) unexpected_exits: u32,
}

impl Results {
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "**{}** against `{}`, {:.1} s\n", self.load, self.target, self.seconds);
        let _ = writeln!(md, "| sent | accepted | accepted/s | p50 | p99 | p99.9 | max |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let l = &self.latency;
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            self.sent, self.accepted, self.accepted_per_second, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        let statuses: Vec<String> = self.statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(md, "Answers by status: {}\n", statuses.join(", "));
        if let Some(v) = &self.verification {
            let _ =
                writeln!(md, "| accepted | delivered | **lost** | duplicates | delivered, never accepted |");
            let _ = writeln!(md, "|---|---|---|---|---|");
            let _ = writeln!(
                md,
                "| {} | {} | **{}** | {} | {} |\n",
                v.accepted,
                v.delivered,
                v.lost.len(),
                v.duplicates,
                v.unexpected
            );
        }
        if !self.processes.is_empty() {
            let _ = writeln!(
                md,
                "| process | CPU-s | CPU-s per 1M accepted | peak RSS | starts | unexpected exits |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|");
            for (name, u) in &self.processes {
                let _ = writeln!(
                    md,
                    "| {name} | {:.1} | {:.1} | {} MiB | {} | {} |",
                    u.cpu_seconds,
                    u.cpu_seconds_per_million_accepted,
                    u.peak_rss_kib / 1024,
                    u.starts,
                    u.unexpected_exits
                );
            }
            let _ = writeln!(md);
        }
        if !self.watched.is_empty() {
            let _ = writeln!(md, "| watched metric | peak | at | last | 0 again from |");
            let _ = writeln!(md, "|---|---|---|---|---|");
            for (name, samples) in &self.watched {
                let Some(s) = crate::watch::summarize(samples) else {
                    let _ = writeln!(md, "| `{name}` | no sample | | | |");
                    continue;
                };
                let zero = s.zero_from.map_or_else(|| "–".to_owned(), |t| format!("{t:.0} s"));
                let _ = writeln!(
                    md,
                    "| `{name}` | {:.0} | {:.0} s | {:.0} | {zero} |",
                    s.peak, s.peak_at, s.last
                );
            }
            let _ = writeln!(md);
        }
        if !self.faults.is_empty() {
            let _ = writeln!(md, "Faults:");
            for f in &self.faults {
                let _ = writeln!(md, "- {:.1} s: {}", f.at, f.what);
            }
        }
        md
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", dir.join("results.json").display()))?;
        std::fs::write(dir.join("results.md"), self.markdown())
            .with_context(|| format!("writing {}", dir.join("results.md").display()))?;
        Ok(())
    }
}
