//! The durable tier as the HTTP API sees it: what reaches PostgreSQL and
//! when (creates and terminal transitions before the response, other updates
//! within the persist interval), read-repair into Redis, expiry, deletes,
//! PostgreSQL alone, PostgreSQL down at start-up, and two instances sharing
//! one Redis prefix and one database.
//!
//! Every check of "what reached PostgreSQL" reads the row straight from the
//! table. Each test has a database of its own on the shared server (or a
//! cluster of its own when it stops Postgres) and a Redis key prefix of its own.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::{OwnPostgres, TestDatabase};
use common::{Backend, TestApp, assert_problem, redis_url, spawn_app_with, unique_prefix};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `persist_interval_seconds` in these tests.
const INTERVAL: Duration = Duration::from_secs(1);
/// The flusher's tick for a one-second interval (a quarter of it).
const TICK: Duration = Duration::from_millis(250);
/// An update must be in PostgreSQL this long after it was acknowledged.
const FLUSH_BOUND: Duration = Duration::from_millis(1_250); // INTERVAL + TICK
/// How often the tests poll.
const POLL: Duration = Duration::from_millis(20);

/// Redis over PostgreSQL (`db`), tuned for fast tests, read cache off.
async fn tiered(db_url: &str) -> TestApp {
    tiered_with(db_url, |_| {}).await
}

async fn tiered_with(db_url: &str, tweak: impl FnOnce(&mut progressd::Settings)) -> TestApp {
    let url = db_url.to_owned();
    spawn_app_with(Backend::Redis, move |s| {
        fast(s, url);
        tweak(s);
    })
    .await
}

/// PostgreSQL alone (no REDIS_URL).
async fn postgres_only(db_url: &str) -> TestApp {
    let url = db_url.to_owned();
    spawn_app_with(Backend::Memory, move |s| fast(s, url)).await
}

fn fast(s: &mut progressd::Settings, database_url: String) {
    s.database_url = Some(database_url);
    s.persist_interval_seconds = INTERVAL.as_secs();
    s.breaker_probe_ms = 100;
    s.database_timeout_ms = 1_000;
    s.redis_timeout_ms = 500;
    s.cache_max_age_ms = 0;
}

// ---------------------------------------------------------------- PostgreSQL

/// A row as PostgreSQL holds it.
#[derive(Debug)]
struct PgRow {
    version: i64,
    status: String,
    expires_at_ms: i64,
    /// The `record` bytes' header line, parsed.
    header: Value,
    /// The `record` bytes after the header, parsed.
    body: Value,
    /// The `record` bytes after the header, as text.
    body_text: String,
}

async fn try_row(pg: &tokio_postgres::Client, id: &str) -> Result<Option<PgRow>, tokio_postgres::Error> {
    let row = pg
        .query_opt(
            "select version, status, record, (extract(epoch from expires_at) * 1000)::bigint from progress where id = $1 and not deleted",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| {
        let raw: Vec<u8> = row.get(2);
        let newline = raw.iter().position(|b| *b == b'\n').expect("record bytes have a header line");
        let header: Value = serde_json::from_slice(&raw[..newline]).expect("the header is JSON");
        let body_text = String::from_utf8(raw[newline + 1..].to_vec()).expect("the body is UTF-8");
        let body: Value = serde_json::from_str(&body_text).expect("the body is JSON");
        PgRow { version: row.get(0), status: row.get(1), expires_at_ms: row.get(3), header, body, body_text }
    }))
}

/// The row for `id`, live or expired, or None (a tombstone left by a delete is no record).
async fn row(pg: &tokio_postgres::Client, id: &str) -> Option<PgRow> {
    try_row(pg, id).await.expect("the progress table is readable")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("postgres accepts connections");
    tokio::spawn(connection);
    client
}

/// Asserts that `row` holds exactly the record the API returned.
fn assert_row_is(row: &PgRow, api: &Value) {
    let version = api["version"].as_i64().unwrap();
    assert_eq!(row.version, version, "version column");
    assert_eq!(row.header["v"].as_i64(), Some(version), "version in the header");
    assert_eq!(row.status, api["status"].as_str().unwrap(), "status column");
    let mut expected = api.clone();
    expected.as_object_mut().unwrap().remove("stalled");
    assert_eq!(row.body, expected, "the record column parses as the record the API returned");
}

