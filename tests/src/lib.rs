//! Helpers for the end-to-end tests: run the real `spillway` binary on a
//! config of the test's own, talk to it over real sockets, and read the
//! queue it wrote.
//!
//! The binary is the one cargo built next to the test executable (build it
//! with `cargo build -p spillway`; the README's test command does). A missing
//! binary or service is a loud failure that says how to fix it, never a skip.
#![forbid(unsafe_code)]

pub mod seed;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context};
use spillway_queue::{embedded::EmbeddedBackend, Backend, QueueStats};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long one test binary may run, in seconds, before it counts as hung
/// (`SPILLWAY_TEST_BINARY_TIMEOUT` changes it). The longest binary takes
/// about 4 minutes on 2 cores; a hang used to take the whole CI budget (90
/// minutes) with it and print nothing.
const BINARY_TIMEOUT_SECS: u64 = 15 * 60;

/// Starts, once per test binary, a thread that ends the process when it
/// runs past [`BINARY_TIMEOUT_SECS`]: it names the hang, prints every
/// thread's stack (gdb, when the machine has it), and exits 124. A hang
/// anywhere (a call without a deadline, a `Drop` that blocks, the runtime's
/// shutdown waiting on a blocking task) then fails loudly. Every helper
/// that a test starts with calls it.
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let limit = std::env::var("SPILLWAY_TEST_BINARY_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(BINARY_TIMEOUT_SECS);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(limit));
            let exe = std::env::current_exe().unwrap_or_default();
            eprintln!(
                "\nHUNG: {} ran for {limit} s (SPILLWAY_TEST_BINARY_TIMEOUT); the tests above without a result are the hung ones. Every thread's stack:",
                exe.display()
            );
            let pid = std::process::id().to_string();
            let _ = Command::new("gdb")
                .args(["-p", &pid, "-batch", "-ex", "thread apply all bt 30"])
                .stdin(Stdio::null())
                .status();
            std::process::exit(124);
        });
    });
}

/// The `spillway` binary built beside this test executable.
pub fn binary() -> PathBuf {
    watchdog();
    built("spillway")
}

/// The `spillway-load` binary (the load harness) built beside this test
/// executable.
pub fn load_binary() -> PathBuf {
    built("spillway-load")
}

fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p spillway -p spillway-load` (the README's test command does)",
        bin.display()
    );
    bin
}

/// A temporary folder with a config file and the embedded queue's data.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// Environment variables every process of this workspace gets (config
    /// overrides such as `SPILLWAY_QUEUE__ENDPOINT_URL`).
    env: Vec<(String, String)>,
}

impl Workspace {
    /// Writes `config.toml`; `{data}` in the text becomes the queue folder.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let text = config.replace("{data}", &data.display().to_string());
        std::fs::write(dir.path().join("config.toml"), text).expect("write config");
        Self { dir, env: Vec::new() }
    }

    /// Every process of this workspace gets `key=value` in its environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a `spillway` command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    /// Runs a `spillway` command to completion with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(binary())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run spillway")
    }

    /// Starts `spillway serve` and waits until it says where it listens.
    pub fn serve(&self) -> Gateway {
        self.spawn_serve(Stdio::inherit())
    }

    /// Starts `spillway serve` with its logs (standard error) collected:
    /// the thread returns them once the process has exited.
    pub fn serve_collecting_logs(&self) -> (Gateway, std::thread::JoinHandle<String>) {
        let mut gw = self.spawn_serve(Stdio::piped());
        let mut stderr = gw.child.stderr.take().expect("stderr");
        let logs = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        (gw, logs)
    }

    fn spawn_serve(&self, stderr: Stdio) -> Gateway {
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(self.config())
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SPILLWAY_SERVER__LISTEN", "127.0.0.1:0")
            .env("SPILLWAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn spillway serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let address = |after: &str| {
            line.split(after)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("spillway serve did not say where it listens: {line:?}"))
        };
        let traffic = if line.contains("listening on https://") {
            "listening on https://"
        } else {
            "listening on http://"
        };
        Gateway { child, addr: address(traffic), admin: address("admin on http://") }
    }

    /// Starts `spillway consume`; killed when dropped, so a failing test
    /// leaves no consumer behind.
    pub fn consume(&self) -> Process {
        self.spawn_consume(Stdio::null())
    }

    /// Starts `spillway consume` with its standard output (the stdout
    /// sink's JSON lines) going to `path`.
    pub fn consume_to(&self, path: &Path) -> Process {
        let out = std::fs::File::create(path).expect("create the consumer's output file");
        self.spawn_consume(out.into())
    }

    fn spawn_consume(&self, stdout: Stdio) -> Process {
        Process(
            Command::new(binary())
                .arg("--config")
                .arg(self.config())
                .arg("consume")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(stdout)
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn spillway consume"),
        )
    }

    /// Opens the embedded queue this workspace's gateway writes to (a second
    /// process on the same SQLite file, as a sidecar consumer would be).
    pub async fn queue(&self) -> Arc<dyn Backend> {
        Arc::new(EmbeddedBackend::open(&self.data()).await.expect("open the embedded queue"))
    }

    pub async fn stats(&self, queue: &str) -> QueueStats {
        self.queue().await.stats(queue).await.expect("queue stats")
    }
}

/// A child process that is killed when dropped (a test that panics must not
/// leave it running, holding its output pipe open).
pub struct Process(pub Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `spillway serve`; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// `server.admin_listen`: `/metrics`, `/livez`, `/readyz`.
    pub admin: SocketAddr,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `kill -9`: no chance to flush or drain.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running (it did not panic or exit).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as Kubernetes sends it: the gateway drains and exits.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    }

    /// SIGTERM, then its exit status; fails when it takes longer than `bound`.
    pub async fn stop(&mut self, bound: Duration) -> std::process::ExitStatus {
        self.sigterm();
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "spillway serve did not stop within {bound:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A parsed HTTP/1.1 response from [`raw`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The JSON error body's `error.code`.
    pub fn error_code(&self) -> anyhow::Result<String> {
        let body_start = self.body.find('{').context("no JSON in body")?;
        let body_end = self.body.rfind('}').context("no JSON in body")?;
        let v: serde_json::Value = serde_json::from_str(&self.body[body_start..=body_end])
            .with_context(|| format!("body is not JSON: {:?}", self.body))?;
        v["error"]["code"].as_str().map(str::to_owned).context("no error.code")
    }
}

/// Sends raw bytes, then optionally pauses and/or half-closes, and reads one
/// response. For requests no well-behaved client would send.
pub async fn raw(addr: SocketAddr, request: &[u8], half_close: bool) -> anyhow::Result<RawResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    if half_close {
        s.shutdown().await?;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf) {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        bail!("no complete response within 20 s; got {:?}", String::from_utf8_lossy(&buf));
    }
    parse_response(&buf)
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else { return false };
    let len = text[..end]
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<usize>().ok());
    len.is_some_and(|len| buf.len() >= end + 4 + len)
}

fn parse_response(buf: &[u8]) -> anyhow::Result<RawResponse> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end in response")?;
    let mut lines = head.lines();
    let status_line = lines.next().context("empty response")?;
    let status =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    Ok(RawResponse { status, headers, body: body.to_owned() })
}

/// POSTs a JSON body, asserts `202 Accepted` (the default success status),
/// and returns the message id the answer names.
pub async fn post_accepted(http: &reqwest::Client, url: &str, body: String) -> String {
    let res =
        http.post(url).header("content-type", "application/json").body(body).send().await.expect("post");
    let status = res.status();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "the gateway answered {status}, not 202");
    let header = res.headers().get("x-spillway-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let v: serde_json::Value = res.json().await.expect("a JSON body");
    let id = v["id"].as_str().expect("a 2xx names its message id").to_owned();
    assert_eq!(header.as_deref(), Some(id.as_str()), "a 2xx carries its id in `x-spillway-id` too");
    id
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    watchdog();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Clients posting to the gateway as fast as they can, each remembering the
/// message ids of its 2xx answers, until the gateway goes away.
pub struct Burst {
    accepted: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    server_errors: Arc<std::sync::Mutex<Vec<u16>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a burst saw: the ids the gateway acknowledged, and any 5xx statuses.
pub struct BurstOutcome {
    pub accepted: std::collections::HashSet<String>,
    pub server_errors: Vec<u16>,
}

impl Burst {
    /// Starts `clients` concurrent senders of small JSON bodies to `url`.
    pub fn start(url: &str, clients: usize) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let accepted = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let server_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let (http, url, accepted, server_errors) =
                    (http.clone(), url.to_owned(), accepted.clone(), server_errors.clone());
                tokio::spawn(async move {
                    for seq in 0u64.. {
                        let body = format!(r#"{{"client":{client},"seq":{seq}}}"#);
                        let sent =
                            http.post(&url).header("content-type", "application/json").body(body).send();
                        let Ok(res) = sent.await else { return }; // the gateway is gone
                        let status = res.status();
                        if status.is_server_error() {
                            server_errors.lock().expect("lock").push(status.as_u16());
                        }
                        if status.is_success() {
                            // Cut off while the answer was in flight: not acknowledged.
                            let Ok(v) = res.json::<serde_json::Value>().await else { return };
                            let id = v["id"].as_str().expect("a 2xx names its message id").to_owned();
                            accepted.lock().expect("lock").insert(id);
                        }
                    }
                })
            })
            .collect();
        Self { accepted, server_errors, tasks }
    }

    /// Waits for every client to stop (they stop when the gateway is gone).
    pub async fn finish(self) -> BurstOutcome {
        for t in self.tasks {
            let _ = t.await;
        }
        let accepted = self.accepted.lock().expect("lock").clone();
        let server_errors = self.server_errors.lock().expect("lock").clone();
        BurstOutcome { accepted, server_errors }
    }
}

/// Receives (without acking) every message of `queue` and returns their ids.
pub async fn queued_ids(backend: &Arc<dyn Backend>, queue: &str) -> std::collections::HashSet<String> {
    let consumer = backend.consumer(queue).await.expect("consumer");
    let mut ids = std::collections::HashSet::new();
    loop {
        let batch = consumer.receive(500, Duration::from_millis(200)).await.expect("receive");
        if batch.is_empty() {
            return ids;
        }
        ids.extend(batch.into_iter().map(|d| d.message.id));
    }
}

/// A config for `serve` with its consumer inside (`server.consume`) on
/// `backend`, draining `ingest` into `table` of the test PostgreSQL; `{data}`
/// holds the embedded queue.
pub fn serve_consume_into_postgres(backend: &str, table: &str) -> String {
    let path = if backend == "embedded" { r#"path = "{data}""# } else { "" };
    format!(
        r#"
[server]
consume = true

[queue]
backend = "{backend}"
{path}

[consumer]
queue = "ingest"
wait = "200ms"

[consumer.sink]
type = "postgres"
url = "{url}"
table = "{table}"
"#,
        url = pg_url()
    )
}

/// `SPILLWAY_TEST_PG`, or the machine's PostgreSQL.
pub fn pg_url() -> String {
    std::env::var("SPILLWAY_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL client; a loud failure that says how to start it when missing.
pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is needed at {} ({e}). Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             or point SPILLWAY_TEST_PG at one.",
                pg_url()
            )
        });
    tokio::spawn(conn);
    client
}

/// Rows in `table` (-1 if it cannot be counted).
pub async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.map(|r| r.get(0)).unwrap_or(-1)
}

/// The ids in a sink table (empty if it does not exist yet).
pub async fn ids(db: &tokio_postgres::Client, table: &str) -> std::collections::HashSet<String> {
    match db.query(&format!("SELECT id FROM {table}"), &[]).await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => std::collections::HashSet::new(),
    }
}

/// After an outage under load: waits until every accepted id is in the
/// table, then checks that what else is there is no more than the requests
/// answered 503 (a send that timed out may have been stored: the client was
/// told to retry, so that is at-least-once, not a loss).
pub async fn assert_every_accepted_delivered(
    db: &tokio_postgres::Client,
    table: &str,
    accepted: &std::collections::HashSet<String>,
    answered_503: usize,
) {
    assert_every_accepted_delivered_within(db, table, accepted, answered_503, Duration::from_secs(60)).await;
}

/// [`assert_every_accepted_delivered`], with the consumer given `deadline`
/// from now to drain.
pub async fn assert_every_accepted_delivered_within(
    db: &tokio_postgres::Client,
    table: &str,
    accepted: &std::collections::HashSet<String>,
    answered_503: usize,
    deadline: Duration,
) {
    eventually(deadline, "every 2xx in the table", || async { accepted.is_subset(&ids(db, table).await) })
        .await;
    let stored = ids(db, table).await;
    let extra: Vec<&String> = stored.difference(accepted).collect();
    assert!(
        extra.len() <= answered_503,
        "{} rows were never accepted, more than the {answered_503} requests answered 503: {extra:?}",
        extra.len()
    );
}

/// `SPILLWAY_TEST_AMQP`, or the machine's RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("SPILLWAY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The Python venv `deploy/local/services.sh` makes (moto, boto3, pika).
pub fn venv() -> PathBuf {
    let venv =
        PathBuf::from(std::env::var("SPILLWAY_VENV").unwrap_or_else(|_| "/var/tmp/spillway-venv".to_owned()));
    assert!(
        venv.join("bin/python").is_file(),
        "no Python venv at {}: make it with `deploy/local/services.sh up`",
        venv.display()
    );
    venv
}

/// Runs one of the interop scripts in `tests/interop` (a plain client of
/// the broker: confluent-kafka, boto3; no Spillway code) with the venv's
/// Python against `endpoint`, and returns what it printed.
pub fn interop(script: &str, endpoint: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop").join(script);
    let out = Command::new(venv().join("bin/python"))
        .arg(&path)
        .arg(endpoint)
        .args(args)
        .output()
        .expect("run python");
    assert!(out.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `tests/interop/kafka_client.py` (confluent-kafka) against `brokers`.
pub fn kafka_client(brokers: &str, args: &[&str]) -> String {
    interop("kafka_client.py", brokers, args)
}

/// A moto SQS server of the test's own, on a free port, killed when
/// dropped. Its own, so the test may stop it, and fixed queue names (the
/// original setup's `my-queue`) never meet another test's.
pub struct Moto {
    pub process: Process,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Self {
        let port = free_port();
        // moto with its ReceiveMessage race fixed (see the script).
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/sqs_server.py");
        let child = Command::new(venv().join("bin/python"))
            .arg(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start deploy/local/sqs_server.py with the venv's python (deploy/local/services.sh up makes it)");
        let moto = Self { process: Process(child), port };
        eventually(Duration::from_secs(30), "moto listening", || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The config overrides that point `spillway` at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SPILLWAY_QUEUE__ENDPOINT_URL", self.url()),
            ("SPILLWAY_QUEUE__REGION", "us-east-1".to_owned()),
            ("SPILLWAY_QUEUE__ACCESS_KEY_ID", "test".to_owned()),
            ("SPILLWAY_QUEUE__SECRET_ACCESS_KEY", "test".to_owned()),
        ]
    }

    /// A client of this server, as the tests' own view of the queues.
    pub async fn backend(&self) -> spillway_queue::sqs::SqsBackend {
        spillway_queue::sqs::SqsBackend::connect(&spillway_queue::sqs::SqsConfig::local(&self.url()))
            .await
            .expect("sqs client")
    }
}

/// An Apache Kafka broker (one KRaft node) of the test's own, on free ports
/// with its data in a folder of its own, so the test may `kill -9` and
/// restart it without touching the shared broker other tests use. Run by
/// `deploy/local/services.sh kafka-node` (the same settings as the shared
/// broker, from the jars that `services.sh up` fetched). Killed when
/// dropped.
pub struct KafkaBroker {
    pub port: u16,
    controller: u16,
    /// The address it tells clients to use (a proxy in front of it, say).
    advertised: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl KafkaBroker {
    pub async fn start() -> Self {
        let port = free_port();
        Self::start_advertising(port, port).await
    }

    /// Listens on `port` and tells clients to connect to `advertised`,
    /// where a [`Proxy`] to `port` will be.
    pub async fn start_advertising(port: u16, advertised: u16) -> Self {
        let dir = tempfile::tempdir().expect("kafka dir");
        let mut k = Self { port, controller: free_port(), advertised, dir, process: None };
        k.restart().await;
        k
    }

    /// The port it tells clients to use.
    pub fn advertised(&self) -> u16 {
        self.advertised
    }

    /// `host:port` for `brokers`: the advertised address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// Starts it (again) on the same ports and data, and waits until it
    /// listens.
    pub async fn restart(&mut self) {
        let (port, controller, advertised) =
            (self.port.to_string(), self.controller.to_string(), self.advertised.to_string());
        let args = ["kafka-node", &port, &controller, &advertised];
        self.process = Some(start_node("the Kafka broker", &args, self.dir.path(), self.port).await);
    }

    /// The last lines of the broker's log: what to look at first when a
    /// test on it failed.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `kill -9`: no clean shutdown, as a crash or a lost node.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the Kafka broker's log, last lines:\n{}", self.log_tail());
        }
    }
}

/// Runs `deploy/local/services.sh NODE DIR ARGS…` (a server of a test's
/// own, in the foreground: `kafka-node`, `elasticmq-node`) as a child, its
/// output in `DIR/stdout.log`, and waits until it listens on `port`.
async fn start_node(what: &str, args: &[&str], dir: &Path, port: u16) -> Process {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/services.sh");
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stdout.log")).expect("node log");
    let (node, rest) = args.split_first().expect("a node kind");
    let child = Command::new("bash")
        .arg(script)
        .arg(node)
        .arg(dir)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start deploy/local/services.sh {node} (needs bash): {e}"));
    let mut process = Process(child);
    eventually(Duration::from_secs(60), &format!("{what} listening on {port}"), || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    // The listener opens as the server finishes starting; say so if it
    // died instead (no jars: `deploy/local/services.sh up` fetches them).
    if let Ok(Some(status)) = process.0.try_wait() {
        panic!("{what} exited ({status}); see {}", dir.join("stdout.log").display());
    }
    process
}

/// An ElasticMQ of a test's own (`services.sh elasticmq-node`: its own
/// port and data folder, messages persisted), for tests that kill the SQS
/// server. Killed when dropped.
pub struct ElasticMqNode {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl ElasticMqNode {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("elasticmq dir");
        let mut node = Self { port: free_port(), dir, process: None };
        node.restart().await;
        node
    }

    /// The endpoint URL for `queue.endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and data.
    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        self.process =
            Some(start_node("ElasticMQ", &["elasticmq-node", &port], self.dir.path(), self.port).await);
    }

    /// `kill -9`: no clean shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }
}

