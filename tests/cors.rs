//! SPEC §2 CORS, and the other layers every response passes through:
//! browsers on another origin can poll and write, every response carries
//! a request id, records are gzip-compressed on request.

mod common;

use std::io::Read;

use common::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALLOWED: &str = "https://dashboard.example";
const OTHER: &str = "https://evil.example";

async fn with_origins(origins: &[&str]) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
    spawn_app_with(Backend::Memory, |s| s.cors_origins = origins).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The comma-separated values of a header, lower-cased.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    header(headers, name)
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.send(
        Method::OPTIONS,
        "/progress/job-1",
        None,
        &[
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "if-match,content-type"),
        ],
    )
    .await
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_allowed() {
    let app = with_origins(&[ALLOWED, "http://localhost:3000"]).await;
    let res = preflight(&app, ALLOWED).await;
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(ALLOWED));
    let methods = list(h, "access-control-allow-methods");
    for m in ["get", "post", "put", "patch", "delete", "options"] {
        assert!(methods.contains(&m.to_owned()), "{m} in {methods:?}");
    }
    let headers = list(h, "access-control-allow-headers");
    for name in ["content-type", "authorization", "if-match", "if-none-match", "last-event-id"] {
        assert!(headers.contains(&name.to_owned()), "{name} in {headers:?}");
    }
    assert_eq!(header(h, "access-control-max-age"), Some("3600"));
    assert!(list(h, "vary").contains(&"origin".to_owned()), "caches keep origins apart");
    assert!(header(h, "access-control-allow-credentials").is_none(), "tokens travel in a header, not cookies");

    let res = preflight(&app, "http://localhost:3000").await;
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some("http://localhost:3000"));
}

