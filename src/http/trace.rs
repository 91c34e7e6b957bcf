//! The request span and the log lines of every request: what tower-http's
//! `TraceLayer::new_for_http()` logged, line for line and under its targets
//! (so a filter such as `tower_http=debug` still selects them), without its
//! cost when the span is off (issue 23).
//!
//! - `DEBUG tower_http::trace::on_request`: "started processing request";
//! - `DEBUG tower_http::trace::on_response`: "finished processing request",
//!   with `latency` (`N ms`) and `status`;
//! - `ERROR tower_http::trace::on_failure`: "response failed", with
//!   `classification` (`Status code: 500 Internal Server Error`) and
//!   `latency`, for every 5xx answer;
//! - `DEBUG tower_http::trace::on_eos`: "end of stream", with
//!   `stream_duration`, when a body ends, and `ERROR` "response failed"
//!   (`classification = Error: …`) when one fails.
//!
//! Every one carries the request span (`request{method uri request_id}`),
//! which is entered while the handler runs and while the body is sent.
//!
//! tower-http's layer did all of it whatever the log level: a span handle,
//! a classifier and callbacks moved through each poll, and a body wrapper
//! around every response. Here, when the span is off (the level is above
//! `info`) the body goes out as it is and only the two checks of the
//! `DEBUG` and `ERROR` callsites remain.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use http_body::Frame;
use pin_project_lite::pin_project;

use crate::telemetry::request_span::{self, RequestContext};

/// What the span of one request says, for a request whose span is on
/// (`request_span::enabled`): its method, its path and its request `id`
/// (`layers::read_edge_headers`'s, never a slice of the request), so every
/// log line of the request carries it, and never any header
/// (`Authorization` holds a token). The span itself is opened by the first
/// line written inside it (`crate::telemetry::request_span`).
pub(super) fn request_context(request: &Request, id: &HeaderValue) -> Box<RequestContext> {
    RequestContext::new(request.method().clone(), request.uri().path(), id.clone())
}

/// The request reaches its handler (inside its span).
pub(super) fn started() {
    tracing::debug!(target: "tower_http::trace::on_request", "started processing request");
}

/// The response head is ready, `status`, for a request that started at
/// `start` (inside its span).
pub(super) fn finished(start: Instant, status: StatusCode) {
    // Read from the clock only by a line that is written.
    let latency = Since(start);
    tracing::debug!(
        target: "tower_http::trace::on_response",
        %latency,
        status = status.as_u16(),
        "finished processing request"
    );
    if status.is_server_error() {
        tracing::error!(
            target: "tower_http::trace::on_failure",
            classification = %StatusFailure(status),
            %latency,
            "response failed"
        );
    }
}

/// `response`, its body sent inside the span of `context` (when spans are
/// on; else as it is). A body of known length (a record, a problem
/// document: bytes already made, which write no line) is sent as it is
/// too, unless the "end of stream" line is on (debug): the wrapper would
/// cost an allocation and a dynamic call per frame for nothing (issue 23).
/// An event stream, whose length is never known, keeps its span.
pub(super) fn traced(response: Response, context: Option<Box<RequestContext>>) -> Response {
    if context.is_none()
        || (http_body::Body::size_hint(response.body()).exact().is_some()
            && !tracing::enabled!(target: "tower_http::trace::on_eos", tracing::Level::DEBUG))
    {
        return response;
    }
    response.map(|body| Body::new(TracedBody { inner: body, context, start: Some(Instant::now()) }))
}

pin_project! {
    /// A response body sent inside its request's span.
    struct TracedBody {
        #[pin]
        inner: Body,
        context: Option<Box<RequestContext>>,
        // When the body started; taken when its end is logged.
        start: Option<Instant>,
    }
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let _entered = request_span::enter(this.context);
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(start) = *this.start else { return Poll::Ready(frame) };
        match &frame {
            Some(Err(error)) => {
                *this.start = None;
                tracing::error!(
                    target: "tower_http::trace::on_failure",
                    classification = %format_args!("Error: {error}"),
                    latency = %Since(start),
                    "response failed"
                );
            }
            // hyper may not poll again once the body says it has ended.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            _ => {
                *this.start = None;
                tracing::debug!(
                    target: "tower_http::trace::on_eos",
                    stream_duration = %Since(start),
                    "end of stream"
                );
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The time since an instant as tower-http writes it in its log lines,
/// whole milliseconds, read from the clock when (and only when) the line
/// is written.
#[derive(Clone, Copy)]
struct Since(Instant);

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0.elapsed().as_millis())
    }
}

