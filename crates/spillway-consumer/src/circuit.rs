//! The circuit breaker between the receive loop and the sink.
//!
//! Closed: workers receive and deliver. Open: no worker receives; one prober
//! tries the sink with backoff. It opens at once on a `Down` answer, or after
//! `threshold` `Transient` answers in a row; any answer that proves the sink is
//! up (a success or a rejection) closes it and resets the count.

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Mutex, PoisonError,
};

use tokio::sync::watch;

/// Shared by all workers of one runtime.
pub struct Circuit {
    open: watch::Sender<bool>,
    transient_in_a_row: AtomicU32,
    threshold: u32,
    prober: Mutex<bool>,
}

impl Circuit {
    pub fn new(threshold: u32) -> Self {
        Self {
            open: watch::Sender::new(false),
            transient_in_a_row: AtomicU32::new(0),
            threshold: threshold.max(1),
            prober: Mutex::new(false),
        }
    }

    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// The sink answered: it is up.
    pub fn record_up(&self) {
        self.transient_in_a_row.store(0, Ordering::SeqCst);
    }

    /// A `Transient` answer; returns whether this one opened the circuit.
    pub fn record_transient(&self) -> bool {
        let n = self.transient_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
        n >= self.threshold && self.open()
    }

    /// Opens the circuit; returns whether it was closed before.
    pub fn open(&self) -> bool {
        self.open.send_if_modified(|open| !std::mem::replace(open, true))
    }

    /// Closes the circuit and wakes the waiting workers.
    pub fn close(&self) {
        self.transient_in_a_row.store(0, Ordering::SeqCst);
        self.open.send_replace(false);
    }

    /// Claims the prober role; only one worker probes at a time.
    pub fn try_become_prober(&self) -> Option<ProberGuard<'_>> {
        let mut p = self.prober.lock().unwrap_or_else(PoisonError::into_inner);
        if *p {
            return None;
        }
        *p = true;
        Some(ProberGuard { circuit: self })
    }

    /// Waits until the circuit is closed.
    pub async fn wait_closed(&self) {
        let mut rx = self.open.subscribe();
        // Err only if the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|open| !*open).await;
    }
}

/// Held by the prober; gives the role back when dropped.
pub struct ProberGuard<'a> {
    circuit: &'a Circuit,
}

impl Drop for ProberGuard<'_> {
    fn drop(&mut self) {
        *self.circuit.prober.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_transients_in_a_row() {
        let c = Circuit::new(3);
        assert!(!c.record_transient());
        assert!(!c.record_transient());
        c.record_up();
        assert!(!c.record_transient());
        assert!(!c.record_transient());
        assert!(c.record_transient(), "the third in a row opens it");
        assert!(c.is_open());
        c.close();
        assert!(!c.is_open());
    }

    #[test]
    fn one_prober_at_a_time() {
        let c = Circuit::new(1);
        let g = c.try_become_prober().expect("first");
        assert!(c.try_become_prober().is_none());
        drop(g);
        assert!(c.try_become_prober().is_some());
    }
}
