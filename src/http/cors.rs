//! CORS for the configured origins: the answers tower-http's `CorsLayer`
//! gave with this service's configuration (but for the two differences
//! below), at a fraction of the cost (issue 23).
//!
//! tower-http builds a `HeaderMap` per request, joins the `Vary` list anew
//! and, being cloned with the layer stack for every request, copies its
//! configuration each time: about 8,000 instructions a request (callgrind,
//! `/healthz` with an `Origin`). Here every header value is made once, at
//! start-up, and a request copies at most four of them into its response.
//!
//! What every answer gets:
//! - `Access-Control-Allow-Origin`: the request's `Origin` when it is one
//!   of the configured origins, `*` always when `*` is configured, else none;
//! - a `Vary` appended to any of the response's own, with or without
//!   `Origin`, so that a cache keeps the answers for different origins
//!   apart.
//!
//! An `OPTIONS` request is a preflight: it is answered here, 200 with an
//! empty body, `Access-Control-Allow-Methods`, `-Allow-Headers` and
//! `-Max-Age`, and `Vary: origin, access-control-request-method,
//! access-control-request-headers`, and never reaches the routes (so it
//! needs no token). Any other request goes on; its response varies by
//! `Origin` alone (`Vary: origin`: the other two headers come only with
//! preflights) and, when it allows the origin, gets
//! `Access-Control-Expose-Headers` (a browser reads them only then). Those
//! two are where this layer's answers differ from tower-http's, which sent
//! the preflight's `Vary` and the exposed headers with every answer: 80
//! bytes a response that no client used. No credentials mode: browsers
//! send the token in `Authorization`, not cookies.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::Entry;
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use bytes::Bytes;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The methods a browser may use.
const METHODS: &str = "GET,POST,PUT,PATCH,DELETE,OPTIONS";

/// The request headers a browser may send.
const REQUEST_HEADERS: &str = "content-type,authorization,if-match,if-none-match,last-event-id";

/// The `Vary` of a preflight.
const VARY: &str = "origin, access-control-request-method, access-control-request-headers";

/// The response headers a browser may read: `ETag`, `Location`,
/// `Retry-After` and ours, `X-Request-Id` (a test checks the names). A
/// static value, so that no response shares a reference count with the
/// others (one on another core's cache line).
const EXPOSE_HEADERS: &str = "etag,location,retry-after,x-request-id";

/// The `Vary` of any other answer.
const VARY_ORIGIN: &str = "origin";

/// The `Vary` of a record's answer (`super::progress`), and the same with ours.
const VARY_ENCODING: &str = "accept-encoding";
const VARY_ENCODING_ORIGIN: &str = "accept-encoding, origin";

/// Which origins are allowed.
#[derive(Debug)]
enum Origins {
    /// `*`: any, answered with `*`.
    Any,
    /// These, each answered with itself: the configured copy, made static
    /// (see [`cors`]).
    List(Vec<HeaderValue>),
}

/// The configuration, made once.
#[derive(Debug)]
struct Config {
    origins: Origins,
}

/// CORS for the configured origins ([`cors`]), shared by every route's
/// stack (`super::edge`).
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    config: Arc<Config>,
}

/// CORS for `origins` (`*`: any), or `None` when there are none: no CORS
/// headers at all then.
pub(crate) fn cors(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    let origins = if origins.iter().any(|o| o == "*") {
        Origins::Any
    } else {
        // Settings validation already refused origins that are not header
        // values. Each is answered with a static copy: the request's own
        // `Origin` is a slice of hyper's read buffer, so a response holding
        // it kept that buffer shared when the connection read the next
        // request, and hyper copied it into a new one (300 instructions and
        // an allocation a request, issue 23); a shared copy of ours would
        // put a reference count that both cores write on every response.
        // The few bytes live as long as the process, as the configuration.
        Origins::List(
            origins
                .iter()
                .filter_map(|o| {
                    let o: &'static str = Box::leak(o.clone().into_boxed_str());
                    HeaderValue::from_maybe_shared(Bytes::from_static(o.as_bytes())).ok()
                })
                .collect(),
        )
    };
    Some(Cors { config: Arc::new(Config { origins }) })
}

