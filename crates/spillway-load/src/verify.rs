//! Did every accepted request reach the end? The ids of the 2xx answers
//! against the ids found where the consumer delivers: the PostgreSQL sink's
//! table, or the JSON lines of the stdout sink; or, with no consumer at
//! all, the queue itself, drained by the harness.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use serde::Serialize;
use spillway_queue::{Backend, BackendConfig, Consumer};

/// Where delivered messages are found.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The `id` column of a PostgreSQL table (the postgres sink's).
    Postgres { url: String, table: String },
    /// `{"id": …}` JSON lines, as the stdout sink writes them.
    Jsonl { path: PathBuf },
    /// The queue, drained (received and acked) by the harness: the check of
    /// the ingest side alone, on any backend. Destructive: what it reads is
    /// gone from the queue.
    Queue(Arc<QueueDrain>),
}

/// A queue the verifier empties, keeping the id of every message it took.
/// It connects on first use, so a broker that is not up yet when the run
/// starts is no error.
pub(crate) struct QueueDrain {
    /// The spillway config file whose `[queue]` names the backend.
    config: PathBuf,
    queue: String,
    consumer: tokio::sync::OnceCell<Arc<dyn Consumer>>,
    ids: tokio::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for QueueDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDrain").field("config", &self.config).field("queue", &self.queue).finish()
    }
}

impl QueueDrain {
    /// `queue` on the `[queue]` backend of the spillway config file `config`.
    pub(crate) fn new(config: &Path, queue: &str) -> Self {
        Self {
            config: config.to_owned(),
            queue: queue.to_owned(),
            consumer: tokio::sync::OnceCell::new(),
            ids: tokio::sync::Mutex::default(),
        }
    }

    /// `queue` on a backend already open (tests).
    #[cfg(test)]
    async fn of(backend: Arc<dyn Backend>, queue: &str) -> anyhow::Result<Self> {
        let d = Self::new(Path::new(""), queue);
        let c = backend.consumer(queue).await?;
        d.consumer.set(c).map_err(|_| anyhow::anyhow!("set twice"))?;
        Ok(d)
    }

    async fn consumer(&self) -> anyhow::Result<&Arc<dyn Consumer>> {
        self.consumer
            .get_or_try_init(|| async {
                #[derive(serde::Deserialize)]
                struct File {
                    #[serde(default)]
                    queue: BackendConfig,
                }
                let path = &self.config;
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let file: File =
                    toml::from_str(&text).with_context(|| format!("the [queue] of {}", path.display()))?;
                let backend: Arc<dyn Backend> = spillway_queue::connect(&file.queue)
                    .await
                    .with_context(|| format!("opening the {} queue", file.queue.kind()))?;
                backend
                    .consumer(&self.queue)
                    .await
                    .with_context(|| format!("consuming `{}` to verify it", self.queue))
            })
            .await
    }

    /// Takes everything the queue hands out now, acking each message once
    /// its id is kept; returns how many it holds in all.
    async fn drain(&self) -> anyhow::Result<u64> {
        let consumer = self.consumer().await?;
        let mut ids = self.ids.lock().await;
        loop {
            let got = consumer.receive(256, Duration::from_millis(200)).await?;
            if got.is_empty() {
                return Ok(ids.len() as u64);
            }
            ids.extend(got.iter().map(|d| d.message.id.clone()));
            consumer.ack_batch(&got).await?;
        }
    }
}

impl Source {
    /// How many deliveries there are so far: cheap, for polling.
    pub(crate) async fn count(&self) -> anyhow::Result<u64> {
        match self {
            Self::Postgres { url, table } => {
                let row = connect(url)
                    .await?
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .with_context(|| format!("counting {table}"))?;
                Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
            }
            Self::Jsonl { path } => match tokio::fs::read(path).await {
                Ok(bytes) => Ok(bytes.iter().filter(|b| **b == b'\n').count() as u64),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            },
            Self::Queue(q) => q.drain().await,
        }
    }

