//! Dray's own accept loop: HTTP/1.1 (hyper) over TCP or TLS, in front of the axum router, with
//! the defences a server exposed to hostile clients needs. It owns connections, never requests'
//! meaning: every request goes to the router unchanged, except the few refused before it.
//!
//! - **Connection cap** (`--connections-max`): a connection over it is answered `503` (plain
//!   HTTP; over TLS it is just closed) and closed at once, never left waiting in the backlog.
//!   Running out of descriptors anyway pauses accepting briefly instead of spinning.
//! - **Header timeout** (`--header-timeout-ms`): a new connection must send its first request
//!   head within it, and a kept-alive one must finish each head within it of the head's first
//!   byte; a TLS handshake counts as part of the first head. Then the connection is closed.
//! - **Idle timeout** (`--idle-timeout-ms`): a kept-alive connection with no request for this
//!   long is closed. hyper's own `header_read_timeout` is not used: it also runs while a
//!   connection waits idle between requests, so it cannot tell an idle client from a slow one.
//! - **Body timeout** (`--body-timeout-ms`): a request's body must arrive within it of the end of
//!   its head, else the handler's read fails and the client gets `408` (the connection closes).
//!   Only reading the body counts: a long-poll's wait in its handler is not cut.
//! - **413 up front**: a declared `Content-Length` over `--body-bytes-max` is refused before the
//!   body reaches the router (with `Expect: 100-continue`, before `100 Continue` is sent; without
//!   it, the body the client is already sending is discarded first, up to 64 MiB, so that the
//!   client reads the 413 rather than a reset).
//! - **Problem+json from the parser**: hyper answers a head it cannot parse by itself (431, 414,
//!   400, an empty body). [`Watched`] recognises that answer on its way out and writes the house
//!   problem+json answer instead. A timeout while reading a head gets no answer (hyper's
//!   choice): the connection is closed.
//! - **Shutdown**: connections that are idle or hold a half-sent head close at once; a request
//!   in a handler (its body being read included) finishes, within the shutdown grace.
//!
//! No timer here ever runs while a handler works on a request: a request in flight always gets its
//! answer (regression: an earlier attempt at this loop left enqueues during a database outage
//! without one, where they should get 503).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::problem::ApiError;
use crate::tls::Tls;

/// After a failed `accept` (out of descriptors, memory), wait this long before the next: the
/// connection stays in the backlog meanwhile, and the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);
/// Repeated warnings (refused connections, failed accepts) are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// What a client that spoke plain HTTP to the TLS port may still send after its answer before the
/// socket is closed (read and discarded, so the answer is not lost to a reset).
const PLAIN_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// A body refused up front (413) without `Expect: 100-continue` is read and discarded up to this
/// size so that the client, still sending it, can read the answer; beyond it the connection is
/// closed at once (the client may then see a reset instead of the 413).
const REFUSED_DRAIN_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The transport's limits, validated by `Config`.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub connections_max: usize,
    pub body_bytes_max: usize,
}

/// Accepts connections on `listener` and serves `router` on each until `stop` turns true (or its
/// sender goes away), then closes idle connections, lets requests in flight finish, and returns
/// once every connection is closed.
///
/// Cancel safety: dropping the future drops every connection at once (requests in flight are
/// abandoned); `Running::shutdown` does that after the grace period.
pub(crate) async fn run(
    listener: TcpListener,
    router: axum::Router,
    settings: Settings,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let settings = Arc::new(settings);
    let mut connections = JoinSet::new();
    let mut refused = Throttle::default();
    let mut failed = Throttle::default();
    let mut refused_since_warning = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => break,
            Some(ended) = connections.join_next() => {
                if let Err(e) = ended && e.is_panic() {
                    tracing::error!(error = %e, "a connection's task panicked");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if connections.len() >= settings.connections_max {
                    refuse(tcp, tls.is_none(), settings.connections_max);
                    refused_since_warning += 1;
                    if refused.ready() {
                        tracing::warn!(
                            connections_max = settings.connections_max,
                            refused = refused_since_warning,
                            "the connection cap is reached: refusing new connections with 503"
                        );
                        refused_since_warning = 0;
                    }
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                connections.spawn(connection(tcp, peer, router.clone(), settings.clone(), tls.clone(), stop.clone()));
            }
            // The client gave up before we accepted: nothing to do.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {}
            Err(e) => {
                if failed.ready() {
                    tracing::warn!(
                        error = %e,
                        connections = connections.len(),
                        "cannot accept a connection (out of file descriptors?); pausing"
                    );
                }
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|&s| s) => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            tracing::error!(error = %e, "a connection's task panicked");
        }
    }
    Ok(())
}

