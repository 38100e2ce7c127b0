//! Request smuggling: a request head with both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! Proxies in front of the gateway may read such a body by its length while
//! hyper reads it as chunked (or the other way round), so one side sees a
//! second request the other side does not. RFC 9112 §6.3 lets a server refuse
//! it; Spillway does (400, nothing stored), because a gateway may sit behind
//! proxies it does not know. hyper cannot be asked: it drops one of the two
//! headers before the request reaches a service. So [`Framing`] wraps the
//! connection and follows the framing of each request as hyper reads it:
//! the head is parsed with `httparse` (hyper's own parser), then the body is
//! skipped by its length or chunk by chunk, up to the next head. A head with
//! both headers sets the connection's [`AmbiguousFraming`] flag, which the
//! handler checks before it reads anything. hyper closes such a connection
//! after its answer, so the flagged request is the last one on it.
//!
//! A repeated `Content-Length` (two headers with one value, which hyper
//! accepts; a list such as `5, 5`, which it refuses) is read as agreeing
//! values.
//! An `Upgrade` or `CONNECT` request is followed like any other: the
//! gateway never switches protocols (the handler refuses an `Upgrade`), so
//! the next request on the connection is a request. Only what hyper
//! refuses and closes the connection on (a head it cannot parse, a bad
//! chunk size) switches tracking off.
//!
//! The tracker also knows when a connection sits between requests, which
//! hyper does not: its header-read timer starts as soon as it waits for a
//! head, so it closes an idle keep-alive connection after
//! `header_read_timeout` (10 s), while proxies (ingress-nginx, AWS ALB)
//! keep theirs 60 s and answer a closed one with a 502 they do not retry
//! for a POST. So [`Framing`] enforces two deadlines instead: between
//! requests, `idle_timeout` since the last byte either way; once a head's
//! first byte is in, `header_read_timeout` for the rest of it (the
//! slow-head defence hyper's timer was).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The most header lines a head is parsed with; more and tracking stops.
const MAX_HEADERS: usize = 128;
/// A head or a chunk line longer than this stops tracking (hyper refuses
/// long heads itself with 431).
const MAX_LINE: usize = 64 * 1024;

/// Set once a head on this connection had both `Content-Length` and
/// `Transfer-Encoding`. Shared between the connection and its requests.
#[derive(Debug, Clone, Default)]
pub struct AmbiguousFraming(Arc<AtomicBool>);

impl AmbiguousFraming {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The line break after a chunk's data.
    ChunkEnd,
    Trailers(Vec<u8>),
    Off,
}

/// Follows request framing over the bytes of one connection.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: State,
    flag: AmbiguousFraming,
}

/// Where a connection is between its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between requests: no byte of the next head yet.
    Idle,
    /// Part of a head is in.
    Head,
    /// A body, or tracking is off: the deadlines are others'.
    Other,
}

impl Tracker {
    pub(crate) fn new(flag: AmbiguousFraming) -> Self {
        Self { state: State::Head(Vec::new()), flag }
    }

    pub(crate) fn phase(&self) -> Phase {
        match &self.state {
            State::Head(buf) if buf.is_empty() => Phase::Idle,
            State::Head(_) => Phase::Head,
            _ => Phase::Other,
        }
    }

    /// Takes the next bytes read from the client.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                // The usual case: a whole head at the start of this read,
                // parsed where it lies (no copy of the read into a buffer).
                State::Head(buf) if buf.is_empty() => match parse_head(&self.flag, data) {
                    Head::Complete(n, next) => {
                        data = &data[n..];
                        self.state = next;
                    }
                    Head::Partial if data.len() <= MAX_LINE => {
                        buf.extend_from_slice(data);
                        return;
                    }
                    Head::Partial | Head::Invalid => self.state = State::Off,
                },
                // A head split across reads: gathered, then parsed.
                State::Head(buf) => {
                    buf.extend_from_slice(data);
                    match parse_head(&self.flag, buf) {
                        Head::Complete(n, next) => {
                            let rest = buf.split_off(n);
                            self.state = next;
                            self.feed(&rest);
                            return;
                        }
                        Head::Partial if buf.len() <= MAX_LINE => return,
                        Head::Partial | Head::Invalid => self.state = State::Off,
                    }
                }
                State::Body(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkData(left) => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = State::ChunkEnd;
                    }
                }
                State::ChunkEnd => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        data = &data[i + 1..];
                        self.state = State::ChunkSize(Vec::new());
                    }
                    None => return,
                },
                State::ChunkSize(line) | State::Trailers(line) => {
                    let Some(i) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > MAX_LINE {
                            self.state = State::Off;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    let text = std::mem::take(line);
                    let in_size_line = matches!(self.state, State::ChunkSize(_));
                    self.state = if in_size_line {
                        chunk_size(&text).map_or(State::Off, |size| match size {
                            0 => State::Trailers(Vec::new()),
                            n => State::ChunkData(n),
                        })
                    } else if text.trim_ascii().is_empty() {
                        // An empty line ends the trailers, and the message.
                        State::Head(Vec::new())
                    } else {
                        State::Trailers(Vec::new())
                    };
                }
            }
        }
    }
}

