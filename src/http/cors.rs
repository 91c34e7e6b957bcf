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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::layers::REQUEST_ID;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The methods a browser may use.
const METHODS: &str = "GET,POST,PUT,PATCH,DELETE,OPTIONS";

/// The request headers a browser may send.
const REQUEST_HEADERS: &str = "content-type,authorization,if-match,if-none-match,last-event-id";

/// The `Vary` of a preflight.
const VARY: &str = "origin, access-control-request-method, access-control-request-headers";

/// The `Vary` of any other answer.
const VARY_ORIGIN: &str = "origin";

/// Which origins are allowed.
#[derive(Debug)]
enum Origins {
    /// `*`: any, answered with `*`.
    Any,
    /// These, each answered with itself.
    List(Vec<HeaderValue>),
}

/// The configuration, made once.
#[derive(Debug)]
struct Config {
    origins: Origins,
    expose_headers: HeaderValue,
}

/// CORS for the configured origins ([`cors`]).
#[derive(Debug, Clone)]
pub(crate) struct CorsLayer {
    config: Arc<Config>,
}

/// CORS for `origins` (`*`: any), or `None` when there are none: no CORS
/// headers at all then.
pub(crate) fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = if origins.iter().any(|o| o == "*") {
        Origins::Any
    } else {
        // Settings validation already refused origins that are not header values.
        Origins::List(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect())
    };
    let exposed = [header::ETAG, header::LOCATION, header::RETRY_AFTER, REQUEST_ID];
    let expose_headers = HeaderValue::from_str(&exposed.iter().map(HeaderName::as_str).collect::<Vec<_>>().join(","))
        .expect("header names joined by commas are a header value");
    Some(CorsLayer { config: Arc::new(Config { origins, expose_headers }) })
}

impl Config {
    /// `Access-Control-Allow-Origin` for a request from `origin`, if any.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner, config: self.config.clone() }
    }
}

/// The service of [`CorsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Cors<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let allow_origin = self.config.allow_origin(request.headers().get(header::ORIGIN));
        if request.method() == Method::OPTIONS {
            return CorsFuture::Preflight { allow_origin };
        }
        // The exposed headers go with an allowed origin only: a request
        // without one takes nothing from the configuration.
        let allowed = allow_origin.map(|origin| (origin, self.config.expose_headers.clone()));
        CorsFuture::Call { inner: self.inner.call(request), allowed }
    }
}

pin_project! {
    /// The response future of [`Cors`].
    #[project = CorsFutureProj]
    pub(crate) enum CorsFuture<F> {
        /// A preflight, answered here.
        Preflight { allow_origin: Option<HeaderValue> },
        /// Any other request, its response to be completed.
        Call {
            #[pin]
            inner: F,
            // `Access-Control-Allow-Origin` and `-Expose-Headers`, when the origin is allowed.
            allowed: Option<(HeaderValue, HeaderValue)>,
        },
    }
}

impl<F, ResBody, E> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CorsFutureProj::Preflight { allow_origin } => {
                let mut response = Response::new(ResBody::default());
                let headers = response.headers_mut();
                if let Some(origin) = allow_origin.take() {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                }
                headers.insert(header::VARY, HeaderValue::from_static(VARY));
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(REQUEST_HEADERS));
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE.as_secs()));
                Poll::Ready(Ok(response))
            }
            CorsFutureProj::Call { inner, allowed } => {
                let mut response = ready!(inner.poll(cx))?;
                let headers = response.headers_mut();
                // A response's own `Vary` is kept; ours is added to it.
                headers.append(header::VARY, HeaderValue::from_static(VARY_ORIGIN));
                if let Some((origin, expose)) = allowed.take() {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// An inner service that answers 200 with a `Vary` of its own.
    fn app(
        origins: &[&str],
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible> {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        let inner = tower::service_fn(|_request: Request<Body>| async {
            let mut response = Response::new(Body::from("ok"));
            response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            Ok::<_, std::convert::Infallible>(response)
        });
        cors(&origins).expect("origins are configured").layer(inner)
    }

    async fn call(origins: &[&str], method: Method, origin: Option<&str>) -> Response<Body> {
        let mut request = Request::builder().method(method).uri("/progress/a");
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        app(origins).oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    fn values(response: &Response<Body>, name: HeaderName) -> Vec<&str> {
        response.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn no_origins_no_layer() {
        assert!(cors(&[]).is_none());
    }

    #[tokio::test]
    async fn an_allowed_origin_is_echoed_and_the_headers_exposed() {
        let response = call(&["https://a.example", "https://b.example"], Method::GET, Some("https://b.example")).await;
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["https://b.example"]);
        assert_eq!(
            values(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS),
            ["etag,location,retry-after,x-request-id"]
        );
        assert_eq!(values(&response, header::VARY), ["accept-encoding", "origin"], "the response's own Vary is kept");
        assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none(), "only preflights");
    }

    #[tokio::test]
    async fn another_origin_or_none_gets_no_allow_origin_but_the_vary() {
        for origin in [Some("https://evil.example"), None] {
            let response = call(&["https://a.example"], Method::GET, origin).await;
            assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(), "{origin:?}");
            assert!(response.headers().get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none(), "{origin:?}");
            assert_eq!(values(&response, header::VARY), ["accept-encoding", "origin"]);
        }
    }

    #[tokio::test]
    async fn any_origin_is_answered_with_a_star() {
        for origin in [Some("https://anyone.example"), None] {
            let response = call(&["*"], Method::PUT, origin).await;
            assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["*"], "{origin:?}");
            assert_eq!(values(&response, header::ACCESS_CONTROL_EXPOSE_HEADERS).len(), 1, "{origin:?}");
        }
    }

    #[tokio::test]
    async fn a_preflight_is_answered_here() {
        let response = call(&["https://a.example"], Method::OPTIONS, Some("https://a.example")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_ORIGIN), ["https://a.example"]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_METHODS), [METHODS]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_ALLOW_HEADERS), [REQUEST_HEADERS]);
        assert_eq!(values(&response, header::ACCESS_CONTROL_MAX_AGE), ["3600"]);
        assert_eq!(values(&response, header::VARY), [VARY], "not the inner service's: it was not called");
        assert!(response.headers().get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        let refused = call(&["https://a.example"], Method::OPTIONS, Some("https://evil.example")).await;
        assert!(refused.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