impl Config {
    /// `Access-Control-Allow-Origin` for a request from `origin`, if any.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => origin.and_then(|o| list.iter().find(|allowed| *allowed == o)).cloned(),
        }
    }
}

/// What CORS makes of a request ([`Cors::start`]).
pub(crate) enum CorsStart {
    /// A preflight, answered here: it goes no further.
    Preflight(Response),
    /// Any other request: it goes on, and its response is completed by this.
    Call(CorsFinish),
}

/// The CORS headers of one response.
pub(crate) struct CorsFinish {
    /// `Access-Control-Allow-Origin` and `-Expose-Headers`, when the origin is allowed.
    allowed: Option<(HeaderValue, HeaderValue)>,
}

impl Cors {
    /// A preflight's answer, or what the response of any other request
    /// gets: for a request with `method` from `origin` (its first `Origin`,
    /// found by the edge's one pass over the headers).
    pub(crate) fn start(&self, method: &Method, origin: Option<&HeaderValue>) -> CorsStart {
        let allow_origin = self.config.allow_origin(origin);
        if method == Method::OPTIONS {
            return CorsStart::Preflight(preflight(allow_origin));
        }
        // The exposed headers go with an allowed origin only: a request
        // without one takes nothing from the configuration.
        let allowed = allow_origin.map(|origin| (origin, HeaderValue::from_static(EXPOSE_HEADERS)));
        CorsStart::Call(CorsFinish { allowed })
    }
}

fn preflight(allow_origin: Option<HeaderValue>) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    if let Some(origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.insert(header::VARY, HeaderValue::from_static(VARY));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(REQUEST_HEADERS));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE.as_secs()));
    response
}

impl CorsFinish {
    /// Adds the CORS headers to `response`.
    pub(crate) fn finish(self, response: &mut Response) {
        let headers = response.headers_mut();
        // A response's own `Vary` is kept; ours is added to it. A record's
        // (`accept-encoding` alone) becomes one value naming both: a second
        // value of the same header costs the map a list of extra values,
        // about 200 instructions a GET (issue 23), and means the same.
        match headers.entry(header::VARY) {
            Entry::Vacant(vary) => {
                vary.insert(HeaderValue::from_static(VARY_ORIGIN));
            }
            Entry::Occupied(mut vary) if vary.iter().nth(1).is_none() && vary.get() == VARY_ENCODING => {
                vary.insert(HeaderValue::from_static(VARY_ENCODING_ORIGIN));
            }
            Entry::Occupied(mut vary) => vary.append(HeaderValue::from_static(VARY_ORIGIN)),
        }
        if let Some((origin, expose)) = self.allowed {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderName, Request};

    use super::*;

    /// What `cors` makes of `request`, as the edge asks it.
    fn start<B>(cors: &Cors, request: &Request<B>) -> CorsStart {
        cors.start(request.method(), request.headers().get(header::ORIGIN))
    }

    /// The answer to a request with `method` from `origin`: the preflight,
    /// or an inner 200 with a `Vary` of its own, completed.
    fn call(origins: &[&str], method: Method, origin: Option<&str>) -> Response {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        let mut request = Request::builder().method(method).uri("/progress/a");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let request = request.body(Body::empty()).unwrap();
        match start(&cors(&origins).expect("origins are configured"), &request) {
            CorsStart::Preflight(response) => response,
            CorsStart::Call(finish) => {
                let mut response = Response::new(Body::from("ok"));
                response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                finish.finish(&mut response);
                response
            }
        }
    }

    fn values(response: &Response, name: HeaderName) -> Vec<&str> {
        response.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn the_exposed_headers_are_the_validators_the_retry_hint_and_the_request_id() {
        use super::super::layers::REQUEST_ID;
        let names = [header::ETAG, header::LOCATION, header::RETRY_AFTER, REQUEST_ID];
        assert_eq!(EXPOSE_HEADERS, names.iter().map(HeaderName::as_str).collect::<Vec<_>>().join(","));
    }

    #[test]
    fn no_origins_no_layer() {
        assert!(cors(&[]).is_none());
    }

    #[test]
    fn an_allowed_origin_is_echoed_and_the_headers_exposed() {
        let response = call(&["https://a.example", "https://b.example"], Method::GET, Some("https://b.example"));
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["https://b.example"]);
        assert_eq!(
            values(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS),
            ["etag,location,retry-after,x-request-id"]
        );
        assert_eq!(values(&response, header::VARY), ["accept-encoding, origin"], "the response's own Vary is kept");
        assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none(), "only preflights");
    }

