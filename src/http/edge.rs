//! The edge: what every answer passes through, in one tower service and
//! one future. From the outside in, as a stack of layers would have it:
//!
//! 1. CORS (`cors.rs`): a preflight is answered here and goes no further;
//!    every other answer, 401s, 404s and timeouts included, gets the CORS
//!    headers.
//! 2. The metrics (`crate::metrics::RouteMetrics`): every other request is
//!    counted and timed, up to its response head.
//! 3. The request id (`layers.rs`): the request's own `X-Request-Id` or a
//!    new one, on the response; `Authorization` marked sensitive.
//! 4. The request span and the log lines of tower-http's trace layer
//!    (`trace.rs`).
//! 5. The timeout: a 503 `request_timeout` when the response has not
//!    started within the limit (a long-poll's `?wait=N` on top), logged
//!    inside the span.
//! 6. A panic in the handler: a 500 `internal`, and the process goes on.
//!
//! Each was a tower layer of its own until issue 23: six services cloned,
//! and six futures nested, for every request, the request and each future
//! moved through every one of them (about 1,000 instructions of a
//! `/healthz`, callgrind). Here each concern is a start and a finish that
//! [`EdgeFuture`] calls in order, and the stack order above is kept.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::cors::{Cors, CorsFinish, CorsStart};
use super::{layers, trace};
use crate::error::Error;
use crate::metrics::{RequestMetrics, RouteMetrics};
use crate::telemetry::request_span::{self, RequestContext};

/// The edge of one route (or of the fallbacks): its metrics label, and the
/// CORS origins and request timeout every route shares.
#[derive(Clone)]
pub(crate) struct EdgeLayer {
    pub cors: Option<Cors>,
    pub metrics: RouteMetrics,
    /// The limit of a request without `?wait=`.
    pub timeout: Duration,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge { inner, edge: self.clone() }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    edge: EdgeLayer,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = &mut self.inner;
        self.edge.start(request, |request| inner.call(request))
    }
}

impl EdgeLayer {
    /// What [`Edge`] does with `request`, handing it to `inner` (the inner
    /// service's `call`): by reference, for the route [`super::App`] calls
    /// ahead of the router without a clone of its service.
    pub(crate) fn start<F>(&self, mut request: Request, inner: impl FnOnce(Request) -> F) -> EdgeFuture<F> {
        let method = request.method().clone();
        let (id, from_origin) = layers::read_edge_headers(&mut request, |origin| {
            self.cors.as_ref().map(|cors| cors.start(&method, Some(origin)))
        });
        let cors = from_origin.flatten().or_else(|| self.cors.as_ref().map(|cors| cors.start(&method, None)));
        let cors = match cors {
            Some(CorsStart::Preflight(response)) => return EdgeFuture::Answered { response: Some(response) },
            Some(CorsStart::Call(finish)) => Some(finish),
            None => None,
        };
        let metrics = self.metrics.start(&method);
        // Asked once: the filter's answer costs a few hundred instructions.
        let spans = request_span::enabled();
        let mut context = spans.then(|| trace::request_context(&request, &id));
        let limit = self.timeout + Duration::from_secs(layers::long_poll_seconds(request.uri().query()));
        let inner = {
            let _entered = request_span::enter(&mut context);
            trace::started();
            catch_unwind(AssertUnwindSafe(|| inner(request))).ok()
        };
        EdgeFuture::Running { inner, sleep: None, finish: Finish { limit, cors, metrics, id: Some(id), context } }
    }
}

/// What a request's answer gets on its way out, the start of each concern.
struct Finish {
    limit: Duration,
    cors: Option<CorsFinish>,
    metrics: RequestMetrics,
    id: Option<HeaderValue>,
    context: Option<Box<RequestContext>>,
}