/// Answers a connection over the cap with 503 (when the answer can go in clear) and closes it.
fn refuse(tcp: TcpStream, plain: bool, connections_max: usize) {
    if plain {
        // Never waits: a few hundred bytes fit in any socket buffer, and if not, closing is the
        // answer.
        let _ = tcp.try_write(&ApiError::connections_full(connections_max).raw_response());
    }
    drop(tcp);
}

/// At most one `true` per [`WARN_INTERVAL`].
#[derive(Debug, Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_some_and(|last| now < last + WARN_INTERVAL) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    settings: Arc<Settings>,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    let Some(tls) = tls else {
        return serve_connection(tcp, router, settings, stop, accepted).await;
    };
    let handshake = async {
        if speaks_plain_http(&tcp).await {
            answer_plain_http(tcp).await;
            return None;
        }
        match tls.acceptor().accept(tcp).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    let stream = tokio::select! {
        biased;
        _ = stop.wait_for(|&s| s) => return,
        done = tokio::time::timeout(settings.header_timeout, handshake) => match done {
            Ok(Some(stream)) => stream,
            Ok(None) | Err(_) => return,
        },
    };
    serve_connection(stream, router, settings, stop, accepted).await
}

/// Whether the client's first byte is an ASCII capital (a request line: `GET`, `POST`...) rather
/// than a TLS record (0x16).
async fn speaks_plain_http(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Tells a plain-HTTP client on the TLS port to use https (400, in clear), then closes.
async fn answer_plain_http(mut tcp: TcpStream) {
    let answer = ApiError::https_required().raw_response();
    if tcp.write_all(&answer).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    // Read what the client sent, so closing does not reset the connection before it reads the
    // answer (the caller bounds the time).
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < PLAIN_DRAIN_BYTES_MAX {
        match tcp.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// One connection's HTTP/1.1 life, with the header and idle timeouts and the shutdown rule.
async fn serve_connection<I>(
    io: I,
    router: axum::Router,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
    accepted: Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(accepted));
    let io = TokioIo::new(Watched::new(io, state.clone()));
    let service = {
        let (state, settings) = (state.clone(), settings.clone());
        hyper::service::service_fn(move |req| handle(req, router.clone(), settings.clone(), state.clone()))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are kept below (see the module's comment); without a timer hyper runs none.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = state.deadline(&settings);
        let changed = state.changed.notified();
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                return;
            }
            _ = stop.wait_for(|&s| s), if !stopping => {
                // Before its first request hyper counts a connection as busy, and its graceful
                // shutdown would wait for the head to arrive: nothing was ever answered on it, so
                // nothing can be lost by closing it now.
                if state.before_first_request() {
                    return;
                }
                // hyper closes a kept-alive connection that is idle, or holds part of its next
                // head, at once (after writing out an answer it may still hold), and lets a
                // request in flight finish (its answer then says `Connection: close`).
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = sleep_until(deadline) => {
                if state.deadline(&settings).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("connection closed: header or idle timeout");
                    return;
                }
            }
            () = changed => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the timers of one connection need to know.
#[derive(Debug)]
struct ConnState {
    phase: Mutex<Phase>,
    /// Told whenever the deadline may have moved.
    changed: Notify,
}

#[derive(Debug)]
struct Phase {
    /// Requests handed to the router whose answer is not yet done (one at a time in HTTP/1.1).
    requests: usize,
    /// No request yet: the first head is timed from the connection's start.
    first: bool,
    /// When the last answer was done (or the connection began).
    idle_since: Instant,
    /// When the first byte of the next head arrived, on a kept-alive connection.
    head_started: Option<Instant>,
}

impl ConnState {
    fn new(accepted: Instant) -> ConnState {
        ConnState {
            phase: Mutex::new(Phase { requests: 0, first: true, idle_since: accepted, head_started: None }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_started(&self) {
        let mut phase = self.phase();
        phase.requests += 1;
        phase.first = false;
        phase.head_started = None;
        drop(phase);
        self.changed.notify_one();
    }

    fn request_done(&self) {
        let mut phase = self.phase();
        phase.requests = phase.requests.saturating_sub(1);
        if phase.requests == 0 {
            phase.idle_since = Instant::now();
        }
        drop(phase);
        self.changed.notify_one();
    }

    fn before_first_request(&self) -> bool {
        self.phase().first
    }

    fn bytes_read(&self) {
        let mut phase = self.phase();
        if phase.requests == 0 && !phase.first && phase.head_started.is_none() {
            phase.head_started = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed if nothing changes; `None` while a request is in
    /// flight.
    fn deadline(&self, settings: &Settings) -> Option<Instant> {
        let phase = self.phase();
        if phase.requests > 0 {
            None
        } else if let Some(started) = phase.head_started {
            Some(started + settings.header_timeout)
        } else if phase.first {
            Some(phase.idle_since + settings.header_timeout)
        } else {
            Some(phase.idle_since + settings.idle_timeout)
        }
    }
}

/// One request: refused up front when its declared body is too large, else routed with its body
/// under the body timeout.
async fn handle(
    req: Request<Incoming>,
    mut router: axum::Router,
    settings: Arc<Settings>,
    state: Arc<ConnState>,
) -> Result<Response<Answer>, Infallible> {
    let busy = Busy::new(state);
    if let Some(declared) = declared_length(req.headers())
        && declared > settings.body_bytes_max as u64
    {
        let response = ApiError::body_too_large(settings.body_bytes_max).into_response();
        // A client that asked `Expect: 100-continue` waits for this answer before sending its
        // body. One that did not is sending it now: read and discard it (within the body timeout
        // and a bound) before answering, or closing the socket with unread bytes makes the kernel
        // reset the connection and the client loses the 413 (it sees a broken pipe instead).
        if !expects_continue(req.headers()) && declared <= REFUSED_DRAIN_BYTES_MAX {
            let mut body = req.into_body();
            let drain = async {
                while let Some(frame) =
                    std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await
                {
                    if frame.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(settings.body_timeout, drain).await;
        }
        return Ok(response.map(|body| Answer { body, _busy: busy }));
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| Body::new(Timed::new(body, settings.body_timeout, timed_out.clone())));
    // An axum `Router` is always ready: no `poll_ready` needed.
    let response = match tower_service::Service::call(&mut router, req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::Relaxed) {
        // Whatever the handler made of the failed read, the client hears why.
        ApiError::body_timeout(settings.body_timeout.as_millis() as u64).into_response()
    } else {
        response
    };
    Ok(response.map(|body| Answer { body, _busy: busy }))
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Counts a request as in flight from its head until its answer's body is done with.
#[derive(Debug)]
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: Arc<ConnState>) -> Busy {
        state.request_started();
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// An answer's body, holding the request's [`Busy`] until hyper is done with it (a streamed
/// answer, like the dashboard's events, keeps its connection busy, not idle).
#[derive(Debug)]
struct Answer {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body did not arrive within the body timeout.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within the body timeout")
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once its deadline passes unfinished.
#[derive(Debug)]
struct Timed {
    body: Incoming,
    /// `None` once the body is complete (or had nothing to send).
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl Timed {
    fn new(body: Incoming, timeout: Duration, timed_out: Arc<AtomicBool>) -> Timed {
        let deadline = (!http_body::Body::is_end_stream(&body)).then(|| Box::pin(tokio::time::sleep(timeout)));
        Timed { body, deadline, timed_out }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || this.body.is_end_stream() {
                    this.deadline = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.deadline = None;
                    this.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's byte stream, watched: reads move the header timer, and hyper's own answer to
/// an unparsable head is replaced by a problem+json one on its way out.
#[derive(Debug)]
struct Watched<I> {
    io: I,
    state: Arc<ConnState>,
    /// The replacement answer being written, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
    /// After the replacement: hyper writes nothing more that matters (it closes), swallow it.
    replaced: bool,
}

impl<I> Watched<I> {
    fn new(io: I, state: Arc<ConnState>) -> Watched<I> {
        Watched { io, state, replacing: None, replaced: false }
    }
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    /// Writes the rest of the replacement, if one is under way.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.replacing.as_mut() {
            if *written == bytes.len() {
                self.replacing = None;
                self.replaced = true;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `buf` is hyper's automatic answer to an unparsable head; if so, starts the
    /// replacement.
    fn intercept(&mut self, buf: &[u8]) -> bool {
        match automatic_answer(buf).and_then(ApiError::unparsable) {
            Some(problem) => {
                self.replacing = Some((problem.raw_response(), 0));
                true
            }
            None => false,
        }
    }
}

/// The status of `buf` when it is exactly what hyper writes for a head it refused: a status line
/// of 400, 414 or 431 and headers without a body (`content-length: 0`, no content type), ending
/// the buffer. Our own answers always carry a problem+json body, and no JSON body holds a raw
/// CR LF, so a write of ours never looks like this.
fn automatic_answer(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse::<u16>().ok()?;
    if !matches!(code, 400 | 414 | 431) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0") || head.contains("\r\ncontent-type:") {
        return None;
    }
    StatusCode::from_u16(code).ok()
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() || this.replaced || this.intercept(buf) {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        let only = match (filled.next(), filled.next()) {
            (Some(first), None) => Some(&**first),
            _ => None,
        };
        if this.replacing.is_some() || this.replaced || only.is_some_and(|b| this.intercept(b)) {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, so connections are
/// bounded by `--connections-max` rather than by a low default; returns the soft and hard limits
/// in force after (`None`: unlimited).
pub(crate) fn raise_nofile() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
            Ok(()) => return (Some(hard), Some(hard)),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    (limit.current, limit.maximum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hypers_automatic_answers_only() {
        let auto = |status: &str| {
            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n")
        };
        assert_eq!(
            automatic_answer(auto("431 Request Header Fields Too Large").as_bytes()),
            Some(StatusCode::from_u16(431).unwrap())
        );
        assert_eq!(automatic_answer(auto("414 URI Too Long").as_bytes()), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(automatic_answer(auto("400 Bad Request").as_bytes()), Some(StatusCode::BAD_REQUEST));
        // Other statuses, our own answers (a body, a content type) and partial buffers are left alone.
        assert_eq!(automatic_answer(auto("404 Not Found").as_bytes()), None);
        let ours = ApiError::unparsable(StatusCode::BAD_REQUEST).unwrap().raw_response();
        assert_eq!(automatic_answer(&ours), None);
        let with_type =
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_answer(with_type.as_bytes()), None);
        let more = format!("{}{{}}", auto("400 Bad Request"));
        assert_eq!(automatic_answer(more.as_bytes()), None);
        assert_eq!(automatic_answer(b"HTTP/1.1 400 Bad"), None);
    }

    #[test]
    fn deadlines_follow_the_connections_phase() {
        let settings = Settings {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            connections_max: 1,
            body_bytes_max: 1,
        };
        let start = Instant::now();
        let state = ConnState::new(start);
        assert_eq!(state.deadline(&settings), Some(start + settings.header_timeout), "first head");
        state.bytes_read();
        assert_eq!(state.deadline(&settings), Some(start + settings.header_timeout), "still from the start");
        state.request_started();
        assert_eq!(state.deadline(&settings), None, "never while a request is in flight");
        state.bytes_read();
        assert_eq!(state.deadline(&settings), None);
        state.request_done();
        let idle = state.deadline(&settings).unwrap();
        assert!(idle >= start + settings.idle_timeout, "kept alive: the idle timeout");
        state.bytes_read();
        let head = state.deadline(&settings).unwrap();
        assert!(head < idle && head >= start + settings.header_timeout, "a head begun: the header timeout");
    }
}
