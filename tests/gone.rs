//! Gone is not unknown (issue 19): a record that was deleted or expired
//! answers 410 `gone` (saying which, and when) for
//! `PROGRESS_TOMBSTONE_SECONDS`, an id never seen 404, on every setup:
//! memory, Redis, PostgreSQL alone, and Redis over PostgreSQL, where
//! PostgreSQL still answers 410 after Redis lost everything.

mod common;

use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::sse::{EventStream, Next};
use common::{Backend, TestApp, assert_problem, delete_keys, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(5);

/// Asserts a 410 saying `reason` (deleted or expired) with a time.
async fn assert_gone(app: &TestApp, method: Method, id: &str, body: Option<&Value>, reason: &str) -> Value {
    let res = app.send(method.clone(), &format!("/progress/{id}"), body, &[]).await;
    let doc = assert_problem(res, 410, "gone").await;
    let detail = doc["detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("progress record '{id}' was {reason} at 20")), "{method} {id}: {detail}");
    assert_eq!(doc["reason"], reason, "{doc}");
    assert!(doc["gone_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{doc}");
    doc
}

async fn deleted_is_410_never_existed_is_404_and_put_creates_again(app: &TestApp) {
    app.put_ok("job", &json!({"status": "running"})).await;
    let before = std::time::SystemTime::now();
    let res = app.send(Method::DELETE, "/progress/job", None, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let doc = assert_gone(app, Method::GET, "job", None, "deleted").await;
    let at = doc["gone_at"].as_str().unwrap().to_owned();
    let before =
        progressd::domain::Timestamp(before.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 1000);
    assert!(at >= before.to_rfc3339(), "deleted at {at}, after {}", before.to_rfc3339());
    // PATCH and DELETE of a gone record are 410 too; the tombstone keeps its time.
    assert_gone(app, Method::PATCH, "job", Some(&json!({"current": 1})), "deleted").await;
    let again = assert_gone(app, Method::DELETE, "job", None, "deleted").await;
    assert_eq!(again["gone_at"], at, "a second DELETE changes nothing");
    // Never existed: 404, for every method that reads.
    let res = app.send(Method::GET, "/progress/never", None, &[]).await;
    assert_problem(res, 404, "not_found").await;
    let res = app.send(Method::DELETE, "/progress/never", None, &[]).await;
    assert_problem(res, 404, "not_found").await;
    let res = app.send(Method::GET, "/progress/never", None, &[]).await;
    assert_problem(res, 404, "not_found").await;
    let res = app.patch("never", &json!({"current": 1})).await;
    assert_problem(res, 404, "not_found").await;
    // PUT creates a new incarnation: 201, then 200.
    let res = app.put("job", &json!({"status": "running"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let record = app.get_ok("job").await;
    assert_eq!(record["version"], 1);
}

async fn expired_is_410(app: &TestApp) {
    app.put_ok("short", &json!({"status": "running", "ttl_seconds": 1})).await;
    assert_eq!(app.get("short").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_gone(app, Method::GET, "short", None, "expired").await;
    assert_gone(app, Method::PATCH, "short", Some(&json!({"current": 1})), "expired").await;
    assert_gone(app, Method::DELETE, "short", None, "expired").await;
    // Still expired, not deleted, after that DELETE.
    assert_gone(app, Method::GET, "short", None, "expired").await;
}

async fn every_setup_answers_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    deleted_is_410_never_existed_is_404_and_put_creates_again(&app).await;
    expired_is_410(&app).await;
}

/// After the tombstone time, a gone record is unknown again: 404.
async fn after_the_tombstone_time_it_is_404(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.tombstone_seconds = 1).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    assert_eq!(app.send(Method::DELETE, "/progress/job", None, &[]).await.status(), StatusCode::NO_CONTENT);
    assert_gone(&app, Method::GET, "job", None, "deleted").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let res = app.get("job").await;
    assert_problem(res, 404, "not_found").await;
}

async fn a_long_poll_ends_with_410_when_the_record_is_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let deleter = {
        let (client, url) = (app.client.clone(), app.url("/progress/job"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.delete(url).send().await.unwrap();
        })
    };
    let started = Instant::now();
    let res = app.send(Method::GET, "/progress/job?wait=20", None, &[("if-none-match", "\"1\"")]).await;
    deleter.await.unwrap();
    let doc = assert_problem(res, 410, "gone").await;
    assert_eq!(doc["reason"], "deleted");
    assert!(started.elapsed() < SOON, "answered when deleted, not at the end of the wait");
}

async fn a_long_poll_ends_with_410_when_the_record_expires(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running", "ttl_seconds": 1})).await;
    let started = Instant::now();
    let res = app.send(Method::GET, "/progress/job?wait=20", None, &[("if-none-match", "\"1\"")]).await;
    let doc = assert_problem(res, 410, "gone").await;
    assert_eq!(doc["reason"], "expired");
    assert!(started.elapsed() < SOON, "answered at the expiry, not at the end of the wait");
}

async fn a_stream_ends_with_gone(backend: Backend) {
    let app = spawn_app(backend).await;
    for (id, ttl, reason) in [("deleted-job", 60, "deleted"), ("expiring-job", 1, "expired")] {
        app.put_ok(id, &json!({"status": "running", "ttl_seconds": ttl})).await;
        let (status, stream) = EventStream::open(&app.client, &app.url(&format!("/progress/{id}/events")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let mut events = stream.unwrap();
        assert_eq!(events.expect_event(SOON).await.version(), 1);
        if reason == "deleted" {
            let res = app.send(Method::DELETE, &format!("/progress/{id}"), None, &[]).await;
            assert_eq!(res.status(), StatusCode::NO_CONTENT);
        }
        let gone = events.expect_event(SOON).await;
        assert_eq!(gone.event.as_deref(), Some("gone"), "{id}");
        let data = gone.json();
        assert_eq!((&data["id"], &data["reason"]), (&json!(id), &json!(reason)), "{data}");
        assert!(data["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{data}");
        assert!(matches!(events.next(SOON).await, Next::End), "{id}: the stream ends after gone");
        // A reconnect is 410.
        let res = app.send(Method::GET, &format!("/progress/{id}/events"), None, &[]).await;
        assert_problem(res, 410, "gone").await;
    }
}

on_both_stores!(
    every_setup_answers_the_same,
    after_the_tombstone_time_it_is_404,
    a_long_poll_ends_with_410_when_the_record_is_deleted,
    a_long_poll_ends_with_410_when_the_record_expires,
    a_stream_ends_with_gone,
);

/// PostgreSQL alone, or Redis over it (`redis`), once PostgreSQL has taken
/// its migrations (a create then reaches it before the response).
async fn with_postgres(db: &TestDatabase, redis: bool, tweak: impl FnOnce(&mut progressd::Settings)) -> TestApp {
    let url = db.url().to_owned();
    let backend = if redis { Backend::Redis } else { Backend::Memory };
    let app = spawn_app_with(backend, move |s| {
        s.database_url = Some(url);
        s.breaker_probe_ms = 100;
        s.database_timeout_ms = 1_000;
        s.cache_max_age_ms = 0;
        tweak(s);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.send(Method::GET, "/readyz", None, &[]).await.status().is_success() {
        assert!(Instant::now() < deadline, "PostgreSQL never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_answers_the_same() {
    let db = TestDatabase::create().await;
    let app = with_postgres(&db, false, |_| {}).await;
    deleted_is_410_never_existed_is_404_and_put_creates_again(&app).await;
    expired_is_410(&app).await;
    app.stop().await;
    let app = with_postgres(&db, false, |s| s.tombstone_seconds = 1).await;
    app.put_ok("brief", &json!({"status": "running"})).await;
    assert_eq!(app.send(Method::DELETE, "/progress/brief", None, &[]).await.status(), StatusCode::NO_CONTENT);
    assert_gone(&app, Method::GET, "brief", None, "deleted").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_problem(app.get("brief").await, 404, "not_found").await;
}

/// Redis over PostgreSQL: every answer as above, and after Redis lost every
/// key (a restart), PostgreSQL's tombstones still answer 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_postgres_answers_410_from_postgres_after_redis_lost_everything() {
    let db = TestDatabase::create().await;
    let app = with_postgres(&db, true, |_| {}).await;
    deleted_is_410_never_existed_is_404_and_put_creates_again(&app).await;
    expired_is_410(&app).await;
    app.put_ok("doomed", &json!({"status": "running"})).await;
    assert_eq!(app.send(Method::DELETE, "/progress/doomed", None, &[]).await.status(), StatusCode::NO_CONTENT);
    app.put_ok("brief", &json!({"status": "running", "ttl_seconds": 1})).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let gone_at = assert_gone(&app, Method::GET, "doomed", None, "deleted").await["gone_at"].clone();
    // Redis restarted empty: every key of this test is gone, markers too.
    delete_keys(app.settings.redis_url.as_deref().unwrap(), &app.settings.key_prefix);
    let from_postgres = assert_gone(&app, Method::GET, "doomed", None, "deleted").await;
    let (redis_ms, pg_ms) = (millis(&gone_at), millis(&from_postgres["gone_at"]));
    assert!((redis_ms - pg_ms).abs() < 1_000, "the same delete: {gone_at} and {}", from_postgres["gone_at"]);
    assert_gone(&app, Method::GET, "brief", None, "expired").await;
    assert_problem(app.get("never").await, 404, "not_found").await;
}

fn millis(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap().timestamp_millis()
}
