//! Serving the router, with connection limits, and draining on shutdown.
//!
//! The caller owns the listener and the shutdown signal (a
//! `CancellationToken`), so tests bind `127.0.0.1:0` and stop the server when
//! they like. On shutdown: readiness goes false first (the binary waits a
//! configurable grace period so load balancers notice), then the server stops
//! accepting, answers every request it has already read, and returns.
//!
//! Connections are served by hyper's HTTP/1 builder with a timer, not by
//! `axum::serve`, whose hyper has none: without a timer a client that sends
//! half a request head holds its connection forever, and shutdown would wait
//! for it forever too. [`ServerLimits`] bounds the head's time and size, a
//! keep-alive connection's idle time, and the number of connections.

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    client_ip::TrustedProxies,
    framing::{AmbiguousFraming, Deadlines, Framing},
};

/// hyper's smallest read buffer; a smaller header limit cannot be set.
const MIN_HEADER_BYTES: usize = 8192;
/// After a failed `accept` (out of file descriptors, say), wait this long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Limits on connections and request heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// A request head (request line and headers) not complete this long
    /// after its first byte: the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    /// Above the keep-alive of the proxies in front (AWS ALB and
    /// ingress-nginx keep theirs 60 s): a connection the gateway closes
    /// first can take a request the proxy has just sent on it, which it
    /// answers 502 and does not retry for a POST.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A larger request head is answered `431 Request Header Fields Too
    /// Large`. At least 8 KiB (hyper's smallest buffer).
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client (an address; an IPv6 /64) may hold at once;
    /// beyond it a new one gets a 503 with `Retry-After` and is closed.
    /// Trusted proxies (`ingest.trusted_proxies`) are exempt. 0: no cap.
    pub max_connections_per_client: usize,
    /// How long shutdown waits for open connections to finish their
    /// requests before it closes them.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ServerLimits {
    /// Checks the values; the error names the key under `prefix`.
    pub fn check(&self, prefix: &str) -> Result<(), crate::ConfigError> {
        let bad = |key: &str, message: &str| crate::ConfigError {
            key: format!("{prefix}.{key}"),
            message: message.to_owned(),
        };
        if self.header_read_timeout.is_zero() {
            return Err(bad("header_read_timeout", "must be more than 0"));
        }
        if self.idle_timeout.is_zero() {
            return Err(bad("idle_timeout", "must be more than 0"));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(bad("max_header_bytes", "must be at least 8192"));
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(bad("max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

/// Serves until `shutdown` is cancelled, then drains and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_exempting(listener, router, limits, Arc::new(TrustedProxies::default()), None, shutdown).await
}

/// Connections refused because their client held its share already.
pub const REFUSED_PER_CLIENT: &str = "spillway_connections_refused_total";

/// What a client over its connection share gets before the close.
const PER_CLIENT_REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 91\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections from this client\"}}";

/// Open connections by client, for `max_connections_per_client`. Holds
/// only clients with a connection open: at most `max_connections` entries.
#[derive(Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

/// One connection counted against its client; uncounted when dropped.
struct Counted(Arc<PerClient>, IpAddr);

impl PerClient {
    fn enter(self: &Arc<Self>, client: IpAddr, cap: usize) -> Option<Counted> {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(client).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Counted(self.clone(), client))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// [`serve`], with `trusted` proxies exempt from the per-client cap, and
/// TLS on every connection when `tls` is given ([`crate::tls`]).
pub async fn serve_exempting(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    trusted: Arc<TrustedProxies>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Turns every handler into a finished route once, as `axum::serve`
    // does: a router used as a service without this builds each handler's
    // route, with every layer on it, again on every request (1,800
    // instructions per request behind CORS; docs/benchmarks.md, seventh
    // session).
    let router: Router = router.with_state(());
    let mut http = hyper::server::conn::http1::Builder::new();
    // The connection's own deadlines are `Framing`'s (idle, then head);
    // hyper's timer, which starts as soon as it waits for a head, is only
    // the backstop for a connection whose framing is not followed.
    let deadlines = Deadlines { idle: limits.idle_timeout, head: limits.header_read_timeout };
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout + limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let per_client = Arc::new(PerClient::default());
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let counted = if limits.max_connections_per_client == 0 || trusted.trusts(addr.ip()) {
            None
        } else {
            match per_client.enter(crate::client_ip::group(addr.ip(), 64), limits.max_connections_per_client)
            {
                Some(counted) => Some(counted),
                None => {
                    metrics::counter!(REFUSED_PER_CLIENT, "reason" => "per_client").increment(1);
                    // Best effort: a client whose socket buffer is full gets the close alone.
                    let _ = stream.try_write(PER_CLIENT_REFUSAL);
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn =
            Conn { http: http.clone(), watcher: graceful.watcher(), router: router.clone(), addr, deadlines };
        let tls = tls.clone();
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => conn.serve(stream).await,
                // The handshake has the head's deadline: a client that
                // stalls in it holds a slot no longer than one that stalls
                // in its head.
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => conn.serve(stream).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, %addr, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake not complete within header_read_timeout"),
                },
            }
            drop(counted);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// What serving one connection needs, whatever carries its bytes.
struct Conn {
    http: Arc<hyper::server::conn::http1::Builder>,
    watcher: hyper_util::server::graceful::Watcher,
    router: Router,
    addr: std::net::SocketAddr,
    deadlines: Deadlines,
}

impl Conn {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Self { http, watcher, router, addr, deadlines } = self;
        let flag = AmbiguousFraming::default();
        let io = TokioIo::new(Framing::new(stream, flag.clone(), deadlines));
        let service = router.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(addr));
            req.extensions_mut().insert(flag.clone());
            req
        });
        if let Err(e) = watcher.watch(http.serve_connection(io, TowerToHyperService::new(service))).await {
            tracing::debug!(error = %e, %addr, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::routing::post;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// A layer that counts how often it wraps a service.
    #[derive(Clone)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl<S> tower::Layer<S> for Counting {
        type Service = S;

        fn layer(&self, inner: S) -> S {
            self.0.fetch_add(1, Ordering::SeqCst);
            inner
        }
    }

    async fn post_x(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        answer
    }

    /// A route's layers wrap its handler once, not again for every request
    /// (which is what a router used as a service does unless its handlers
    /// were made routes first).
    #[tokio::test]
    async fn a_routes_layers_are_applied_once_not_per_request() {
        let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = Router::new().route("/x", post(|| async { "ok" }).layer(Counting(applied.clone())));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, ServerLimits::default(), shutdown.clone()));
        assert!(post_x(addr).await.starts_with("HTTP/1.1 200"));
        let after_first = applied.load(Ordering::SeqCst);
        for _ in 0..3 {
            let answer = post_x(addr).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        assert_eq!(applied.load(Ordering::SeqCst), after_first, "the layer was applied again per request");
        shutdown.cancel();
        server.await.expect("server task").expect("serve");
    }
}
