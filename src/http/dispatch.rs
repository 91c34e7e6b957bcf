//! Which service answers a request: the routes called ahead of axum's
//! router (every route of `/progress/{id}` and every route whose path has
//! no parameter), `GET /progress/{id}` among them unboxed, and the router
//! for the rest.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::response::Response;
use tower::Service;

use super::{RouteLayers, RouteService, auth, edge, extract, progress};

/// The application: axum's router, and the routes called ahead of it
/// ([`Ahead`]): the same handlers behind the same layers, each as one
/// service. axum's router finds a route by the whole path and inserts its
/// parameters into the request's extensions (for every route: an empty
/// list for a path without parameters, and the map that holds it) before
/// the route's method router picks the handler, about 1,900 instructions
/// of a `/healthz`, 2,300 of a cached GET and 2,700 of a write (issue 23,
/// callgrind). A route called
/// ahead is found by a comparison of the method and the path, and
/// [`extract::PathId`] reads the id off the path as it does behind the
/// router. Every other request (`HEAD`, the paths below a record, those
/// with other parameters, and every method a path has no route for: the
/// 405s and 404s) goes through the router. Cloned for every connection:
/// two reference counts.
#[derive(Clone)]
pub struct App {
    pub(super) router: Router,
    pub(super) ahead: Arc<Ahead>,
}

/// The routes [`App`] calls ahead of axum's router: every route of the
/// table whose path is `/progress/{id}` or has no parameter.
#[derive(Default)]
pub(super) struct Ahead {
    /// `GET /progress/{id}`, unboxed and called by reference.
    pub(super) get: Option<RecordGet>,
    /// The other methods of `/progress/{id}` (PUT, PATCH, DELETE).
    pub(super) record: Vec<(Method, RouteService)>,
    /// The routes whose paths have no parameter, by method and path.
    pub(super) exact: Vec<(Method, &'static str, RouteService)>,
}

/// A route called ahead of the router ([`Ahead::find`]).
enum Found<'a> {
    /// `GET /progress/{id}`.
    RecordGet(&'a RecordGet),
    /// Any other.
    Route(&'a RouteService),
}

impl Ahead {
    /// The route of `method` on `path`, if it is called ahead of the router.
    fn find(&self, method: &Method, path: &str) -> Option<Found<'_>> {
        if !extract::is_record_path(path) {
            return self
                .exact
                .iter()
                .find(|(m, p, _)| *p == path && m == method)
                .map(|(_, _, route)| Found::Route(route));
        }
        if method == Method::GET {
            return self.get.as_ref().map(Found::RecordGet);
        }
        self.record.iter().find(|(m, _)| m == method).map(|(_, route)| Found::Route(route))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`App`]'s answer.
    #[project = AppFutureProj]
    pub enum AppFuture {
        /// Through the router.
        Router { #[pin] inner: axum::routing::future::RouteFuture<Infallible> },
        /// A route called ahead of it.
        Ahead { #[pin] inner: <RouteService as Service<axum::extract::Request>>::Future },
        /// `GET /progress/{id}`.
        RecordGet { #[pin] inner: RecordGetFuture },
    }
}

impl std::future::Future for AppFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.project() {
            AppFutureProj::Router { inner } => inner.poll(cx),
            AppFutureProj::Ahead { inner } => inner.poll(cx),
            AppFutureProj::RecordGet { inner } => inner.poll(cx),
        }
    }
}

impl<B> Service<axum::http::Request<B>> for App
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AppFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> AppFuture {
        match self.ahead.find(request.method(), request.uri().path()) {
            Some(Found::RecordGet(get)) => {
                AppFuture::RecordGet { inner: get.answer(request.map(axum::body::Body::new)) }
            }
            // A handler service is always ready; each call clones its handler, as axum's router does.
            Some(Found::Route(route)) => {
                AppFuture::Ahead { inner: route.clone().call(request.map(axum::body::Body::new)) }
            }
            None => AppFuture::Router { inner: self.router.call(request) },
        }
    }
}

/// What `axum::serve` asks of an application: a service per connection.
impl<L: axum::serve::Listener> Service<axum::serve::IncomingStream<'_, L>> for App {
    type Response = Self;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: axum::serve::IncomingStream<'_, L>) -> Self::Future {
        std::future::ready(Ok(self.clone()))
    }
}

/// `GET /progress/{id}` ([`progress::GetRecord`]) behind its layers (the
/// edge, the token check; it gzips its own answers), as one service of
/// types known here rather than a boxed [`RouteService`]: [`App`] calls it
/// by reference, with no clone of the service, no box for the service or
/// its future, and no call through either (issue 23). The router's route
/// for it (`HEAD`) is the same, boxed.
#[derive(Clone)]
pub(super) struct RecordGet {
    pub(super) layers: RouteLayers,
    pub(super) get: progress::GetRecord,
}

/// The future of [`RecordGet`]'s answer.
type RecordGetFuture = edge::EdgeFuture<auth::GuardFuture<progress::GetFuture>>;

