//! The limit for `bench/bare.sh` (issue 23): a bare axum route that returns a
//! static 400-byte JSON body, with the same axum, hyper and tokio versions as
//! progressd, axum's default features, the same allocator and the same
//! release profile. No layers, no state, no store: what serving an HTTP/1.1
//! request costs on this machine before progressd does anything.
//!
//! ```text
//! cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml --target-dir target
//! PORT=18080 target/release/bare_axum
//! ```
//!
//! `GET /` (and any other path) answers `200 application/json` with
//! [`BODY`]; it listens on 127.0.0.1:`PORT` (default 8081). With
//! `BODY_FILE` set, `GET /file` answers the same with that file's bytes,
//! read once at start-up (`bench/bare.sh` gives it a record as progressd's
//! GET answers it, so a row can tell the size of the answer from the
//! work of giving it).

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 400 bytes of JSON, about the size of a small progress record.
const BODY: &str = concat!(
    r#"{"id":"bench-read","status":"running","current":240,"total":480,"#,
    r#""message":"Processed 240 of 480 segments","percent":50.0,"#,
    r#""created_at":"2026-12-06T12:00:00.000Z","updated_at":"2026-12-06T12:01:00.000Z","#,
    r#""eta":"2026-12-06T12:02:00.000Z","rate":4.0,"stalled":false,"#,
    r#""metadata":{"worker":"w-1","queue":"video","attempt":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#
);

async fn bare() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8081);
    let mut app = Router::new().route("/", axum::routing::get(bare));
    if let Some(path) = std::env::var_os("BODY_FILE") {
        let body = Bytes::from(std::fs::read(path)?);
        // Built by hand: sharing `bare`'s response types would change how
        // the compiler inlines `bare`, which is the limit (callgrind: 300
        // instructions a request more when it did).
        let file = move || {
            let body = body.clone();
            async move {
                let mut response = axum::response::Response::new(axum::body::Body::from(body));
                response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                response
            }
        };
        app = app.route("/file", axum::routing::get(file));
    }
    let app = app.fallback(bare);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