pin_project! {
    /// The response future of [`Edge`].
    #[project = EdgeProj]
    pub(crate) enum EdgeFuture<F> {
        /// Answered at the edge (a preflight).
        Answered { response: Option<Response> },
        /// The handler's future (`None`: it panicked when called), the
        /// timer, set when the handler first waits, and the finish.
        Running {
            #[pin]
            inner: Option<F>,
            #[pin]
            sleep: Option<tokio::time::Sleep>,
            finish: Finish,
        },
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, sleep, finish) = match self.project() {
            EdgeProj::Answered { response } => {
                return Poll::Ready(Ok(response.take().expect("an answered future is not polled again")));
            }
            EdgeProj::Running { inner, sleep, finish } => (inner, sleep, finish),
        };
        let entered = request_span::enter(&mut finish.context);
        let response = match handler_response(inner, cx) {
            Poll::Ready(response) => response,
            Poll::Pending => {
                // A request answered at once reads no clock and sets no timer.
                let mut sleep = sleep;
                if sleep.is_none() {
                    sleep.set(Some(tokio::time::sleep(finish.limit)));
                }
                if let Some(sleep) = sleep.as_pin_mut() {
                    ready!(sleep.poll(cx));
                }
                timed_out(finish.limit)
            }
        };
        let status = response.status();
        trace::finished(finish.metrics.started(), status);
        drop(entered);
        let mut response = trace::traced(response, finish.context.take());
        if let Some(id) = finish.id.take() {
            layers::set_request_id(&mut response, id);
        }
        finish.metrics.finish(status);
        if let Some(cors) = finish.cors.take() {
            cors.finish(&mut response);
        }
        Poll::Ready(Ok(response))
    }
}

/// The handler's answer, or a 500 when it panicked (when called, or now).
/// A panic while the body is sent is not caught: hyper closes that connection.
fn handler_response<F>(inner: Pin<&mut Option<F>>, cx: &mut Context<'_>) -> Poll<Response>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    let Some(inner) = inner.as_pin_mut() else { return Poll::Ready(panicked()) };
    match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
        Ok(Poll::Ready(Ok(response))) => Poll::Ready(response),
        Ok(Poll::Pending) => Poll::Pending,
        Err(_) => Poll::Ready(panicked()),
    }
}

fn panicked() -> Response {
    Error::Internal("a handler panicked".into()).into_response()
}

/// The 503 of a request that outlived `limit`. The handler is dropped with
/// the future, so a write may or may not have been applied: PUT and
/// `If-Match` make retries safe.
fn timed_out(limit: Duration) -> Response {
    tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
    Error::RequestTimeout { seconds: limit.as_secs() }.into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An edge without CORS, labelled as one test route, with `timeout`.
    pub(crate) fn edge(timeout: Duration) -> EdgeLayer {
        EdgeLayer { cors: None, metrics: RouteMetrics::new(["/edge-test"]).for_route("/edge-test"), timeout }
    }

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
            .layer(edge(limit))
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
            .layer(edge(Duration::from_secs(60)));
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
        let response =
            edge(Duration::from_secs(60)).layer(Explodes).oneshot(Request::get("/").body(Body::empty()).unwrap());
        let response = response.await.unwrap();
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key(layers::REQUEST_ID), "it still gets its request id");
    }

    #[tokio::test]
    async fn a_preflight_is_answered_at_the_edge_and_the_rest_get_the_cors_headers() {
        let origins = vec!["https://a.example".to_owned()];
        let edge = EdgeLayer { cors: super::super::cors::cors(&origins), ..edge(Duration::from_secs(60)) };
        let inner = tower::service_fn(|_: Request| async {
            panic!("a preflight never reaches the handler");
            #[allow(unreachable_code)]
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let preflight = Request::options("/").header("origin", "https://a.example").body(Body::empty()).unwrap();
        let response = edge.clone().layer(inner).oneshot(preflight).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["access-control-allow-origin"], "https://a.example");
        assert!(!response.headers().contains_key(layers::REQUEST_ID), "a preflight is answered before the request id");
        let inner = tower::service_fn(|_: Request| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) });
        let get = Request::get("/").header("origin", "https://a.example").body(Body::empty()).unwrap();
        let response = edge.layer(inner).oneshot(get).await.unwrap();
        assert_eq!(response.headers()["access-control-allow-origin"], "https://a.example");
        assert_eq!(response.headers()["vary"], "origin");
        assert!(response.headers().contains_key(layers::REQUEST_ID));
    }
}