impl RecordGet {
    fn answer(&self, request: axum::extract::Request) -> RecordGetFuture {
        debug_assert!(!self.layers.gzip, "the record's GET gzips its own answers");
        self.layers.edge.start(request, |request| match &self.layers.guard {
            Some(guard) => guard.start(request, |request| self.get.answer(request)),
            None => auth::GuardFuture::Granted { inner: self.get.answer(request) },
        })
    }
}

impl Service<axum::extract::Request> for RecordGet {
    type Response = Response;
    type Error = Infallible;
    type Future = RecordGetFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> RecordGetFuture {
        self.answer(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::settings::Settings;
    use crate::store::MemoryStore;

    /// What a request's answer is made of, less what differs by nature
    /// between two answers (the date, the request id, the record's times).
    async fn answer(response: axum::response::Response) -> (StatusCode, Vec<(String, String)>, String) {
        let status = response.status();
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| !["date", "x-request-id", "content-length"].contains(&name.as_str()))
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_string()))
            .collect();
        headers.sort();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        // Times differ between two writes, and the ETA is drawn from them
        // (whether there is one yet too); the rest does not.
        let body = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(mut fields)) => {
                for (name, value) in fields.iter_mut() {
                    if name == "eta" {
                        *value = serde_json::Value::Null;
                    } else if let (true, Some(text)) = (name == "detail", value.as_str()) {
                        // "… was deleted at <time>"
                        *value = serde_json::Value::from(text.split(" at 20").next().unwrap_or(text));
                    } else if name.ends_with("_at") {
                        *value = serde_json::Value::from(value.is_string());
                    }
                }
                serde_json::Value::Object(fields).to_string()
            }
            _ => String::from_utf8_lossy(&body).into(),
        };
        (status, headers, body)
    }

    fn request(method: &str, path: &str, body: Option<&str>, header: Option<(&str, &str)>) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        builder.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap()
    }

    /// `GET /progress/{id}` answers a record the store holds in memory when
    /// it is called, with no future left to wait on a store; a record it
    /// does not hold, and a long-poll, wait. Bad ids are answered at once.
    #[tokio::test]
    async fn a_get_of_a_record_held_in_memory_is_answered_when_called() {
        use super::progress::GetFuture;
        let app = crate::app::build_router(&Settings::default(), Arc::new(MemoryStore::default()));
        let put = request("PUT", "/progress/m1", Some(r#"{"status": "running", "current": 3}"#), None);
        assert_eq!(app.clone().oneshot(put).await.unwrap().status(), StatusCode::CREATED);
        let get = &app.ahead.get.as_ref().expect("the record's GET is called ahead of the router").get;
        let answered = |future: GetFuture| match future {
            GetFuture::Ready(response) => response.expect("an answer"),
            GetFuture::Waiting(_) => panic!("waited for an answer held in memory"),
        };
        let ok = answered(get.answer(request("GET", "/progress/m1", None, None)));
        assert_eq!(ok.status(), StatusCode::OK);
        let (_, _, body) = answer(ok).await;
        assert!(body.contains(r#""id":"m1""#), "{body}");
        let unchanged = answered(get.answer(request("GET", "/progress/m1", None, Some(("if-none-match", "\"1\"")))));
        assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
        let bad = answered(get.answer(request("GET", "/progress/bad%20id", None, None)));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        for (path, header) in [("/progress/m2", None), ("/progress/m1?wait=1", Some(("if-none-match", "\"1\"")))] {
            let GetFuture::Waiting(waiting) = get.answer(request("GET", path, None, header)) else {
                panic!("{path} was answered without waiting");
            };
            let status = waiting.await.status();
            assert_eq!(status, if path == "/progress/m2" { StatusCode::NOT_FOUND } else { StatusCode::NOT_MODIFIED });
        }
    }

    /// A record's GET (200 and 304) writes its headers into the request's
    /// map: none of the request's headers is left in it, and each answer
    /// has its own, with CORS's and the request id besides; `/healthz`,
    /// which does not, answers the same way.
    #[tokio::test]
    async fn an_answer_written_into_the_requests_map_keeps_none_of_the_requests_headers() {
        let settings = Settings { cors_origins: vec!["https://app.example".into()], ..Settings::default() };
        let app = crate::app::build_router(&settings, Arc::new(MemoryStore::default()));
        let put = request("PUT", "/progress/m1", Some(r#"{"status": "running", "current": 3}"#), None);
        assert_eq!(app.clone().oneshot(put).await.unwrap().status(), StatusCode::CREATED);
        let sent = [
            ("origin", "https://app.example"),
            ("x-probe", "1"),
            ("accept-encoding", "identity"),
            ("cookie", "a=b"),
            ("x-request-id", "probe-1"),
        ];
        for (path, tag, status, own) in [
            ("/healthz", None, StatusCode::OK, &["content-type"][..]),
            ("/progress/m1", None, StatusCode::OK, &["content-type", "etag", "cache-control"][..]),
            ("/progress/m1", Some("\"1\""), StatusCode::NOT_MODIFIED, &["etag", "cache-control"][..]),
        ] {
            let mut get = request("GET", path, None, tag.map(|t| ("if-none-match", t)));
            for (name, value) in sent {
                get.headers_mut().insert(name, value.parse().unwrap());
            }
            let response = app.clone().oneshot(get).await.unwrap();
            assert_eq!(response.status(), status, "{path} {tag:?}");
            let headers = response.headers();
            for (name, _) in sent.iter().filter(|(name, _)| *name != "x-request-id").chain([&("if-none-match", "")]) {
                assert!(!headers.contains_key(*name), "{path} {tag:?} answered the request's {name}: {headers:?}");
            }
            for name in own.iter().chain(&["access-control-allow-origin", "vary"]) {
                assert!(headers.contains_key(*name), "{path} {tag:?} has no {name}: {headers:?}");
            }
            assert_eq!(headers["x-request-id"], "probe-1", "{path} {tag:?}");
            assert_eq!(headers.get_all("x-request-id").iter().count(), 1, "{path} {tag:?}");
        }
    }

    /// `/progress/{id}` answered ahead of axum's router answers as the
    /// router's own routes for it do: good and bad ids, missing records,
    /// conditions, every method, and a record as writes through either way
    /// leave it.
    #[tokio::test]
    async fn the_record_path_ahead_of_the_router_answers_as_the_router_does() {
        let app = crate::app::build_router(&Settings::default(), Arc::new(MemoryStore::default()));
        let put = r#"{"status": "running", "current": 3, "total": 10}"#;
        // Writes change what the next one sees: each way writes its own ids.
        for (router_id, app_id) in [("r1", "a1"), ("r2", "a2")] {
            for (method, body, header) in [
                ("PUT", Some(put), None),
                ("PUT", Some(put), None),
                ("PATCH", Some(r#"{"current": 4}"#), None),
                ("PATCH", Some(r#"{"current": 5}"#), Some(("if-match", "\"1\""))),
                ("GET", None, Some(("if-none-match", "\"3\""))),
                ("GET", None, None),
                ("HEAD", None, None),
                ("POST", Some("{}"), None),
                ("DELETE", None, None),
                ("GET", None, None),
                ("DELETE", None, None),
            ] {
                let through_router =
                    app.router.clone().oneshot(request(method, &format!("/progress/{router_id}"), body, header));
                let ahead = app.clone().oneshot(request(method, &format!("/progress/{app_id}"), body, header));
                let (through_router, ahead) =
                    (answer(through_router.await.unwrap()).await, answer(ahead.await.unwrap()).await);
                let renamed = |text: &String| text.replace(app_id, router_id);
                let ahead =
                    (ahead.0, ahead.1.iter().map(|(n, v)| (n.clone(), renamed(v))).collect(), renamed(&ahead.2));
                assert_eq!(through_router, ahead, "{method} {body:?} {header:?}");
            }
        }
        for path in ["/progress/a%2Fb", "/progress/%FF", "/progress/~", "/progress/missing"] {
            for method in ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"] {
                if method == "PUT" && path.ends_with("missing") {
                    continue; // it would be created by the first of the two
                }
                let body = matches!(method, "PUT" | "PATCH").then_some("{}");
                let through_router =
                    answer(app.router.clone().oneshot(request(method, path, body, None)).await.unwrap()).await;
                let ahead = answer(app.clone().oneshot(request(method, path, body, None)).await.unwrap()).await;
                assert_eq!(through_router, ahead, "{method} {path}");
                assert!(through_router.0.is_client_error(), "{method} {path}: {through_router:?}");
            }
        }
    }

    /// Every route whose path has no parameter is called ahead of the
    /// router too; each method of each such path (and a few that are not
    /// routes) answers as through the router. `/metrics` counts the
    /// requests themselves and `/readyz` times its checks, so their bodies
    /// are left out; a minted token is new each time, so only its shape is
    /// compared.
    #[tokio::test]
    async fn the_paths_without_parameters_ahead_of_the_router_answer_as_the_router_does() {
        let app = crate::app::build_router(&Settings::default(), Arc::new(MemoryStore::default()));
        let mut paths: Vec<&str> = crate::http::routes().iter().map(|r| r.path).filter(|p| !p.contains('{')).collect();
        paths.dedup();
        assert!(paths.contains(&"/healthz") && paths.contains(&"/progress"), "{paths:?}");
        for path in paths.iter().copied().chain(["/healthz/", "/HEALTHZ", "/healthz%20", "/dashboard/x.js"]) {
            for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
                let body = matches!(method, "POST" | "PUT" | "PATCH").then_some("{}");
                let through_router =
                    answer(app.router.clone().oneshot(request(method, path, body, None)).await.unwrap()).await;
                let ahead = answer(app.clone().oneshot(request(method, path, body, None)).await.unwrap()).await;
                match (method, path) {
                    ("GET", "/metrics" | "/readyz") | ("POST", "/tokens") => {
                        let names = |a: &(StatusCode, Vec<(String, String)>, String)| {
                            (a.0, a.1.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())
                        };
                        assert_eq!(names(&through_router), names(&ahead), "{method} {path}");
                    }
                    _ => assert_eq!(through_router, ahead, "{method} {path}"),
                }
            }
        }
    }
}