/// Runs `deploy/local/services.sh` with `args`; fails loudly with its
/// output when it fails.
pub fn services(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/services.sh");
    let out = Command::new("bash").arg(&script).args(args).output().expect("run deploy/local/services.sh");
    assert!(
        out.status.success(),
        "`deploy/local/services.sh {}` failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `deploy/local/services.sh` with these arguments when dropped,
/// whatever happened: brings back a node a test killed.
pub struct ServicesOnDrop(pub &'static [&'static str]);

impl Drop for ServicesOnDrop {
    fn drop(&mut self) {
        services(self.0);
    }
}

/// Where `deploy/local/services.sh` keeps its services' data and pid files.
pub fn services_state() -> PathBuf {
    std::env::var("SPILLWAY_STATE")
        .map_or_else(|_| PathBuf::from("/var/tmp/spillway-services"), PathBuf::from)
}

/// The AMQP ports of the three-node RabbitMQ cluster (`services.sh cluster
/// rabbitmq`): node `rabbit-N@localhost` listens on the N-th.
pub const RABBIT_CLUSTER_PORTS: [u16; 3] = [5681, 5682, 5683];

/// The client ports of the three-node Kafka cluster (`services.sh cluster
/// kafka`): node id N listens on the N-th.
pub const KAFKA_CLUSTER_PORTS: [u16; 3] = [29092, 29094, 29096];

/// The cluster's bootstrap list, for `brokers`.
pub fn kafka_cluster_brokers() -> String {
    KAFKA_CLUSTER_PORTS.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
}

/// The cluster is up, or the test says how to bring it up.
pub async fn assert_cluster_up(what: &str, ports: &[u16]) {
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).await.is_ok(),
            "the {what} cluster is not up (nothing on 127.0.0.1:{port}): run `deploy/local/services.sh cluster {what}`"
        );
    }
}

