//! The server loop: what `axum::serve` did (accept, one hyper HTTP/1.1
//! connection per client, graceful shutdown), and the limits that keep slow
//! or idle clients from holding the server:
//!
//! - **Header timeout** (`PROGRESS_HEADER_TIMEOUT_SECONDS`): a request's
//!   head must arrive in full within it, counted from the connection's start
//!   for its first request and from the first byte of each later one; else
//!   the connection is closed without an answer (the client never finished
//!   asking). The request timeout starts only once the head is in.
//! - **Idle timeout** (`PROGRESS_IDLE_TIMEOUT_SECONDS`): a keep-alive
//!   connection with no request in progress is closed after it. A request in
//!   progress is never idle: an event stream has its heartbeat, a long-poll
//!   its `wait`, the others the request timeout.
//! - **Connection cap** (`PROGRESS_MAX_CONNECTIONS`, lowered to what the
//!   open-file limit allows): past it a new connection is answered 503 and
//!   closed at once, before its request is read; nothing queues.
//!
//! Both timeouts are one timer per connection, in the connection's own task
//! ([`Activity`]): the request service marks when a request starts and when
//! its response body is done, the socket wrapper the first byte of the next
//! request's head. hyper's own `header_read_timeout` cannot do this: it also
//! runs between keep-alive requests, so it would be the idle timeout too.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::Service;

use crate::metrics;
use crate::settings::Settings;

/// File descriptors kept for everything but client connections (listener,
/// logs, the runtime, DNS, TLS files), on top of the store pools.
const FILES_RESERVED: usize = 64;

/// What a refused connection is told, before its request is read.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The limits of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a request's head may take to arrive.
    pub header_timeout: Duration,
    /// Longest a connection may wait, with no request in progress, for the next one.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Whether each request carries its peer's address (`ConnectInfo`):
    /// only the per-address rate limit reads it, so without the limit no
    /// request pays for the extension (issue 23).
    pub peer_address: bool,
}

impl Limits {
    /// The three settings, the cap lowered to what the open-file limit
    /// allows (after raising the soft limit to the hard one, as far as the
    /// system lets us), with a warning when it is; unless connections open
    /// no files (`opens_files`, [`Listener::OPENS_FILES`]).
    pub fn from_settings(settings: &Settings, opens_files: bool) -> Self {
        let requested = settings.max_connections;
        let max_connections = if opens_files { Self::files_allow(settings, requested) } else { requested };
        Self {
            header_timeout: Duration::from_secs(settings.header_timeout_seconds),
            idle_timeout: Duration::from_secs(settings.idle_timeout_seconds),
            max_connections: max_connections.min(Semaphore::MAX_PERMITS),
            peer_address: settings.address_rate_per_second > 0,
        }
    }

    /// `requested`, or fewer when the open-file limit allows fewer.
    fn files_allow(settings: &Settings, requested: usize) -> usize {
        let reserved = FILES_RESERVED + settings.redis_pool_size + settings.database_pool_size;
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(files) => {
                let allowed = usize::try_from(files).unwrap_or(usize::MAX).saturating_sub(reserved).max(1);
                if allowed < requested {
                    tracing::warn!(
                        open_file_limit = files,
                        max_connections = allowed,
                        "PROGRESS_MAX_CONNECTIONS is {requested}, but the open-file limit allows {allowed} \
                         client connections; raise `ulimit -n` (LimitNOFILE, the container's nofile) to allow more"
                    );
                }
                requested.min(allowed)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit; PROGRESS_MAX_CONNECTIONS is not checked against it");
                requested
            }
        }
    }
}

