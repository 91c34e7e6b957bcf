//! The HTTP side: the route table, extractors, handlers and the mapping
//! of errors to problem documents.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use tower::{Layer, Service, ServiceBuilder};

use crate::error::Error;
use crate::service::ProgressService;

mod access;
mod address;
mod admin;
mod assets;
mod auth;
mod cancel;
mod cors;
mod edge;
mod events;
mod extract;
mod gzip;
mod health;
mod layers;
mod list;
mod problem;
mod progress;
mod rate;
mod stream_all;
mod tokens;
mod trace;
mod webhooks;

pub use address::{TrustedProxies, X_FORWARDED_FOR, client_address, parse_network};
pub use auth::{ACCESS_TOKEN_PARAM, Abilities, AccessTokens, Grant, ScopedGrant, TokenKind};
pub use layers::{LayerSettings, REQUEST_ID};
pub use problem::PROBLEM_JSON;

/// Limits on request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body in bytes.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting.
    pub max_json_depth: usize,
}

/// What every handler can reach, behind one `Arc`: axum clones the state
/// for every request (into the route's service and for each `State`
/// extractor), and a clone of the fields themselves cost three reference
/// counts and the CORS origin list (about 4 % of a PUT's CPU time, perf).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    /// The state handlers share.
    pub fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct SharedState {
    /// The progress operations.
    pub service: ProgressService,
    /// Request body limits.
    pub limits: BodyLimits,
    /// Bearer tokens of the access classes.
    pub tokens: Arc<AccessTokens>,
    /// CORS origins and the request timeout of the outer layers.
    pub layers: LayerSettings,
    /// Longest an event stream stays silent before a comment line.
    pub heartbeat: std::time::Duration,
    /// Longest lifetime `POST /tokens` gives a scoped token, in seconds.
    pub max_token_ttl_seconds: u64,
}

/// Who may call a route (see `PROGRESS_*_TOKENS` in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health and metrics.
    Public,
    /// A read token when read tokens are configured (write and admin tokens
    /// also read); a scoped token for the path's id, whether or not read
    /// tokens are configured.
    Read,
    /// A write token when write tokens are configured (the admin token also writes).
    Write,
    /// The admin token; refused entirely when none is configured.
    Admin,
    /// Listing (`GET /progress`): the admin token or a read token when
    /// either is configured (write tokens do not list); open when neither is.
    /// A scoped token with a prefix lists inside its prefix.
    List,
    /// Asking a job to stop (`POST /progress/{id}/cancel`): as `Write` for
    /// static tokens (a write or the admin token; open when no write tokens
    /// are configured), and a scoped token that carries the `cancel` claim,
    /// for the ids in its scope.
    Cancel,
}

/// One row of the route table.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path pattern as axum writes it (`/progress/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Whether its responses go through the compression layer, or the
    /// handler gzips its own bodies (or sends none worth compressing).
    gzip: Gzip,
    /// What answers it.
    serve: Serve,
}

/// What answers a route.
enum Serve {
    /// A handler, behind the given layers as one service: the router's
    /// route, and the route called ahead of the router ([`App`]).
    Handler(Box<dyn FnOnce(RouteLayers, AppState) -> RouteService>),
    /// `GET /progress/{id}`: [`RecordGet`].
    RecordGet,
}

/// One route's handler behind its layers, as [`App`] calls it.
type RouteService = tower::util::BoxCloneSyncService<axum::extract::Request, Response, Infallible>;

/// Who gzips a route's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gzip {
    /// The compression layer (`layers::compression`), around this route only.
    Layer,
    /// The handler itself (`gzip.rs`: the record routes), or nobody (a tiny
    /// body, an event stream). The layer would only cost them time: its
    /// checks and body wrapper on every request (issue 23).
    Handler,
}

impl Route {
    /// This route's handler gzips its own responses ([`Gzip::Handler`]).
    fn gzipped_by_handler(mut self) -> Self {
        self.gzip = Gzip::Handler;
        self
    }
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let service = Box::new(move |layers: RouteLayers, state| layers.service(handler, state));
    Route { method, path, access, gzip: Gzip::Layer, serve: Serve::Handler(service) }
}