    /// Every id delivered so far, each as often as it was delivered.
    pub(crate) async fn delivered(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Postgres { url, table } => {
                let rows = connect(url)
                    .await?
                    .query(&format!("SELECT id FROM {table}"), &[])
                    .await
                    .with_context(|| format!("reading the ids of {table}"))?;
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            }
            Self::Jsonl { path } => {
                let text = match tokio::fs::read_to_string(path).await {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                Ok(text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
                    .collect())
            }
            Self::Queue(q) => {
                q.drain().await?;
                Ok(q.ids.lock().await.clone())
            }
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    pub(crate) accepted: u64,
    /// Accepted ids found at the end.
    pub(crate) delivered: u64,
    /// Accepted but never delivered: must be empty.
    pub(crate) lost: Vec<String>,
    /// Deliveries beyond the first of an accepted id (at-least-once).
    pub(crate) duplicates: u64,
    /// Ids at the end that no 2xx named (a request answered 503 on a
    /// timeout may still have been stored; other traffic).
    pub(crate) unexpected: u64,
}

impl Verdict {
    pub(crate) fn ok(&self) -> bool {
        self.lost.is_empty()
    }
}

/// Compares what was accepted with what was delivered.
pub(crate) fn compare(accepted: &HashSet<String>, delivered: &[String]) -> Verdict {
    let mut times: HashMap<&str, u64> = HashMap::new();
    for id in delivered {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let mut lost: Vec<String> =
        accepted.iter().filter(|id| !times.contains_key(id.as_str())).cloned().collect();
    lost.sort();
    let (mut found, mut duplicates, mut unexpected) = (0, 0, 0);
    for (id, n) in &times {
        if accepted.contains(*id) {
            found += 1;
            duplicates += n - 1;
        } else {
            unexpected += n;
        }
    }
    Verdict { accepted: accepted.len() as u64, delivered: found, lost, duplicates, unexpected }
}

/// Polls `source` until every accepted id is there or `settle` has passed
/// since the last progress, then compares. It polls the count, which is
/// cheap, and reads every id only when the count says it may be done: a
/// verifier that read a million ids four times a second would slow the
/// very pipeline it watches.
pub(crate) async fn wait_and_compare(
    source: &Source,
    accepted: &HashSet<String>,
    settle: Duration,
) -> anyhow::Result<Verdict> {
    let mut best = 0;
    let mut last_progress = tokio::time::Instant::now();
    loop {
        let n = source.count().await?;
        let stalled = last_progress.elapsed() >= settle;
        if n >= accepted.len() as u64 || stalled {
            let verdict = compare(accepted, &source.delivered().await?);
            if verdict.ok() || stalled {
                return Ok(verdict);
            }
        }
        if n > best {
            best = n;
            last_progress = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The queue drained directly: what it held is delivered, what it
    /// never held is lost.
    #[tokio::test(start_paused = true)]
    async fn a_drained_queue_delivers_what_it_held_and_names_what_it_did_not() {
        let b: Arc<dyn Backend> = Arc::new(spillway_queue::memory::memory_backend().expect("memory"));
        b.ensure(&spillway_queue::QueueSpec::new("q")).await.expect("ensure");
        let p = b.producer("q").await.expect("producer");
        for id in ["a", "b"] {
            p.send(spillway_queue::OutgoingMessage::new(id, "{}")).await.expect("send");
        }
        let source = Source::Queue(Arc::new(QueueDrain::of(b.clone(), "q").await.expect("drain")));
        let accepted: HashSet<String> = ids(&["a", "b", "c"]).into_iter().collect();
        let v = wait_and_compare(&source, &accepted, Duration::from_secs(3)).await.expect("verdict");
        assert_eq!(v.delivered, 2);
        assert_eq!(v.lost, ids(&["c"]));
        assert_eq!(b.stats("q").await.expect("stats").pending(), 0, "the drain acked what it read");
    }

    #[test]
    fn everything_delivered_once_is_ok() {
        let accepted: HashSet<String> = ids(&["a", "b", "c"]).into_iter().collect();
        let v = compare(&accepted, &ids(&["c", "a", "b"]));
        assert_eq!(v, Verdict { accepted: 3, delivered: 3, lost: vec![], duplicates: 0, unexpected: 0 });
        assert!(v.ok());
    }

    #[test]
    fn a_lost_id_is_named_and_fails_the_run() {
        let accepted: HashSet<String> = ids(&["a", "b", "c"]).into_iter().collect();
        let v = compare(&accepted, &ids(&["a", "c"]));
        assert_eq!(v.lost, ids(&["b"]));
        assert_eq!(v.delivered, 2);
        assert!(!v.ok());
    }

    #[test]
    fn duplicates_and_unexpected_ids_are_counted_not_lost() {
        let accepted: HashSet<String> = ids(&["a", "b"]).into_iter().collect();
        let v = compare(&accepted, &ids(&["a", "a", "b", "a", "zz"]));
        assert_eq!(v.duplicates, 2);
        assert_eq!(v.unexpected, 1);
        assert!(v.ok());
    }

    #[tokio::test]
    async fn jsonl_lines_are_read_by_their_id() {
        let dir = std::env::temp_dir().join(format!("spillway-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("out.jsonl");
        std::fs::write(&path, "{\"id\":\"a\",\"body\":{}}\nnot json\n{\"id\":\"b\"}\n{\"id\":\"a\"}\n")
            .expect("write");
        let got = Source::Jsonl { path: path.clone() }.delivered().await.expect("read");
        assert_eq!(got, ids(&["a", "b", "a"]));
        assert_eq!(Source::Jsonl { path: path.clone() }.count().await.expect("count"), 4);
        let missing = Source::Jsonl { path: dir.join("none.jsonl") }.delivered().await.expect("no file yet");
        assert!(missing.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
