//! The tower layers around the routes: request ids, compression and the
//! request timeout (CORS is in `cors.rs`, the request span and log lines in
//! `trace.rs`). `super::router` stacks them; the order is explained there.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};

use crate::error::Error;
use crate::settings::Settings;

/// The request-id header: taken from the request when present, else a new
/// UUID ([`RequestIdLayer`]).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// New request ids ([`RequestIdLayer`]): UUIDs in RFC 9562's version 8 (vendor-specific) layout,
/// a random per-process prefix and a counter. The first 64 bits (less the
/// version nibble: 60 random bits) are drawn once per process from the
/// standard library's OS-seeded `RandomState`; the last 64 are the variant
/// bits and a process-wide 62-bit counter. Unique within a process by the
/// counter, across processes by the prefix, and no `getrandom` system call
/// per request, which `MakeRequestUuid` (a random v4 UUID) made (issue 23).
/// The prefix: `xxxxxxxx-xxxx-8xxx-`, lowercase hex.
fn request_id_prefix() -> &'static [u8; 19] {
    static PREFIX: OnceLock<[u8; 19]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        let random = hasher.finish();
        let high = (random & !0xf000) | 0x8000; // version 8
        let mut prefix = [b'-'; 19];
        hex_into(&mut prefix[0..8], high >> 32);
        hex_into(&mut prefix[9..13], (high >> 16) & 0xffff);
        hex_into(&mut prefix[14..18], high & 0xffff);
        prefix
    })
}

/// Writes the low `out.len()` hex digits of `value` into `out`.
fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The request id of the `n`th request: the prefix, the variant and `n`.
fn request_id(n: u64) -> [u8; 36] {
    let low = (n & (u64::MAX >> 2)) | (0b10 << 62); // RFC 9562 variant
    let mut id = [b'-'; 36];
    id[..19].copy_from_slice(request_id_prefix());
    hex_into(&mut id[19..23], low >> 48);
    hex_into(&mut id[24..36], low & 0xffff_ffff_ffff);
    id
}

/// A new request id, [`request_id`] of the next number.
fn new_request_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = request_id(NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::from_bytes(&id).expect("hex digits and dashes are a header value")
}

/// Request ids: the request's own `X-Request-Id`, else a new one
/// ([`new_request_id`]) set on the request (so its span and log lines carry
/// it), and the same id on the response unless the response already has
/// one. It also marks `Authorization` sensitive, so that no `Debug` of the
/// headers shows a token. One layer for what tower-http's `SetRequestId` and
/// `PropagateRequestId` did in two, less their request extension, which
/// nothing here reads (issue 23).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestIds<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RequestIds<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // A token never shows in a log line, whatever prints the headers
        // (as tower-http's `SetSensitiveRequestHeaders` did, in a layer of its own).
        if let Some(authorization) = request.headers_mut().get_mut(http::header::AUTHORIZATION) {
            authorization.set_sensitive(true);
        }
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            // On the request only for the span, which reads it from there:
            // with spans off it goes to the response alone, which spares
            // the request's header map an insert (and often a resize)
            // (issue 23).
            None if crate::telemetry::request_span::enabled() => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
            None => new_request_id(),
        };
        RequestIdFuture { inner: self.inner.call(request), id: Some(id) }
    }
}

pin_project! {
    /// The response future of [`RequestIds`].
    pub(crate) struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut output = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut output, this.id.take())
            && let http::header::Entry::Vacant(entry) = response.headers_mut().entry(REQUEST_ID)
        {
            entry.insert(id);
        }
        Poll::Ready(output)
    }
}

/// Longest `?wait=` a long-poll may ask for; the timeout grows by it.
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

/// Responses smaller than this are sent as they are: gzip would save
/// little and cost a buffer. A record is well above it.
pub(crate) const COMPRESS_ABOVE_BYTES: u64 = 256;

/// What the outer layers are configured with.
#[derive(Debug, Clone)]
pub struct LayerSettings {
    /// Origins browsers may call from (`*`: any); empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Longest a request may take before a 503 `request_timeout`.
    pub request_timeout: Duration,
}