/// `kill -9` of a process by pid: a node lost without a clean shutdown.
pub fn kill9_pid(pid: u32) {
    let ok = Command::new("kill").args(["-9", &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -9 {pid} failed");
}

/// The operating-system pid of RabbitMQ cluster node `n` (1-based).
pub fn rabbit_node_pid(n: usize) -> u32 {
    rabbit_pid(&["-n", &format!("rabbit-{n}@localhost")])
}

/// The operating-system pid of the machine's single-node RabbitMQ
/// (`services.sh up`'s).
pub fn rabbit_single_pid() -> u32 {
    rabbit_pid(&[])
}

fn rabbit_pid(node: &[&str]) -> u32 {
    let out =
        Command::new("rabbitmqctl").args(node).args(["eval", "os:getpid()."]).output().expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_matches('"').parse().unwrap_or_else(|_| {
        panic!("the pid of RabbitMQ {node:?}: {text:?} (is it up? deploy/local/services.sh up)")
    })
}

/// The pid of Kafka cluster node `id` (1-based), from its pid file.
pub fn kafka_node_pid(id: i32) -> u32 {
    let file = services_state().join(format!("kafka-cluster/node-{id}/pid"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim().parse().unwrap_or_else(|_| panic!("{}: {text:?}", file.display()))
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    watchdog();
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A TCP proxy that can be taken down and brought back on the same port:
/// down, it refuses connections and cuts the open ones, as a server that
/// stopped would; up, it forwards to the target again. For outages of a
/// server that keeps its state only in memory (moto). Frozen, it keeps
/// every connection open and accepts new ones but passes no byte either
/// way, as a network partition or a hung server does: what shows whether
/// each call has a deadline.
pub struct Proxy {
    pub port: u16,
    target: u16,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: u16) -> Arc<Self> {
        Self::start_on(free_port(), target).await
    }

    /// Listens on `port` (one a server advertises), forwarding to `target`.
    pub async fn start_on(port: u16, target: u16) -> Arc<Self> {
        let (frozen, _) = tokio::sync::watch::channel(false);
        let proxy = Arc::new(Self { port, target, tasks: std::sync::Mutex::default(), frozen });
        proxy.up().await;
        proxy
    }

    /// Listens and forwards.
    pub async fn up(self: &Arc<Self>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy bind");
        let this = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = this.target;
                let frozen = this.frozen.subscribe();
                let conn = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let (in_r, in_w) = inbound.into_split();
                        let (out_r, out_w) = outbound.into_split();
                        tokio::join!(pipe(in_r, out_w, frozen.clone()), pipe(out_r, in_w, frozen));
                    }
                });
                this.tasks.lock().expect("lock").push(conn);
            }
        });
        self.tasks.lock().expect("lock").push(accept);
    }

    /// Holds every byte from now on, both ways, on every connection, until
    /// the guard is dropped (a failing test thaws too, so calls stuck on
    /// the network can end and the runtime can shut down).
    #[must_use = "the network thaws when the guard is dropped"]
    pub fn freeze(&self) -> Frozen<'_> {
        self.frozen.send_replace(true);
        Frozen(self)
    }
}

