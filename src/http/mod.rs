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
use tower::{Layer, ServiceBuilder};

use crate::error::Error;
use crate::service::ProgressService;

mod access;
mod address;
mod admin;
mod assets;
mod auth;
mod cancel;
mod cors;
mod dispatch;
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
use dispatch::{Ahead, RecordGet};
pub use dispatch::{App, AppFuture};
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
            Serve::Handler(service) => {
                let service = service(layers, state.clone());
                if r.path == RECORD_PATH {
                    ahead.record.push((r.method.clone(), service.clone()));
                } else if !r.path.contains('{') {
                    ahead.exact.push((r.method.clone(), r.path, service.clone()));
                }
                service
            }
            // Called ahead unboxed, as `ahead.get`; the router's route for
            // it (`HEAD`) is the same service, boxed.
            Serve::RecordGet => {
                let get = RecordGet { layers, get: progress::GetRecord(state.clone()) };
                ahead.get = Some(get.clone());
                RouteService::new(get)
            }
        };
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

/// `GET /healthz`: 200 while the process runs. Built as it is sent: a
/// `&str`'s `into_response` would set a `text/plain` type first (issue 23).
/// (Taking the request, to write into its map as a record's GET does,
/// made axum's boxed future of this handler larger: 430 instructions more,
/// not fewer.)
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
