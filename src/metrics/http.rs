//! The HTTP series: `http_requests_total` and
//! `http_request_duration_seconds`, recorded through [`RouteMetrics`].

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Histogram};
use ::metrics::{counter, histogram};
use axum::http::{Method, StatusCode};

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

    /// Records one request of route row `route` (the last row: [`UNMATCHED`]).
    fn record(&self, method: usize, route: usize, status: StatusCode, elapsed: Duration) {
        let method_label = METHODS[method];
        let route_label = self.routes[route];
        let pair = route * METHODS.len() + method;
        self.durations[pair]
            .get_or_init(|| histogram!(HTTP_REQUEST_DURATION, "method" => method_label, "route" => route_label))
            .record(elapsed.as_secs_f64());
        // The status label is made only with a counter (once per route, method and cached status).
        let new_counter = || counter!(HTTP_REQUESTS, "method" => method_label, "route" => route_label, "status" => status_label(status));
        match CACHED_STATUSES.binary_search(&status.as_u16()) {
            Ok(s) => self.requests[pair * CACHED_STATUSES.len() + s].get_or_init(new_counter).increment(1),
            Err(_) => new_counter().increment(1),
        }
    }
}

/// Records `http_requests_total` and `http_request_duration_seconds` for
/// the requests of one route ([`RouteMetrics::for_route`]), or of the
/// fallbacks (`unmatched`: [`RouteMetrics::new`]). No request is looked at
/// for its label: axum's `MatchedPath` is not built at all (its feature is
/// off, issue 23). The HTTP layer (`crate::http::edge`) starts a
/// [`RequestMetrics`] for each request and finishes it with the status.
#[derive(Clone, Copy)]
pub struct RouteMetrics {
    series: &'static RouteSeries,
    /// The row of every request's route ([`UNMATCHED`]'s, the last, unless one route's).
    route: usize,
}

impl RouteMetrics {
    /// The series of the route table `paths`, labelling requests `unmatched`.
    pub fn new(paths: impl IntoIterator<Item = &'static str>) -> Self {
        let series = RouteSeries::shared(paths);
        Self { series, route: series.routes.len() - 1 }
    }

    /// The same series for the one route `path` of the table: every request
    /// is labelled `path`. A path outside the table gives them back unchanged.
    pub fn for_route(&self, path: &str) -> Self {
        let route = self.series.routes.iter().position(|r| *r == path);
        Self { series: self.series, route: route.unwrap_or(self.route) }
    }

    /// A request of `method` starts now.
    pub fn start(&self, method: &Method) -> RequestMetrics {
        RequestMetrics { started: Instant::now(), method: method_index(method), metrics: *self }
    }
}

/// One request being measured ([`RouteMetrics::start`]).
pub struct RequestMetrics {
    started: Instant,
    method: usize,
    metrics: RouteMetrics,
}

impl RequestMetrics {
    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request's head is ready: counted with `status`, timed from its start.
    pub fn finish(&self, status: StatusCode) {
        let RouteMetrics { series, route } = self.metrics;
        series.record(self.method, route, status, self.started.elapsed());
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
