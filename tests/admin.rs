//! The admin routes: `POST /admin/cleanup` (against a seeded PostgreSQL and
//! the embedded store, and in the background on one instance at a time),
//! `DELETE /admin/progress` (by status, prefix, age, combined; what it
//! leaves in Redis and PostgreSQL), `GET /admin/stats`, and the admin token.
//!
//! Every request sends `Authorization: Bearer admin-secret`, the token the
//! servers here are configured with.

mod common;

use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::proxy::{Mode, Proxy};
use common::redis_server::OwnRedis;
use common::{Backend, TestApp, assert_problem, delete_keys, redis_conn, redis_url, spawn_app_with, unique_prefix};
use progressd::Settings;
use progressd::store::{Maintenance, RedisStore, RedisStoreConfig};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "admin-secret";
/// The session advisory lock the background cleanup takes (`progclup` in ASCII).
const CLEANUP_LOCK: i64 = 0x7072_6f67_636c_7570;

fn with_admin(s: &mut Settings) {
    s.admin_token = Some(TOKEN.into());
    s.breaker_probe_ms = 100;
    s.redis_timeout_ms = 500;
    s.database_timeout_ms = 2_000;
}

async fn admin(app: &TestApp, method: Method, path: &str) -> Response {
    app.send(method, path, None, &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

/// The JSON of an admin call that must succeed.
async fn admin_ok(app: &TestApp, method: Method, path: &str) -> Value {
    let res = admin(app, method.clone(), path).await;
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Redis (the shared server, a key prefix of its own) over a database of its own.
async fn tiered(db: &TestDatabase) -> TestApp {
    tiered_with(db, |_| {}).await
}

/// [`tiered`], with settings adjusted by `tweak`.
async fn tiered_with(db: &TestDatabase, tweak: impl FnOnce(&mut progressd::Settings) + Send + 'static) -> TestApp {
    let url = db.url().to_owned();
    let app = spawn_app_with(Backend::Redis, move |s| {
        with_admin(s);
        s.database_url = Some(url);
        tweak(s);
    })
    .await;
    wait_ready(&app).await;
    app
}

/// Until both tiers are up and PostgreSQL takes requests (its migrations ran).
async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc: Value = app.send(Method::GET, "/readyz", None, &[]).await.json().await.unwrap();
        let breaker_shut = doc["dependencies"]["postgres"]["breaker"] != "open";
        if doc["status"] == "ok" && breaker_shut {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {doc:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What PostgreSQL holds for `id`: `Some(deleted)` for a row, `None` for none.
async fn pg_row(pg: &tokio_postgres::Client, id: &str) -> Option<bool> {
    pg.query_opt("SELECT deleted FROM progress WHERE id = $1", &[&id]).await.unwrap().map(|r| r.get(0))
}

fn in_redis(app: &TestApp, id: &str) -> bool {
    let key = format!("{}progress:{id}", app.settings.key_prefix);
    redis::cmd("EXISTS").arg(key).query::<bool>(&mut redis_conn()).unwrap()
}

async fn count(pg: &tokio_postgres::Client, condition: &str) -> i64 {
    pg.query_one(&format!("SELECT count(*) FROM progress WHERE {condition}"), &[]).await.unwrap().get(0)
}

/// Creates each `(id, status)`.
async fn create(app: &TestApp, records: &[(&str, &str)]) {
    for (id, status) in records {
        app.put_ok(id, &json!({"status": status})).await;
    }
}

/// Asserts the deleted ids are gone everywhere (410, no Redis key, a
/// tombstone in PostgreSQL) and the kept ones are untouched.
async fn assert_deleted_exactly(app: &TestApp, pg: &tokio_postgres::Client, deleted: &[&str], kept: &[&str]) {
    for id in deleted {
        assert_eq!(app.get(id).await.status(), StatusCode::GONE, "{id} is gone");
        assert!(!in_redis(app, id), "{id} is gone from Redis");
        assert_eq!(pg_row(pg, id).await, Some(true), "{id} is tombstoned in PostgreSQL");
    }
    for id in kept {
        assert_eq!(app.get(id).await.status(), StatusCode::OK, "{id} is kept");
        assert!(in_redis(app, id), "{id} is still in Redis");
        assert_eq!(pg_row(pg, id).await, Some(false), "{id} is live in PostgreSQL");
    }
}

// ------------------------------------------------------------------ cleanup

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_purges_exactly_the_expired_rows_of_postgres() {
    let db = TestDatabase::create().await;
    // Expired rows are kept the tombstone time (they answer 410); none here.
    let app = tiered_with(&db, |s| s.tombstone_seconds = 0).await;
    let pg = db.connect().await;
    create(&app, &[("live-1", "running"), ("live-2", "completed")]).await;
    app.send(Method::DELETE, "/progress/live-2", None, &[]).await; // a tombstone that has not expired
    pg.batch_execute(
        "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record, deleted)
         SELECT 'expired-' || n, 1, 'completed', now() - interval '2 days', now() - interval '2 days',
                now() - interval '1 second' * n, '\\x00'::bytea, n % 50 = 0
         FROM generate_series(1, 5000) AS n;
         INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
         SELECT 'future-' || n, 1, 'running', now(), now(), now() + interval '1 hour', '\\x00'::bytea
         FROM generate_series(1, 30) AS n;",
    )
    .await
    .unwrap();
    let before = count(&pg, "true").await;
    assert_eq!(count(&pg, "expires_at <= now()").await, 5000, "100 of them expired tombstones");

    let report = admin_ok(&app, Method::POST, "/admin/cleanup").await;
    assert_eq!(report["postgres_expired_rows"], 5000, "{report}");
    assert_eq!(report["redis_orphaned_index_entries"], 0, "{report}");
    assert!(report["memory_expired"].is_null(), "{report}");
    assert_eq!(report["total"], 5000);
    assert!(report["duration_ms"].as_f64().is_some());

    assert_eq!(count(&pg, "expires_at <= now()").await, 0);
    assert_eq!(count(&pg, "true").await, before - 5000, "only the expired rows went");
    assert_eq!(count(&pg, "id LIKE 'future-%'").await, 30);
    assert_eq!(pg_row(&pg, "live-2").await, Some(true), "a tombstone that has not expired stays");
    assert_eq!(app.get_ok("live-1").await["status"], "running");

    let again = admin_ok(&app, Method::POST, "/admin/cleanup").await;
    assert_eq!(again["postgres_expired_rows"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_of_the_embedded_store() {
    let app = spawn_app_with(Backend::Memory, with_admin).await;
    for n in 0..3 {
        app.put_ok(&format!("short-{n}"), &json!({"ttl_seconds": 1})).await;
    }
    app.put_ok("long", &json!({})).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let report = admin_ok(&app, Method::POST, "/admin/cleanup").await;
    assert_eq!(
        report,
        json!({
            "postgres_expired_rows": null,
            "memory_expired": 3,
            "redis_orphaned_index_entries": null,
            "total": 3,
            "duration_ms": report["duration_ms"],
        })
    );
    app.get_ok("long").await;
    assert_eq!(admin_ok(&app, Method::POST, "/admin/cleanup").await["memory_expired"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_runs_in_the_background_on_one_instance_at_a_time() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let app = spawn_app_with(Backend::Memory, move |s| {
        with_admin(s);
        s.database_url = Some(url);
        s.cleanup_interval_seconds = 1;
        s.tombstone_seconds = 0;
    })
    .await;
    wait_ready(&app).await;
    let pg = db.connect().await;
    // Another instance is cleaning up: it holds the lock.
    let other = db.connect().await;
    assert!(other.query_one("SELECT pg_try_advisory_lock($1)", &[&CLEANUP_LOCK]).await.unwrap().get::<_, bool>(0));
    pg.batch_execute(
        "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
         SELECT 'expired-' || n, 1, 'failed', now(), now(), now() - interval '1 minute', '\\x00'::bytea
         FROM generate_series(1, 1500) AS n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(count(&pg, "expires_at <= now()").await, 1500, "this instance left them to the lock holder");

    other.execute("SELECT pg_advisory_unlock($1)", &[&CLEANUP_LOCK]).await.unwrap();
    wait_for("the background cleanup", Duration::from_secs(5), async || count(&pg, "true").await == 0).await;
    // It lets go of its lock afterwards.
    wait_for("the lock released", Duration::from_secs(2), async || {
        other.query_one("SELECT pg_try_advisory_lock($1)", &[&CLEANUP_LOCK]).await.unwrap().get::<_, bool>(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_cleans_up_under_a_redis_lock() {
    let prefix = unique_prefix();
    let store = RedisStore::new(RedisStoreConfig {
        url: redis_url(),
        key_prefix: prefix.clone(),
        pool_size: 2,
        shared_connections: 1,
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    let lock = format!("{prefix}progressd:cleanup-lock");
    let mut conn = redis_conn();
    redis::cmd("SET").arg(&lock).arg("another-instance").arg("PX").arg(60_000).query::<()>(&mut conn).unwrap();
    assert!(store.cleanup(true).await.unwrap().is_none(), "another instance holds the lock");
    assert_eq!(redis::cmd("GET").arg(&lock).query::<String>(&mut conn).unwrap(), "another-instance", "and keeps it");
    redis::cmd("DEL").arg(&lock).query::<()>(&mut conn).unwrap();
    let report = store.cleanup(true).await.unwrap().expect("the lock is free");
    assert_eq!(report.redis_orphaned_index_entries, Some(0));
    assert!(!redis::cmd("EXISTS").arg(&lock).query::<bool>(&mut conn).unwrap(), "released afterwards");
    delete_keys(&redis_url(), &prefix);
}

// -------------------------------------------------------------- bulk delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_by_status() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    let pg = db.connect().await;
    create(&app, &[("a-1", "running"), ("a-2", "failed"), ("b-1", "failed"), ("b-2", "completed"), ("c-1", "failed")])
        .await;
    let kept = ["a-1", "b-2"];
    for id in kept {
        app.get_ok(id).await; // now in the read cache
    }
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=failed").await;
    assert_eq!(res, json!({"deleted": 3}));
    assert_deleted_exactly(&app, &pg, &["a-2", "b-1", "c-1"], &kept).await;
    assert_eq!(admin_ok(&app, Method::DELETE, "/admin/progress?status=failed").await, json!({"deleted": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_by_prefix() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    let pg = db.connect().await;
    create(
        &app,
        &[("book-1:ch1", "running"), ("book-1:ch2", "pending"), ("book-10", "running"), ("book-2:ch1", "completed")],
    )
    .await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?prefix=book-1:").await;
    assert_eq!(res, json!({"deleted": 2}));
    assert_deleted_exactly(&app, &pg, &["book-1:ch1", "book-1:ch2"], &["book-10", "book-2:ch1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_by_age() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    let pg = db.connect().await;
    create(&app, &[("old-1", "running"), ("old-2", "completed")]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    create(&app, &[("mid-1", "running")]).await;
    let res = admin_ok(&app, Method::DELETE, &format!("/admin/progress?older_than={cutoff}")).await;
    assert_eq!(res, json!({"deleted": 2}));
    assert_deleted_exactly(&app, &pg, &["old-1", "old-2"], &["mid-1"]).await;

    // As a duration: mid-1 is over a second old, new-1 is not.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    create(&app, &[("new-1", "running")]).await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?older_than=1s").await;
    assert_eq!(res, json!({"deleted": 1}));
    assert_deleted_exactly(&app, &pg, &["mid-1"], &["new-1"]).await;
    // An offset with its `+` percent-encoded.
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?older_than=2000-01-01T01:00:00%2B01:00").await;
    assert_eq!(res, json!({"deleted": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_with_combined_filters() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    let pg = db.connect().await;
    create(&app, &[("x-1", "failed"), ("x-2", "running"), ("y-1", "failed")]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    create(&app, &[("x-3", "failed")]).await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=failed&prefix=x-&older_than=1s").await;
    assert_eq!(res, json!({"deleted": 1}));
    assert_deleted_exactly(&app, &pg, &["x-1"], &["x-2", "y-1", "x-3"]).await;
}

/// PostgreSQL lags Redis by up to the persist interval: Redis's current
/// version decides, and records only PostgreSQL holds are deleted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_judges_by_the_newest_version() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    let pg = db.connect().await;
    create(&app, &[("moved", "pending"), ("lost", "pending")]).await;
    // An update that only Redis has seen so far (persist interval: 10 s).
    app.patch_ok("moved", &json!({"status": "running"})).await;
    let status: String = pg.query_one("SELECT status FROM progress WHERE id = 'moved'", &[]).await.unwrap().get(0);
    assert_eq!(status, "pending", "PostgreSQL has the old version");
    // Redis loses `lost` behind the service's back; a read would repair it from PostgreSQL.
    let key = format!("{}progress:lost", app.settings.key_prefix);
    redis::cmd("DEL").arg(key).query::<i64>(&mut redis_conn()).unwrap();

    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=pending").await;
    assert_eq!(res, json!({"deleted": 1}), "`moved` is running now; `lost` is pending in PostgreSQL");
    assert_eq!(app.get_ok("moved").await["status"], "running");
    assert_eq!(app.get("lost").await.status(), StatusCode::GONE, "not brought back by read repair");
    assert_eq!(pg_row(&pg, "lost").await, Some(true));

    assert_eq!(admin_ok(&app, Method::DELETE, "/admin/progress?status=running").await, json!({"deleted": 1}));
    assert_deleted_exactly(&app, &pg, &["moved"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_with_postgres_alone() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let app = spawn_app_with(Backend::Memory, move |s| {
        with_admin(s);
        s.database_url = Some(url);
    })
    .await;
    wait_ready(&app).await;
    let pg = db.connect().await;
    create(&app, &[("a-1", "failed"), ("a-2", "running"), ("b-1", "failed")]).await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=failed&prefix=a-").await;
    assert_eq!(res, json!({"deleted": 1}));
    assert_eq!(app.get("a-1").await.status(), StatusCode::GONE);
    assert_eq!(pg_row(&pg, "a-1").await, Some(true));
    for id in ["a-2", "b-1"] {
        app.get_ok(id).await;
        assert_eq!(pg_row(&pg, id).await, Some(false));
    }
}

/// While Redis is down PostgreSQL's rows are tombstoned; when Redis returns
/// with its old data, the copy-back deletes them there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_while_redis_is_down_reaches_redis_when_it_returns() {
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let db = TestDatabase::create().await;
    let (redis_url, db_url) = (format!("redis://{}", proxy.addr()), db.url().to_owned());
    let app = spawn_app_with(Backend::Redis, move |s| {
        with_admin(s);
        s.redis_url = Some(redis_url);
        s.database_url = Some(db_url);
        s.redis_timeout_ms = 300;
    })
    .await;
    wait_ready(&app).await;
    create(&app, &[("d-1", "failed"), ("d-2", "running")]).await;
    let mut own = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let key = |id: &str| format!("{}progress:{id}", app.settings.key_prefix);

    proxy.set_mode(Mode::Reset).await;
    wait_for("Redis's breaker open", Duration::from_secs(10), async || {
        app.get("d-2").await.status() == StatusCode::OK
            && admin_ok(&app, Method::GET, "/admin/stats").await["breakers"]["redis"] == "open"
    })
    .await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=failed").await;
    assert_eq!(res, json!({"deleted": 1}));
    assert_eq!(app.get("d-1").await.status(), StatusCode::GONE);
    assert!(redis::cmd("EXISTS").arg(key("d-1")).query::<bool>(&mut own).unwrap(), "Redis still holds it");

    proxy.set_mode(Mode::Forward).await;
    wait_for("the copy-back", Duration::from_secs(10), async || {
        !redis::cmd("EXISTS").arg(key("d-1")).query::<bool>(&mut own).unwrap()
    })
    .await;
    assert_eq!(app.get("d-1").await.status(), StatusCode::GONE);
    app.get_ok("d-2").await;
    assert!(redis::cmd("EXISTS").arg(key("d-2")).query::<bool>(&mut own).unwrap());
}

async fn bulk_delete_on(backend: Backend) {
    let app = spawn_app_with(backend, with_admin).await;
    create(&app, &[("p-1", "failed"), ("p-2", "running"), ("q-1", "failed")]).await;
    let res = admin_ok(&app, Method::DELETE, "/admin/progress?status=failed&prefix=p-").await;
    assert_eq!(res, json!({"deleted": 1}));
    assert_eq!(app.get("p-1").await.status(), StatusCode::GONE);
    app.get_ok("p-2").await;
    app.get_ok("q-1").await;
    if backend == Backend::Redis {
        assert!(!in_redis(&app, "p-1") && in_redis(&app, "q-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_in_memory() {
    bulk_delete_on(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_in_redis_alone() {
    bulk_delete_on(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_delete_refuses_a_missing_or_bad_filter() {
    let app = spawn_app_with(Backend::Memory, with_admin).await;
    app.put_ok("stays", &json!({"status": "failed"})).await;
    for query in ["", "?status=", "?status=&prefix=&older_than="] {
        let res = admin(&app, Method::DELETE, &format!("/admin/progress{query}")).await;
        assert_problem(res, 400, "filter_required").await;
    }
    for query in [
        "?older_than=yesterday",
        "?older_than=10",
        "?older_than=5w",
        "?status=done",
        "?prefix=a/b",
        "?stauts=failed",
        "?status=failed&status=running",
    ] {
        let res = admin(&app, Method::DELETE, &format!("/admin/progress{query}")).await;
        let doc = assert_problem(res, 400, "invalid_query").await;
        assert!(!doc["detail"].as_str().unwrap().is_empty(), "{query}: {doc}");
    }
    app.get_ok("stays").await;
}

// -------------------------------------------------------------------- stats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_by_status_in_postgres() {
    let db = TestDatabase::create().await;
    let app = tiered(&db).await;
    create(
        &app,
        &[("s-1", "pending"), ("s-2", "running"), ("s-3", "running"), ("s-4", "completed"), ("s-5", "failed")],
    )
    .await;
    app.patch_ok("s-1", &json!({"status": "running"})).await; // in the backlog only
    app.send(Method::DELETE, "/progress/s-5", None, &[]).await;

    let stats = admin_ok(&app, Method::GET, "/admin/stats").await;
    assert_eq!(stats["status"], "ok", "{stats:#}");
    assert_eq!(stats["records"]["source"], "postgres");
    assert_eq!(
        stats["records"]["by_status"],
        json!({"pending": 0, "running": 3, "completed": 1, "failed": 0, "cancelled": 0}),
        "{stats:#}"
    );
    assert_eq!(stats["records"]["total"], 4);
    assert!(stats["records_error"].is_null());
    assert_eq!(stats["dependencies"]["redis"]["state"], "up");
    assert_eq!(stats["dependencies"]["postgres"]["state"], "up");
    assert!(stats["breakers"]["redis"].is_string() && stats["breakers"]["postgres"].is_string(), "{stats:#}");
    assert_eq!(stats["write_behind"]["pending"], 0, "counting flushed this instance's backlog first: {stats:#}");
    assert!(stats["write_behind"].get("oldest_age_ms").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_in_redis_and_in_memory() {
    for backend in [Backend::Redis, Backend::Memory] {
        let app = spawn_app_with(backend, with_admin).await;
        create(&app, &[("r-1", "running"), ("r-2", "running"), ("r-3", "cancelled")]).await;
        let stats = admin_ok(&app, Method::GET, "/admin/stats").await;
        let source = if backend == Backend::Redis { "redis" } else { "memory" };
        assert_eq!(stats["records"]["source"], source);
        assert_eq!(
            stats["records"]["by_status"],
            json!({"pending": 0, "running": 2, "completed": 0, "failed": 0, "cancelled": 1}),
            "{stats:#}"
        );
        assert!(stats["write_behind"].is_null(), "no backlog without PostgreSQL");
        assert_eq!(stats["breakers"], json!({}));
        assert_eq!(stats["dependencies"][source]["state"], "up");
    }
}

// -------------------------------------------------------------------- access

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_token() {
    let app = spawn_app_with(Backend::Memory, with_admin).await;
    let routes = [
        (Method::POST, "/admin/cleanup"),
        (Method::DELETE, "/admin/progress?status=failed"),
        (Method::GET, "/admin/stats"),
    ];
    for (method, path) in &routes {
        let res = app.send(method.clone(), path, None, &[]).await;
        assert_problem(res, 401, "unauthorized").await;
        let res = app.send(method.clone(), path, None, &[("authorization", "Bearer not-the-token")]).await;
        assert_problem(res, 401, "unauthorized").await;
    }
    // Without PROGRESS_ADMIN_TOKEN, admin routes refuse everyone.
    let app = spawn_app_with(Backend::Memory, |s| s.admin_token = None).await;
    for (method, path) in &routes {
        let res = admin(&app, method.clone(), path).await;
        assert_problem(res, 403, "admin_disabled").await;
    }
    // /readyz needs nothing.
    assert_eq!(app.send(Method::GET, "/readyz", None, &[]).await.status(), StatusCode::OK);
}