/// Where connections come from: a [`TcpListener`], or, for a benchmark that
/// must hold more connections than the process may open files
/// (`examples/sse_memory.rs`), streams made in the process.
pub trait Listener: Send + 'static {
    /// One connection's byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Whether each connection holds a file descriptor, so that the
    /// open-file limit bounds the connection cap ([`Limits::from_settings`]).
    const OPENS_FILES: bool = true;
    /// The next connection and its peer's address, once there is one.
    fn accept(&mut self) -> impl Future<Output = (Self::Io, SocketAddr)> + Send;
    /// Answers a connection over the cap and closes it.
    fn refuse(io: Self::Io);
    /// The address clients reach it at (logged at start-up).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    fn accept(&mut self) -> impl Future<Output = (TcpStream, SocketAddr)> + Send {
        accept(self)
    }

    fn refuse(stream: TcpStream) {
        refuse(stream);
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets every connection finish the request it is serving (hyper's
/// graceful shutdown; idle connections close at once) and returns when all
/// are closed. Ending long-polls and streams is the caller's part of
/// `shutdown`.
pub async fn serve<L: Listener>(
    mut listener: L,
    app: crate::http::App,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // As axum::serve: the signal is a channel whose receiver goes away, and
    // each connection holds a receiver of `close` until it is done. `raised`
    // is set first, so that a connection looks at the channel again only
    // once it has been closed (see `Connection::serve`).
    let (signal_tx, signal_rx) = watch::channel(());
    let raised = Arc::new(AtomicBool::new(false));
    let raise = raised.clone();
    tokio::spawn(async move {
        shutdown.await;
        raise.store(true, Ordering::Release);
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            stream = listener.accept() => stream,
            () = signal_tx.closed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            L::refuse(stream);
            continue;
        };
        let connection = Connection {
            limits,
            signal: signal_tx.clone(),
            raised: raised.clone(),
            _close: close_rx.clone(),
            _permit: permit,
        };
        tokio::spawn(connection.serve(stream, peer, app.clone()));
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// The next connection and its peer's address. Errors that concern one connection are skipped;
/// others (out of file descriptors) are logged and retried after a second,
/// as axum::serve does.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Answers 503 without waiting for anything and closes. What the client has
/// sent so far is read first (as much as is there), so that closing does not
/// reset the connection before the answer is read.
fn refuse(stream: TcpStream) {
    metrics::connection_refused();
    let mut sink = [0u8; 2048];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n == sink.len() => {}
            _ => break,
        }
    }
    let _ = stream.try_write(REFUSAL);
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    limits: Limits,
    signal: watch::Sender<()>,
    /// Set just before `signal` closes.
    raised: Arc<AtomicBool>,
    _close: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S, peer: SocketAddr, app: crate::http::App) {
        let _open = metrics::connection_opened();
        let activity = Arc::new(Activity::new(self.limits));
        let io = TokioIo::new(Watched { stream, activity: activity.clone() });
        let peer = self.limits.peer_address.then_some(ConnectInfo(peer));
        let service = Requests { app, activity: activity.clone(), peer };
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Ours (`Activity`) instead, which leaves keep-alive idleness alone.
        builder.header_read_timeout(None);
        let mut conn = pin!(builder.serve_connection(io, service));
        let mut shutdown = pin!(self.signal.closed());
        // The shutdown signal and the timer are polled when they may have
        // changed, not on every wake-up of the connection (each wake-up is
        // a request or more): once polled, each keeps this task's waker and
        // wakes it when it fires; `raised` and `is_elapsed` say whether it
        // did. About 270 instructions a request (issue 23).
        let mut signal_polled = false;
        let mut timer_polled = false;
        let mut shutting_down = false;
        // The timer runs to `armed`, at or before the deadline: it is set
        // again only when the deadline moves earlier, or when it fires
        // early (the deadline moved later meanwhile). Setting it on every
        // request's start and end cost a timer-wheel update each (issue 23).
        let mut armed: Option<Instant> = None;
        let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
        let timed_out = std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return Poll::Ready(None);
                }
                if !shutting_down && (!signal_polled || self.raised.load(Ordering::Acquire)) {
                    signal_polled = true;
                    if shutdown.as_mut().poll(cx).is_ready() {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                        continue;
                    }
                }
                // The deadline moves only inside `conn.poll` (reading, and the
                // start and end of requests, all in this task), so it is read
                // after it, and no wake-up is needed.
                let Some(deadline) = activity.deadline() else { return Poll::Pending };
                if armed.is_none_or(|at| deadline < at) {
                    timer.as_mut().reset(deadline);
                    armed = Some(deadline);
                    timer_polled = false;
                }
                if timer_polled && !timer.is_elapsed() {
                    return Poll::Pending;
                }
                timer_polled = true;
                ready!(timer.as_mut().poll(cx));
                armed = None;
                if let Some(header) = activity.expired() {
                    return Poll::Ready(Some(header));
                }
            }
        })
        .await;
        if let Some(header) = timed_out {
            metrics::connection_timed_out(header);
            // Dropping the connection closes the socket; no request is in progress.
        }
    }
}

/// No deadline: a request is in progress.
const NONE: u64 = u64::MAX;