/// A [`Proxy`] frozen; dropping it passes what was held and forwards again.
pub struct Frozen<'a>(&'a Proxy);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.frozen.send_replace(false);
    }
}

impl Proxy {
    /// Stops listening and cuts every open connection.
    pub fn down(&self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

/// Copies `from` to `to`, holding each chunk while `frozen` is true.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The config every outage test runs: `backend` (its `[queue]` table),
/// queue `queue` behind `/ingest`, a 2 s publisher timeout, a consumer of 2
/// workers polling every `wait` into the PostgreSQL table `table`, with
/// short retry and probe backoffs so recovery shows within the test.
pub fn outage_config(backend: &str, queue: &str, wait: &str, table: &str) -> String {
    format!(
        r#"
{backend}

[queues.{queue}.dead_letter]
max_receive_count = 5
visibility_timeout = "5s"

[ingest.publisher]
send_timeout = "2s"

[[ingest.routes]]
path = "/ingest"
queue = "{queue}"

[consumer]
queue = "{queue}"
concurrency = 2
wait = "{wait}"
retry = {{ base = "100ms", max = "500ms", jitter = 0.1 }}
probe = {{ base = "100ms", max = "500ms", jitter = 0.1 }}

[consumer.sink]
type = "postgres"
url = "{pg}"
table = "{table}"
"#,
        pg = pg_url(),
    )
}

/// What a [`SteadyLoad`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Ids of the 2xx answers.
    pub accepted: std::collections::HashSet<String>,
    /// Every status, in order.
    pub statuses: Vec<u16>,
    /// How long each answer took, in the same order.
    pub took: Vec<Duration>,
    /// Answers that took longer than the send timeout plus a second.
    pub slow: Vec<Duration>,
}

impl Seen {
    /// The checks every outage test makes: only 202 and 503 (with
    /// `Retry-After`, checked as they came), some 503s, none slow, and 2xx
    /// again at the end.
    pub fn assert_fast_503s_and_recovery(&self) {
        let unexpected: Vec<u16> = self.statuses.iter().copied().filter(|s| *s != 202 && *s != 503).collect();
        assert!(unexpected.is_empty(), "only 202 and 503 are right here: {unexpected:?}");
        assert!(self.statuses.contains(&503), "the outage produced no 503 at all");
        assert!(self.slow.is_empty(), "answers slower than the send timeout: {:?}", self.slow);
        let after = self.statuses.iter().rev().take_while(|s| **s == 202).count();
        assert!(after > 10, "the gateway did not recover: {after} 2xx at the end");
    }