    #[test]
    fn an_allowed_origin_is_answered_with_the_configured_copy_not_the_requests() {
        // The request's header points into hyper's read buffer: a response
        // holding it keeps that buffer shared while the next request is read.
        let cors = cors(&["https://a.example".to_string()]).expect("origins are configured");
        let request = Request::builder().uri("/").header(header::ORIGIN, "https://a.example").body(Body::empty());
        let request = request.unwrap();
        let CorsStart::Call(finish) = start(&cors, &request) else { panic!("not a preflight") };
        let mut response = Response::new(Body::empty());
        finish.finish(&mut response);
        let answered = &response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN];
        assert_eq!(answered, "https://a.example");
        assert_ne!(answered.as_bytes().as_ptr(), request.headers()[header::ORIGIN].as_bytes().as_ptr());
    }

    #[test]
    fn another_origin_or_none_gets_no_allow_origin_but_the_vary() {
        for origin in [Some("https://evil.example"), None] {
            let response = call(&["https://a.example"], Method::GET, origin);
            assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "{origin:?}");
            assert!(response.headers().get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none(), "{origin:?}");
            assert_eq!(values(&response, header::VARY), ["accept-encoding, origin"]);
        }
    }

    #[test]
    fn a_vary_of_other_kinds_is_kept_and_origin_added_to_it() {
        let cors = cors(&["https://a.example".to_string()]).expect("origins are configured");
        let request = Request::builder().uri("/").header(header::ORIGIN, "https://a.example").body(Body::empty());
        for (own, expected) in [
            (vec![], vec!["origin"]),
            (vec!["accept-language"], vec!["accept-language", "origin"]),
            (vec!["accept-encoding", "accept-language"], vec!["accept-encoding", "accept-language", "origin"]),
        ] {
            let CorsStart::Call(finish) = start(&cors, request.as_ref().unwrap()) else { panic!("not a preflight") };
            let mut response = Response::new(Body::empty());
            for value in &own {
                response.headers_mut().append(header::VARY, HeaderValue::from_static(value));
            }
            finish.finish(&mut response);
            assert_eq!(values(&response, header::VARY), expected, "{own:?}");
        }
    }

    #[test]
    fn any_origin_is_answered_with_a_star() {
        for origin in [Some("https://anyone.example"), None] {
            let response = call(&["*"], Method::PUT, origin);
            assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["*"], "{origin:?}");
            assert_eq!(values(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS).len(), 1, "{origin:?}");
        }
    }

    #[test]
    fn a_preflight_is_answered_here() {
        let response = call(&["https://a.example"], Method::OPTIONS, Some("https://a.example"));
        assert_eq!(response.status(), 200);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["https://a.example"]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_METHODS), [METHODS]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_HEADERS), [REQUEST_HEADERS]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_MAX_AGE), ["3600"]);
        assert_eq!(values(&response, header::VARY), [VARY], "not the inner service's: it was not called");
        assert!(response.headers().get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        let refused = call(&["https://a.example"], Method::OPTIONS, Some("https://evil.example"));
        assert!(refused.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
