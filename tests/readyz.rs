//! `GET /readyz` in every state of its dependencies: each one's state,
//! probe latency, last error and breaker; `ok` / `degraded` (200) /
//! `unavailable` (503 with `Retry-After`). Tests that take a dependency
//! away use their own `redis-server`, or a proxy in front of PostgreSQL.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use common::postgres::{TestDatabase, free_port};
use common::proxy::{Mode, Proxy};
use common::redis_server::OwnRedis;
use common::{Backend, TestApp, spawn_app, spawn_app_with};
use progressd::Settings;
use progressd::store::{Health, PostgresStore, PostgresStoreConfig, TierState};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Short timeouts so that a dead dependency is reported within a second.
fn quick(s: &mut Settings) {
    s.redis_timeout_ms = 300;
    s.database_timeout_ms = 500;
    s.breaker_probe_ms = 100;
    s.persist_interval_seconds = 1;
}

/// The status code, `Retry-After`, and the document.
async fn readyz(app: &TestApp) -> (StatusCode, Option<String>, Value) {
    let res = get_path(app, "/readyz").await;
    let status = res.status();
    assert_eq!(res.headers()["content-type"], "application/json");
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    (status, retry_after, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// Polls `/readyz` until `status` is `want` (dependencies change state as
/// probes and breakers notice); returns the last answer.
async fn readyz_until(app: &TestApp, want: &str) -> (StatusCode, Option<String>, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = readyz(app).await;
        if answer.2["status"] == want {
            return answer;
        }
        assert!(Instant::now() < deadline, "readyz never said {want}; last: {:#}", answer.2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the members every dependency has, and its state.
fn assert_dependency(doc: &Value, name: &str, state: &str) {
    let dep = &doc["dependencies"][name];
    assert_eq!(dep["state"], state, "{name}: {doc:#}");
    for member in ["state", "latency_ms", "last_error", "last_error_at", "breaker"] {
        assert!(dep.get(member).is_some(), "{name} has {member}: {doc:#}");
    }
    match state {
        "not_configured" => assert!(dep["latency_ms"].is_null() && dep["breaker"].is_null(), "{doc:#}"),
        _ => assert!(dep["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{name} latency: {doc:#}"),
    }
    if state == "down" {
        assert!(dep["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{name} says why: {doc:#}");
        assert!(dep["last_error_at"].is_string(), "{doc:#}");
    }
}

/// The host:port of a URL's authority.
fn addr_of(url: &str) -> SocketAddr {
    let rest = &url[url.find("://").unwrap() + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap();
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

/// `url` pointing at `addr` instead (and with `userinfo`, when given).
fn url_via(url: &str, addr: SocketAddr, userinfo: Option<&str>) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let user = userinfo.map(str::to_owned).unwrap_or_else(|| {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        authority.rsplit_once('@').map(|(u, _)| u.to_owned()).unwrap_or_default()
    });
    let at = if user.is_empty() { "" } else { "@" };
    format!("{}{user}{at}{addr}{path}", &url[..scheme_end])
}

async fn get_path(app: &TestApp, path: &str) -> reqwest::Response {
    app.send(reqwest::Method::GET, path, None, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_is_ok() {
    let app = spawn_app(Backend::Memory).await;
    let res = get_path(&app, "/readyz").await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let (status, retry_after, doc) = readyz(&app).await;
    assert_eq!((status, retry_after), (StatusCode::OK, None));
    assert_eq!(doc["status"], "ok");
    assert!(doc["checked_at"].is_string());
    assert_dependency(&doc, "memory", "up");
    assert_dependency(&doc, "redis", "not_configured");
    assert_dependency(&doc, "postgres", "not_configured");
    assert!(doc["dependencies"]["memory"]["breaker"].is_null());
    // Liveness stays trivial.
    assert_eq!(get_path(&app, "/healthz").await.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_up_then_down() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |s| {
        quick(s);
        s.redis_url = Some(url);
    })
    .await;
    let (status, _, doc) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK, "{doc:#}");
    assert_eq!(doc["status"], "ok");
    assert_dependency(&doc, "redis", "up");
    assert_dependency(&doc, "memory", "not_configured");
    assert_dependency(&doc, "postgres", "not_configured");
    assert!(doc["dependencies"]["redis"]["breaker"].is_null(), "Redis alone has no breaker");
    assert!(doc["dependencies"]["redis"]["last_error"].is_null());

    redis.stop();
    let (status, retry_after, doc) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc:#}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(doc["status"], "unavailable");
    assert_dependency(&doc, "redis", "down");

    redis.start_again();
    let (status, _, doc) = readyz_until(&app, "ok").await;
    assert_eq!(status, StatusCode::OK);
    assert_dependency(&doc, "redis", "up");
    assert!(doc["dependencies"]["redis"]["last_error"].is_string(), "the last error is remembered: {doc:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_in_every_combination_of_up_and_down() {
    let mut redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let proxy = Proxy::start(addr_of(db.url())).await;
    let (redis_url, db_url) = (redis.url(), url_via(db.url(), proxy.addr(), None));
    let app = spawn_app_with(Backend::Redis, move |s| {
        quick(s);
        s.redis_url = Some(redis_url);
        s.database_url = Some(db_url);
    })
    .await;

    // Both up (once the migrations have run).
    let (status, _, doc) = readyz_until(&app, "ok").await;
    assert_eq!(status, StatusCode::OK);
    assert_dependency(&doc, "redis", "up");
    assert_dependency(&doc, "postgres", "up");
    assert_dependency(&doc, "memory", "not_configured");
    for tier in ["redis", "postgres"] {
        let breaker = &doc["dependencies"][tier]["breaker"];
        assert!(["closed", "half_open"].contains(&breaker.as_str().unwrap()), "{tier}: {doc:#}");
    }

    // PostgreSQL down: Redis serves.
    proxy.set_mode(Mode::Reset).await;
    let (status, retry_after, doc) = readyz(&app).await;
    assert_eq!((status, retry_after), (StatusCode::OK, None), "{doc:#}");
    assert_eq!(doc["status"], "degraded");
    assert_dependency(&doc, "redis", "up");
    assert_dependency(&doc, "postgres", "down");
    assert!(app.put("during-pg-outage", &json!({"status": "running"})).await.status().is_success());

    // Both down.
    redis.stop();
    let (status, retry_after, doc) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc:#}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(doc["status"], "unavailable");
    assert_dependency(&doc, "redis", "down");
    assert_dependency(&doc, "postgres", "down");

    // Redis down: PostgreSQL serves.
    proxy.set_mode(Mode::Forward).await;
    let (status, _, doc) = readyz_until(&app, "degraded").await;
    assert_eq!(status, StatusCode::OK, "{doc:#}");
    assert_dependency(&doc, "redis", "down");
    assert_dependency(&doc, "postgres", "up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.put("during-redis-outage", &json!({})).await.status().is_success() {
        assert!(Instant::now() < deadline, "writes go to PostgreSQL while Redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, doc) = readyz(&app).await;
    assert_eq!(doc["dependencies"]["redis"]["breaker"], "open", "requests opened Redis's breaker: {doc:#}");

    // Back to both up.
    redis.start_again();
    readyz_until(&app, "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_down_is_unavailable() {
    let db = TestDatabase::create().await;
    let proxy = Proxy::start(addr_of(db.url())).await;
    let db_url = url_via(db.url(), proxy.addr(), None);
    let app = spawn_app_with(Backend::Memory, move |s| {
        quick(s);
        s.database_url = Some(db_url);
    })
    .await;
    let (status, _, doc) = readyz_until(&app, "ok").await;
    assert_eq!(status, StatusCode::OK);
    assert_dependency(&doc, "postgres", "up");
    assert_dependency(&doc, "redis", "not_configured");
    assert_dependency(&doc, "memory", "not_configured");

    proxy.set_mode(Mode::Reset).await;
    let (status, retry_after, doc) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc:#}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(doc["status"], "unavailable");
    assert_dependency(&doc, "postgres", "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_its_migrations_is_down_with_that_reason() {
    let db = TestDatabase::create().await;
    let store = PostgresStore::new(PostgresStoreConfig {
        url: db.url().to_owned(),
        pool_size: 2,
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let health = store.health().await;
    assert_eq!(health.len(), 1);
    assert_eq!((health[0].tier, health[0].state), ("postgres", TierState::Down));
    let (_, reason) = health[0].last_error.clone().expect("a reason");
    assert!(reason.contains("migrations have not run"), "{reason}");

    store.migrate().await.unwrap();
    let health = store.health().await;
    assert_eq!(health[0].state, TierState::Up, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_appears_in_the_report() {
    let db = TestDatabase::create().await;
    // Nothing listens for Redis; PostgreSQL trusts and ignores the password.
    let redis_url = format!("redis://default:hunter2-redis@127.0.0.1:{}", free_port());
    let db_url = url_via(db.url(), addr_of(db.url()), Some("postgres:pg-secret-77"));
    let app = spawn_app_with(Backend::Redis, move |s| {
        quick(s);
        s.redis_url = Some(redis_url);
        s.database_url = Some(db_url);
    })
    .await;
    let (status, _, doc) = readyz_until(&app, "degraded").await;
    assert_eq!(status, StatusCode::OK);
    assert_dependency(&doc, "redis", "down");
    assert_dependency(&doc, "postgres", "up");
    let text = doc.to_string();
    for secret in ["hunter2-redis", "pg-secret-77"] {
        assert!(!text.contains(secret), "{secret} leaked: {doc:#}");
    }

    // PostgreSQL alone, nothing listening: still no password.
    let port = free_port();
    let app = spawn_app_with(Backend::Memory, move |s| {
        quick(s);
        s.database_url = Some(format!("postgres://postgres:pg-secret-77@127.0.0.1:{port}/nothing"));
    })
    .await;
    let (status, _, doc) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_dependency(&doc, "postgres", "down");
    assert!(!doc.to_string().contains("pg-secret-77"), "{doc:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dependency_costs_the_probe_its_timeout_and_no_more() {
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let url = format!("redis://{}", proxy.addr());
    let app = spawn_app_with(Backend::Redis, move |s| {
        quick(s);
        s.redis_url = Some(url);
    })
    .await;
    assert_eq!(readyz(&app).await.0, StatusCode::OK);
    proxy.set_mode(Mode::Blackhole).await;
    let started = Instant::now();
    let (status, _, doc) = readyz(&app).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc:#}");
    assert_dependency(&doc, "redis", "down");
    assert!(took < Duration::from_millis(1_500), "the probe is bounded by the 300 ms timeout: {took:?}");
    let latency = doc["dependencies"]["redis"]["latency_ms"].as_f64().unwrap();
    assert!((250.0..1_500.0).contains(&latency), "latency is the time the probe took: {latency}");
    assert!(doc["dependencies"]["redis"]["last_error"].as_str().unwrap().contains("no answer"), "{doc:#}");
}