/// What parsing the start of a head found.
enum Head {
    /// A whole head of this many bytes, and the state after it.
    Complete(usize, State),
    Partial,
    Invalid,
}

/// Parses a head at the start of `bytes`. The header slots are left
/// uninitialised, as hyper does: zeroing 128 of them cost more than the
/// parse on every request.
fn parse_head(flag: &AmbiguousFraming, bytes: &[u8]) -> Head {
    let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(n)) => Head::Complete(n, after_head(flag, &req)),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

/// Flags an ambiguous head and says how its body is framed.
fn after_head(flag: &AmbiguousFraming, req: &httparse::Request<'_, '_>) -> State {
    {
        let named = |name: &'static str| named(req.headers, name);
        let te = named("transfer-encoding").last();
        let has_cl = named("content-length").next().is_some();
        if te.is_some() && has_cl {
            flag.0.store(true, Ordering::SeqCst);
        }
        match (te, has_cl.then(|| content_length(named("content-length")))) {
            (Some(te), _) => {
                let chunked = std::str::from_utf8(te.value)
                    .ok()
                    .and_then(|v| v.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                if chunked {
                    State::ChunkSize(Vec::new())
                } else {
                    State::Off
                }
            }
            (None, Some(cl)) => {
                cl.map_or(State::Off, |n| if n == 0 { State::Head(Vec::new()) } else { State::Body(n) })
            }
            (None, None) => State::Head(Vec::new()),
        }
    }
}

/// The headers called `name`, in order.
fn named<'h, 'b>(
    headers: &'h [httparse::Header<'b>],
    name: &'static str,
) -> impl Iterator<Item = &'h httparse::Header<'b>> {
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name))
}

/// The length every `Content-Length` header and list item agrees on, as
/// hyper reads it (`5`, `5, 5`, two headers of `5`); `None` when they
/// differ or one is not a number (hyper refuses the request and closes).
fn content_length<'h, 'b: 'h>(headers: impl Iterator<Item = &'h httparse::Header<'b>>) -> Option<u64> {
    let mut agreed = None;
    for h in headers {
        for item in std::str::from_utf8(h.value).ok()?.split(',') {
            let n = item.trim().parse::<u64>().ok()?;
            if agreed.is_some_and(|a| a != n) {
                return None;
            }
            agreed = Some(n);
        }
    }
    agreed
}

/// `1a;ext=x\r` → 26.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let hex = text.split(';').next()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The two deadlines of a connection (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Between requests, since the last byte read or written.
    pub(crate) idle: Duration,
    /// From a head's first byte to its end.
    pub(crate) head: Duration,
}