    /// The share of 503s answered within `within`: a backend that knows
    /// its broker is down refuses at once instead of waiting out the
    /// send timeout on every request.
    pub fn fast_503_share(&self, within: Duration) -> f64 {
        let took: Vec<&Duration> =
            self.statuses.iter().zip(&self.took).filter(|(s, _)| **s == 503).map(|(_, t)| t).collect();
        took.iter().filter(|t| ***t <= within).count() as f64 / took.len().max(1) as f64
    }

    /// A node of a cluster lost: only 202 and 503 (a failover may cost
    /// no 503 at all), none slower than the send timeout, and 2xx again at
    /// the end without a restart.
    pub fn assert_only_202_503_and_recovery(&self) {
        let unexpected: Vec<u16> = self.statuses.iter().copied().filter(|s| *s != 202 && *s != 503).collect();
        assert!(unexpected.is_empty(), "only 202 and 503 are right here: {unexpected:?}");
        assert!(self.slow.is_empty(), "answers slower than the send timeout: {:?}", self.slow);
        let after = self.statuses.iter().rev().take_while(|s| **s == 202).count();
        assert!(after > 10, "the gateway did not recover: {after} 2xx at the end");
    }

    pub fn answered_503(&self) -> usize {
        self.statuses.iter().filter(|s| **s == 503).count()
    }
}

/// One client posting small JSON bodies one after another (20 ms apart)
/// until stopped, recording what each answer said.
pub struct SteadyLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoad {
    /// `method` on `url`; a 503 must carry `Retry-After`; an answer slower
    /// than `send_timeout` + 1 s is recorded as slow.
    pub fn start(
        http: reqwest::Client,
        method: reqwest::Method,
        url: String,
        send_timeout: Duration,
    ) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let task = {
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = tokio::time::Instant::now();
                    let res = http
                        .request(method.clone(), &url)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"n":{n}}}"#))
                        .send()
                        .await;
                    n += 1;
                    let took = sent.elapsed();
                    let r = res.unwrap_or_else(|e| panic!("the gateway did not answer: {e}"));
                    let status = r.status().as_u16();
                    if status == 503 {
                        assert!(r.headers().contains_key("retry-after"), "a 503 without Retry-After");
                    }
                    let id = if r.status().is_success() {
                        let v: serde_json::Value = r.json().await.expect("json");
                        Some(v["id"].as_str().expect("id").to_owned())
                    } else {
                        None
                    };
                    {
                        let mut s = seen.lock().expect("lock");
                        s.statuses.push(status);
                        s.took.push(took);
                        if took > send_timeout + Duration::from_secs(1) {
                            s.slow.push(took);
                        }
                        s.accepted.extend(id);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { stop, seen, task }
    }

    /// Stops the client and returns what it saw.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("load task");
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}