/// Every route the service answers. The router is built from this table,
/// and a test checks each row against `openapi.yaml`.
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/healthz", Access::Public, healthz).gzipped_by_handler(),
        route(Method::GET, "/metrics", Access::Public, metrics),
        route(Method::GET, "/readyz", Access::Public, health::readyz),
        route(Method::GET, "/client.js", Access::Public, assets::client_js),
        route(Method::GET, "/dashboard", Access::Public, assets::dashboard),
        route(Method::GET, "/dashboard/app.js", Access::Public, assets::dashboard_js),
        route(Method::GET, "/dashboard/cancel.js", Access::Public, assets::dashboard_cancel_js),
        route(Method::GET, "/dashboard/app.css", Access::Public, assets::dashboard_css),
        route(Method::GET, "/progress", Access::List, list::list),
        Route {
            method: Method::GET,
            path: RECORD_PATH,
            access: Access::Read,
            gzip: Gzip::Handler,
            serve: Serve::RecordGet,
        },
        route(Method::GET, "/progress/{id}/events", Access::Read, events::events).gzipped_by_handler(),
        route(Method::PUT, RECORD_PATH, Access::Write, progress::put).gzipped_by_handler(),
        route(Method::PATCH, RECORD_PATH, Access::Write, progress::patch).gzipped_by_handler(),
        route(Method::DELETE, RECORD_PATH, Access::Write, progress::delete).gzipped_by_handler(),
        route(Method::POST, "/progress/{id}/cancel", Access::Cancel, cancel::cancel).gzipped_by_handler(),
        route(Method::POST, "/admin/cleanup", Access::Admin, admin::cleanup),
        route(Method::DELETE, "/admin/progress", Access::Admin, admin::delete_progress),
        route(Method::GET, "/admin/stats", Access::Admin, admin::stats),
        route(Method::GET, "/admin/webhooks", Access::Admin, webhooks::list),
        route(Method::POST, "/admin/webhooks/{id}/retry", Access::Admin, webhooks::retry),
        route(Method::POST, "/tokens", Access::Write, tokens::mint),
        route(Method::GET, "/access", Access::Public, access::access),
    ]
}

/// The application with all its layers. Every route has the whole stack
/// around its handler; from the outside in: the edge (`edge.rs`: CORS, so
/// preflights are answered before anything else and every answer, 401s,
/// 404s and timeouts included, carries the CORS headers; the metrics; the
/// request id; the request span; the timeout; panics made 500s), then the
/// compression layer for the routes whose handlers do not gzip their own
/// bodies, and the token check of the route's access class. The fallbacks (404, and 405
/// for a path whose method has no route) have the same stack without the
/// last two, the 405s labelled with their path in the metrics, the 404s
/// `unmatched`.
///
/// The stack wraps each handler itself, as one service built once per route
/// (`RouteLayers::service`), not the router or the route (`Router::layer`,
/// `route_layer`): axum boxes a route's service once for each of those and
/// clones and calls through every box on every request (issue 23). The
/// fallbacks, which are handlers, wrap theirs with `Handler::layer`. Each
/// route's edge knows its metrics label, so no request looks its path up.
pub fn router(state: AppState) -> App {
    let table = routes();
    let outer = edge::EdgeLayer {
        cors: cors::cors(&state.layers.cors_origins),
        metrics: crate::metrics::RouteMetrics::new(table.iter().map(|r| r.path)),
        timeout: state.layers.request_timeout,
    };
    // One method router per path (GET, PUT, PATCH and DELETE share
    // `/progress/{id}`), each with its 405 answer behind the stack
    // labelled with its path.
    let mut paths: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    let mut ahead = Ahead::default();
    for r in table {
        let layers = RouteLayers {
            edge: edge::EdgeLayer { metrics: outer.metrics.for_route(r.path), ..outer.clone() },
            gzip: r.gzip == Gzip::Layer,
            guard: auth::guard(r.access, &state.tokens),
        };
        let service = match r.serve {
            Serve::Handler(service) => service(layers, state.clone()),
            Serve::RecordGet => {
                let get = RecordGet { layers, get: progress::GetRecord(state.clone()) };
                ahead.get = Some(get.clone());
                RouteService::new(get)
            }
        };
        if r.path == RECORD_PATH {
            ahead.record.push((r.method.clone(), service.clone()));
        } else if !r.path.contains('{') {
            ahead.exact.push((r.method.clone(), r.path, service.clone()));
        }
        let filter = MethodFilter::try_from(r.method).expect("standard methods have filters");
        let methods = MethodRouter::new().on_service(filter, service);
        match paths.iter_mut().find(|(path, _)| *path == r.path) {
            Some((_, known)) => *known = std::mem::replace(known, MethodRouter::new()).merge(methods),
            None => paths.push((r.path, methods)),
        }
    }
    let router = paths.into_iter().fold(Router::new(), |router, (path, methods)| {
        let edge = edge::EdgeLayer { metrics: outer.metrics.for_route(path), ..outer.clone() };
        router.route(path, methods.fallback(edge.around(method_not_allowed)))
    });
    App { router: router.fallback(outer.around(not_found)).with_state(state), ahead: Arc::new(ahead) }
}