impl LayerSettings {
    /// `PROGRESS_CORS_ORIGINS` and `PROGRESS_REQUEST_TIMEOUT_SECONDS`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            cors_origins: settings.cors_origins.clone(),
            request_timeout: Duration::from_secs(settings.request_timeout_seconds),
        }
    }
}

/// gzip for responses of 256 bytes and more, never for event streams
/// (each event must reach the browser when it is written, not when a
/// compression block fills).
pub(crate) fn compression() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new().gzip(true).compress_when(SizeAbove::new(COMPRESS_ABOVE_BYTES).and(NotForContentType::SSE))
}

/// Answers 503 `request_timeout` (with `Retry-After`) when the response has
/// not started within its limit. A long-poll (`?wait=N`) gets its `N` seconds
/// on top; an event stream is not cut, since its response starts at once
/// and only the body goes on. The handler is dropped at the deadline, so a
/// write may or may not have been applied: PUT and `If-Match` make retries safe.
///
/// A tower layer of its own rather than `middleware::from_fn`, which boxes
/// the inner service and the future of every request (issue 23).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeoutLayer {
    /// The limit of a request without `?wait=`.
    pub limit: Duration,
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, limit: self.limit }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B, ResBody> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>, Error = Infallible>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limit = self.limit + Duration::from_secs(long_poll_seconds(request.uri().query()));
        TimeoutFuture { inner: self.inner.call(request), sleep: None, limit }
    }
}

pin_project! {
    /// The response future of [`Timeout`]. The timer starts when the
    /// handler first waits, right after the request reached it: a request
    /// answered at once (`/healthz`, a cached read) reads no clock and
    /// sets no timer (issue 23).
    pub(crate) struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        limit: Duration,
    }
}

impl<F, ResBody> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, Infallible>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(Ok(response)) = this.inner.poll(cx) {
            return Poll::Ready(Ok(response.map(Body::new)));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.limit)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        let limit = *this.limit;
        tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
        Poll::Ready(Ok(Error::RequestTimeout { seconds: limit.as_secs() }.into_response()))
    }
}

/// A panic in a handler becomes a 500 `internal` problem document, and the
/// process goes on. What tower-http's `CatchPanicLayer` did, without boxing
/// every response body it passes (which the timeout layer then boxed again
/// to make it axum's `Body`: two allocations and two dynamic calls per
/// body frame, issue 23). A panic while the body is sent is not caught,
/// as it was not there either: hyper closes that connection.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// The service of [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CatchPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(inner) => CatchPanicFuture::Running { inner },
            Err(_) => CatchPanicFuture::Panicked,
        }
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    #[project = CatchPanicProj]
    pub(crate) enum CatchPanicFuture<F> {
        /// The handler's future.
        Running { #[pin] inner: F },
        /// The handler panicked when called.
        Panicked,
    }
}

impl<F> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let panicked = || Poll::Ready(Ok(Error::Internal("a handler panicked".into()).into_response()));
        match self.project() {
            CatchPanicProj::Running { inner } => {
                catch_unwind(AssertUnwindSafe(|| inner.poll(cx))).unwrap_or_else(|_| panicked())
            }
            CatchPanicProj::Panicked => panicked(),
        }
    }
}

