//! Never a false 404 (issue 20): a record PostgreSQL holds is never
//! answered 404 because Redis missed it. A fresh instance asks PostgreSQL
//! before its first answers (and a create it acknowledges is in PostgreSQL
//! at the response); while PostgreSQL cannot be asked, a Redis miss (a
//! GET, a PATCH or a DELETE) is 503 `storage_unavailable` with `Retry-After`.
//!
//! In-process servers (as in `tests/durable_tier.rs`) on the machine's Redis,
//! each with a key prefix of its own, over a database of their own, reached
//! directly or through a TCP proxy that can pause PostgreSQL.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::proxy::{Mode, Proxy};
use common::{Backend, TestApp, assert_problem, redis_url, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

/// PROGRESS_DATABASE_TIMEOUT_MS here.
const DATABASE_TIMEOUT: Duration = Duration::from_millis(500);

/// Redis (a fresh key prefix) over the database at `database_url`.
async fn instance(database_url: &str) -> TestApp {
    let url = database_url.to_owned();
    spawn_app_with(Backend::Redis, move |s| {
        s.database_url = Some(url);
        s.persist_interval_seconds = 1;
        s.breaker_probe_ms = 100;
        s.database_timeout_ms = DATABASE_TIMEOUT.as_millis() as u64;
        s.redis_timeout_ms = 500;
        s.cache_max_age_ms = 0;
    })
    .await
}

/// The version PostgreSQL holds for `id` (None: no live row, or no table yet).
async fn durable_version(pg: &tokio_postgres::Client, id: &str) -> Option<i64> {
    let row = pg.query_opt("select version from progress where id = $1 and not deleted", &[&id]).await;
    row.ok().flatten().map(|r| r.get(0))
}

async fn wait_for_version(pg: &tokio_postgres::Client, id: &str, version: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while durable_version(pg, id).await != Some(version) {
        assert!(Instant::now() < deadline, "{id} never reached version {version} in PostgreSQL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes `id` from `app`'s Redis prefix: Redis lost it, PostgreSQL has it.
async fn forget_in_redis(app: &TestApp, id: &str) {
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}progress:{id}", app.settings.key_prefix);
    let removed: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 1, "{id} was in Redis");
}

/// Writes `id` up to version 4 through a first instance and waits until
/// PostgreSQL holds that version; the instance is stopped.
async fn write_version_4(database_url: &str, pg: &tokio_postgres::Client, id: &str) {
    let first = instance(database_url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.put(id, &json!({"status": "running", "current": 1})).await.status().is_success() {
        assert!(Instant::now() < deadline, "the first instance never took a write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for current in 2..=4 {
        let written = first.patch_ok(id, &json!({"current": current})).await;
        assert_eq!(written["version"], current);
    }
    wait_for_version(pg, id, 4).await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_answers_its_first_read_from_postgres() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    write_version_4(db.url(), &pg, "s1").await;

    // A second instance on another key prefix: its Redis holds nothing.
    let fresh = instance(db.url()).await;
    let res = fresh.send(reqwest::Method::GET, "/healthz", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = fresh.get("s1").await;
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "the first GET after /healthz: {body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((got["version"].as_i64(), got["current"].as_i64()), (Some(4), Some(4)), "{got}");
    fresh.stop().await;

    // A third: its first request, a create, is in PostgreSQL at the response.
    let third = instance(db.url()).await;
    let res = third.put("c1", &json!({"status": "running"})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text().await.unwrap());
    assert_eq!(durable_version(&pg, "c1").await, Some(1), "acknowledged, so in PostgreSQL at the response");
    third.stop().await;
}

/// The address a `postgres://user@host:port/db` URL names.
async fn address_of(url: &str) -> SocketAddr {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    tokio::net::lookup_host(host_port).await.unwrap().next().unwrap()
}

/// Asserts that reading `id` is 503 `storage_unavailable` with Retry-After,
/// within the database timeout and some slack.
async fn unavailable(app: &TestApp, id: &str, why: &str) {
    let started = Instant::now();
    let res = app.get(id).await;
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    assert_problem(res, 503, "storage_unavailable").await;
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().is_ok()), "{why}: Retry-After");
    let took = started.elapsed();
    assert!(took < DATABASE_TIMEOUT + Duration::from_millis(500), "{why}: took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_miss_while_postgres_cannot_be_asked_is_503_not_404() {
    let db = TestDatabase::create().await;
    let proxy = Proxy::start(address_of(db.url()).await).await;
    let through_proxy = db.url().replacen(&address_of(db.url()).await.port().to_string(), &proxy.port().to_string(), 1);
    assert_ne!(through_proxy, db.url(), "the URL names the proxy");
    let pg = db.connect().await;
    write_version_4(&through_proxy, &pg, "s1").await;
    let app = instance(&through_proxy).await;
    assert_eq!(app.get_ok("s1").await["version"], 4, "read repair put it into this prefix");
    forget_in_redis(&app, "s1").await;

    // PostgreSQL paused: connections stay open, nothing answers.
    proxy.set_mode(Mode::Blackhole).await;
    for n in 0..4 {
        // The first reads each wait for the database timeout, until the
        // breaker opens; then they are answered at once.
        unavailable(&app, "s1", &format!("paused, read {n}")).await;
    }
    unavailable(&app, "never-written", "paused, an id nobody wrote").await;
    // A PATCH cannot tell either: 503, not 404 (a PUT may still create in Redis).
    let res = app.patch("s1", &json!({"current": 5})).await;
    assert_problem(res, 503, "storage_unavailable").await;
    // Nor a DELETE, which then deletes nothing (no tombstone is queued).
    let res = app.send(reqwest::Method::DELETE, "/progress/s1", None, &[]).await;
    assert_problem(res, 503, "storage_unavailable").await;

    proxy.set_mode(Mode::Forward).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = app.get("s1").await;
        if res.status() == StatusCode::OK {
            let got: serde_json::Value = res.json().await.unwrap();
            assert_eq!(got["version"], 4);
            break;
        }
        assert_problem(res, 503, "storage_unavailable").await;
        assert!(Instant::now() < deadline, "PostgreSQL never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_problem(app.get("never-written").await, 404, "not_found").await;
    assert_problem(app.patch("never-written", &json!({"current": 1})).await, 404, "not_found").await;
    let res = app.send(reqwest::Method::DELETE, "/progress/never-written", None, &[]).await;
    assert_problem(res, 404, "not_found").await;

    // PostgreSQL gone: connections reset and refused.
    forget_in_redis(&app, "s1").await;
    proxy.set_mode(Mode::Reset).await;
    proxy.set_mode(Mode::Refuse).await;
    for n in 0..4 {
        unavailable(&app, "s1", &format!("refused, read {n}")).await;
    }
    app.stop().await;
}
