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
//! What is guaranteed: a send refused here was never handed to librdkafka,
//! so nothing refused is stored behind the caller's back. What is not: a
//! send that was already in librdkafka's queue when the brokers went away
//! still waits up to `send_timeout` for its delivery report.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
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
    probe: BaseConsumer,
    runtime: Option<tokio::runtime::Handle>,
}

impl Health {
    /// `probe` is a client used for nothing but metadata round trips, so a
    /// probe never waits behind the producer's queue.
    pub(crate) fn new(probe: BaseConsumer) -> Arc<Self> {
        Arc::new(Self {
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            probe,
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
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
                if was_down {
                    tracing::info!("kafka: brokers reachable again");
                }
                self.probing.store(false, Ordering::SeqCst);
                return;
            }
            if !was_down {
                tracing::warn!("kafka: brokers unreachable; sends fail fast until a probe reaches them");
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
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.0.suspect();
        }
        tracing::debug!(%error, reason, "kafka: client error");
    }
}