/// The `wait` query parameter, capped at [`MAX_WAIT_SECONDS`]; 0 when absent or unreadable.
fn long_poll_seconds(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |w| w.min(MAX_WAIT_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn slow_router(limit: Duration) -> Router {
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "done"
                }),
            )
            .route("/fast", get(|| async { "done" }))
            .layer(TimeoutLayer { limit })
    }

    async fn call(router: Router, uri: &str) -> (u16, Option<String>, String) {
        let response = router.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get(axum::http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, content_type, body)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_gets_a_problem_503() {
        let started = tokio::time::Instant::now();
        let (status, content_type, body) = call(slow_router(Duration::from_secs(2)), "/slow").await;
        assert_eq!(status, 503);
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["code"], "request_timeout", "{doc}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_handler_is_untouched() {
        assert_eq!(
            call(slow_router(Duration::from_secs(2)), "/fast").await,
            (200, Some("text/plain; charset=utf-8".into()), "done".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_gets_its_wait_on_top() {
        let (status, _, body) = call(slow_router(Duration::from_secs(2)), "/slow?wait=20").await;
        assert_eq!((status, body.as_str()), (200, "done"), "2 s + 20 s of wait outlast the 10 s handler");
        let started = tokio::time::Instant::now();
        let (status, _, _) = call(slow_router(Duration::from_secs(2)), "/slow?wait=5").await;
        assert_eq!(status, 503);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    async fn explode(after_a_wait: bool) -> &'static str {
        if after_a_wait {
            tokio::task::yield_now().await;
        }
        panic!("in the handler's future")
    }

    #[tokio::test]
    async fn a_panic_is_a_problem_500_and_the_service_goes_on() {
        let router = Router::new()
            .route("/after-a-wait", get(|| explode(true)))
            .route("/at-once", get(|| explode(false)))
            .route("/fine", get(|| async { "fine" }))
            .layer(CatchPanicLayer);
        for uri in ["/after-a-wait", "/at-once"] {
            let (status, content_type, body) = call(router.clone(), uri).await;
            assert_eq!((status, content_type.as_deref()), (500, Some("application/problem+json")), "{uri}");
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(doc["code"], "internal", "{uri}: {doc}");
        }
        assert_eq!(call(router, "/fine").await.2, "fine");
    }

    #[tokio::test]
    async fn a_panic_when_called_is_a_problem_500() {
        #[derive(Clone)]
        struct Explodes;
        impl Service<Request> for Explodes {
            type Response = Response;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Response, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request) -> Self::Future {
                panic!("in call")
            }
        }
        let response = CatchPanicLayer.layer(Explodes).oneshot(Request::get("/").body(Body::empty()).unwrap());
        assert_eq!(response.await.unwrap().status(), 500);
    }

    #[test]
    fn request_ids_are_version_8_uuids_that_differ() {
        let (a, b) = (request_id(0), request_id(1));
        let (a, b) = (std::str::from_utf8(&a).unwrap(), std::str::from_utf8(&b).unwrap());
        assert_ne!(a, b);
        assert_eq!(a[..19], b[..19], "one prefix per process");
        assert_eq!(a.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert_eq!(&a[19..], "8000-000000000000");
        assert_eq!(std::str::from_utf8(&request_id(u64::MAX >> 2)).unwrap()[19..], *"bfff-ffffffffffff");
        assert_eq!(request_id(1 << 62), request_id(0), "the counter has 62 bits");
    }

    /// The request id the handler saw (if any) and the response's, at `level`.
    async fn request_ids_at(level: &str) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(std::io::sink)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen_inside = seen.clone();
        let inner = tower::service_fn(move |request: Request| {
            let authorization = request.headers().get(axum::http::header::AUTHORIZATION).unwrap();
            assert!(authorization.is_sensitive());
            assert_eq!(format!("{authorization:?}"), "Sensitive", "no Debug shows the token");
            *seen_inside.lock().unwrap() = request.headers().get(&REQUEST_ID).cloned();
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let request = Request::get("/").header("authorization", "Bearer secret").body(Body::empty()).unwrap();
        let response = RequestIdLayer.layer(inner).oneshot(request).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, response.headers().get(&REQUEST_ID).cloned())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_request_spans_the_new_id_is_on_the_request_and_the_response() {
        let (seen, sent) = request_ids_at("info").await;
        assert!(seen.is_some(), "the span reads it from the request");
        assert_eq!(seen, sent);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_request_spans_the_new_id_is_on_the_response_only() {
        let (seen, sent) = request_ids_at("warn").await;
        assert_eq!(seen, None);
        assert!(sent.is_some_and(|id| id.len() == 36), "a UUID");
    }

    #[test]
    fn wait_is_read_and_capped() {
        assert_eq!(long_poll_seconds(None), 0);
        assert_eq!(long_poll_seconds(Some("a=1&wait=30")), 30);
        assert_eq!(long_poll_seconds(Some("wait=3600")), MAX_WAIT_SECONDS);
        assert_eq!(long_poll_seconds(Some("wait=soon")), 0);
        assert_eq!(long_poll_seconds(Some("nowait=5")), 0);
    }
}
