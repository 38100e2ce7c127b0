//! The drill's supervisor: starts the processes of a scenario, restarts any
//! that dies (killed by a fault or not), performs the faults at their
//! times, and keeps each process's CPU time and peak memory across its
//! lives (from `/proc`, Linux only).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context;
use serde::Serialize;
use tokio::{process::Child, time::Instant};

use crate::{
    report::FaultEvent,
    scenario::{FaultSpec, ProcessSpec},
};

/// `/proc` counts CPU time in clock ticks; 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// What one process used over all its lives.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Usage {
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_kib: u64,
    pub(crate) starts: u32,
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after `)`.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

fn proc_peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Life {
    child: Child,
    pid: u32,
    /// CPU seconds read at the last sample of this life.
    cpu: f64,
}

struct Supervised {
    name: String,
    spec: ProcessSpec,
    life: tokio::sync::Mutex<Option<Life>>,
    /// CPU of earlier lives, and the peak memory of all.
    usage: Mutex<Usage>,
    /// Set while a fault holds the process down: the watcher leaves it dead.
    held_down: AtomicBool,
    unexpected_exits: AtomicU32,
}

impl Supervised {
    async fn spawn(&self) -> anyhow::Result<()> {
        let (program, args) = self.spec.cmd.split_first().context("a process needs a command")?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).envs(&self.spec.env).stdin(std::process::Stdio::null()).kill_on_drop(true);
        if let Some(dir) = &self.spec.cwd {
            cmd.current_dir(dir);
        }
        match &self.spec.stdout {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdout(file);
            }
            None => {
                cmd.stdout(std::process::Stdio::null());
            }
        }
        let child = cmd.spawn().with_context(|| format!("starting {}: {:?}", self.name, self.spec.cmd))?;
        let pid = child.id().unwrap_or(0);
        *self.life.lock().await = Some(Life { child, pid, cpu: 0.0 });
        self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner).starts += 1;
        if let Some(url) = &self.spec.ready {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !is_ready(&http, url).await {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} was not ready at {url} within 60 s",
                    self.name
                );
                let exited = match self.life.lock().await.as_mut() {
                    Some(life) => matches!(life.child.try_wait(), Ok(Some(_))),
                    None => true,
                };
                anyhow::ensure!(!exited, "{} exited before it was ready", self.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Reads the live process's CPU and memory into its record.
    fn sample(&self, life: &mut Life) {
        if let Some(cpu) = proc_cpu_seconds(life.pid) {
            life.cpu = cpu;
        }
        if let Some(rss) = proc_peak_rss_kib(life.pid) {
            let mut u = self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            u.peak_rss_kib = u.peak_rss_kib.max(rss);
        }
    }

    /// Ends the current life: its last CPU sample joins the total.
    fn bury(&self, life: &Life) {
        self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner).cpu_seconds += life.cpu;
    }

    async fn kill9(&self) {
        let mut slot = self.life.lock().await;
        if let Some(mut life) = slot.take() {
            self.sample(&mut life);
            let _ = life.child.start_kill();
            let _ = life.child.wait().await;
            self.bury(&life);
        }
    }

    fn usage(&self, live_cpu: f64) -> Usage {
        let mut u = *self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        u.cpu_seconds += live_cpu;
        u
    }
}

