//! The per-address rate limit of requests without a token
//! (`PROGRESS_ADDRESS_RATE_PER_SECOND`, `PROGRESS_ADDRESS_RATE_BURST`,
//! `PROGRESS_TRUSTED_PROXIES`), over HTTP against the real server: off by
//! default, 429 with `Retry-After` past the burst, `X-Forwarded-For`
//! believed only from a trusted proxy, static tokens exempt, an event
//! stream counted once.

mod common;

use std::time::Duration;

use common::sse::EventStream;
use common::{Backend, TestApp, assert_problem, spawn_app_with};
use reqwest::{Method, Response, StatusCode};
use serde_json::json;

/// A server whose clients get `burst` requests at once and one a second.
async fn limited(burst: u32, trusted: &[&str], tweak: impl FnOnce(&mut progressd::Settings)) -> TestApp {
    spawn_app_with(Backend::Memory, |s| {
        s.address_rate_per_second = 1;
        s.address_rate_burst = burst;
        s.trusted_proxies = trusted.iter().map(|t| progressd::http::parse_network(t).unwrap()).collect();
        tweak(s);
    })
    .await
}

async fn get(app: &TestApp, headers: &[(&str, &str)]) -> Response {
    app.send(Method::GET, "/progress/job-1", None, headers).await
}

/// Asserts a 429 `rate_limited` for the client address, with `Retry-After`.
async fn assert_limited(res: Response) {
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .expect("a 429 says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let doc = assert_problem(res, 429, "rate_limited").await;
    assert!(doc["detail"].as_str().unwrap().contains("your address"), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let app = spawn_app_with(Backend::Memory, |_| {}).await;
    assert_eq!(app.settings.address_rate_per_second, 0, "the default is off");
    for n in 0..300 {
        let status = get(&app, &[]).await.status();
        assert_eq!(status, StatusCode::NOT_FOUND, "request {n}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_429_and_a_spoofed_header_changes_nothing() {
    let app = limited(5, &[], |_| {}).await;
    for n in 0..5 {
        assert_eq!(get(&app, &[]).await.status(), StatusCode::NOT_FOUND, "request {n} of the burst");
    }
    assert_limited(get(&app, &[]).await).await;
    // 127.0.0.1 is no trusted proxy: its X-Forwarded-For is ignored.
    assert_limited(get(&app, &[("x-forwarded-for", "203.0.113.9")]).await).await;
    // Writes without a token count too; public routes do not.
    let put = app.put("job-1", &json!({"status": "running"})).await;
    assert_limited(put).await;
    for path in ["/healthz", "/readyz", "/metrics", "/client.js"] {
        let status = app.send(Method::GET, path, None, &[]).await.status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // The allowance refills at one a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&app, &[]).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_have_their_own_budgets() {
    let app = limited(3, &["127.0.0.1"], |_| {}).await;
    let first = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")];
    for _ in 0..3 {
        assert_eq!(get(&app, &first).await.status(), StatusCode::NOT_FOUND);
    }
    assert_limited(get(&app, &first).await).await;
    // What the client wrote left of its address is not believed.
    assert_limited(get(&app, &[("x-forwarded-for", "198.51.100.2, 203.0.113.7")]).await).await;
    // Another client of the proxy, and the proxy itself, are unaffected.
    assert_eq!(get(&app, &[("x-forwarded-for", "203.0.113.8")]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&app, &[("x-forwarded-for", "2001:db8::8")]).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&app, &[]).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_token_requests_are_exempt() {
    let app = limited(2, &[], |s| s.write_tokens = vec!["backend-token".into()]).await;
    let token = [("authorization", "Bearer backend-token")];
    for n in 0..30 {
        let res = app.send(Method::PUT, "/progress/job-1", Some(&json!({"status": "running"})), &token).await;
        assert!(res.status().is_success(), "PUT {n}: {}", res.status());
        // Reads are open (no read tokens), and the backend's token still exempts them.
        assert_eq!(get(&app, &token).await.status(), StatusCode::OK, "GET {n}");
    }
    for _ in 0..2 {
        assert_eq!(get(&app, &[]).await.status(), StatusCode::OK);
    }
    assert_limited(get(&app, &[]).await).await;
    // A wrong token vouches for nothing.
    assert_limited(get(&app, &[("authorization", "Bearer guess")]).await).await;
    let put = app.send(Method::PUT, "/progress/job-1", Some(&json!({"status": "running"})), &token).await;
    assert!(put.status().is_success(), "the backend is still served: {}", put.status());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_counts_once() {
    let app = limited(2, &[], |s| s.write_tokens = vec!["backend-token".into()]).await;
    let token = [("authorization", "Bearer backend-token")];
    let app = &app;
    let write = |version: u64| {
        let body = json!({"status": "running", "current": version, "total": 10});
        async move { app.send(Method::PUT, "/progress/job-1", Some(&body), &token).await }
    };
    assert!(write(1).await.status().is_success());
    let (status, stream) = EventStream::open(&app.client, &app.url("/progress/job-1/events"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    stream.expect_event(Duration::from_secs(5)).await;
    for n in 2..6 {
        assert!(write(n).await.status().is_success());
        stream.expect_event(Duration::from_secs(5)).await;
    }
    // The stream took one request of the burst of two, whatever it carried.
    assert_eq!(get(app, &[]).await.status(), StatusCode::OK);
    assert_limited(get(app, &[]).await).await;
    drop(stream);
}
