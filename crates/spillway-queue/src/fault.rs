//! Faults a test arms at one named broker call, for one queue or partition.
//!
//! Why: some failures decide whether a message is lost or stranded, yet no
//! real broker can be made to fail *one* call of several on cue — a frozen
//! proxy fails every call at once, a stopped broker fails them all. A
//! fault point sits right where the backend gets the broker's answer and,
//! when armed, turns that answer into the error the broker would give; the
//! code under test then runs against the real broker for everything else.
//!
//! Points are keyed by a name and a scope (a queue, a topic/partition), so
//! tests running side by side in one process never trip each other's.
//! Compiled in for the crate's own tests only: elsewhere [`hit`] is a
//! constant `false` and its scope is never built.

#[cfg(test)]
pub(crate) use armed::{arm, disarm, hit};

/// Whether the call at `point`, for `scope`, must fail now. Never, outside
/// the crate's tests.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn hit(_point: &str, _scope: impl FnOnce() -> String) -> bool {
    false
}

#[cfg(test)]
mod armed {
    use std::{
        collections::HashMap,
        sync::{Mutex, PoisonError},
    };

    /// What is left of an armed fault: calls to let through, then calls to fail.
    #[derive(Debug, Clone, Copy)]
    struct Left {
        pass: u32,
        fail: u32,
    }

    static ARMED: Mutex<Option<HashMap<(String, String), Left>>> = Mutex::new(None);

    /// After `pass` calls of `point` in `scope` go through, the next `fail`
    /// fail (`u32::MAX`: until [`disarm`]).
    pub(crate) fn arm(point: &str, scope: &str, pass: u32, fail: u32) {
        let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
        armed
            .get_or_insert_with(HashMap::new)
            .insert((point.to_owned(), scope.to_owned()), Left { pass, fail });
    }

    pub(crate) fn disarm(point: &str, scope: &str) {
        let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(map) = armed.as_mut() {
            map.remove(&(point.to_owned(), scope.to_owned()));
        }
    }

    pub(crate) fn hit(point: &str, scope: impl FnOnce() -> String) -> bool {
        let mut armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(map) = armed.as_mut() else { return false };
        let Some(left) = map.get_mut(&(point.to_owned(), scope())) else { return false };
        if left.pass > 0 {
            left.pass -= 1;
            return false;
        }
        if left.fail == 0 {
            return false;
        }
        if left.fail != u32::MAX {
            left.fail -= 1;
        }
        true
    }
}
