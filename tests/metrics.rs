//! `GET /metrics`: the Prometheus text format, request metrics keyed by the
//! matched route (never a raw id), and store metrics that move with traffic
//! on Redis and on Redis over PostgreSQL.
//!
//! The recorder is process-wide, so every test here scrapes before and
//! after its own traffic and compares the difference. The tests also take
//! [`exclusive`] so that no other test of this file moves the same series
//! in between, which lets HTTP counts be compared exactly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::{Backend, TestApp, redis_conn, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};

/// One series of a scrape: its name and labels.
type Series = (String, BTreeMap<String, String>);

/// A parsed scrape.
struct Scrape(Vec<(Series, f64)>);

impl Scrape {
    /// The sum of the samples of `name` that carry every label in `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Whether any sample of `name` carries every label in `labels`.
    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0
            .iter()
            .any(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
    }

    /// Every value the label `label` takes on samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> =
            self.0.iter().filter(|((n, _), _)| n == name).filter_map(|((_, l), _)| l.get(label).cloned()).collect();
        values.sort();
        values.dedup();
        values
    }
}

/// Parses the text format: `name{k="v",…} value` lines; `#` lines skipped.
fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("sample value: {line}"));
        let (name, mut rest) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label: {line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => value.push(chars.next().expect("escaped character").1),
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = after[end + 1..].trim_start_matches(',');
        }
        samples.push(((name.to_owned(), labels), value));
    }
    Scrape(samples)
}

/// Serialises the tests of this file (see the module doc).
async fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// `GET /metrics` as text, asserting the status and content type.
async fn scrape_text(app: &TestApp) -> String {
    let res = app.send(Method::GET, "/metrics", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type}");
    res.text().await.unwrap()
}

async fn scrape(app: &TestApp) -> Scrape {
    parse(&scrape_text(app).await)
}

const REQUESTS: &str = "http_requests_total";
const DURATION_COUNT: &str = "http_request_duration_seconds_count";
const DURATION_BUCKET: &str = "http_request_duration_seconds_bucket";
const STORE_OPS: &str = "progressd_store_operations_total";
const STORE_ERRORS: &str = "progressd_store_errors_total";
const RECORD: &str = "/progress/{id}";

fn requests(s: &Scrape, method: &str, route: &str, status: &str) -> f64 {
    s.value(REQUESTS, &[("method", method), ("route", route), ("status", status)])
}