#[tokio::test]
async fn a_preflight_needs_no_token() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.cors_origins = vec![ALLOWED.into()];
        s.write_tokens = vec!["w".into()];
        s.read_tokens = vec!["r".into()];
    })
    .await;
    let res = preflight(&app, ALLOWED).await;
    assert!(res.status().is_success(), "browsers send no Authorization on a preflight: {}", res.status());
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some(ALLOWED));
    // The 401 of the real request is readable by the page too.
    let res = app.send(Method::PATCH, "/progress/job-1", Some(&json!({})), &[("origin", ALLOWED)]).await;
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some(ALLOWED));
    assert_problem(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_get_from_an_allowed_origin_exposes_the_etag() {
    let app = with_origins(&[ALLOWED]).await;
    app.put_ok("job-1", &json!({"status": "running"})).await;
    let res = app.send(Method::GET, "/progress/job-1", None, &[("origin", ALLOWED)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(ALLOWED));
    let exposed = list(h, "access-control-expose-headers");
    for name in ["etag", "location", "retry-after", "x-request-id"] {
        assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
    }
    assert_eq!(header(h, "etag"), Some("\"1\""));

    // Errors are readable from the page as well.
    let res = app.send(Method::GET, "/progress/missing", None, &[("origin", ALLOWED)]).await;
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some(ALLOWED));
    assert_problem(res, 404, "not_found").await;
}

#[tokio::test]
async fn another_origin_gets_no_allow_origin() {
    let app = with_origins(&[ALLOWED]).await;
    let res = preflight(&app, OTHER).await;
    assert!(header(res.headers(), "access-control-allow-origin").is_none());
    let res = app.send(Method::GET, "/healthz", None, &[("origin", OTHER)]).await;
    assert_eq!(res.status(), StatusCode::OK, "the server answers; the browser hides it from the page");
    assert!(header(res.headers(), "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_star_allows_any_origin() {
    let app = with_origins(&["*"]).await;
    let res = preflight(&app, OTHER).await;
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some("*"));
    let res = app.send(Method::GET, "/healthz", None, &[("origin", ALLOWED)]).await;
    assert_eq!(header(res.headers(), "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn without_origins_there_are_no_cors_headers() {
    let app = spawn_app(Backend::Memory).await;
    let res = app.send(Method::GET, "/healthz", None, &[("origin", ALLOWED)]).await;
    assert!(header(res.headers(), "access-control-allow-origin").is_none());
    let res = preflight(&app, ALLOWED).await;
    assert!(header(res.headers(), "access-control-allow-origin").is_none());
}

// ---------------------------------------------------------------------------
// Request ids

#[tokio::test]
async fn a_request_id_is_generated_when_absent() {
    let app = spawn_app(Backend::Memory).await;
    let mut seen = Vec::new();
    for path in ["/healthz", "/healthz", "/progress/missing", "/nowhere"] {
        let res = app.send(Method::GET, path, None, &[]).await;
        let id = header(res.headers(), "x-request-id").unwrap_or_else(|| panic!("{path} has x-request-id")).to_owned();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "a UUID: {id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{id}");
        assert!(!seen.contains(&id), "a new id per request");
        seen.push(id);
    }
}

#[tokio::test]
async fn a_request_id_is_echoed_when_present() {
    let app = spawn_app_with(Backend::Memory, |s| s.write_tokens = vec!["w".into()]).await;
    let res = app.send(Method::GET, "/healthz", None, &[("x-request-id", "trace-42")]).await;
    assert_eq!(header(res.headers(), "x-request-id"), Some("trace-42"));
    let res = app.send(Method::PUT, "/progress/x", Some(&json!({})), &[("x-request-id", "trace-43")]).await;
    assert_eq!(header(res.headers(), "x-request-id"), Some("trace-43"), "error answers carry it too");
    assert_problem(res, 401, "unauthorized").await;
}

// ---------------------------------------------------------------------------
// Compression

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text).expect("a gzip body");
    text
}

#[tokio::test]
async fn a_record_is_gzipped_on_request() {
    let app = spawn_app(Backend::Memory).await;
    let record = app.put_ok("big", &json!({"status": "pending", "message": "m".repeat(500)})).await;

    let plain = app.send(Method::GET, "/progress/big", None, &[]).await;
    assert!(header(plain.headers(), "content-encoding").is_none(), "no Accept-Encoding, no compression");
    let plain_body: Value = plain.json().await.unwrap();
    assert_eq!(plain_body, record);

    let res = app.send(Method::GET, "/progress/big", None, &[("accept-encoding", "gzip")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "content-encoding"), Some("gzip"));
    assert!(list(res.headers(), "vary").contains(&"accept-encoding".to_owned()));
    assert_eq!(header(res.headers(), "etag"), Some("\"1\""), "the ETag stays the version");
    let bytes = res.bytes().await.unwrap();
    assert!(bytes.len() < 500, "compressed: {} bytes", bytes.len());
    let decoded: Value = serde_json::from_str(&gunzip(&bytes)).unwrap();
    assert_eq!(decoded, record);
}

/// A gzipped record response: whole, with its length (not chunked), and
/// what it decodes to.
async fn gzipped_record(res: reqwest::Response) -> Value {
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(header(res.headers(), "content-encoding"), Some("gzip"));
    assert!(list(res.headers(), "vary").contains(&"accept-encoding".to_owned()));
    assert!(header(res.headers(), "transfer-encoding").is_none(), "sent whole");
    let length: usize = header(res.headers(), "content-length").expect("a length").parse().unwrap();
    let bytes = res.bytes().await.unwrap();
    assert_eq!(bytes.len(), length);
    serde_json::from_str(&gunzip(&bytes)).unwrap()
}

#[tokio::test]
async fn every_record_answer_is_gzipped_on_request_on_both_stores() {
    for backend in [Backend::Memory, Backend::Redis] {
        let app = spawn_app(backend).await;
        let gzip = [("accept-encoding", "gzip, deflate, br")];
        let body = json!({"status": "running", "message": "m".repeat(500)});
        let created = gzipped_record(app.send(Method::PUT, "/progress/big", Some(&body), &gzip).await).await;
        assert_eq!((created["version"].clone(), created["message"].clone()), (json!(1), body["message"].clone()));
        // Twice: on Redis the second comes from the read cache, with the
        // body compressed by the first.
        for _ in 0..2 {
            let read = gzipped_record(app.send(Method::GET, "/progress/big", None, &gzip).await).await;
            assert_eq!(read["version"], json!(1));
            assert_eq!(read["message"], body["message"]);
        }
        let patched =
            gzipped_record(app.send(Method::PATCH, "/progress/big", Some(&json!({"current": 3})), &gzip).await).await;
        assert_eq!((patched["version"].clone(), patched["current"].clone()), (json!(2), json!(3)));
        let read = gzipped_record(app.send(Method::GET, "/progress/big", None, &gzip).await).await;
        assert_eq!(read, patched, "the read after the write gets the written version");
        // A 304 names what the 200 varies on (RFC 9110 §15.4.5).
        let res = app.send(Method::GET, "/progress/big", None, &[gzip[0], ("if-none-match", "\"2\"")]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(res.headers(), "etag"), Some("\"2\""));
        assert!(list(res.headers(), "vary").contains(&"accept-encoding".to_owned()));
        assert!(header(res.headers(), "content-encoding").is_none());

        // gzip refused, or not asked for: the plain JSON, with its length.
        for refused in [&[("accept-encoding", "gzip;q=0, br")][..], &[("accept-encoding", "identity")], &[]] {
            let res = app.send(Method::GET, "/progress/big", None, refused).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert!(header(res.headers(), "content-encoding").is_none(), "{refused:?}");
            assert!(list(res.headers(), "vary").contains(&"accept-encoding".to_owned()));
            let length = header(res.headers(), "content-length").map(str::to_owned);
            let text = res.text().await.unwrap();
            assert_eq!(length, Some(text.len().to_string()));
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), patched);
        }
    }
}

#[tokio::test]
async fn small_responses_are_not_compressed() {
    let app = spawn_app(Backend::Memory).await;
    let res = app.send(Method::GET, "/healthz", None, &[("accept-encoding", "gzip")]).await;
    assert!(header(res.headers(), "content-encoding").is_none(), "{{\"status\":\"ok\"}} is too small to gain");
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok"}"#);
}
