//! Serving the router, and draining on shutdown.
//!
//! The caller owns the listener and the shutdown signal (a
//! `CancellationToken`), so tests bind `127.0.0.1:0` and stop the server when
//! they like. On shutdown: readiness goes false first (the binary waits a
//! configurable grace period so load balancers notice), then the server stops
//! accepting, answers every request it has already read, and returns.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use spillway_queue::Backend;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long `/readyz` waits for the backend before answering 503.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` reports: not draining, and the backend answers.
#[derive(Clone)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    backend: Arc<dyn Backend>,
}

impl Readiness {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { draining: Arc::new(AtomicBool::new(false)), backend }
    }

    /// From now on `/readyz` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        match tokio::time::timeout(READY_CHECK_TIMEOUT, self.backend.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("queue backend did not answer".into()),
        }
    }
}

/// Serves until `shutdown` is cancelled, then drains and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
