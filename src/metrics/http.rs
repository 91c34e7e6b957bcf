//! The HTTP series: `http_requests_total` and
//! `http_request_duration_seconds`, recorded by [`HttpMetricsLayer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Histogram, SharedString};
use ::metrics::{counter, histogram};
use axum::extract::MatchedPath;
use axum::http::{Method, Request, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{HTTP_REQUEST_DURATION, HTTP_REQUESTS, handle};

/// Method labels; anything else is `other`, so clients cannot mint series.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];

fn method_index(method: &Method) -> usize {
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS]
        .iter()
        .position(|m| m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Statuses whose request counters are kept per route (sorted); others are
/// looked up in the registry on each use.
const CACHED_STATUSES: [u16; 24] = [
    200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 406, 408, 409, 411, 412, 413, 415, 416, 422, 428, 429, 500, 503,
    504,
];

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// "100101102…999": every status code as a `&'static str` label without allocating.
static STATUS_DIGITS: [u8; 2700] = {
    let mut digits = [0u8; 2700];
    let mut i = 0;
    while i < 900 {
        let code = 100 + i;
        digits[i * 3] = b'0' + (code / 100) as u8;
        digits[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
        digits[i * 3 + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    digits
};

fn status_label(status: StatusCode) -> &'static str {
    let at = (status.as_u16() as usize - 100) * 3;
    std::str::from_utf8(&STATUS_DIGITS[at..at + 3]).unwrap_or("other")
}

/// Where a request was routed.
enum RouteLabel {
    /// A row of the route table, or `unmatched` (the last index).
    Listed(usize),
    /// A matched path outside the table (a route added by hand): labelled, but uncached.
    Other(Arc<str>),
}

/// The HTTP series of one route table, with their handles kept once registered.
struct RouteSeries {
    /// Route paths, then [`UNMATCHED`].
    routes: Box<[&'static str]>,
    /// Latency histograms by `[route][method]`.
    durations: Box<[OnceLock<Histogram>]>,
    /// Request counters by `[route][method][cached status]`.
    requests: Box<[OnceLock<Counter>]>,
}

impl RouteSeries {
    /// The series of `paths`, shared by every router of the process built
    /// from the same table. Built once per distinct table and never freed,
    /// so that requests share it without touching a reference count.
    fn shared(paths: impl IntoIterator<Item = &'static str>) -> &'static Self {
        static BUILT: Mutex<Vec<&'static RouteSeries>> = Mutex::new(Vec::new());
        let mut routes: Vec<&'static str> = Vec::new();
        for path in paths {
            if !routes.contains(&path) {
                routes.push(path);
            }
        }
        routes.push(UNMATCHED);
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(series) = built.iter().find(|s| *s.routes == *routes) {
            return series;
        }
        handle();
        let pairs = routes.len() * METHODS.len();
        let series: &'static Self = Box::leak(Box::new(Self {
            routes: routes.into_boxed_slice(),
            durations: (0..pairs).map(|_| OnceLock::new()).collect(),
            requests: (0..pairs * CACHED_STATUSES.len()).map(|_| OnceLock::new()).collect(),
        }));
        built.push(series);
        series
    }

    fn label_of(&self, matched: Option<&MatchedPath>) -> RouteLabel {
        let Some(matched) = matched else { return RouteLabel::Listed(self.routes.len() - 1) };
        match self.routes.iter().position(|r| *r == matched.as_str()) {
            Some(i) => RouteLabel::Listed(i),
            None => RouteLabel::Other(Arc::from(matched.as_str())),
        }
    }

    fn record(&self, method: usize, route: &RouteLabel, status: StatusCode, elapsed: Duration) {
        let (method_label, status_label) = (METHODS[method], status_label(status));
        let seconds = elapsed.as_secs_f64();
        match route {
            RouteLabel::Listed(r) => {
                let route_label = self.routes[*r];
                let pair = r * METHODS.len() + method;
                self.durations[pair]
                    .get_or_init(|| histogram!(HTTP_REQUEST_DURATION, "method" => method_label, "route" => route_label))
                    .record(seconds);
                let new_counter = || counter!(HTTP_REQUESTS, "method" => method_label, "route" => route_label, "status" => status_label);
                match CACHED_STATUSES.binary_search(&status.as_u16()) {
                    Ok(s) => self.requests[pair * CACHED_STATUSES.len() + s].get_or_init(new_counter).increment(1),
                    Err(_) => new_counter().increment(1),
                }
            }
            RouteLabel::Other(path) => {
                let route = SharedString::from_shared(path.clone());
                histogram!(HTTP_REQUEST_DURATION, "method" => method_label, "route" => route.clone()).record(seconds);
                counter!(HTTP_REQUESTS, "method" => method_label, "route" => route, "status" => status_label)
                    .increment(1);
            }
        }
    }
}

/// Records `http_requests_total` and `http_request_duration_seconds`.
///
/// A route's own layer ([`HttpMetricsLayer::for_route`]) labels with its
/// route. Otherwise the label is the request's [`MatchedPath`] (absent:
/// `unmatched`), which axum sets before the layers of `Router::layer` and
/// of a route's handler run.
#[derive(Clone)]
pub struct HttpMetricsLayer {
    series: &'static RouteSeries,
    /// The row of every request's route, when the layer is one route's.
    route: Option<usize>,
}

impl HttpMetricsLayer {
    /// A layer labelling requests with the route `paths` (the route table).
    pub fn new(paths: impl IntoIterator<Item = &'static str>) -> Self {
        Self { series: RouteSeries::shared(paths), route: None }
    }

    /// The same layer for the one route `path` of the table: it labels every
    /// request with `path` without looking at the request (issue 23). A
    /// path outside the table gives the layer back unchanged.
    pub fn for_route(&self, path: &str) -> Self {
        let route = self.series.routes.iter().position(|r| *r == path);
        Self { series: self.series, route: route.or(self.route) }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics { inner, series: self.series, route: self.route }
    }
}

/// The service of [`HttpMetricsLayer`].
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    series: &'static RouteSeries,
    route: Option<usize>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetrics<S>
where
    S: Service<Request<ReqBody>, Response = axum::http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let method = method_index(request.method());
        let route = match self.route {
            Some(row) => RouteLabel::Listed(row),
            None => self.series.label_of(request.extensions().get::<MatchedPath>()),
        };
        ResponseFuture { inner: self.inner.call(request), started, method, route, series: self.series }
    }
}

pin_project! {
    /// The response future of [`HttpMetrics`]: records when the head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: usize,
        route: RouteLabel,
        series: &'static RouteSeries,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<axum::http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &output {
            this.series.record(*this.method, this.route, response.status(), this.started.elapsed());
        }
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_static_and_bounded() {
        assert_eq!(status_label(StatusCode::OK), "200");
        assert_eq!(status_label(StatusCode::NOT_MODIFIED), "304");
        assert_eq!(status_label(StatusCode::from_u16(999).unwrap()), "999");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        assert_eq!(METHODS[method_index(&Method::from_bytes(b"BREW").unwrap())], "other");
        assert!(CACHED_STATUSES.windows(2).all(|w| w[0] < w[1]), "binary search needs them sorted");
    }
}