/// Waits until writes through `app` reach PostgreSQL before the response:
/// the migrations have run and the durable breaker lets requests through.
/// Warm-up records are `warmup-<n>`.
async fn wait_until_durable(app: &TestApp, pg: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let id = format!("warmup-{n}");
        let res = app.put(&id, &json!({"status": "pending"})).await;
        let status = res.status();
        assert!(
            status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE,
            "warm-up PUT: {status} {}",
            res.text().await.unwrap()
        );
        if status.is_success() && matches!(try_row(pg, &id).await, Ok(Some(_))) {
            return;
        }
        assert!(Instant::now() < deadline, "writes never reached PostgreSQL at once");
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `check` holds for the row of `id`; panics with `what` after `within`.
async fn wait_for_row(
    pg: &tokio_postgres::Client,
    id: &str,
    within: Duration,
    what: &str,
    check: impl Fn(Option<&PgRow>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let found = try_row(pg, id).await.ok().flatten();
        if check(found.as_ref()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}; row is {found:?}");
        tokio::time::sleep(POLL).await;
    }
}

// --------------------------------------------------------------------- Redis

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn key(app: &TestApp, id: &str) -> String {
    format!("{}progress:{id}", app.settings.key_prefix)
}

/// The record Redis holds for `id` on `app`'s prefix: (header, body).
async fn redis_record(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<(Value, Value)> {
    let raw: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    raw.map(|raw| {
        let stored = progressd::store::from_redis(raw).expect("a record of ours");
        let body = &stored.raw()[stored.header().len()..];
        (serde_json::from_slice(stored.header()).unwrap(), serde_json::from_slice(body).unwrap())
    })
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

// ------------------------------------------------------------------- helpers

fn millis(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap().timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn sleep_until_ms(epoch_ms: i64) {
    let wait = epoch_ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

async fn status_of(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let res = app.send(method, path, body, headers).await;
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
}

/// A body exercising exact numbers and nesting.
fn exact_body() -> Value {
    serde_json::from_str(
        r#"{"status": "running", "stage": "RESEARCH", "current": 2, "total": 10,
            "metadata": {"big": 9007199254740993, "neg": -9007199254740993, "f": 0.1, "tiny": 1e-7,
                         "nested": {"deep": [1, 2.5, {"x": "ünïcødé ✓"}]}},
            "ttl_seconds": 600}"#,
    )
    .unwrap()
}

// ============================================================ 1. write timing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_terminal_transitions_are_in_postgres_at_the_response_updates_within_the_interval() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;

    // Create: in PostgreSQL when the 201 arrives, byte-exact.
    let res = app.put("job-1", &exact_body()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let r = row(&pg, "job-1").await.expect("a create is in PostgreSQL before the response");
    assert_row_is(&r, &created);
    assert!(r.body_text.contains("9007199254740993") && r.body_text.contains("-9007199254740993"), "{}", r.body_text);
    assert_eq!(r.body["metadata"]["big"].to_string(), "9007199254740993");
    assert_eq!(r.body["metadata"]["f"].to_string(), "0.1");
    assert_eq!(r.expires_at_ms, millis(&created["expires_at"]), "expires_at column");

    // A plain update: not in PostgreSQL at once…
    let updated = app.patch_ok("job-1", &json!({"message": "chapter 3", "current": 3})).await;
    let acked = Instant::now();
    assert_eq!(updated["version"], 2);
    let r = row(&pg, "job-1").await.unwrap();
    assert_eq!(r.version, 1, "a plain update is written behind, not before the response");
    // …but within the persist interval and one tick.
    wait_for_row(&pg, "job-1", FLUSH_BOUND.saturating_sub(acked.elapsed()), "the update is flushed", |r| {
        r.is_some_and(|r| r.version == 2)
    })
    .await;
    eprintln!("the update was in PostgreSQL {:?} after its response", acked.elapsed());
    assert_row_is(&row(&pg, "job-1").await.unwrap(), &updated);

    // A terminal transition: in PostgreSQL when the response arrives.
    let done = app
        .patch_ok("job-1", &json!({"status": "completed", "result": {"pages": 9007199254740993u64, "ratio": 0.1}}))
        .await;
    assert_eq!(done["version"], 3);
    let r = row(&pg, "job-1").await.unwrap();
    assert_eq!(r.status, "completed");
    assert_row_is(&r, &done);
    assert_eq!(r.body["result"]["pages"].to_string(), "9007199254740993");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_write_supersedes_a_pending_update_which_never_overwrites_it() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;

    app.put_ok("job-2", &json!({"status": "running"})).await;
    app.patch_ok("job-2", &json!({"progress": 50})).await; // pending
    let failed = app.patch_ok("job-2", &json!({"status": "failed", "error": "disk full"})).await;
    assert_eq!(failed["version"], 3);
    assert_row_is(&row(&pg, "job-2").await.unwrap(), &failed);
    // Past the flush deadline of version 2: PostgreSQL still has version 3.
    tokio::time::sleep(FLUSH_BOUND).await;
    assert_row_is(&row(&pg, "job-2").await.unwrap(), &failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_of_a_live_record_is_written_behind_like_an_update() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;

    let res = app.put("job-3", &json!({"status": "running", "message": "one"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app.put("job-3", &json!({"status": "running", "message": "two"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let replaced: Value = res.json().await.unwrap();
    let acked = Instant::now();
    assert_eq!(row(&pg, "job-3").await.unwrap().version, 1);
    wait_for_row(&pg, "job-3", FLUSH_BOUND.saturating_sub(acked.elapsed()), "the replace is flushed", |r| {
        r.is_some_and(|r| r.version == 2)
    })
    .await;
    assert_row_is(&row(&pg, "job-3").await.unwrap(), &replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_backlog() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    // A long interval: only the shutdown flush can write the update in time.
    let app = tiered_with(db.url(), |s| s.persist_interval_seconds = 30).await;
    wait_until_durable(&app, &pg).await;
    app.put_ok("job-4", &json!({"status": "running"})).await;
    let last = app.patch_ok("job-4", &json!({"message": "almost", "metadata": {"n": 9007199254740993u64}})).await;
    assert_eq!(row(&pg, "job-4").await.unwrap().version, 1);
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert_row_is(&row(&pg, "job-4").await.expect("the row survives"), &last);
}

// ============================================================= 2. read-repair

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_miss_is_served_from_postgres_and_put_back_with_its_remaining_ttl() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;
    let mut conn = redis().await;

    let created = app.put_ok("job-5", &exact_body()).await; // ttl 600 s
    let updated = app.patch_ok("job-5", &json!({"message": "flushed"})).await;
    let acked = Instant::now();
    wait_for_row(&pg, "job-5", FLUSH_BOUND.saturating_sub(acked.elapsed()), "the update is flushed", |r| {
        r.is_some_and(|r| r.version == 2)
    })
    .await;
    assert!(millis(&created["expires_at"]) <= millis(&updated["expires_at"]));

    // Behind the service's back, as an eviction would.
    let removed: i64 = redis::cmd("DEL").arg(key(&app, "job-5")).query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 1);

    let res = app.get("job-5").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let got: Value = res.json().await.unwrap();
    let mut expected = updated.clone();
    expected.as_object_mut().unwrap().remove("stalled");
    let mut served = got.clone();
    served.as_object_mut().unwrap().remove("stalled");
    assert_eq!(served, expected, "served from PostgreSQL, unchanged");
    assert_eq!(got["metadata"]["big"].to_string(), "9007199254740993");

    // Back in Redis, with what is left of the record's TTL (not a fresh one).
    let (header, body) = redis_record(&mut conn, &key(&app, "job-5")).await.expect("the key is back in Redis");
    assert_eq!(header["v"], 2);
    assert_eq!(body, expected);
    let ttl = pttl(&mut conn, &key(&app, "job-5")).await;
    let remaining = millis(&updated["expires_at"]) - now_ms();
    assert!(ttl > 0, "PTTL {ttl}");
    assert!((ttl - remaining).abs() < 1_500, "PTTL {ttl} ms, remaining TTL {remaining} ms");
    assert!(ttl <= 600_000, "PTTL {ttl} ms exceeds the record's ttl");

    // The next read comes from Redis again and writes keep working.
    assert_eq!(app.get_ok("job-5").await["version"], 2);
    assert_eq!(app.patch_ok("job-5", &json!({"message": "after repair"})).await["version"], 3);
}

/// An update acknowledged from Redis and still in the backlog when the key
/// disappears (eviction): a read must not go back to the older version
/// PostgreSQL has, nor put it back into Redis, nor lose the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_miss_with_an_unflushed_update_does_not_serve_an_older_version() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered_with(db.url(), |s| s.persist_interval_seconds = 5).await;
    wait_until_durable(&app, &pg).await;
    let mut conn = redis().await;

    app.put_ok("job-6", &json!({"status": "running", "metadata": {"a": 1}})).await;
    let updated = app.patch_ok("job-6", &json!({"metadata": {"b": 2}})).await; // pending
    assert_eq!(row(&pg, "job-6").await.unwrap().version, 1);
    let _: i64 = redis::cmd("DEL").arg(key(&app, "job-6")).query_async(&mut conn).await.unwrap();

    let got = app.get_ok("job-6").await;
    assert_eq!(
        got["version"], updated["version"],
        "a read went back to a version older than an acknowledged one: {got}"
    );
    let next = app.patch_ok("job-6", &json!({"metadata": {"c": 3}})).await;
    assert_eq!(next["metadata"], json!({"a": 1, "b": 2, "c": 3}), "the acknowledged update was lost");
}

// ================================================================ 3. expiry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_row_is_never_served_and_a_new_record_starts_over() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;
    let mut conn = redis().await;

    let created = app.put_ok("job-7", &json!({"status": "running", "message": "old", "ttl_seconds": 1})).await;
    assert_row_is(&row(&pg, "job-7").await.unwrap(), &created);
    // An update that may still be in the backlog when it expires.
    let updated = app.patch_ok("job-7", &json!({"message": "old, updated"})).await;
    let expires = millis(&updated["expires_at"]);
    sleep_until_ms(expires + 50).await;

    // Gone from Redis, still a row in PostgreSQL, and never served.
    let expired = row(&pg, "job-7").await.expect("the expired row is still in PostgreSQL (no cleanup ran)");
    assert!(expired.expires_at_ms <= now_ms());
    assert_problem(app.get("job-7").await, 410, "gone").await;
    assert_eq!(pttl(&mut conn, &key(&app, "job-7")).await, -2, "an expired row is not put back into Redis");
    assert_problem(app.patch("job-7", &json!({"message": "late"})).await, 410, "gone").await;
    let (status, _) = status_of(&app, Method::DELETE, "/progress/job-7", None, &[]).await;
    assert_eq!(status, StatusCode::GONE, "deleting an expired record");

    // Created again: version 1, and PostgreSQL has the new record, not the old one.
    let res = app.put("job-7", &json!({"status": "pending", "message": "new"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["version"], 1);
    assert_row_is(&row(&pg, "job-7").await.unwrap(), &again);
    assert_eq!(app.get_ok("job-7").await["message"], "new");
}

// ================================================================ 4. delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_record_from_redis_and_postgres() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;
    let mut conn = redis().await;

    app.put_ok("job-8", &json!({"status": "running"})).await;
    app.patch_ok("job-8", &json!({"message": "pending in the backlog"})).await;
    assert!(row(&pg, "job-8").await.is_some());

    let (status, _) = status_of(&app, Method::DELETE, "/progress/job-8", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(pttl(&mut conn, &key(&app, "job-8")).await, -2, "the Redis key is gone");
    assert!(row(&pg, "job-8").await.is_none(), "the PostgreSQL row is gone at the response");
    assert_problem(app.get("job-8").await, 410, "gone").await;

    // The update that was waiting in the backlog does not bring it back.
    tokio::time::sleep(FLUSH_BOUND).await;
    assert!(row(&pg, "job-8").await.is_none(), "a pending update resurrected the deleted row");
    assert_problem(app.get("job-8").await, 410, "gone").await;
    let (status, _) = status_of(&app, Method::DELETE, "/progress/job-8", None, &[]).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_only_postgres_has_is_deleted_too() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = tiered(db.url()).await;
    wait_until_durable(&app, &pg).await;
    let mut conn = redis().await;

    app.put_ok("job-9", &json!({"status": "running"})).await;
    let _: i64 = redis::cmd("DEL").arg(key(&app, "job-9")).query_async(&mut conn).await.unwrap();
    let (status, _) = status_of(&app, Method::DELETE, "/progress/job-9", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the record existed (in PostgreSQL)");
    assert!(row(&pg, "job-9").await.is_none());
    assert_problem(app.get("job-9").await, 410, "gone").await;
    assert_eq!(pttl(&mut conn, &key(&app, "job-9")).await, -2);
}

// ======================================================= 5. PostgreSQL alone

async fn wait_until_postgres_only_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = app.put("warmup", &json!({})).await;
        if res.status().is_success() {
            return;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", res.text().await.unwrap());
        assert!(Instant::now() < deadline, "PostgreSQL never became usable");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_serves_the_whole_api() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = postgres_only(db.url()).await;
    wait_until_postgres_only_ready(&app).await;

    // PUT: 201 then 200; every write is in PostgreSQL at the response.
    let res = app.put("solo", &exact_body()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_row_is(&row(&pg, "solo").await.unwrap(), &created);
    let res = app.put("solo", &json!({"status": "running", "stage": "CHAPTERS"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let replaced: Value = res.json().await.unwrap();
    assert_eq!(replaced["version"], 2);
    assert!(replaced.get("metadata").is_none_or(Value::is_null), "PUT replaces: {replaced}");
    assert_row_is(&row(&pg, "solo").await.unwrap(), &replaced);

    // PATCH merges; GET returns it with its ETag; If-None-Match gives 304.
    let patched = app.patch_ok("solo", &json!({"message": "m", "metadata": {"big": 9007199254740993u64}})).await;
    assert_eq!(patched["version"], 3);
    assert_eq!(patched["stage"], "CHAPTERS");
    assert_row_is(&row(&pg, "solo").await.unwrap(), &patched);
    let res = app.get("solo").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"3\"");
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["metadata"]["big"].to_string(), "9007199254740993");
    let (status, _) = status_of(&app, Method::GET, "/progress/solo", None, &[("if-none-match", "\"3\"")]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // If-Match.
    let stale =
        app.send(Method::PATCH, "/progress/solo", Some(&json!({"message": "x"})), &[("if-match", "\"2\"")]).await;
    assert_problem(stale, 412, "precondition_failed").await;
    assert_eq!(row(&pg, "solo").await.unwrap().version, 3);
    let (status, body) =
        status_of(&app, Method::PATCH, "/progress/solo", Some(&json!({"message": "y"})), &[("if-match", "\"3\"")])
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 4);

    // Terminal: 409 without If-Match, allowed with the current version.
    let done = app.patch_ok("solo", &json!({"status": "completed"})).await;
    assert_row_is(&row(&pg, "solo").await.unwrap(), &done);
    assert_problem(app.patch("solo", &json!({"status": "running"})).await, 409, "conflict_terminal").await;
    assert_problem(app.put("solo", &json!({"status": "running"})).await, 409, "conflict_terminal").await;
    let tag = format!("\"{}\"", done["version"]);
    let (status, body) =
        status_of(&app, Method::PATCH, "/progress/solo", Some(&json!({"status": "running"})), &[("if-match", &tag)])
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_row_is(&row(&pg, "solo").await.unwrap(), &body);

    // Absent records.
    assert_problem(app.get("nobody").await, 404, "not_found").await;
    assert_problem(app.patch("nobody", &json!({"message": "x"})).await, 404, "not_found").await;

    // DELETE: conditional, then for real.
    let res = app.send(Method::DELETE, "/progress/solo", None, &[("if-match", "\"1\"")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    assert!(row(&pg, "solo").await.is_some());
    let (status, _) = status_of(&app, Method::DELETE, "/progress/solo", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(row(&pg, "solo").await.is_none());
    assert_problem(app.get("solo").await, 410, "gone").await;
    let (status, _) = status_of(&app, Method::DELETE, "/progress/solo", None, &[]).await;
    assert_eq!(status, StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_keeps_every_one_of_50_parallel_patches() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = Arc::new(postgres_only(db.url()).await);
    wait_until_postgres_only_ready(&app).await;

    app.put_ok("many", &json!({"status": "running"})).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = json!({"children": {format!("c{i}"): {"title": format!("child {i}"), "progress": i}}});
                app.patch_ok("many", &body).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("50 parallel PATCHes on PostgreSQL alone: {:?}", started.elapsed());
    let got = app.get_ok("many").await;
    assert_eq!(got["version"], 51);
    let children = got["children"].as_object().unwrap();
    assert_eq!(children.len(), 50, "{got}");
    for i in 0..50 {
        assert_eq!(children[&format!("c{i}")]["progress"], i);
    }
    let r = row(&pg, "many").await.unwrap();
    assert_eq!(r.version, 51);
    assert_eq!(r.body["children"].as_object().unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_expires_records() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let app = postgres_only(db.url()).await;
    wait_until_postgres_only_ready(&app).await;

    let created = app.put_ok("short", &json!({"status": "running", "ttl_seconds": 1})).await;
    assert_eq!(app.get_ok("short").await["version"], 1);
    sleep_until_ms(millis(&created["expires_at"]) + 50).await;
    assert!(row(&pg, "short").await.is_some(), "the row is still there");
    assert_problem(app.get("short").await, 410, "gone").await;
    assert_problem(app.patch("short", &json!({"message": "late"})).await, 410, "gone").await;
    let res = app.put("short", &json!({"status": "pending"})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "an expired record counts as absent");
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["version"], 1);
    assert_row_is(&row(&pg, "short").await.unwrap(), &again);
}

// ============================================== 6. PostgreSQL down at start-up

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_up_gets_the_schema_and_every_write_once_it_appears() {
    let mut own = tokio::task::block_in_place(OwnPostgres::start);
    tokio::task::block_in_place(|| own.stop());
    let app = tiered_with(&own.url(), |s| s.database_timeout_ms = 500).await;

    // Writes are acknowledged from Redis while PostgreSQL is down.
    let started = Instant::now();
    let a1 = app.put("down-a", &json!({"status": "running", "metadata": {"big": 9007199254740993u64}})).await;
    assert_eq!(a1.status(), StatusCode::CREATED);
    app.patch_ok("down-a", &json!({"progress": 10})).await;
    let res = app.put("down-b", &json!({"status": "running"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let b_done = app.patch_ok("down-b", &json!({"status": "completed", "result": "ok"})).await;
    let a_last = app.patch_ok("down-a", &json!({"message": "still going", "progress": 20})).await;
    let res = app.put("down-c", &json!({"status": "pending"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let c_created: Value = res.json().await.unwrap();
    let (status, _) = status_of(&app, Method::DELETE, "/progress/down-c", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get_ok("down-a").await["version"], 3);
    assert_eq!(c_created["version"], 1);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "writes while PostgreSQL is down took {elapsed:?}");

    // PostgreSQL appears: migrations run and the latest versions arrive.
    tokio::task::block_in_place(|| own.start_again());
    let back = Instant::now();
    let pg = connect(&own.url()).await;
    wait_for_row(&pg, "down-a", Duration::from_secs(5), "down-a reaches PostgreSQL", |r| {
        r.is_some_and(|r| r.version == 3)
    })
    .await;
    wait_for_row(&pg, "down-b", Duration::from_secs(5), "down-b reaches PostgreSQL", |r| {
        r.is_some_and(|r| r.version == 2)
    })
    .await;
    eprintln!("records in PostgreSQL {:?} after it started", back.elapsed());
    assert_row_is(&row(&pg, "down-a").await.unwrap(), &a_last);
    assert_row_is(&row(&pg, "down-b").await.unwrap(), &b_done);
    assert_eq!(row(&pg, "down-a").await.unwrap().body["metadata"]["big"].to_string(), "9007199254740993");
    // down-c was deleted before PostgreSQL ever saw it.
    tokio::time::sleep(TICK * 2).await;
    assert!(row(&pg, "down-c").await.is_none(), "a record deleted during the outage reached PostgreSQL");
    let migrations: i64 = pg.query_one("select count(*) from progressd_schema_history", &[]).await.unwrap().get(0);
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count() as i64;
    assert_eq!(migrations, shipped, "every migration (V1, V2, …), each once");

    // From now on creates reach PostgreSQL before the response again.
    wait_until_durable(&app, &pg).await;
    let res = app.put("down-d", &json!({"status": "running"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let d: Value = res.json().await.unwrap();
    assert_row_is(&row(&pg, "down-d").await.unwrap(), &d);
    drop(pg);
    app.stop().await;
}

// ======================================================= 7. two instances

/// Two instances on one Redis prefix and one database.
async fn pair(db_url: &str, cache_max_age_ms: u64) -> (Arc<TestApp>, Arc<TestApp>) {
    let prefix = unique_prefix();
    let make = |prefix: String| {
        move |s: &mut progressd::Settings| {
            s.key_prefix = prefix;
            s.cache_max_age_ms = cache_max_age_ms;
        }
    };
    let a = tiered_with(db_url, make(prefix.clone())).await;
    let b = tiered_with(db_url, make(prefix)).await;
    if cache_max_age_ms > 0 {
        // Let both change listeners subscribe.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (Arc::new(a), Arc::new(b))
}

/// Reads `ids` through `app` in a loop until `stop`, and records every time
/// a read returns a lower version than this reader's previous read of the
/// same id (or a 404 after a version was seen). Returns the number of reads.
fn spawn_reader(
    name: &'static str,
    app: Arc<TestApp>,
    ids: Vec<String>,
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) {
            for id in &ids {
                let res = app.get(id).await;
                reads += 1;
                let seen = match res.status() {
                    StatusCode::OK => Some(res.json::<Value>().await.unwrap()["version"].as_u64().unwrap()),
                    StatusCode::NOT_FOUND => None,
                    other => {
                        violations.lock().unwrap().push(format!("{name}: GET {id} gave {other}"));
                        continue;
                    }
                };
                let before = last.get(id).copied();
                match (before, seen) {
                    (Some(b), Some(v)) if v < b => {
                        violations.lock().unwrap().push(format!("{name}: {id} went from {b} to {v}"))
                    }
                    (Some(b), None) => violations.lock().unwrap().push(format!("{name}: {id} went from {b} to 404")),
                    _ => {}
                }
                if let Some(v) = seen {
                    last.insert(id.clone(), v);
                }
            }
        }
        reads
    })
}

async fn two_instances_share_one_redis_and_one_database(cache_max_age_ms: u64) {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let (a, b) = pair(db.url(), cache_max_age_ms).await;
    wait_until_durable(&a, &pg).await;
    wait_until_durable(&b, &pg).await;
    let mut conn = redis().await;

    const RECORDS: usize = 5;
    const PATCHES_PER_INSTANCE: usize = 8;
    a.put_ok("shared", &json!({"status": "running", "stage": "CHAPTERS"})).await;
    let others: Vec<String> = (0..RECORDS).map(|r| format!("rec-{r}")).collect();
    let mut ids = vec!["shared".to_owned()];
    ids.extend(others.iter().cloned());

    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        spawn_reader("reader on a", a.clone(), ids.clone(), stop.clone(), violations.clone()),
        spawn_reader("reader on b", b.clone(), ids.clone(), stop.clone(), violations.clone()),
    ];

    let started = Instant::now();
    let mut writers = Vec::new();
    // 2 × 25 PATCHes on one record, each adding its own child.
    for i in 0..50 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            let body = json!({"children": {format!("c{i}"): {"title": format!("chapter {i}"), "status": "running", "progress": i}}});
            app.patch_ok("shared", &body).await;
        }));
    }
    // Several more records: created through one instance, then patched
    // through both at once, each PATCH adding its own metadata key.
    for (r, id) in others.iter().enumerate() {
        let (creator, a, b, id) = (if r % 2 == 0 { a.clone() } else { b.clone() }, a.clone(), b.clone(), id.clone());
        writers.push(tokio::spawn(async move {
            let res = creator.put(&id, &json!({"status": "running", "metadata": {"created_by": r}})).await;
            assert_eq!(res.status(), StatusCode::CREATED);
            let through = |app: Arc<TestApp>, name: &'static str, id: String| async move {
                for k in 0..PATCHES_PER_INSTANCE {
                    app.patch_ok(&id, &json!({"metadata": {format!("{name}{k}"): k}, "message": format!("{name}{k}")}))
                        .await;
                }
            };
            tokio::join!(through(a, "a", id.clone()), through(b, "b", id.clone()));
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let last_write = Instant::now();
    eprintln!("writes through two instances took {:?}", started.elapsed());
    // Keep reading a little after the last write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{} reads, versions went backwards: {violations:#?}", reads);
    assert!(reads > ids.len() * 2, "the readers read ({reads} reads)");

    // Redis holds every field.
    let (header, body) = redis_record(&mut conn, &key(&a, "shared")).await.unwrap();
    assert_eq!(header["v"], 51);
    assert_eq!(body["version"], 51);
    assert_eq!(body["children"].as_object().unwrap().len(), 50, "{body}");
    let mut expected_versions: HashMap<String, i64> = HashMap::from([("shared".to_owned(), 51)]);
    for (r, id) in others.iter().enumerate() {
        let (header, body) = redis_record(&mut conn, &key(&a, id)).await.unwrap();
        let version = 1 + 2 * PATCHES_PER_INSTANCE as i64;
        assert_eq!(header["v"], version, "{id}: {body}");
        let metadata = body["metadata"].as_object().unwrap();
        assert_eq!(metadata.len(), 1 + 2 * PATCHES_PER_INSTANCE, "{id}: {body}");
        assert_eq!(metadata["created_by"], r);
        for k in 0..PATCHES_PER_INSTANCE {
            assert_eq!(metadata[&format!("a{k}")], k, "{id}");
            assert_eq!(metadata[&format!("b{k}")], k, "{id}");
        }
        expected_versions.insert(id.clone(), version);
    }

    // Within the interval and a tick after the last write, PostgreSQL has
    // the same version (and the same record) as Redis, whichever instance flushed last.
    for (id, version) in &expected_versions {
        let left = FLUSH_BOUND.saturating_sub(last_write.elapsed());
        wait_for_row(&pg, id, left, &format!("{id} v{version} reaches PostgreSQL"), |r| {
            r.is_some_and(|r| r.version == *version)
        })
        .await;
        let (_, in_redis) = redis_record(&mut conn, &key(&a, id)).await.unwrap();
        assert_eq!(row(&pg, id).await.unwrap().body, in_redis, "{id}: PostgreSQL and Redis hold the same record");
    }
    // And it stays there: no older copy from either instance overwrites it.
    tokio::time::sleep(TICK * 2).await;
    for (id, version) in &expected_versions {
        assert_eq!(row(&pg, id).await.unwrap().version, *version, "{id}");
    }
    for app in [&a, &b] {
        assert_eq!(app.get_ok("shared").await["children"].as_object().unwrap().len(), 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_lose_a_field_nor_regress_a_version() {
    two_instances_share_one_redis_and_one_database(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_read_caches_never_lose_a_field_nor_regress_a_version() {
    two_instances_share_one_redis_and_one_database(2_000).await;
}

/// Instance `a` holds an unflushed update when `b` deletes the record: the
/// flush of `a`'s backlog must not bring the deleted record back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_one_instance_is_not_undone_by_the_other_instances_flush() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let (a, b) = pair(db.url(), 0).await;
    wait_until_durable(&a, &pg).await;
    wait_until_durable(&b, &pg).await;

    a.put_ok("doomed", &json!({"status": "running"})).await;
    a.patch_ok("doomed", &json!({"message": "pending on a"})).await;
    let (status, _) = status_of(&b, Method::DELETE, "/progress/doomed", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(row(&pg, "doomed").await.is_none());
    for (name, app) in [("b", &b), ("a", &a)] {
        let res = app.get("doomed").await;
        let status = res.status();
        assert_eq!(
            status,
            StatusCode::GONE,
            "GET through {name} right after a 204 DELETE: {}",
            res.text().await.unwrap()
        );
    }

    // Past a's flush deadline: still gone, for readers and in PostgreSQL.
    tokio::time::sleep(FLUSH_BOUND).await;
    for (name, app) in [("a", &a), ("b", &b)] {
        let res = app.get("doomed").await;
        let status = res.status();
        assert_eq!(status, StatusCode::GONE, "GET through {name} after a 204 DELETE: {}", res.text().await.unwrap());
    }
    assert!(
        row(&pg, "doomed").await.is_none(),
        "the deleted record is back in PostgreSQL: {:?}",
        row(&pg, "doomed").await
    );
}

/// The same race when the record is created again after the delete: `a`'s
/// flush of the old record must not replace the new one in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_again_is_not_overwritten_by_the_deleted_ones_pending_update() {
    let db = TestDatabase::create().await;
    let pg = db.connect().await;
    let (a, b) = pair(db.url(), 0).await;
    wait_until_durable(&a, &pg).await;
    wait_until_durable(&b, &pg).await;

    a.put_ok("reborn", &json!({"status": "running", "message": "old"})).await;
    a.patch_ok("reborn", &json!({"message": "old, pending on a"})).await;
    let (status, _) = status_of(&b, Method::DELETE, "/progress/reborn", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let res = b.put("reborn", &json!({"status": "pending", "message": "new"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let new: Value = res.json().await.unwrap();
    assert_row_is(&row(&pg, "reborn").await.unwrap(), &new);

    tokio::time::sleep(FLUSH_BOUND).await;
    let r = row(&pg, "reborn").await.unwrap();
    assert_eq!(r.body["message"], "new", "PostgreSQL holds the deleted record again: {}", r.body_text);
    assert_row_is(&r, &new);
}
