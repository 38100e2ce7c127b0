//! Admission by bytes: a bound on the request bodies the gateway holds in
//! memory at once, across every route and connection.
//!
//! The connection cap alone does not bound memory: 10,000 connections each
//! sending a 192 KiB body is about 1.9 GiB, against a 512 MiB container
//! limit (the shipped manifests). So before a body is read, its declared
//! `Content-Length` (or, for a chunked body, the route's `max_body_bytes`)
//! is taken from a budget, `ingest.limits.max_body_bytes_in_flight`, and
//! given back when the request is answered; a request the budget cannot
//! take now is a 503 with `Retry-After` before its body is read, and
//! nothing is stored. The default, 64 MiB, keeps the bodies and their
//! envelopes (about twice the bodies) under a quarter of 512 MiB.
//!
//! The budget counts in KiB (rounded up), so it fits a semaphore's `u32`
//! permits up to 4 TiB.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Refused admissions, counted.
pub const REFUSED: &str = "spillway_admission_refused_total";

/// The shared budget.
#[derive(Debug)]
pub struct Admission {
    kib: Arc<Semaphore>,
}

/// Bytes taken from the budget; given back when dropped.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl Admission {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let permits = usize::try_from(kib(bytes as u64)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { kib: Arc::new(Semaphore::new(permits)) }
    }

    /// Takes `bytes` from the budget now, or refuses: no waiting, so a
    /// request over the budget is answered at once and holds nothing.
    pub fn admit(&self, bytes: u64) -> Result<Admitted, ApiError> {
        match self.kib.clone().try_acquire_many_owned(kib(bytes).max(1)) {
            Ok(permit) => Ok(Admitted(permit)),
            Err(_) => {
                metrics::counter!(REFUSED).increment(1);
                Err(ApiError::OverCapacity)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;
    use crate::error::ApiError;

    #[test]
    fn bodies_in_flight_are_bounded_and_given_back() {
        let a = Admission::new(100 * 1024);
        let first = a.admit(60 * 1024).expect("60 KiB of 100");
        assert!(matches!(a.admit(60 * 1024), Err(ApiError::OverCapacity)), "120 KiB of 100");
        let small = a.admit(40 * 1024).expect("the 40 KiB left");
        drop(first);
        a.admit(60 * 1024).expect("given back when answered");
        drop(small);
        // An empty body still counts one KiB: a flood of them is bounded too.
        let many: Vec<_> = (0..100).map(|_| a.admit(0).expect("1 KiB each")).collect();
        assert!(a.admit(0).is_err());
        drop(many);
    }
}
