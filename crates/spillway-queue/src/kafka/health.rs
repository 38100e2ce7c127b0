//! Whether the brokers can be reached, so that while they cannot, a send
//! fails at once (503 + `Retry-After` at the gateway) instead of waiting
//! out its `send_timeout` in librdkafka's queue, and `/readyz` says so.
//!
//! Two signals mark the brokers suspect: librdkafka's "all brokers are
//! down" event, and a produce that failed for a transport reason (timed
//! out, broker gone). Suspect starts one probe: a metadata round trip on a
//! client of its own, every [`PROBE_EVERY`]. While probes fail the brokers
//! are *down*; the first probe that succeeds brings them back *up*. An
//! idle connection the broker closed also raises the event; its probe
//! succeeds at once, so no send is refused for it.
//!
//! The cause of the last connection failure librdkafka reported (a TLS
//! handshake the CA did not verify, a SASL login refused) is kept, so that
//! "brokers unreachable" names it and the key to fix (librdkafka's text
//! names `ssl.ca.location`, the SASL mechanism); it is logged once per
//! change, and forgotten when a probe reaches the brokers.
//!
//! What is guaranteed: a send refused here was never handed to librdkafka,
//! so nothing refused is stored behind the caller's back. What is not: a
//! send that was already in librdkafka's queue when the brokers went away
//! still waits up to `send_timeout` for its delivery report.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, Consumer as _},
    error::{KafkaError, RDKafkaErrorCode},
};

/// How often a probe asks the brokers while they are down.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);
/// One probe's metadata round trip may take this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The brokers' state, shared by the producer's context and the backend.
pub(crate) struct Health {
    down: AtomicBool,
    probing: AtomicBool,
    probe: Arc<BaseConsumer>,
    runtime: Option<tokio::runtime::Handle>,
    /// librdkafka's reason for the last failed connection, if any since
    /// the brokers were last reached.
    cause: Mutex<Option<String>>,
}

impl Health {
    /// `probe` is a client used for nothing but metadata round trips, so a
    /// probe never waits behind the producer's queue.
    pub(crate) fn new(probe: Arc<BaseConsumer>) -> Arc<Self> {
        Arc::new(Self {
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            probe,
            runtime: tokio::runtime::Handle::try_current().ok(),
            cause: Mutex::new(None),
        })
    }

    /// Why the last connection failed, as librdkafka said it.
    pub(crate) fn cause(&self) -> Option<String> {
        self.cause.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// librdkafka reported a failed connection: keep its reason, and log it
    /// when it differs from the last (librdkafka repeats itself per retry).
    fn failed(&self, reason: &str) {
        // librdkafka appends "(after 42ms in state SSL_HANDSHAKE, 3 identical
        // error(s) suppressed)": the part before it is the same each time.
        let reason = reason.split(" (after ").next().unwrap_or(reason).to_owned();
        let mut cause = self.cause.lock().unwrap_or_else(PoisonError::into_inner);
        if cause.as_deref() != Some(reason.as_str()) {
            tracing::warn!(reason, "kafka: connection to a broker failed");
            *cause = Some(reason);
        }
    }

    /// The brokers answered: a cause kept from before is stale.
    pub(crate) fn reached(&self) {
        *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The error of a call that failed, naming the kept cause when there
    /// is one (the call timed out because no broker took the connection);
    /// else as [`super::queue_error`] sorts it.
    pub(crate) fn error(&self, what: &str, queue: &str, e: &KafkaError) -> crate::QueueError {
        match self.cause() {
            Some(cause) => crate::QueueError::unavailable(format!("kafka: {what}: {cause}"), e.clone()),
            None => super::queue_error(what, queue, e),
        }
    }

    /// The error of a call that reached no broker, with the cause when one
    /// is known.
    pub(crate) fn explain(&self, what: &str) -> String {
        match self.cause() {
            Some(cause) => format!("kafka: {what}: {cause}"),
            None => format!("kafka: {what}"),
        }
    }

    /// True while the last probe failed.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Something suggests the brokers are gone: find out, off this thread.
    pub(crate) fn suspect(self: &Arc<Self>) {
        let Some(rt) = &self.runtime else { return };
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        rt.spawn(async move { me.probe_until_up().await });
    }

    /// A produce failed: a transport failure makes the brokers suspect.
    pub(crate) fn observe(self: &Arc<Self>, e: &KafkaError) {
        if is_transport(e) {
            self.suspect();
        }
    }

    async fn probe_until_up(self: Arc<Self>) {
        loop {
            let me = self.clone();
            let reached = tokio::task::spawn_blocking(move || {
                me.probe.client().fetch_metadata(None, PROBE_TIMEOUT).is_ok()
            })
            .await
            .unwrap_or(false);
            let was_down = self.down.swap(!reached, Ordering::SeqCst);
            if reached {
                self.reached();
                if was_down {
                    tracing::info!("kafka: brokers reachable again");
                }
                self.probing.store(false, Ordering::SeqCst);
                return;
            }
            if !was_down {
                tracing::warn!(
                    cause = self.cause().as_deref().unwrap_or("no answer"),
                    "kafka: brokers unreachable; sends fail fast until a probe reaches them"
                );
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// The errors that say "no broker answered", not "this message is wrong".
fn is_transport(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
        )
    )
}

/// The producer's context: hears librdkafka's client-wide errors.
pub(crate) struct ProducerCtx(pub(crate) Arc<Health>);

impl ClientContext for ProducerCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.0.suspect(),
            // A TLS handshake or a SASL login refused: the operator's to fix.
            // (A broker closing an idle connection is not one: not kept.)
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication) => self.0.failed(reason),
            _ => {}
        }
        tracing::debug!(%error, reason, "kafka: client error");
    }
}