/// The processes of a drill.
pub(crate) struct Supervisor {
    procs: Vec<Arc<Supervised>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts every process (and waits for each to be ready), then watches
    /// them: one that dies is started again.
    pub(crate) async fn start(specs: &BTreeMap<String, ProcessSpec>) -> anyhow::Result<Arc<Self>> {
        let mut procs = Vec::new();
        for (name, spec) in specs {
            let p = Arc::new(Supervised {
                name: name.clone(),
                spec: spec.clone(),
                life: tokio::sync::Mutex::new(None),
                usage: Mutex::default(),
                held_down: AtomicBool::new(false),
                unexpected_exits: AtomicU32::new(0),
            });
            // A process that exits before it is ready (two opening one new
            // file at once, say) gets two more tries.
            let mut started = p.spawn().await;
            for _ in 0..2 {
                if started.is_ok() {
                    break;
                }
                p.kill9().await;
                started = p.spawn().await;
            }
            started?;
            procs.push(p);
        }
        let sup = Arc::new(Self { procs, watcher: Mutex::new(None) });
        let watched = sup.clone();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                for p in &watched.procs {
                    if p.held_down.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut slot = p.life.lock().await;
                    let exited = match slot.as_mut() {
                        Some(life) => {
                            p.sample(life);
                            matches!(life.child.try_wait(), Ok(Some(_)))
                        }
                        None => true,
                    };
                    if exited {
                        if let Some(life) = slot.take() {
                            p.bury(&life);
                            p.unexpected_exits.fetch_add(1, Ordering::SeqCst);
                            eprintln!("supervisor: {} exited on its own; starting it again", p.name);
                        }
                        drop(slot);
                        if let Err(e) = p.spawn().await {
                            eprintln!("supervisor: {e:#}");
                        }
                    }
                }
            }
        });
        *sup.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(watcher);
        Ok(sup)
    }

    fn get(&self, name: &str) -> Option<&Arc<Supervised>> {
        self.procs.iter().find(|p| p.name == name)
    }

    /// Performs one fault. Returns what happened, for the report.
    pub(crate) async fn perform(&self, f: &FaultSpec, lock: Option<(&str, &str)>) -> anyhow::Result<()> {
        if let Some(name) = &f.kill {
            let p = self.get(name).with_context(|| format!("no process `{name}`"))?;
            p.held_down.store(true, Ordering::SeqCst);
            p.kill9().await;
            tokio::time::sleep(f.down).await;
            let started = p.spawn().await;
            p.held_down.store(false, Ordering::SeqCst);
            started?;
        } else if let Some(cmd) = &f.run {
            run_command(cmd).await?;
            tokio::time::sleep(f.down).await;
            if let Some(then) = &f.then {
                run_command(then).await?;
            }
        } else if let (Some(hold), Some((url, table))) = (f.lock_table, lock) {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await?;
            tokio::time::sleep(hold).await;
            client.batch_execute("COMMIT").await?;
        }
        Ok(())
    }

    /// Runs the faults at their times from `start`, each in a task of its
    /// own; returns them as they were performed.
    pub(crate) fn schedule_faults(
        self: &Arc<Self>,
        faults: Vec<FaultSpec>,
        lock: Option<(String, String)>,
        start: Instant,
    ) -> tokio::task::JoinHandle<Vec<FaultEvent>> {
        let sup = self.clone();
        tokio::spawn(async move {
            let mut faults = faults;
            faults.sort_by_key(|f| f.at);
            let mut running = Vec::new();
            for f in faults {
                tokio::time::sleep_until(start + f.at).await;
                let at = start.elapsed().as_secs_f64();
                let (sup, lock) = (sup.clone(), lock.clone());
                running.push(tokio::spawn(async move {
                    let what = f.describe();
                    let done = sup.perform(&f, lock.as_ref().map(|(u, t)| (u.as_str(), t.as_str()))).await;
                    match done {
                        Ok(()) => FaultEvent { at, what },
                        Err(e) => FaultEvent { at, what: format!("{what} (failed: {e:#})") },
                    }
                }));
            }
            let mut events = Vec::new();
            for r in running {
                if let Ok(e) = r.await {
                    events.push(e);
                }
            }
            events
        })
    }

    /// Stops the watcher and every process; returns what each used.
    pub(crate) async fn stop(&self) -> BTreeMap<String, (Usage, u32)> {
        if let Some(w) = self.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            w.abort();
        }
        let mut out = BTreeMap::new();
        for p in &self.procs {
            p.held_down.store(true, Ordering::SeqCst);
            p.kill9().await;
            out.insert(p.name.clone(), (p.usage(0.0), p.unexpected_exits.load(Ordering::SeqCst)));
        }
        out
    }
}

async fn run_command(cmd: &[String]) -> anyhow::Result<()> {
    let (program, args) = cmd.split_first().context("an empty command")?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .status()
        .await
        .with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// `tcp://host:port`: something accepts connections there (a broker);
/// anything else is an HTTP URL that must answer 2xx.
async fn is_ready(http: &reqwest::Client, url: &str) -> bool {
    match url.strip_prefix("tcp://") {
        Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
        None => http.get(url).send().await.is_ok_and(|r| r.status().is_success()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tcp_ready_url_waits_for_a_listener() {
        let http = reqwest::Client::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        assert!(is_ready(&http, &url).await);
        // Port 1 (tcpmux): nothing listens there, and no test binds it.
        assert!(!is_ready(&http, "tcp://127.0.0.1:1").await, "nothing listens on port 1");
        drop(listener);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory_in_proc() {
        let me = std::process::id();
        assert!(proc_cpu_seconds(me).is_some_and(|s| s >= 0.0));
        assert!(proc_peak_rss_kib(me).is_some_and(|k| k > 0));
    }

    /// A killed process is started again; a process that dies on its own too.
    #[tokio::test]
    async fn what_dies_is_started_again() {
        let specs = BTreeMap::from([(
            "sleeper".to_owned(),
            ProcessSpec {
                cmd: vec!["sleep".into(), "30".into()],
                env: BTreeMap::new(),
                ready: None,
                cwd: None,
                stdout: None,
            },
        )]);
        let sup = Supervisor::start(&specs).await.expect("start");
        let kill = FaultSpec {
            at: Duration::ZERO,
            kill: Some("sleeper".into()),
            run: None,
            then: None,
            lock_table: None,
            down: Duration::from_millis(50),
        };
        sup.perform(&kill, None).await.expect("kill and restart");
        // Now kill it behind the supervisor's back.
        let pid =
            sup.get("sleeper").expect("sleeper").life.lock().await.as_ref().map(|l| l.pid).expect("pid");
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let usage = sup.stop().await;
        let (u, unexpected) = usage["sleeper"];
        assert_eq!(u.starts, 3, "started, restarted after the fault, restarted after dying");
        assert_eq!(unexpected, 1);
    }
}
