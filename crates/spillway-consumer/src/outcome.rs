//! What a sink answers, and what the runtime does with each: [`decide`], one
//! pure function, so the rule is unit-tested without a queue or a clock.
//!
//! | sink answer            | example                                   | runtime does                           |
//! |------------------------|-------------------------------------------|----------------------------------------|
//! | `Ok`                   | row inserted, HTTP 2xx                    | ack                                    |
//! | `Down`                 | refused, timeout, lock wait, no table, 503, 3xx | release (not counted), open the circuit |
//! | `Down` again, and the sink took other messages since this one's last `Down` | one payload hangs the endpoint | nack with backoff (counted) |
//! | `Transient`            | HTTP 500/502/504, 408, 429                | nack with backoff (counted); N in a row open the circuit |
//! | `Rejected { dead_letter: false }` | constraint violation, HTTP 4xx (retry) | nack with backoff (counted)      |
//! | `Rejected { dead_letter: true }`  | HTTP 4xx (dead-letter), body the sink can never take | dead-letter now |
//!
//! While the circuit is open, the prober's message is never counted for a
//! `Down` or `Transient` answer: it is released with a delay.

/// Why a sink did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The sink itself is down; the message is not to blame.
    #[error("sink unavailable: {0}")]
    Down(String),
    /// Either the sink or the message; retried, and counted.
    #[error("sink failed: {0}")]
    Transient(String),
    /// The sink refused this message.
    #[error("sink rejected the message: {reason}")]
    Rejected { reason: String, dead_letter: bool },
}

/// Where a delivery was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By a worker, circuit closed.
    Normal,
    /// By the prober, circuit open.
    Probe,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Ack,
    /// Nack with backoff: the receive counts toward the DLQ.
    Retry(String),
    DeadLetter(String),
    /// Give it back uncounted: the sink, not the message, failed.
    Release,
}

/// What the answer says about the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered: close the circuit (probe) or reset the transient count.
    Up,
    /// It is down: open the circuit.
    Down,
    /// One more `Transient` in a row.
    Transient,
    /// Nothing learned about the sink as a whole.
    Unknown,
}

/// The rule, as a pure function. `blamed` is true when the sink took other
/// messages since this one last failed as `Down`: the sink is up, so a
/// `Down` for this message is this message's fault.
pub fn decide(answer: &Result<(), SinkError>, mode: Mode, blamed: bool) -> (Action, Health) {
    match (answer, mode) {
        (Ok(()), _) => (Action::Ack, Health::Up),
        (Err(SinkError::Down(reason)), _) if blamed => {
            (Action::Retry(format!("{reason} (the sink took other messages meanwhile)")), Health::Unknown)
        }
        (Err(SinkError::Down(_)), Mode::Normal) => (Action::Release, Health::Down),
        (Err(SinkError::Transient(reason)), Mode::Normal) => {
            (Action::Retry(reason.clone()), Health::Transient)
        }
        (Err(SinkError::Down(_) | SinkError::Transient(_)), Mode::Probe) => (Action::Release, Health::Down),
        (Err(SinkError::Rejected { reason, dead_letter: true }), _) => {
            (Action::DeadLetter(reason.clone()), Health::Up)
        }
        (Err(SinkError::Rejected { reason, dead_letter: false }), _) => {
            (Action::Retry(reason.clone()), Health::Up)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), SinkError> {
        Err(SinkError::Down("refused".into()))
    }

    #[test]
    fn an_outage_releases_uncounted_and_opens_the_circuit() {
        assert_eq!(decide(&down(), Mode::Normal, false), (Action::Release, Health::Down));
        let transient = Err(SinkError::Transient("500".into()));
        assert_eq!(decide(&transient, Mode::Probe, false), (Action::Release, Health::Down));
    }

    #[test]
    fn down_for_one_message_while_others_get_through_is_that_messages_fault() {
        let (action, health) = decide(&down(), Mode::Normal, true);
        assert!(matches!(action, Action::Retry(r) if r.contains("refused")));
        assert_eq!(health, Health::Unknown, "a blamed message says nothing about the sink");
        assert!(matches!(decide(&down(), Mode::Probe, true).0, Action::Retry(_)));
    }

    #[test]
    fn answers_from_the_sink_prove_it_up() {
        assert_eq!(decide(&Ok(()), Mode::Probe, true), (Action::Ack, Health::Up));
        let rejected = Err(SinkError::Rejected { reason: "bad".into(), dead_letter: true });
        assert_eq!(decide(&rejected, Mode::Normal, false), (Action::DeadLetter("bad".into()), Health::Up));
        let retry = Err(SinkError::Rejected { reason: "bad".into(), dead_letter: false });
        assert_eq!(decide(&retry, Mode::Normal, false), (Action::Retry("bad".into()), Health::Up));
        let transient = Err(SinkError::Transient("500".into()));
        assert_eq!(decide(&transient, Mode::Normal, false), (Action::Retry("500".into()), Health::Transient));
    }
}