/// When a connection must have shown life, kept by the parts that see it.
/// All of them run in the connection's task; the atomics only make it `Sync`.
///
/// A new deadline is timed from when the connection's loop next reads it
/// ([`Activity::deadline`], right after the connection's poll in which it
/// was set: microseconds later), not from the moment it was set: one clock
/// read per poll of the connection instead of two per request (a request's
/// end and the next head's first bytes), each a few hundred cycles in a
/// VM's clock (issue 23).
struct Activity {
    /// The accept time, which the milliseconds below count from.
    epoch: Instant,
    header_timeout_ms: u64,
    idle_timeout_ms: u64,
    /// Requests whose response body is not done (one, or none, over HTTP/1.1).
    in_flight: AtomicUsize,
    /// A head is arriving (or, at the start, may): its deadline is set.
    reading_head: AtomicBool,
    /// The deadline in milliseconds from `epoch`, or [`NONE`].
    deadline_ms: AtomicU64,
    /// A deadline set but not yet timed: milliseconds from its timing, or [`NONE`].
    pending_ms: AtomicU64,
    /// Which timeout `deadline_ms` is.
    header_deadline: AtomicBool,
}

impl Activity {
    fn new(limits: Limits) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        let header_timeout_ms = millis(limits.header_timeout);
        Self {
            epoch: Instant::now(),
            header_timeout_ms,
            idle_timeout_ms: millis(limits.idle_timeout),
            in_flight: AtomicUsize::new(0),
            // The first head is timed from the accept, not its first byte.
            reading_head: AtomicBool::new(true),
            deadline_ms: AtomicU64::new(header_timeout_ms),
            pending_ms: AtomicU64::new(NONE),
            header_deadline: AtomicBool::new(true),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// A deadline `after_ms` from now, timed when it is next read.
    fn set_deadline(&self, after_ms: u64, header: bool) {
        self.header_deadline.store(header, Ordering::Relaxed);
        self.pending_ms.store(after_ms, Ordering::Release);
    }

    /// Times a pending deadline from now.
    fn time_pending(&self) {
        let after_ms = self.pending_ms.load(Ordering::Acquire);
        if after_ms != NONE {
            self.pending_ms.store(NONE, Ordering::Relaxed);
            self.deadline_ms.store(self.now_ms().saturating_add(after_ms).min(NONE - 1), Ordering::Release);
        }
    }

    /// A request's head is in and its handler runs: no deadline until its
    /// response is done.
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Relaxed);
        self.pending_ms.store(NONE, Ordering::Relaxed);
        self.deadline_ms.store(NONE, Ordering::Release);
    }

    /// A response body was sent in full, or dropped.
    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set_deadline(self.idle_timeout_ms, false);
        }
    }

    /// Bytes arrived: between requests, the first ones start a head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.reading_head.swap(true, Ordering::AcqRel) {
            self.set_deadline(self.header_timeout_ms, true);
        }
    }

    /// The deadline, if one runs.
    fn deadline(&self) -> Option<Instant> {
        self.time_pending();
        match self.deadline_ms.load(Ordering::Acquire) {
            NONE => None,
            ms => Some(self.epoch + Duration::from_millis(ms)),
        }
    }

    /// `Some(true)` when the header timeout has passed, `Some(false)` the
    /// idle timeout, `None` when neither.
    fn expired(&self) -> Option<bool> {
        self.time_pending();
        let deadline = self.deadline_ms.load(Ordering::Acquire);
        (deadline != NONE && self.now_ms() >= deadline).then(|| self.header_deadline.load(Ordering::Relaxed))
    }
}

/// The socket, telling [`Activity`] when bytes arrive.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The application as hyper's service, marking each request's start and end
/// and, with the address rate limit on, giving each request its peer's
/// address (axum's `ConnectInfo`, which that limit reads).
struct Requests {
    app: crate::http::App,
    activity: Arc<Activity>,
    /// The peer's address, when requests are to carry it ([`Limits::peer_address`]).
    peer: Option<ConnectInfo<SocketAddr>>,
}

impl hyper::service::Service<Request<Incoming>> for Requests {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Responding;

    fn call(&self, mut request: Request<Incoming>) -> Responding {
        self.activity.request_started();
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        let in_flight = InFlight(self.activity.clone());
        // An `App` is two `Arc`s; its `poll_ready` is always ready.
        let mut app = self.app.clone();
        Responding { inner: app.call(request), in_flight: Some(in_flight) }
    }
}

/// A request in progress until dropped: with the handler's future if it
/// never answers, else with the response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

pin_project! {
    /// The router's future, its response body carrying the [`InFlight`].
    struct Responding {
        #[pin]
        inner: crate::http::AppFuture,
        in_flight: Option<InFlight>,
    }
}

impl Future for Responding {
    type Output = Result<Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| Tracked { body, _in_flight: in_flight })))
    }
}

pin_project! {
    /// A response body; the request ends when hyper drops it (sent in full,
    /// or the connection gone).
    pub struct Tracked {
        #[pin]
        body: Body,
        _in_flight: Option<InFlight>,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
