//! Helpers the benchmark binaries share.

pub mod kafka;
pub mod segment;

/// The body both baseline servers (`ceiling`, `durable_ceiling`) answer
/// with: the same bytes, so the two differ only in what they store.
pub fn accepted_body(id: &str, len: usize) -> String {
    format!(r#"{{"id":"{id}","status":"accepted","len":{len}}}"#)
}

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// What one sender loop of [`closed_loop`] holds: whether to go on, and
/// where to count what was stored.
#[derive(Clone)]
pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Sender {
    /// `false` once the run's time is up.
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Counts one message as stored (call it only after the confirm).
    pub fn stored(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a [`closed_loop`] run did.
pub struct Run {
    pub stored: u64,
    pub elapsed: Duration,
    /// The whole process's CPU time (user + system) per stored message.
    pub cpu_us_per_msg: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.stored as f64 / self.elapsed.as_secs_f64()
    }

    /// `what` on stderr; `msgs/s cpu_us_per_msg` as the last line of stdout,
    /// which the bench scripts read.
    pub fn report(&self, what: &str) {
        eprintln!("{} {what} in {:?}, {:.1} us CPU each", self.stored, self.elapsed, self.cpu_us_per_msg);
        println!("{:.0} {:.2}", self.rate(), self.cpu_us_per_msg);
    }
}

/// The raw publishers' shape: `senders` loops, each sending one message
/// and waiting until it is stored before the next (like as many HTTP
/// clients each waiting for their 202), for `seconds`. `sender(i, handle)`
/// builds loop `i`; it runs `while handle.running() { send; handle.stored() }`.
pub async fn closed_loop<F, Fut>(
    senders: usize,
    seconds: u64,
    sender: F,
) -> Result<Run, tokio::task::JoinError>
where
    F: Fn(usize, Sender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Sender { stop: Arc::new(AtomicBool::new(false)), sent: Arc::new(AtomicU64::new(0)) };
    let cpu0 = process_cpu_secs();
    let tasks: Vec<_> = (0..senders).map(|i| tokio::spawn(sender(i, handle.clone()))).collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    handle.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await?;
    }
    let stored = handle.sent.load(Ordering::Relaxed);
    let cpu_us_per_msg = (process_cpu_secs() - cpu0) * 1e6 / stored.max(1) as f64;
    Ok(Run { stored, elapsed, cpu_us_per_msg })
}

/// This process's user + system CPU seconds so far, from `/proc/self/stat`
/// (Linux, 100 ticks a second): what a run spent, not how long it took.
pub fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; the fields after its ')' are fixed.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after ')'.
    let ticks = |i: usize| fields.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Fills `queue` with `n` messages of `body`, 1,000 to a commit (the
/// fastest the embedded queue takes them), each with the two attributes the
/// gateway sets and the ordering key `key(i)`. For the backlog benchmarks:
/// a deep queue in minutes, not the hours a gateway at 50k/s would need.
pub async fn fill(
    producer: &dyn spillway_queue::Producer,
    n: usize,
    body: &bytes::Bytes,
    key: impl Fn(usize) -> Option<String>,
) -> Result<(), spillway_queue::QueueError> {
    let mut sent = 0;
    while sent < n {
        let msgs = (sent..n.min(sent + 1000))
            .map(|i| {
                let mut m = spillway_queue::OutgoingMessage::new(format!("fill-{i:010}"), body.clone());
                m.attributes.insert("spillway-format".to_owned(), "envelope".to_owned());
                m.attributes.insert("spillway-route".to_owned(), "ingest".to_owned());
                m.ordering_key = key(i);
                m
            })
            .collect::<Vec<_>>();
        sent += msgs.len();
        for r in producer.send_batch(msgs).await? {
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::process_cpu_secs();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let spent = super::process_cpu_secs() - before;
        assert!(spent >= 0.15, "300 ms of spinning counted as {spent} s");
    }
}
