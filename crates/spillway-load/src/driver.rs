//! Sending: open loop on a [`Schedule`], or closed loop with N clients.
//!
//! Open loop: a dispatcher waits for each request's due time and hands it
//! to a task of its own, whatever the server is doing; at most
//! `max_in_flight` requests are outstanding (beyond that the dispatcher
//! waits, and the wait shows in the latency, which counts from the due
//! time), and at most `connections` are on the wire at once.
//!
//! Closed loop: N clients, each sending its next request when its last is
//! answered. Latency then counts from the actual send: a closed loop
//! measures service time, and a stall shows as fewer requests.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, Semaphore},
    time::Instant,
};

use crate::schedule::Schedule;

/// What one request got.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// When it was due (open loop) or sent (closed loop), from the start.
    pub(crate) due: Duration,
    /// When its answer (or error) came, from the start.
    pub(crate) done: Duration,
    /// The HTTP status; `None` for a transport error or timeout.
    pub(crate) status: Option<u16>,
    /// The accepted message's id, from a 2xx.
    pub(crate) id: Option<String>,
}

/// Calls `fire(index, due)` for every due time of the schedule, not before
/// it is due, with at most `max_in_flight` outstanding; each outcome goes
/// to `out`. Returns when every request has been answered.
pub(crate) async fn open_loop<F, Fut>(
    schedule: &Schedule,
    max_in_flight: usize,
    start: Instant,
    fire: F,
    out: mpsc::UnboundedSender<Outcome>,
) where
    F: Fn(u64, Duration) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, due) in schedule.due_times().enumerate() {
        tokio::time::sleep_until(start + due).await;
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let request = fire(i as u64, due);
        let out = out.clone();
        tasks.spawn(async move {
            let outcome = request.await;
            drop(permit);
            let _ = out.send(outcome);
        });
        // Reap finished tasks as we go, so a long run does not hold them all.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// `clients` loops, each firing its next request when its last is answered,
/// until `duration` has passed since `start`.
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    duration: Duration,
    start: Instant,
    fire: F,
    out: mpsc::UnboundedSender<Outcome>,
) where
    F: Fn(u64, Duration) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (fire, out, next) = (fire.clone(), out.clone(), next.clone());
        tasks.spawn(async move {
            while start.elapsed() < duration {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = out.send(fire(i, start.elapsed()).await);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The HTTP side: one client, a connection cap, the request as configured.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) method: reqwest::Method,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) connections: Arc<Semaphore>,
}

impl Target {
    /// Sends one request with `body`; the outcome's `due` is `due`, its
    /// `done` is measured against `start`.
    pub(crate) async fn send(&self, body: bytes::Bytes, due: Duration, start: Instant) -> Outcome {
        let permit = self.connections.clone().acquire_owned().await;
        let sent = self
            .http
            .request(self.method.clone(), &self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await;
        let (status, id) = match sent {
            Ok(res) => {
                let status = res.status();
                let header =
                    res.headers().get("x-spillway-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let id = if status.is_success() {
                    match header {
                        Some(id) => Some(id),
                        None => res
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned)),
                    }
                } else {
                    // Read the body so the connection can be reused.
                    let _ = res.bytes().await;
                    None
                };
                (Some(status.as_u16()), id)
            }
            Err(_) => (None, None),
        };
        drop(permit);
        Outcome { due, done: start.elapsed(), status, id }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Under a paused clock: every request fires at its due time, never
    /// before, and the count is the schedule's.
    #[tokio::test(start_paused = true)]
    async fn the_open_loop_fires_each_request_when_it_is_due() {
        let schedule = Schedule::Steps { rates: vec![20.0, 50.0], step: Duration::from_secs(1) };
        let fired = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let log = fired.clone();
        open_loop(
            &schedule,
            1000,
            start,
            move |_, due| {
                log.lock().expect("lock").push((due, start.elapsed()));
                async move { Outcome { due, done: due, status: Some(202), id: None } }
            },
            tx,
        )
        .await;
        let fired = fired.lock().expect("lock").clone();
        assert_eq!(fired.len(), 70);
        for (due, at) in &fired {
            assert_eq!(at, due, "fired at {at:?}, due at {due:?}");
        }
        let mut outcomes = 0;
        while rx.try_recv().is_ok() {
            outcomes += 1;
        }
        assert_eq!(outcomes, 70);
    }

    /// A server that stalls does not slow the schedule down: requests keep
    /// firing on time while earlier ones are outstanding, and the latency of
    /// each counts from its due time.
    #[tokio::test(start_paused = true)]
    async fn a_stall_does_not_delay_the_schedule_and_shows_in_latency() {
        let schedule = Schedule::Constant { rate: 10.0, duration: Duration::from_secs(2) };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        open_loop(
            &schedule,
            1000,
            start,
            move |_, due| async move {
                // The server answers nothing before t = 1.5 s.
                tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
                Outcome { due, done: start.elapsed(), status: Some(202), id: None }
            },
            tx,
        )
        .await;
        let mut got = Vec::new();
        while let Ok(o) = rx.try_recv() {
            got.push(o);
        }
        assert_eq!(got.len(), 20, "all 20 fired on schedule despite the stall");
        let first = got.iter().find(|o| o.due == Duration::ZERO).expect("first request");
        assert_eq!(first.done - first.due, Duration::from_millis(1500), "its latency counts the stall");
    }

    /// With the in-flight cap reached, the dispatcher waits; the waiting
    /// requests' latency still counts from their due time.
    #[tokio::test(start_paused = true)]
    async fn the_in_flight_cap_holds_and_waiting_counts() {
        let schedule = Schedule::Constant { rate: 100.0, duration: Duration::from_millis(100) };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        open_loop(
            &schedule,
            2,
            start,
            move |_, due| {
                let (f, p) = (f.clone(), p.clone());
                let now = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    f.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    Outcome { due, done: start.elapsed(), status: Some(202), id: None }
                }
            },
            tx,
        )
        .await;
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
        let mut last = None;
        while let Ok(o) = rx.try_recv() {
            last = Some(o);
        }
        let last = last.expect("outcomes");
        // 10 requests due every 10 ms, 2 at a time, 50 ms each: the slots free
        // at 50/60, 100/110, 150/160, 200/210 ms, so the 10th (due at 90 ms)
        // starts at 210 and is answered at 260 ms: 170 ms of its latency is
        // the wait for a slot, and it counts.
        assert_eq!(last.done, Duration::from_millis(260));
        assert_eq!(last.done - last.due, Duration::from_millis(170));
    }
}