/// A connection whose incoming bytes pass through a [`Tracker`], closed
/// (a `TimedOut` read, which ends hyper's connection) when a deadline passes.
pub(crate) struct Framing<S> {
    inner: S,
    tracker: Tracker,
    deadlines: Deadlines,
    /// The last byte read or written.
    active: Instant,
    /// When the head being read began.
    head_began: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<S> Framing<S> {
    pub(crate) fn new(inner: S, flag: AmbiguousFraming, deadlines: Deadlines) -> Self {
        let now = Instant::now();
        Self {
            inner,
            tracker: Tracker::new(flag),
            deadlines,
            active: now,
            head_began: now,
            sleep: Box::pin(tokio::time::sleep_until(now + deadlines.idle)),
        }
    }

    /// The deadline the connection is under now, if any.
    fn deadline(&self) -> Option<Instant> {
        match self.tracker.phase() {
            Phase::Idle => Some(self.active + self.deadlines.idle),
            Phase::Head => Some(self.head_began + self.deadlines.head),
            Phase::Other => None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    let now = Instant::now();
                    if this.tracker.phase() == Phase::Idle {
                        this.head_began = now;
                    }
                    this.active = now;
                    this.tracker.feed(read);
                }
                polled
            }
            Poll::Ready(Err(_)) => polled,
            Poll::Pending => {
                let Some(deadline) = this.deadline() else { return Poll::Pending };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match this.tracker.phase() {
                            Phase::Head => {
                                "request head not complete within server.limits.header_read_timeout"
                            }
                            _ => "connection idle longer than server.limits.idle_timeout",
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framing<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.active = Instant::now();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.active = Instant::now();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the flag.
    fn flagged(wire: &[u8], step: usize) -> bool {
        let flag = AmbiguousFraming::default();
        let mut t = Tracker::new(flag.clone());
        for piece in wire.chunks(step) {
            t.feed(piece);
        }
        flag.is_set()
    }

    fn all_steps(wire: &[u8]) -> Vec<bool> {
        [1, 2, 3, 7, 64, wire.len()].iter().map(|&s| flagged(wire, s)).collect()
    }

    #[test]
    fn both_headers_in_either_order_are_flagged() {
        for head in [
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 7\r\n\r\n",
        ] {
            let wire = [head.as_bytes(), b"2\r\n{}\r\n0\r\n\r\n"].concat();
            assert!(all_steps(&wire).iter().all(|&f| f), "{head:?}");
        }
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        // A keep-alive connection: a length-framed body and a chunked body
        // that both contain header-like text, then a clean request.
        let body = b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut wire =
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        wire.extend_from_slice(body);
        wire.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        wire.extend_from_slice(format!("{:x};ext=1\r\n", body.len()).as_bytes());
        wire.extend_from_slice(body);
        wire.extend_from_slice(b"\r\n0\r\nX-Trailer: y\r\n\r\n");
        wire.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(all_steps(&wire).iter().all(|&f| !f));
        // And the request after them is still followed.
        let mut bad = wire.clone();
        bad.extend_from_slice(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(all_steps(&bad).iter().all(|&f| f));
    }

    #[test]
    fn what_it_cannot_follow_switches_it_off_without_a_flag() {
        assert!(!flagged(b"NOT HTTP AT ALL\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 4));
    }

    /// The review's two ways of switching the refusal off for the rest of
    /// a connection: an `Upgrade` request and a `Content-Length: 0, 0`
    /// (hyper takes both). The request after each is still followed.
    #[test]
    fn an_upgrade_or_a_repeated_length_does_not_switch_tracking_off() {
        let smuggled = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        for first in [
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        ] {
            let wire = [first.as_bytes(), smuggled].concat();
            assert!(all_steps(&wire).iter().all(|&f| f), "after {first:?}");
            // And a clean request after it raises nothing.
            assert!(all_steps(first.as_bytes()).iter().all(|&f| !f), "{first:?}");
        }
    }

    #[test]
    fn content_lengths_are_read_as_hyper_reads_them() {
        let cl = |values: &[&str]| {
            let headers: Vec<httparse::Header<'_>> = values
                .iter()
                .map(|v| httparse::Header { name: "Content-Length", value: v.as_bytes() })
                .collect();
            content_length(headers.iter())
        };
        assert_eq!(cl(&["5"]), Some(5));
        assert_eq!(cl(&["5, 5"]), Some(5));
        assert_eq!(cl(&["5", "5"]), Some(5));
        assert_eq!(cl(&["5", "6"]), None);
        assert_eq!(cl(&["5, x"]), None);
    }

    mod deadlines {
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use super::super::{AmbiguousFraming, Deadlines, Framing};

        const DEADLINES: Deadlines =
            Deadlines { idle: Duration::from_secs(75), head: Duration::from_secs(10) };

        /// A connection through [`Framing`] and the client's end of it.
        fn pair() -> (Framing<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
            let (server, client) = tokio::io::duplex(4096);
            (Framing::new(server, AmbiguousFraming::default(), DEADLINES), client)
        }

        /// Reads until the read fails or `within` passes; the error's kind.
        async fn read_outcome(
            conn: &mut Framing<tokio::io::DuplexStream>,
            within: Duration,
        ) -> Option<std::io::ErrorKind> {
            let mut buf = [0u8; 1024];
            let until = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(until, conn.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) => return Some(std::io::ErrorKind::UnexpectedEof),
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Some(e.kind()),
                }
            }
        }

        /// Idle between requests for longer than the header-read timeout
        /// (hyper's timer would have closed it) but under the idle one:
        /// open; past the idle timeout: closed.
        #[tokio::test(start_paused = true)]
        async fn an_idle_keep_alive_connection_lives_until_the_idle_timeout() {
            let (mut conn, mut client) = pair();
            client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            assert_eq!(read_outcome(&mut conn, Duration::from_secs(60)).await, None, "open after 60 s idle");
            client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            assert_eq!(read_outcome(&mut conn, Duration::from_secs(74)).await, None, "a request resets it");
            assert_eq!(
                read_outcome(&mut conn, Duration::from_secs(2)).await,
                Some(std::io::ErrorKind::TimedOut),
                "closed 75 s after the last byte"
            );
        }

        /// A head that trickles in is cut at the header-read timeout from
        /// its first byte, however long the connection idled before it.
        #[tokio::test(start_paused = true)]
        async fn a_slow_head_is_cut_at_the_header_read_timeout() {
            let (mut conn, mut client) = pair();
            assert_eq!(read_outcome(&mut conn, Duration::from_secs(30)).await, None);
            client.write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\n").await.expect("write");
            assert_eq!(read_outcome(&mut conn, Duration::from_secs(9)).await, None);
            client.write_all(b"X-Slow: 1\r\n").await.expect("write");
            assert_eq!(
                read_outcome(&mut conn, Duration::from_secs(2)).await,
                Some(std::io::ErrorKind::TimedOut),
                "10 s from the head's first byte, more bytes or not"
            );
        }
    }
}