/// A 5xx, as tower-http classifies it.
struct StatusFailure(StatusCode);

impl fmt::Display for StatusFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status code: {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use std::convert::Infallible;
    use std::time::Duration;

    use super::super::layers::REQUEST_ID;

    use axum::http::{HeaderValue, StatusCode};
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    use super::super::edge::tests::edge;
    use super::*;

    /// What the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// This thread's subscriber until the guard is dropped: the service's
    /// (`LazySpans` around the fmt subscriber, pretty or, with `json`, as
    /// `PROGRESS_LOG_FORMAT=json`) at `level`, writing into what it returns.
    fn capture(level: &str, json: bool) -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(move || writer.clone())
            .with_ansi(false);
        let guard = if json {
            let subscriber = builder.json().flatten_event(true).with_current_span(true).finish();
            tracing::subscriber::set_default(request_span::LazySpans::new(subscriber))
        } else {
            tracing::subscriber::set_default(request_span::LazySpans::new(builder.finish()))
        };
        (captured, guard)
    }

    /// The log of one request answered with `status` and `body`, at `level`, and the body received.
    ///
    /// The request is sent twice and the second one's log returned. tracing
    /// caches which subscribers want each line process-wide, from the
    /// subscribers there are when the line is first written; a test on
    /// another thread writing the same line for the first time just as this
    /// one sets its subscriber can leave it cached as wanted by nobody: with
    /// one request, `at_debug_every_line_carries_the_span` missed its last
    /// two lines in about one run in two of `cargo test --lib http::`, and
    /// in none of ten since. After the first request every line of the path
    /// is known, and the cache is rebuilt.
    async fn logged(level: &str, status: StatusCode, body: &'static str) -> (String, String) {
        let (captured, _default) = capture(level, false);
        let mut received = Bytes::new();
        for _ in 0..2 {
            captured.0.lock().unwrap().clear();
            let inner = tower::service_fn(move |_: Request| async move {
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            let mut request = Request::get("/progress/job-1").body(Body::empty()).unwrap();
            request.headers_mut().insert(REQUEST_ID, HeaderValue::from_static("rid-1"));
            let response = edge(Duration::from_secs(60)).layer(inner).oneshot(request).await.unwrap();
            assert_eq!(response.status(), status);
            received = response.into_body().collect().await.unwrap().to_bytes();
            tracing::callsite::rebuild_interest_cache();
        }
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (log, String::from_utf8(received.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_debug_every_line_carries_the_span() {
        let (log, body) = logged("debug", StatusCode::OK, "hello").await;
        assert_eq!(body, "hello");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        for (line, text) in
            lines.iter().zip(["started processing request", "finished processing request", "end of stream"])
        {
            assert!(line.contains(text), "{line}");
            assert!(line.contains("request{method=GET uri=/progress/job-1 request_id=rid-1}"), "{line}");
            assert!(line.contains(" DEBUG "), "{line}");
        }
        assert!(lines[0].contains("tower_http::trace::on_request"), "the targets are tower-http's: {log}");
        let latency = lines[1].split("latency=").nth(1).and_then(|rest| rest.split_once(" ms")).map(|(n, _)| n);
        assert!(latency.is_some_and(|n| n.parse::<u64>().is_ok()), "whole milliseconds: {}", lines[1]);
        assert!(lines[1].contains("status=200"), "{}", lines[1]);
        assert!(lines[2].contains("stream_duration="), "{}", lines[2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_5xx_is_an_error_line_at_any_level() {
        let (log, body) = logged("warn", StatusCode::INTERNAL_SERVER_ERROR, "oops").await;
        assert_eq!(body, "oops");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(lines[0].contains(" ERROR "), "{log}");
        assert!(lines[0].contains("tower_http::trace::on_failure"), "{log}");
        assert!(lines[0].contains("response failed"), "{log}");
        assert!(lines[0].contains("classification=Status code: 500 Internal Server Error"), "{log}");
        assert!(lines[0].contains("latency="), "{log}");
    }

    /// The log of one request at info whose handler writes a warning (after
    /// waiting once, so the line is written in a later poll), then a line
    /// outside any request; `json`: in the JSON format.
    async fn logged_from_a_handler(json: bool) -> String {
        let (captured, _default) = capture("info", json);
        let inner = tower::service_fn(|_: Request| async {
            tracing::warn!(attempt = 1, "the store is slow");
            tokio::task::yield_now().await;
            tracing::warn!(attempt = 2, "the store is slow");
            Ok::<_, Infallible>(Response::new(Body::from("late")))
        });
        let mut request = Request::get("/progress/job-1").body(Body::empty()).unwrap();
        request.headers_mut().insert(REQUEST_ID, HeaderValue::from_static("rid-1"));
        let response = edge(Duration::from_secs(60)).layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "late");
        tracing::warn!("after the request");
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_request_id_is_the_spans_and_the_responses() {
        let (captured, _default) = capture("info", false);
        let inner = tower::service_fn(|_: Request| async {
            tracing::warn!("the store is slow");
            Ok::<_, Infallible>(Response::new(Body::from("late")))
        });
        let request = Request::get("/progress/job-1").body(Body::empty()).unwrap();
        let response = edge(Duration::from_secs(60)).layer(inner).oneshot(request).await.unwrap();
        let sent = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(sent.len(), 36, "a UUID: {sent}");
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains(&format!("request{{method=GET uri=/progress/job-1 request_id={sent}}}: ")), "{log}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_handlers_lines_carry_the_span_opened_for_them() {
        let log = logged_from_a_handler(false).await;
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        for (line, attempt) in lines[..2].iter().zip(["attempt=1", "attempt=2"]) {
            assert!(line.contains(" WARN request{method=GET uri=/progress/job-1 request_id=rid-1}: "), "{line}");
            assert!(line.contains("the store is slow") && line.contains(attempt), "{line}");
        }
        assert!(!lines[2].contains("request{"), "the request is over: {}", lines[2]);
        assert!(lines[2].contains("after the request"), "{}", lines[2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn in_json_a_handlers_lines_carry_the_span() {
        let log = logged_from_a_handler(true).await;
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{log}");
        let span =
            serde_json::json!({"method": "GET", "uri": "/progress/job-1", "request_id": "rid-1", "name": "request"});
        for line in &lines[..2] {
            assert_eq!(line["span"], span, "{line}");
            assert_eq!(line["spans"], serde_json::json!([span]), "{line}");
        }
        assert!(lines[2].get("span").is_none(), "the request is over: {}", lines[2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_info_a_5xx_line_carries_the_span() {
        let (log, _) = logged("info", StatusCode::SERVICE_UNAVAILABLE, "busy").await;
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains(" ERROR request{method=GET uri=/progress/job-1 request_id=rid-1}: "), "{log}");
        assert!(log.contains("response failed"), "{log}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_info_a_line_written_while_a_stream_is_sent_carries_the_span() {
        let (captured, _default) = capture("info", false);
        let inner = tower::service_fn(|_: Request| async {
            let frames = futures_util::stream::poll_fn(|_| {
                tracing::warn!("the stream lags");
                Poll::Ready(None::<Result<Bytes, Infallible>>)
            });
            Ok::<_, Infallible>(Response::new(Body::from_stream(frames)))
        });
        let mut request = Request::get("/progress/job-1/events").body(Body::empty()).unwrap();
        request.headers_mut().insert(REQUEST_ID, HeaderValue::from_static("rid-1"));
        let response = edge(Duration::from_secs(60)).layer(inner).oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains(" WARN request{method=GET uri=/progress/job-1/events request_id=rid-1}: "), "{log}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn at_info_a_success_logs_nothing() {
        let (log, body) = logged("info", StatusCode::OK, "quiet").await;
        assert_eq!((log.as_str(), body.as_str()), ("", "quiet"));
    }
}
