//! SPEC §2 Auth: bearer tokens per route class (read, write, admin), the
//! 401 and 403 answers, and tokens never reaching the logs.

mod common;

use common::binary::{free_port, progressd, terminate, wait_ready};
use common::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};
use progressd::http::Access;
use reqwest::{Method, Response, StatusCode};
use serde_json::json;

const READ: &str = "read-token-1f0c";
const WRITE: &str = "write-token-9a7e";
const ADMIN: &str = "admin-token-44d2";

async fn secured() -> TestApp {
    spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec![READ.into(), "second-read-token".into()];
        s.write_tokens = vec![WRITE.into()];
        s.admin_token = Some(ADMIN.into());
    })
    .await
}

/// Sends `method path` with `Authorization: Bearer <token>` when a token is given.
async fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    let body = matches!(method, Method::PUT | Method::PATCH).then(|| json!({"status": "running"}));
    app.send(method, path, body.as_ref(), &headers).await
}

/// A 401 with the problem shape and the RFC 6750 challenge.
async fn assert_unauthorized(res: Response, token_sent: bool) {
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let doc = assert_problem(res, 401, "unauthorized").await;
    let expected =
        if token_sent { r#"Bearer realm="progressd", error="invalid_token""# } else { r#"Bearer realm="progressd""# };
    assert_eq!(challenge.as_deref(), Some(expected), "{doc}");
    let text = doc.to_string();
    for token in [READ, WRITE, ADMIN] {
        assert!(!text.contains(token), "a 401 never names a token: {text}");
    }
}

#[tokio::test]
async fn healthz_is_public() {
    let app = secured().await;
    for token in [None, Some("wrong")] {
        let res = call(&app, Method::GET, "/healthz", token).await;
        assert_eq!(res.status(), StatusCode::OK, "{token:?}");
    }
}

#[tokio::test]
async fn reads_need_a_read_write_or_admin_token() {
    let app = secured().await;
    assert_eq!(call(&app, Method::PUT, "/progress/r", Some(WRITE)).await.status(), StatusCode::CREATED);

    assert_unauthorized(call(&app, Method::GET, "/progress/r", None).await, false).await;
    assert_unauthorized(call(&app, Method::GET, "/progress/r", Some("wrong")).await, true).await;
    assert_unauthorized(call(&app, Method::GET, "/progress/r", Some(&READ[..READ.len() - 1])).await, true).await;
    for token in [READ, "second-read-token", WRITE, ADMIN] {
        let res = call(&app, Method::GET, "/progress/r", Some(token)).await;
        assert_eq!(res.status(), StatusCode::OK, "GET with {token}");
    }
    let res = app.client.head(app.url("/progress/r")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "HEAD is a read");
}

#[tokio::test]
async fn writes_need_a_write_or_admin_token() {
    let app = secured().await;
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        assert_unauthorized(call(&app, method.clone(), "/progress/w", None).await, false).await;
        assert_unauthorized(call(&app, method.clone(), "/progress/w", Some("wrong")).await, true).await;
        assert_unauthorized(call(&app, method.clone(), "/progress/w", Some(READ)).await, true).await;
    }
    assert_eq!(call(&app, Method::PUT, "/progress/w", Some(WRITE)).await.status(), StatusCode::CREATED);
    assert_eq!(call(&app, Method::PATCH, "/progress/w", Some(WRITE)).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::PUT, "/progress/w", Some(ADMIN)).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::PATCH, "/progress/w", Some(ADMIN)).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::DELETE, "/progress/w", Some(WRITE)).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(call(&app, Method::PUT, "/progress/w", Some(WRITE)).await.status(), StatusCode::CREATED);
    assert_eq!(call(&app, Method::DELETE, "/progress/w", Some(ADMIN)).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_token_check_comes_before_the_route_reads_the_request() {
    let app = secured().await;
    // A bad id and a bad body are not looked at without the right token.
    assert_unauthorized(call(&app, Method::GET, "/progress/a%20b", None).await, false).await;
    let res = app.send(Method::PUT, "/progress/x", Some(&json!({"bookId": 1})), &[]).await;
    assert_unauthorized(res, false).await;
    // The router's own answers need no token: unknown paths and methods.
    let res = call(&app, Method::GET, "/nowhere", None).await;
    assert_problem(res, 404, "not_found").await;
    let res = call(&app, Method::POST, "/progress/x", None).await;
    assert_problem(res, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn the_header_is_a_case_insensitive_bearer_scheme() {
    let app = secured().await;
    for (value, ok) in [
        (format!("bearer {READ}"), true),
        (format!("BEARER {READ}"), true),
        (format!("Basic {READ}"), false),
        (READ.to_owned(), false),
        ("Bearer".to_owned(), false),
    ] {
        let res = app.send(Method::GET, "/progress/none", None, &[("authorization", &value)]).await;
        if ok {
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{value}: accepted, and there is no such record");
        } else {
            assert_unauthorized(res, true).await;
        }
    }
}

#[tokio::test]
async fn write_tokens_alone_leave_reads_open() {
    let app = spawn_app_with(Backend::Memory, |s| s.write_tokens = vec![WRITE.into()]).await;
    assert_unauthorized(call(&app, Method::PUT, "/progress/o", None).await, false).await;
    assert_eq!(call(&app, Method::PUT, "/progress/o", Some(WRITE)).await.status(), StatusCode::CREATED);
    assert_eq!(call(&app, Method::GET, "/progress/o", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_no_tokens_reads_and_writes_are_open() {
    let app = spawn_app(Backend::Memory).await;
    assert_eq!(call(&app, Method::PUT, "/progress/o", None).await.status(), StatusCode::CREATED);
    assert_eq!(call(&app, Method::GET, "/progress/o", Some("anything")).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::DELETE, "/progress/o", None).await.status(), StatusCode::NO_CONTENT);
}

/// Each admin route of the table, with `{id}`-style segments filled in.
fn admin_routes() -> Vec<(Method, String)> {
    progressd::http::routes()
        .into_iter()
        .filter(|r| r.access == Access::Admin)
        .map(|r| {
            let path =
                r.path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
            (Method::from_bytes(r.method.as_str().as_bytes()).unwrap(), path)
        })
        .collect()
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let routes = admin_routes();
    assert!(!routes.is_empty(), "the route table has admin routes");
    let app = secured().await;
    for (method, path) in &routes {
        let what = format!("{method} {path}");
        assert_unauthorized(call(&app, method.clone(), path, None).await, false).await;
        assert_unauthorized(call(&app, method.clone(), path, Some("wrong")).await, true).await;
        assert_unauthorized(call(&app, method.clone(), path, Some(READ)).await, true).await;
        assert_unauthorized(call(&app, method.clone(), path, Some(WRITE)).await, true).await;
        // Past the token check; the route may still refuse its input (a bulk delete needs a filter).
        let res = call(&app, method.clone(), path, Some(ADMIN)).await;
        let status = res.status();
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status),
            "{what} with the admin token: {status}"
        );
    }
}

#[tokio::test]
async fn admin_routes_refuse_everything_without_an_admin_token() {
    let app = spawn_app_with(Backend::Memory, |s| s.write_tokens = vec![WRITE.into()]).await;
    for (method, path) in admin_routes() {
        for token in [None, Some(WRITE), Some("anything")] {
            let res = call(&app, method.clone(), &path, token).await;
            let doc = assert_problem(res, 403, "admin_disabled").await;
            assert!(doc["detail"].as_str().unwrap().contains("PROGRESS_ADMIN_TOKEN"), "{doc}");
        }
    }
}

#[test]
fn tokens_never_reach_the_logs() {
    let port = free_port();
    let child = progressd(&[
        ("PORT", &port.to_string()),
        ("RUST_LOG", "debug"),
        ("PROGRESS_READ_TOKENS", READ),
        ("PROGRESS_WRITE_TOKENS", WRITE),
        ("PROGRESS_ADMIN_TOKEN", ADMIN),
    ])
    .spawn()
    .unwrap();
    wait_ready(port);
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let send = |method: reqwest::Method, path: &str, token: &str| {
        let mut req =
            client.request(method.clone(), url(path)).bearer_auth(token).header("x-request-id", "log-check-7");
        if method == reqwest::Method::PUT {
            req = req.header("content-type", "application/json").body("{}");
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(send(reqwest::Method::PUT, "/progress/logs", WRITE), 201);
    assert_eq!(send(reqwest::Method::PUT, "/progress/logs", "wrong-token-5b1d"), 401);
    assert_eq!(send(reqwest::Method::GET, "/progress/logs", READ), 200);
    assert_eq!(send(reqwest::Method::GET, "/progress/logs", "wrong-token-5b1d"), 401);
    for (method, path) in admin_routes() {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        send(method.clone(), &path, ADMIN);
        send(method, &path, "wrong-token-5b1d");
    }
    let (code, logs) = terminate(child);
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("log-check-7"), "request log lines carry the request id: {logs}");
    for token in [READ, WRITE, ADMIN, "wrong-token-5b1d"] {
        assert!(!logs.contains(token), "{token} is in the logs:\n{logs}");
    }
}