/// The path of a record: its `GET` is the most requested route (every UI
/// polls it), its `PUT` and `PATCH` the writes of every worker.
const RECORD_PATH: &str = "/progress/{id}";

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
    router: Router,
    ahead: Arc<Ahead>,
}

/// The routes [`App`] calls ahead of axum's router: every route of the
/// table whose path is `/progress/{id}` or has no parameter.
#[derive(Default)]
struct Ahead {
    /// `GET /progress/{id}`, unboxed and called by reference.
    get: Option<RecordGet>,
    /// The methods of `/progress/{id}` (GET, PUT, PATCH, DELETE).
    record: Vec<(Method, RouteService)>,
    /// The routes whose paths have no parameter, by method and path.
    exact: Vec<(Method, &'static str, RouteService)>,
}

impl Ahead {
    /// The route of `method` on `path`, if it is called ahead of the router.
    fn find(&self, method: &Method, path: &str) -> Option<&RouteService> {
        if extract::is_record_path(path) {
            self.record.iter().find(|(m, _)| m == method).map(|(_, route)| route)
        } else {
            self.exact.iter().find(|(m, p, _)| *p == path && m == method).map(|(_, _, route)| route)
        }
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
        let path = request.uri().path();
        if request.method() == Method::GET
            && let Some(get) = &self.ahead.get
            && extract::is_record_path(path)
        {
            return AppFuture::RecordGet { inner: get.answer(request.map(axum::body::Body::new)) };
        }
        // A handler service is always ready; each call clones its handler, as axum's router does.
        match self.ahead.find(request.method(), path).cloned() {
            Some(mut route) => AppFuture::Ahead { inner: route.call(request.map(axum::body::Body::new)) },
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

impl edge::EdgeLayer {
    /// A fallback `handler` behind the edge alone.
    fn around<H, T>(&self, handler: H) -> impl Handler<T, AppState> + use<H, T>
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        handler.layer(self.clone())
    }
}

/// The layers of one route: the edge (its metrics labelled with the
/// route), then its compression and token check.
#[derive(Clone)]
struct RouteLayers {
    edge: edge::EdgeLayer,
    gzip: bool,
    guard: Option<auth::GuardLayer>,
}

impl RouteLayers {
    /// `handler` with `state` behind these layers: one service, built once
    /// and cloned for each request. (`Handler::layer` would build the
    /// layers' services anew for every request, inside a handler service
    /// of its own, and call them through `oneshot`: 600 to 850 instructions
    /// of every request, callgrind, issue 23.)
    fn service<H, T>(self, handler: H, state: AppState) -> RouteService
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let inner = ServiceBuilder::new()
            .option_layer(self.gzip.then(|| {
                ServiceBuilder::new()
                    .layer(tower::util::MapResponseLayer::new(IntoResponse::into_response))
                    .layer(layers::compression())
            }))
            .option_layer(self.guard)
            .service(handler.with_state(state));
        RouteService::new(self.edge.layer(inner))
    }
}

/// `GET /progress/{id}` ([`progress::GetRecord`]) behind its layers (the
/// edge, the token check; it gzips its own answers), as one service of
/// types known here rather than a boxed [`RouteService`]: [`App`] calls it
/// by reference, with no clone of the service, no box for the service or
/// its future, and no call through either (issue 23). The router's route
/// for it (`HEAD`) is the same, boxed.
#[derive(Clone)]
struct RecordGet {
    layers: RouteLayers,
    get: progress::GetRecord,
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

/// `GET /healthz`: 200 while the process runs. Built as it is sent: a
/// `&str`'s `into_response` would set a `text/plain` type first (issue 23).
async fn healthz() -> Response {
    let mut response = Response::new(axum::body::Body::from(r#"{"status":"ok"}"#));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /metrics`: the store sets its gauges, then every metric is rendered.
async fn metrics(State(state): State<AppState>) -> Response {
    state.service.report_metrics();
    let body = crate::metrics::render();
    ([(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::TEXT_FORMAT))], body).into_response()
}

async fn not_found(uri: Uri) -> Error {
    Error::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method) -> Response {
    let mut response = Error::MethodNotAllowed(method.to_string()).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
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
        let mut paths: Vec<&str> = super::routes().iter().map(|r| r.path).filter(|p| !p.contains('{')).collect();
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