/// A unique id, so that no other test's traffic is mistaken for ours.
fn unique_id(name: &str) -> String {
    common::unique_prefix().replace(['-', ':'], ".") + name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_method_matched_route_and_status() {
    let _serial = exclusive().await;
    let app = spawn_app(Backend::Memory).await;
    let id = unique_id("counted");
    let before = scrape(&app).await;

    assert_eq!(app.put(&id, &json!({"status": "running"})).await.status(), StatusCode::CREATED);
    assert_eq!(app.put(&id, &json!({"status": "running", "progress": 5})).await.status(), StatusCode::OK);
    let etag = app.get(&id).await.headers()["etag"].to_str().unwrap().to_owned();
    let not_modified = app.send(Method::GET, &format!("/progress/{id}"), None, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(app.get(&unique_id("absent")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.send(Method::DELETE, &format!("/progress/{id}"), None, &[]).await.status(), StatusCode::NO_CONTENT);

    let after = scrape(&app).await;
    let delta = |method, status| requests(&after, method, RECORD, status) - requests(&before, method, RECORD, status);
    assert_eq!(delta("PUT", "201"), 1.0);
    assert_eq!(delta("PUT", "200"), 1.0);
    assert_eq!(delta("GET", "200"), 1.0);
    assert_eq!(delta("GET", "304"), 1.0);
    assert_eq!(delta("GET", "404"), 1.0);
    assert_eq!(delta("DELETE", "204"), 1.0);
    // The first scrape is counted by the second.
    assert!(requests(&after, "GET", "/metrics", "200") >= 1.0);

    let timed = |s: &Scrape, method| s.value(DURATION_COUNT, &[("method", method), ("route", RECORD)]);
    assert_eq!(timed(&after, "GET") - timed(&before, "GET"), 3.0);
    assert_eq!(timed(&after, "PUT") - timed(&before, "PUT"), 2.0);
    let buckets = after.label_values(DURATION_BUCKET, "le");
    for le in ["0.0005", "0.001", "0.01", "0.1", "1", "10", "+Inf"] {
        assert!(buckets.iter().any(|b| b == le), "bucket le={le} in {buckets:?}");
    }
    let all = [("method", "GET"), ("route", RECORD), ("le", "+Inf")];
    assert_eq!(after.value(DURATION_BUCKET, &all), timed(&after, "GET"), "+Inf holds every sample");

    let written = |s: &Scrape, kind| s.value("progressd_records_written_total", &[("kind", kind)]);
    assert_eq!(written(&after, "create") - written(&before, "create"), 1.0);
    assert_eq!(written(&after, "update") - written(&before, "update"), 1.0);
    let deleted = |s: &Scrape| s.value("progressd_records_deleted_total", &[]);
    assert_eq!(deleted(&after) - deleted(&before), 1.0);
    let memory_sets = |s: &Scrape| s.value(STORE_OPS, &[("tier", "memory"), ("op", "compare_and_set")]);
    assert_eq!(memory_sets(&after) - memory_sets(&before), 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_label_never_holds_a_raw_id() {
    let _serial = exclusive().await;
    let app = spawn_app(Backend::Memory).await;
    let ids: Vec<String> = (0..5).map(|i| unique_id(&format!("raw{i}"))).collect();
    for id in &ids {
        app.put_ok(id, &json!({"progress": 1})).await;
        app.get_ok(id).await;
        app.send(Method::POST, &format!("/progress/{id}"), None, &[]).await; // 405 on a matched path
    }
    let text = scrape_text(&app).await;
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} appears in the scrape");
    }
    let scrape = parse(&text);
    let table: Vec<&str> = progressd::http::routes().iter().map(|r| r.path).collect();
    for route in scrape.label_values(REQUESTS, "route").iter().chain(&scrape.label_values(DURATION_COUNT, "route")) {
        assert!(table.contains(&route.as_str()) || route == "unmatched", "route label {route:?}");
    }
    assert!(requests(&scrape, "POST", RECORD, "405") >= 5.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_paths_share_one_label() {
    let _serial = exclusive().await;
    let app = spawn_app(Backend::Memory).await;
    let marker = unique_id("nowhere");
    let before = scrape(&app).await;
    for path in [format!("/{marker}"), format!("/{marker}/a/b"), format!("/progress/{marker}/c/d")] {
        assert_eq!(app.send(Method::GET, &path, None, &[]).await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(app.send(Method::POST, &format!("/{marker}"), None, &[]).await.status(), StatusCode::NOT_FOUND);
    let text = scrape_text(&app).await;
    assert!(!text.contains(&marker), "an unmatched path appears in the scrape");
    let after = parse(&text);
    let delta = |method| requests(&after, method, "unmatched", "404") - requests(&before, method, "unmatched", "404");
    assert_eq!(delta("GET"), 3.0);
    assert_eq!(delta("POST"), 1.0);
    // A method outside the standard set cannot mint a series of its own.
    let brew = Method::from_bytes(b"BREW").unwrap();
    app.send(brew, &format!("/{marker}"), None, &[]).await;
    let last = scrape(&app).await;
    assert_eq!(requests(&last, "other", "unmatched", "404") - requests(&after, "other", "unmatched", "404"), 1.0);
    assert!(!last.label_values(REQUESTS, "method").contains(&"BREW".to_owned()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_token() {
    let _serial = exclusive().await;
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["read-secret".into()];
        s.write_tokens = vec!["write-secret".into()];
        s.admin_token = Some("admin-secret".into());
    })
    .await;
    assert_eq!(app.send(Method::GET, "/healthz", None, &[]).await.status(), StatusCode::OK);
    let scrape = scrape(&app).await; // no Authorization header
    assert!(requests(&scrape, "GET", "/healthz", "200") >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_metrics_move_with_redis() {
    let _serial = exclusive().await;
    let app = spawn_app(Backend::Redis).await;
    let id = unique_id("redis");
    let before = scrape(&app).await;
    app.put_ok(&id, &json!({"status": "running"})).await;
    app.patch_ok(&id, &json!({"progress": 50})).await;
    app.get_ok(&id).await;
    assert_eq!(app.send(Method::DELETE, &format!("/progress/{id}"), None, &[]).await.status(), StatusCode::NO_CONTENT);
    let after = scrape(&app).await;

    let ops = |s: &Scrape, op| s.value(STORE_OPS, &[("tier", "redis"), ("op", op)]);
    assert_eq!(ops(&after, "compare_and_set") - ops(&before, "compare_and_set"), 2.0);
    assert_eq!(ops(&after, "delete") - ops(&before, "delete"), 1.0);
    // The write path reads first: the PUT asks Redis (nothing is cached for a
    // new id); the PATCH and the GET may be answered by the read cache, which
    // keeps what the PUT stored.
    assert!(ops(&after, "get") - ops(&before, "get") >= 1.0);
    let errors = |s: &Scrape| s.value(STORE_ERRORS, &[("tier", "redis")]);
    assert_eq!(errors(&after), errors(&before), "a healthy Redis fails nothing");
    assert!(after.value("progressd_pool_connections", &[("tier", "redis")]) >= 1.0);
    assert_eq!(
        after.value("progressd_pool_max_connections", &[("tier", "redis")]),
        (app.settings.redis_pool_size.max(app.settings.redis_connections)) as f64
    );
    assert!(after.has("progressd_pool_idle_connections", &[("tier", "redis")]));
    assert!(after.has("progressd_pool_waiting", &[("tier", "redis")]));
    assert!(after.has("progressd_read_cache_entries", &[]));
    app.stop().await;
}

/// Redis over the shared PostgreSQL (database `db`), read cache off, with
/// `redis_url` as the hot tier.
async fn tiered(db: &TestDatabase, tweak: impl FnOnce(&mut progressd::Settings)) -> TestApp {
    let url = db.url().to_owned();
    spawn_app_with(Backend::Redis, move |s| {
        s.database_url = Some(url);
        s.persist_interval_seconds = 60;
        s.breaker_probe_ms = 100;
        s.breaker_failures = 2;
        s.database_timeout_ms = 2_000;
        s.redis_timeout_ms = 500;
        s.cache_max_age_ms = 0;
        tweak(s);
    })
    .await
}

/// Scrapes until `ready` holds (the breakers settle in the background).
async fn scrape_until(app: &TestApp, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(app).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BREAKER: &str = "progressd_circuit_breaker_state";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_metrics_move_with_the_tiered_store() {
    let _serial = exclusive().await;
    let db = TestDatabase::create().await;
    let app = tiered(&db, |_| {}).await;
    // The PostgreSQL breaker starts open and half-opens once migrations ran.
    scrape_until(&app, "migrations", |s| s.value(BREAKER, &[("tier", "postgres")]) < 2.0).await;
    let before = scrape(&app).await;

    let id = unique_id("tiered");
    app.put_ok(&id, &json!({"status": "running"})).await; // a create: persisted before the answer
    app.patch_ok(&id, &json!({"progress": 10})).await; // an update: joins the backlog
    let mid = scrape(&app).await;
    assert_eq!(mid.value(BREAKER, &[("tier", "redis")]), 0.0, "redis breaker closed");
    assert_eq!(mid.value(BREAKER, &[("tier", "postgres")]), 0.0, "postgres breaker closed after a success");
    assert_eq!(mid.value("progressd_write_behind_backlog", &[]), 1.0);
    assert!(mid.has("progressd_write_behind_oldest_age_seconds", &[]));

    // Only PostgreSQL has it now: the read falls back (and repairs Redis).
    let key = format!("{}progress:{id}", app.settings.key_prefix);
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut redis_conn()).unwrap();
    app.get_ok(&id).await;
    let after = scrape(&app).await;

    let pg = |s: &Scrape, op| s.value(STORE_OPS, &[("tier", "postgres"), ("op", op)]);
    assert!(pg(&after, "upsert_newer") - pg(&before, "upsert_newer") >= 1.0, "the create reached PostgreSQL");
    assert!(pg(&after, "lookup") - pg(&before, "lookup") >= 1.0, "the read looked in PostgreSQL");
    assert!(pg(&after, "migrate") >= 1.0);
    let redis = |s: &Scrape, op| s.value(STORE_OPS, &[("tier", "redis"), ("op", op)]);
    assert!(redis(&after, "put_if_newer") - redis(&before, "put_if_newer") >= 1.0, "read repair");
    let fallback = |s: &Scrape, reason| s.value("progressd_fallback_reads_total", &[("reason", reason)]);
    // A create reads first, and a Redis miss sends that read to PostgreSQL too.
    assert_eq!(fallback(&mid, "redis_miss") - fallback(&before, "redis_miss"), 1.0);
    assert_eq!(fallback(&after, "redis_miss") - fallback(&mid, "redis_miss"), 1.0);
    assert!(after.value("progressd_pool_connections", &[("tier", "postgres")]) >= 1.0);
    assert_eq!(
        after.value("progressd_pool_max_connections", &[("tier", "postgres")]),
        app.settings.database_pool_size.max(1) as f64
    );
    app.stop().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_shows_in_errors_the_breaker_and_fallback_reads() {
    let _serial = exclusive().await;
    let db = TestDatabase::create().await;
    // Nothing listens on port 1: every Redis operation is refused at once.
    let app = tiered(&db, |s| s.redis_url = Some("redis://127.0.0.1:1".into())).await;
    scrape_until(&app, "migrations", |s| s.value(BREAKER, &[("tier", "postgres")]) < 2.0).await;
    let before = scrape(&app).await;

    let id = unique_id("outage");
    for _ in 0..3 {
        assert_eq!(app.get(&id).await.status(), StatusCode::NOT_FOUND);
    }
    let after = scrape(&app).await;
    let errors = |s: &Scrape, op: &str| s.value(STORE_ERRORS, &[("tier", "redis"), ("op", op)]);
    // The first read fails in Redis twice (the record, then its gone marker:
    // a 404 asks whether it is gone), which opens the breaker; the next
    // reads skip Redis.
    assert_eq!(errors(&after, "get") - errors(&before, "get"), 1.0, "one failed get");
    assert_eq!(errors(&after, "gone") - errors(&before, "gone"), 1.0, "one failed gone");
    let opened = |s: &Scrape| s.value("progressd_circuit_breaker_opened_total", &[("tier", "redis")]);
    assert!(opened(&after) - opened(&before) >= 1.0);
    assert_eq!(after.value(BREAKER, &[("tier", "redis")]), 2.0, "open");
    let fallback = |s: &Scrape| s.value("progressd_fallback_reads_total", &[("reason", "redis_unavailable")]);
    assert_eq!(fallback(&after) - fallback(&before), 3.0);
    app.stop().await;
    drop(db);
}
