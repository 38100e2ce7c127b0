//! What `/readyz` reports, computed away from the probe.
//!
//! A background task asks the backend every `every` (each check bounded by
//! [`CHECK_TIMEOUT`]) and keeps the answer; a probe reads the kept answer
//! and never reaches the broker. So a probe storm costs the broker nothing
//! (SQS bills every call; Kafka fetches metadata), and a slow broker cannot
//! make probes time out and look like a dead pod. Draining turns readiness
//! false at once, without waiting for the next check.
//!
//! With a spool in front of the broker, a pod stays ready while the broker
//! is down as long as its spool has room ([`Readiness::ready_while_down`]):
//! taking it out of the Service would refuse exactly the traffic the spool
//! is there to keep.
//!
//! The answer says ready or not and nothing more: why is in the log, once
//! per change (a broker's error text can name hosts, accounts or roles).
//! The task holds the state weakly and ends when the last handle is gone.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use spillway_queue::Backend;

/// One check of the backend may take this long; then it counts as not ready.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The kept answer; clones share it.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

/// Whether the pod can still take messages while the backend is down.
type Fallback = Arc<dyn Fn() -> bool + Send + Sync>;

struct Inner {
    backend: Arc<dyn Backend>,
    draining: AtomicBool,
    fallback: Mutex<Option<Fallback>>,
    /// `None` while the backend answers; else why not.
    not_ready: Mutex<Option<String>>,
}

impl Readiness {
    /// Checks the backend once now, so a gateway whose backend answers is
    /// ready from its first probe, then every `every` in the background.
    pub async fn start(backend: Arc<dyn Backend>, every: Duration) -> Self {
        let inner = Arc::new(Inner {
            backend,
            draining: AtomicBool::new(false),
            fallback: Mutex::new(None),
            not_ready: Mutex::new(None),
        });
        inner.check().await;
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.check().await;
            }
        });
        Self { inner }
    }

    /// From now on not ready.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// While the backend is down, ready as long as `can_take` says so (a
    /// spool with room).
    pub fn ready_while_down(&self, can_take: impl Fn() -> bool + Send + Sync + 'static) {
        *self.inner.fallback.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(can_take));
    }

    /// The kept answer: ready unless draining, or the last check failed
    /// with nothing to take messages meanwhile.
    pub fn is_ready(&self) -> bool {
        if self.inner.draining.load(Ordering::SeqCst) {
            return false;
        }
        if self.inner.not_ready.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
            return true;
        }
        let fallback = self.inner.fallback.lock().unwrap_or_else(PoisonError::into_inner).clone();
        fallback.is_some_and(|can_take| can_take())
    }
}

impl Inner {
    async fn check(&self) {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, self.backend.ready()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("the queue backend did not answer within {CHECK_TIMEOUT:?}")),
        };
        let mut kept = self.not_ready.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*kept, &outcome) {
            (Some(_), None) => tracing::info!("ready: the queue backend answers again"),
            (None, Some(why)) => {
                tracing::warn!(reason = %why, "not ready: the queue backend does not answer")
            }
            (Some(before), Some(why)) if before != why => {
                tracing::warn!(reason = %why, "not ready: the queue backend does not answer")
            }
            _ => {}
        }
        *kept = outcome;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc,
        },
        time::Duration,
    };

    use async_trait::async_trait;
    use spillway_queue::{
        embedded::EmbeddedBackend, memory::memory_backend, Admin, Backend, Consumer, Producer, QueueError,
    };

    use super::Readiness;

    /// A backend whose `ready` is counted and switched by the test; the
    /// rest is the memory backend's.
    struct Switched {
        inner: EmbeddedBackend,
        up: AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Admin for Switched {
        async fn ensure(&self, spec: &spillway_queue::QueueSpec) -> Result<(), QueueError> {
            self.inner.ensure(spec).await
        }
        async fn stats(&self, queue: &str) -> Result<spillway_queue::QueueStats, QueueError> {
            self.inner.stats(queue).await
        }
        async fn age(&self, queue: &str) -> Result<spillway_queue::QueueAge, QueueError> {
            self.inner.age(queue).await
        }
        async fn peek_dead(
            &self,
            queue: &str,
            max: usize,
        ) -> Result<Vec<spillway_queue::DeadLetter>, QueueError> {
            self.inner.peek_dead(queue, max).await
        }
        async fn redrive(&self, queue: &str, max: usize) -> Result<u64, QueueError> {
            self.inner.redrive(queue, max).await
        }
        async fn purge(&self, queue: &str, target: spillway_queue::PurgeTarget) -> Result<u64, QueueError> {
            self.inner.purge(queue, target).await
        }
    }

    #[async_trait]
    impl Backend for Switched {
        fn kind(&self) -> &'static str {
            "switched"
        }
        async fn producer(&self, queue: &str) -> Result<Arc<dyn Producer>, QueueError> {
            self.inner.producer(queue).await
        }
        async fn consumer(&self, queue: &str) -> Result<Arc<dyn Consumer>, QueueError> {
            self.inner.consumer(queue).await
        }
        async fn ready(&self) -> Result<(), QueueError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(QueueError::unavailable_msg("switched off"))
            }
        }
    }

    /// Probes read the kept answer: a thousand of them call the backend
    /// no more than the checks the interval allows, and a change is seen
    /// within one interval.
    #[tokio::test(start_paused = true)]
    async fn probes_read_the_kept_answer_and_never_call_the_backend() {
        let backend = Arc::new(Switched {
            inner: memory_backend().expect("memory backend"),
            up: AtomicBool::new(true),
            calls: AtomicUsize::new(0),
        });
        let r = Readiness::start(backend.clone(), Duration::from_secs(2)).await;
        assert!(r.is_ready());
        for _ in 0..1000 {
            assert!(r.is_ready());
        }
        assert_eq!(backend.calls.load(Ordering::SeqCst), 1, "only the check at start");
        backend.up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(!r.is_ready(), "the next check saw the backend down");
        backend.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(r.is_ready());
        assert_eq!(backend.calls.load(Ordering::SeqCst), 3, "one check per interval");
        r.start_draining();
        assert!(!r.is_ready(), "draining is seen at once");
    }

    /// With a spool: ready while the backend is down as long as the spool
    /// has room; not once it is full; never while draining.
    #[tokio::test(start_paused = true)]
    async fn a_spool_with_room_keeps_the_pod_ready_while_the_backend_is_down() {
        let backend = Arc::new(Switched {
            inner: memory_backend().expect("memory backend"),
            up: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        });
        let r = Readiness::start(backend.clone(), Duration::from_secs(2)).await;
        assert!(!r.is_ready(), "no spool: a backend that is down is not ready");
        let room = Arc::new(AtomicBool::new(true));
        let has_room = room.clone();
        r.ready_while_down(move || has_room.load(Ordering::SeqCst));
        assert!(r.is_ready(), "the spool takes what the backend does not");
        room.store(false, Ordering::SeqCst);
        assert!(!r.is_ready(), "a full spool takes nothing");
        room.store(true, Ordering::SeqCst);
        r.start_draining();
        assert!(!r.is_ready(), "draining wins");
    }
}
