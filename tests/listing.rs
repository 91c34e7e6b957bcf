//! `GET /progress`: newest-first listing with cursor pagination, on the
//! embedded store, on Redis, on PostgreSQL alone and on Redis over
//! PostgreSQL. Order, pages that neither repeat nor skip (also while other
//! clients create and update records), the status and prefix filters, the
//! bound on the work of one page, expiry and deletes (and the Redis index
//! upkeep behind them), bad parameters, and who may list.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::proxy::{Mode, Proxy};
use common::{
    Backend, TestApp, assert_problem, delete_keys, redis_conn, redis_url, spawn_app, spawn_app_with, unique_prefix,
    until_writes_resume,
};
use progressd::Settings;
use progressd::domain::{ClientFields, ProgressId, Status, StoredRecord, Timestamp, Touched, WritePolicy, apply_write};
use progressd::store::{
    ListCursor, ListPage, ListQuery, Maintenance, MemoryStore, PostgresStore, PostgresStoreConfig, ProgressStore,
    RedisStore, RedisStoreConfig, Store,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "list-admin";

/// A page as the API returns it: the items and `next_cursor`.
struct Page {
    items: Vec<Value>,
    next: Option<String>,
}

impl Page {
    fn ids(&self) -> Vec<String> {
        self.items.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
    }
}

/// `GET /progress?{query}` with `headers`, asserting a 200 page.
async fn page_with(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> Page {
    let res = app.send(Method::GET, &format!("/progress?{query}"), None, headers).await;
    let status = res.status();
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "GET /progress?{query}: {text}");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    let members: BTreeSet<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["items", "next_cursor"]), "{text}");
    let next = match &doc["next_cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next_cursor is a string or null: {other}"),
    };
    Page { items: doc["items"].as_array().unwrap().clone(), next }
}

async fn page(app: &TestApp, query: &str) -> Page {
    page_with(app, query, &[]).await
}

/// Follows `next_cursor` from the first page of `query` to the end; the
/// pages. Panics after `max_pages`.
async fn all_pages_with(app: &TestApp, query: &str, headers: &[(&str, &str)], max_pages: usize) -> Vec<Page> {
    pages_from(app, query, None, headers, max_pages).await
}

/// Like [`all_pages_with`], from the page after `cursor`.
async fn pages_from(
    app: &TestApp,
    query: &str,
    mut cursor: Option<String>,
    headers: &[(&str, &str)],
    max_pages: usize,
) -> Vec<Page> {
    let mut pages = Vec::new();
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_owned(),
        };
        let p = page_with(app, &q, headers).await;
        cursor = p.next.clone();
        pages.push(p);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < max_pages, "more than {max_pages} pages for {query}");
    }
}

async fn all_pages(app: &TestApp, query: &str, max_pages: usize) -> Vec<Page> {
    all_pages_with(app, query, &[], max_pages).await
}

/// The ids of all pages, in order.
fn ids_of(pages: &[Page]) -> Vec<String> {
    pages.iter().flat_map(Page::ids).collect()
}

/// The listing order of records: `(created_at, id)`, descending. The
/// RFC 3339 times have a fixed width, so they compare as text.
fn order_key(record: &Value) -> (String, String) {
    (record["created_at"].as_str().unwrap().to_owned(), record["id"].as_str().unwrap().to_owned())
}

/// Asserts the items are in strictly descending listing order.
fn assert_newest_first(items: &[Value]) {
    for pair in items.windows(2) {
        assert!(
            order_key(&pair[0]) > order_key(&pair[1]),
            "out of order: {:?} then {:?}",
            order_key(&pair[0]),
            order_key(&pair[1])
        );
    }
}

fn assert_each_once(ids: &[String]) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id), "{id} is listed twice");
    }
}

/// PUTs every `(id, body)`, 16 at a time.
async fn create_many(app: &TestApp, mut records: Vec<(String, Value)>) {
    while !records.is_empty() {
        let batch: Vec<(String, Value)> = records.drain(..records.len().min(16)).collect();
        let calls = batch.into_iter().map(|(id, body)| async move {
            let status = app.client.put(app.url(&format!("/progress/{id}"))).json(&body).send().await.unwrap().status();
            (id, status)
        });
        for (id, status) in futures_util::future::join_all(calls).await {
            assert!(status.is_success(), "PUT {id}: {status}");
        }
    }
}

// ====================================================== memory and Redis

async fn lists_newest_first_as_get_renders_each_record(backend: Backend) {
    let app = spawn_app(backend).await;
    let empty = page(&app, "").await;
    assert!(empty.items.is_empty() && empty.next.is_none());

    for id in ["b", "a", "c", "a-1"] {
        app.put_ok(id, &json!({"status": "running", "metadata": {"big": 9007199254740993u64}})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    app.patch_ok("b", &json!({"message": "updated last"})).await;
    let listed = page(&app, "").await;
    assert_eq!(listed.ids(), ["a-1", "c", "a", "b"], "creation order, newest first; an update does not move b");
    assert!(listed.next.is_none());
    for item in &listed.items {
        let id = item["id"].as_str().unwrap();
        assert_eq!(*item, app.get_ok(id).await, "{id} is listed exactly as GET returns it");
    }
    assert_eq!(listed.items[0]["metadata"]["big"].to_string(), "9007199254740993");
    // HEAD answers too.
    let res = app.send(Method::HEAD, "/progress", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn pages_through_every_record_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let records = (0..120).map(|n| (format!("rec-{n:03}"), json!({"status": "pending"}))).collect();
    create_many(&app, records).await;

    let pages = all_pages(&app, "limit=7", 40).await;
    assert_eq!(pages.len(), 18, "120 records, 7 a page");
    assert!(pages[..17].iter().all(|p| p.items.len() == 7));
    assert_eq!(pages[17].items.len(), 1);
    let ids = ids_of(&pages);
    assert_each_once(&ids);
    assert_eq!(ids.len(), 120);
    let items: Vec<Value> = pages.iter().flat_map(|p| p.items.clone()).collect();
    assert_newest_first(&items);

    // The default limit is 50; the largest is 500.
    let first = page(&app, "").await;
    assert_eq!(first.items.len(), 50);
    assert!(first.next.is_some());
    let everything = page(&app, "limit=500").await;
    assert_eq!(everything.items.len(), 120);
    assert!(everything.next.is_none());
}

async fn paging_while_records_change_neither_repeats_nor_skips(backend: Backend) {
    let app = spawn_app(backend).await;
    let originals: Vec<String> = (0..100).map(|n| format!("old-{n:03}")).collect();
    let records = originals.iter().map(|id| (id.clone(), json!({"status": "pending"}))).collect();
    create_many(&app, records).await;

    // Writers: one creates new records, two move the old ones between statuses.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    {
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .put(format!("{base}/progress/new-{n:04}"))
                    .json(&json!({"status": "running"}))
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success());
                n += 1;
            }
            n
        }));
    }
    for w in 0..2 {
        let (client, base, stop, ids) = (app.client.clone(), app.base.clone(), stop.clone(), originals.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[fastrand::usize(..ids.len())];
                let status = if (n + w) % 2 == 0 { "running" } else { "pending" };
                let res = client
                    .patch(format!("{base}/progress/{id}"))
                    .json(&json!({"status": status, "message": format!("write {n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map_or("limit=7".to_owned(), |c| format!("limit=7&cursor={c}"));
        let p = page(&app, &q).await;
        cursor = p.next.clone();
        pages.push(p);
        if cursor.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    assert!(writes > 20, "the writers ran while paging ({writes} writes)");

    let ids = ids_of(&pages);
    assert_each_once(&ids);
    let listed: HashSet<&String> = ids.iter().collect();
    for id in &originals {
        assert!(listed.contains(id), "{id} existed before paging began but was not listed");
    }
    let items: Vec<Value> = pages.iter().flat_map(|p| p.items.clone()).collect();
    assert_newest_first(&items);
}

async fn filters_by_status_and_prefix(backend: Backend) {
    let app = spawn_app(backend).await;
    let plan = [
        ("a-1", "pending"),
        ("b-1", "running"),
        ("a-2", "running"),
        ("a-3", "failed"),
        ("b-2", "completed"),
        ("a-4", "running"),
        ("c-1", "cancelled"),
    ];
    for (id, status) in plan {
        app.put_ok(id, &json!({"status": status})).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ids = |q: &'static str| {
        let app = &app;
        async move { ids_of(&all_pages(app, q, 10).await) }
    };
    assert_eq!(ids("status=running").await, ["a-4", "a-2", "b-1"]);
    assert_eq!(ids("status=running&limit=1").await, ["a-4", "a-2", "b-1"], "paged one by one");
    assert_eq!(ids("status=failed,pending").await, ["a-3", "a-1"]);
    assert_eq!(ids("status=running,failed,completed&limit=2").await, ["a-4", "b-2", "a-3", "a-2", "b-1"]);
    assert_eq!(ids("prefix=a-").await, ["a-4", "a-3", "a-2", "a-1"]);
    assert_eq!(ids("prefix=a-&status=running").await, ["a-4", "a-2"]);
    assert_eq!(ids("prefix=b-&limit=1").await, ["b-2", "b-1"]);
    assert_eq!(ids("prefix=zz").await, Vec::<String>::new());
    assert_eq!(ids("status=").await.len(), 7, "an empty value counts as absent");

    // A status change moves the record between the status listings, not in the order.
    app.patch_ok("a-1", &json!({"status": "running"})).await;
    assert_eq!(ids("status=running").await, ["a-4", "a-2", "b-1", "a-1"]);
    assert_eq!(ids("status=pending").await, Vec::<String>::new());
    assert_eq!(ids("").await, ["c-1", "a-4", "b-2", "a-3", "a-2", "b-1", "a-1"]);
}

async fn a_prefix_page_examines_a_bounded_number_of_entries(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("wanted-old", &json!({})).await;
    let others = (0..1100).map(|n| (format!("other-{n:04}"), json!({}))).collect();
    create_many(&app, others).await;
    app.put_ok("wanted-new", &json!({})).await;

    // 1102 records; the 1000 newest hold one match: the first page finds it
    // and stops at the budget, short, with a cursor to go on from.
    let first = page(&app, "prefix=wanted-&limit=10").await;
    assert_eq!(first.ids(), ["wanted-new"]);
    let cursor = first.next.expect("the budget ran out before the end: a cursor");
    let second = page(&app, &format!("prefix=wanted-&limit=10&cursor={cursor}")).await;
    assert_eq!(second.ids(), ["wanted-old"]);
    assert!(second.next.is_none());

    // A page may come back empty and still point further.
    let pages = all_pages(&app, "prefix=nothing-", 10).await;
    assert_eq!(pages.len(), 2);
    assert!(pages.iter().all(|p| p.items.is_empty()));
}

async fn expired_and_deleted_records_vanish_and_cleanup_prunes_the_index(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.admin_token = Some(ADMIN.into())).await;
    let token = format!("Bearer {ADMIN}");
    let auth = [("authorization", token.as_str())];
    for id in ["short-1", "short-2", "again"] {
        app.put_ok(id, &json!({"status": "running", "ttl_seconds": 1})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for id in ["long-1", "long-2", "gone"] {
        app.put_ok(id, &json!({"status": "running"})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let res = app.send(Method::DELETE, "/progress/gone", None, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let listed = ids_of(&all_pages_with(&app, "limit=2", &auth, 10).await);
    assert_eq!(listed, ["long-2", "long-1", "again", "short-2", "short-1"], "a deleted record is not listed");

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Created again after it expired: a new incarnation, listed once, as the newest.
    app.put_ok("again", &json!({"status": "pending"})).await;
    let listed = ids_of(&all_pages_with(&app, "limit=2", &auth, 10).await);
    assert_eq!(listed, ["again", "long-2", "long-1"], "expired records are not listed");
    assert_eq!(ids_of(&all_pages_with(&app, "status=running", &auth, 10).await), ["long-2", "long-1"]);

    let res = app.send(Method::POST, "/admin/cleanup", None, &auth).await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    if backend == Backend::Redis {
        // short-1, short-2 and the first incarnation of `again`.
        assert_eq!(report["redis_orphaned_index_entries"], 3, "{report}");
        let mut conn = redis_conn();
        let prefix = &app.settings.key_prefix;
        let zcard = |conn: &mut ::redis::Connection, key: &str| -> usize {
            ::redis::cmd("ZCARD").arg(format!("{prefix}progressd:{key}")).query(conn).unwrap()
        };
        assert_eq!(zcard(&mut conn, "index"), 3);
        assert_eq!(zcard(&mut conn, "expiry"), 3);
        assert_eq!(zcard(&mut conn, "index:running"), 2);
        assert_eq!(zcard(&mut conn, "index:pending"), 1);
        let again = app.send(Method::POST, "/admin/cleanup", None, &auth).await.json::<Value>().await.unwrap();
        assert_eq!(again["redis_orphaned_index_entries"], 0);
    } else {
        assert_eq!(report["memory_expired"], 2, "{report}");
    }
    assert_eq!(ids_of(&all_pages_with(&app, "", &auth, 10).await), ["again", "long-2", "long-1"]);
}

on_both_stores!(
    lists_newest_first_as_get_renders_each_record,
    pages_through_every_record_exactly_once,
    paging_while_records_change_neither_repeats_nor_skips,
    filters_by_status_and_prefix,
    a_prefix_page_examines_a_bounded_number_of_entries,
    expired_and_deleted_records_vanish_and_cleanup_prunes_the_index,
);

// ======================================================= the request itself

#[tokio::test]
async fn bad_parameters_are_invalid_query_naming_the_parameter() {
    let app = spawn_app(Backend::Memory).await;
    app.put_ok("x", &json!({})).await;
    let cases = [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor!", "cursor"),
        ("cursor=MToxOmF", "cursor"), // "1:1:a" (MToxOmE) with its trailing bits changed
        ("cursor=bm9wZQ", "cursor"),  // "nope"
        ("status=done", "status"),
        ("status=running,", "status"),
        ("prefix=a%2Fb", "prefix"),
        ("limit=5&limit=6", "limit"),
        ("order=asc", "order"),
    ];
    for (query, parameter) in cases {
        let res = app.send(Method::GET, &format!("/progress?{query}"), None, &[]).await;
        let problem = assert_problem(res, 400, "invalid_query").await;
        assert!(problem["detail"].as_str().unwrap().contains(parameter), "{query}: {problem}");
    }
    // A cursor from a real page is accepted, and so are the largest limit and every status.
    let good = ListCursor::new(Timestamp::now().millis(), "x").encode();
    page(&app, &format!("limit=500&cursor={good}&status=pending,running,completed,failed,cancelled")).await;
}

#[tokio::test]
async fn listing_needs_a_read_or_the_admin_token_once_either_is_set() {
    let secured = |s: &mut Settings| {
        s.read_tokens = vec!["reader".into()];
        s.write_tokens = vec!["writer".into()];
        s.admin_token = Some(ADMIN.into());
    };
    let app = spawn_app_with(Backend::Memory, secured).await;
    let put = app.send(Method::PUT, "/progress/secret", Some(&json!({})), &[("authorization", "Bearer writer")]).await;
    assert_eq!(put.status(), StatusCode::CREATED);

    let res = app.send(Method::GET, "/progress", None, &[]).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"progressd\"");
    assert_problem(res, 401, "unauthorized").await;
    let res = app.send(Method::GET, "/progress", None, &[("authorization", "Bearer writer")]).await;
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"progressd\", error=\"invalid_token\"");
    assert_problem(res, 401, "unauthorized").await;
    // The token check comes first: a bad query without a token is still a 401.
    assert_problem(app.send(Method::GET, "/progress?limit=0", None, &[]).await, 401, "unauthorized").await;
    for token in ["reader", ADMIN] {
        let listed = page_with(&app, "", &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(listed.ids(), ["secret"], "{token}");
    }

    // Only the admin token: it lists, nothing else does.
    let app = spawn_app_with(Backend::Memory, |s| s.admin_token = Some(ADMIN.into())).await;
    assert_problem(app.send(Method::GET, "/progress", None, &[]).await, 401, "unauthorized").await;
    page_with(&app, "", &[("authorization", &format!("Bearer {ADMIN}"))]).await;

    // Only write tokens: listing stays open, like reads.
    let app = spawn_app_with(Backend::Memory, |s| s.write_tokens = vec!["writer".into()]).await;
    page(&app, "").await;
}

// ================================================== the Redis indexes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_indexes_follow_every_write_and_delete() {
    let app = spawn_app(Backend::Redis).await;
    let prefix = app.settings.key_prefix.clone();
    let mut conn = redis_conn();
    let members = |conn: &mut ::redis::Connection, key: &str| -> Vec<String> {
        ::redis::cmd("ZRANGE").arg(format!("{prefix}progressd:{key}")).arg(0).arg(-1).query(conn).unwrap()
    };

    let created = app.put_ok("job:1", &json!({"status": "pending", "ttl_seconds": 600})).await;
    let created_ms =
        chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap()).unwrap().timestamp_millis();
    let member = format!("{created_ms:015}:job:1");
    assert_eq!(members(&mut conn, "index"), std::slice::from_ref(&member));
    assert_eq!(members(&mut conn, "index:pending"), std::slice::from_ref(&member));
    assert!(members(&mut conn, "index:running").is_empty());
    let expiry: f64 =
        ::redis::cmd("ZSCORE").arg(format!("{prefix}progressd:expiry")).arg(&member).query(&mut conn).unwrap();
    let expires_ms =
        chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap()).unwrap().timestamp_millis();
    assert_eq!(expiry as i64, expires_ms);

    // A status change moves the member between the status sets. The expiry
    // score is a lower bound: a write that moves the expiry later leaves it
    // (cleanup rescores a member whose record lives on), one that moves it
    // earlier sets it.
    let updated = app.patch_ok("job:1", &json!({"status": "running"})).await;
    assert!(members(&mut conn, "index:pending").is_empty());
    assert_eq!(members(&mut conn, "index:running"), std::slice::from_ref(&member));
    let score = |conn: &mut ::redis::Connection| -> i64 {
        let score: f64 =
            ::redis::cmd("ZSCORE").arg(format!("{prefix}progressd:expiry")).arg(&member).query(conn).unwrap();
        score as i64
    };
    let expires = |record: &Value| {
        chrono::DateTime::parse_from_rfc3339(record["expires_at"].as_str().unwrap()).unwrap().timestamp_millis()
    };
    assert!(expires(&updated) > expires_ms);
    assert_eq!(score(&mut conn), expires_ms, "a later expiry leaves the lower bound");
    let shortened = app.patch_ok("job:1", &json!({"ttl_seconds": 60})).await;
    assert!(expires(&shortened) < expires_ms);
    assert_eq!(score(&mut conn), expires(&shortened), "an earlier expiry is set");
    app.patch_ok("job:1", &json!({"message": "same status"})).await;
    assert_eq!(members(&mut conn, "index:running"), std::slice::from_ref(&member));
    assert_eq!(members(&mut conn, "index"), std::slice::from_ref(&member));

    // Deletes (plain and conditional) leave nothing behind.
    assert_eq!(app.send(Method::DELETE, "/progress/job:1", None, &[]).await.status(), StatusCode::NO_CONTENT);
    for key in ["index", "expiry", "index:pending", "index:running"] {
        assert!(members(&mut conn, key).is_empty(), "{key} after a delete");
    }
    let again = app.put_ok("job:1", &json!({"status": "failed"})).await;
    let res =
        app.send(Method::DELETE, "/progress/job:1", None, &[("if-match", &format!("\"{}\"", again["version"]))]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for key in ["index", "expiry", "index:failed"] {
        assert!(members(&mut conn, key).is_empty(), "{key} after a conditional delete");
    }
    // Bulk deletes go through the same scripts.
    let app = spawn_app_with(Backend::Redis, |s| s.admin_token = Some(ADMIN.into())).await;
    let prefix = app.settings.key_prefix.clone();
    app.put_ok("bulk-1", &json!({"status": "failed"})).await;
    app.put_ok("keep-1", &json!({"status": "failed"})).await;
    let res = app
        .send(Method::DELETE, "/admin/progress?prefix=bulk-", None, &[("authorization", &format!("Bearer {ADMIN}"))])
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["deleted"], 1);
    let left: Vec<String> =
        ::redis::cmd("ZRANGE").arg(format!("{prefix}progressd:index:failed")).arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with(":keep-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cleanup_indexes_records_written_before_the_indexes_existed() {
    let prefix = unique_prefix();
    let store = redis_store(&prefix);
    let mut conn = redis_conn();
    // Two records stored as an older build stored them: the key only.
    for (id, status) in [("legacy-1", "running"), ("legacy-2", "completed")] {
        let record = stored(id, status, Timestamp::now().millis());
        ::redis::cmd("SET")
            .arg(format!("{prefix}progress:{id}"))
            .arg(record.raw().as_ref())
            .arg("PX")
            .arg(600_000)
            .query::<()>(&mut conn)
            .unwrap();
    }
    assert!(store.list(&ListQuery::default()).await.unwrap().items.is_empty(), "not indexed yet");
    store.cleanup(true).await.unwrap().unwrap();
    let page = store.list(&ListQuery::default()).await.unwrap();
    assert_eq!(ids(&page), ["legacy-2", "legacy-1"]);
    let running = ListQuery { statuses: vec![Status::Running], ..ListQuery::default() };
    assert_eq!(ids(&store.list(&running).await.unwrap()), ["legacy-1"]);
    assert!(
        ::redis::cmd("EXISTS").arg(format!("{prefix}progressd:index-backfilled")).query::<bool>(&mut conn).unwrap()
    );
    delete_keys(&redis_url(), &prefix);
}

// ============================================ ties, and every store alike

fn redis_store(prefix: &str) -> RedisStore {
    RedisStore::new(RedisStoreConfig {
        url: redis_url(),
        key_prefix: prefix.to_owned(),
        pool_size: 2,
        shared_connections: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// A record `id` with `status`, created (and written) at `at_ms`, living an hour.
fn stored(id: &str, status: &str, at_ms: i64) -> StoredRecord {
    let fields = ClientFields::from_json(&json!({"status": status, "ttl_seconds": 3600}), 86_400).unwrap();
    let policy = WritePolicy { default_ttl_seconds: 3600, heartbeat_ms: 60_000 };
    let (r, m) = apply_write(
        &ProgressId::parse(id).unwrap(),
        None,
        fields.clone(),
        Touched::replace(&fields),
        Timestamp(at_ms),
        &policy,
    );
    StoredRecord::encode(&m, &r)
}

fn ids(page: &ListPage) -> Vec<String> {
    page.items.iter().map(|(id, _)| id.as_str().to_owned()).collect()
}

/// Every page of `query` on `store`; the ids and the number of pages.
async fn pages_of(store: &dyn Store, query: &ListQuery) -> (Vec<String>, usize) {
    let (mut all, mut pages, mut query) = (Vec::new(), 0, query.clone());
    loop {
        let page = store.list(&query).await.unwrap();
        all.extend(ids(&page));
        pages += 1;
        match page.next {
            Some(next) => query.after = Some(next),
            None => return (all, pages),
        }
        assert!(pages < 100);
    }
}

/// Many records created in the same millisecond page exactly once, by id
/// descending (bytewise: `a-b` < `a.b` < `a0` < `aB` < `a_` < `ab`), and the
/// cursor of any store continues on any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_on_created_at_page_exactly_on_every_store() {
    let now = Timestamp::now().millis();
    let mut plan: Vec<(String, i64, &str)> = Vec::new();
    for (i, id) in ["ab", "a_", "aB", "a0", "a.b", "a-b", "a", "b:1", "b:10", "b:2", "A", "Z", "z"].iter().enumerate() {
        plan.push((id.to_string(), now, if i % 3 == 0 { "running" } else { "pending" }));
    }
    for n in 0..10 {
        plan.push((format!("older-{n}"), now - 1 - n % 3, "running"));
    }
    let mut expected: Vec<(i64, String)> = plan.iter().map(|(id, at, _)| (*at, id.clone())).collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let memory = MemoryStore::start(Duration::from_secs(60));
    let prefix = unique_prefix();
    let redis = redis_store(&prefix);
    let db = TestDatabase::create().await;
    let postgres = PostgresStore::new(PostgresStoreConfig {
        url: db.url().to_owned(),
        pool_size: 2,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    postgres.migrate().await.unwrap();
    let stores: [&dyn Store; 3] = [memory.as_ref(), &redis, &postgres];
    for store in stores {
        for (id, at, status) in &plan {
            assert!(
                store
                    .compare_and_set(&ProgressId::parse(id).unwrap(), 0, &stored(id, status, *at), 3_600_000)
                    .await
                    .unwrap()
            );
        }
    }
    for store in stores {
        for limit in [1, 3, 7, 50] {
            let (listed, pages) = pages_of(store, &ListQuery { limit, ..ListQuery::default() }).await;
            assert_eq!(listed, expected, "{} with limit {limit}", store.kind());
            assert_eq!(pages, expected.len().div_ceil(limit), "{} with limit {limit}", store.kind());
        }
        let running = ListQuery { statuses: vec![Status::Running], limit: 4, ..ListQuery::default() };
        let want: Vec<String> =
            expected.iter().filter(|id| plan.iter().any(|(p, _, s)| p == *id && *s == "running")).cloned().collect();
        assert_eq!(pages_of(store, &running).await.0, want, "{}", store.kind());
        let prefixed = ListQuery { id_prefix: Some("a".into()), limit: 2, ..ListQuery::default() };
        let want: Vec<String> = expected.iter().filter(|id| id.starts_with('a')).cloned().collect();
        assert_eq!(pages_of(store, &prefixed).await.0, want, "{}", store.kind());
    }
    // A cursor from one store continues on each of the others.
    for from in stores {
        let first = from.list(&ListQuery { limit: 5, ..ListQuery::default() }).await.unwrap();
        for to in stores {
            let rest = pages_of(to, &ListQuery { limit: 4, after: first.next.clone(), ..ListQuery::default() }).await.0;
            let mut all = ids(&first);
            all.extend(rest);
            assert_eq!(all, expected, "from {} to {}", from.kind(), to.kind());
        }
    }
    delete_keys(&redis_url(), &prefix);
}

// ========================================================== PostgreSQL

/// Until PostgreSQL takes writes (its migrations ran).
async fn wait_until_writable(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.put("warm-up", &json!({})).await.status().is_success() {
        assert!(Instant::now() < deadline, "PostgreSQL never became usable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = app.send(Method::DELETE, "/progress/warm-up", None, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

fn fast(s: &mut Settings, database_url: &str) {
    s.database_url = Some(database_url.to_owned());
    s.persist_interval_seconds = 1;
    s.breaker_probe_ms = 100;
    s.database_timeout_ms = 2_000;
    s.redis_timeout_ms = 300;
    s.cache_max_age_ms = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_lists_like_the_hot_tiers() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let app = spawn_app_with(Backend::Memory, move |s| fast(s, &url)).await;
    wait_until_writable(&app).await;

    let records: Vec<(String, Value)> = (0..30)
        .map(|n| (format!("pg-{n:02}"), json!({"status": if n % 3 == 0 { "running" } else { "pending" }})))
        .collect();
    create_many(&app, records).await;
    app.put_ok("short", &json!({"ttl_seconds": 1})).await;
    app.put_ok("deleted", &json!({})).await;
    assert_eq!(app.send(Method::DELETE, "/progress/deleted", None, &[]).await.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let pages = all_pages(&app, "limit=7", 20).await;
    let ids = ids_of(&pages);
    assert_each_once(&ids);
    assert_eq!(ids.len(), 30, "neither the expired nor the deleted record: {ids:?}");
    assert_eq!(pages.len(), 5);
    let items: Vec<Value> = pages.iter().flat_map(|p| p.items.clone()).collect();
    assert_newest_first(&items);
    for item in items.iter().take(3) {
        assert_eq!(*item, app.get_ok(item["id"].as_str().unwrap()).await);
    }
    let running = ids_of(&all_pages(&app, "status=running&limit=4", 10).await);
    assert_eq!(running.len(), 10);
    assert!(running.iter().all(|id| id[3..].parse::<u32>().unwrap() % 3 == 0));
    assert_eq!(ids_of(&all_pages(&app, "status=running,pending&limit=8", 10).await), ids);
    assert_eq!(ids_of(&all_pages(&app, "prefix=pg-1&limit=3", 10).await).len(), 10);

    // The prefix window: 1100 newer rows that do not match, then the one that does.
    let pg = db.connect().await;
    pg.batch_execute(
        "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
         SELECT 'zz-other-' || n, 1, 'running', now() + interval '1 minute', now(), now() + interval '1 hour', '\\x00'::bytea
         FROM generate_series(1, 1100) AS n",
    )
    .await
    .unwrap();
    let first = page(&app, "prefix=pg-29&limit=10").await;
    assert!(first.items.is_empty(), "the 1000 newest rows do not match");
    let cursor = first.next.expect("a cursor past the window");
    let second = page(&app, &format!("prefix=pg-29&limit=10&cursor={cursor}")).await;
    assert_eq!(second.ids(), ["pg-29"]);
    assert!(second.next.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_lists_from_redis_and_continues_from_postgres_when_redis_goes() {
    let db = TestDatabase::create().await;
    let target = "127.0.0.1:6379".parse().unwrap();
    let proxy = Proxy::start(target).await;
    let (url, proxied) = (db.url().to_owned(), format!("redis://127.0.0.1:{}", proxy.port()));
    let app = spawn_app_with(Backend::Redis, move |s| {
        fast(s, &url);
        s.redis_url = Some(proxied);
    })
    .await;
    wait_until_writable(&app).await;

    let records: Vec<(String, Value)> = (0..30).map(|n| (format!("t-{n:02}"), json!({"status": "pending"}))).collect();
    create_many(&app, records).await;
    for n in (0..30).step_by(5) {
        app.patch_ok(&format!("t-{n:02}"), &json!({"status": "running"})).await;
    }
    let from_redis = ids_of(&all_pages(&app, "limit=7", 10).await);
    assert_eq!(from_redis.len(), 30);
    let first = page(&app, "limit=7").await;
    let first_running = page(&app, "status=running&limit=2").await;
    let running_from_redis = ids_of(&all_pages(&app, "status=running&limit=2", 10).await);
    let mut sorted = running_from_redis.clone();
    sorted.sort();
    assert_eq!(sorted, ["t-00", "t-05", "t-10", "t-15", "t-20", "t-25"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the status changes reach PostgreSQL

    proxy.set_mode(Mode::Reset).await;
    proxy.set_mode(Mode::Refuse).await;
    // The cursor of a Redis page continues on PostgreSQL.
    let mut listed = first.ids();
    let rest = pages_from(&app, "limit=7", first.next.clone(), &[], 10).await;
    listed.extend(ids_of(&rest));
    assert_eq!(listed, from_redis, "the same listing, continued from PostgreSQL");
    let mut running = first_running.ids();
    running.extend(ids_of(&pages_from(&app, "status=running&limit=2", first_running.next, &[], 10).await));
    assert_eq!(running, running_from_redis);
    // Written while Redis is away (once the breaker has been open for the
    // settling time: 503 until then): PostgreSQL lists them at once ...
    until_writes_resume(Duration::from_secs(8), async || app.put("t-outage", &json!({"status": "running"})).await)
        .await;
    assert_eq!(app.send(Method::DELETE, "/progress/t-03", None, &[]).await.status(), StatusCode::NO_CONTENT);
    let during = ids_of(&all_pages(&app, "limit=50", 10).await);
    assert_eq!(during[0], "t-outage");
    assert!(!during.contains(&"t-03".to_owned()));

    proxy.set_mode(Mode::Forward).await;
    // Redis back: the breaker half-opens, the next request through Redis
    // closes it, and listing is served from Redis again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        page(&app, "limit=1").await;
        let doc: Value = app.send(Method::GET, "/readyz", None, &[]).await.json().await.unwrap();
        if doc["dependencies"]["redis"]["breaker"] == "closed" {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never came back: {doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and Redis too once they are copied back (the copy-back indexes what it writes and deletes).
    let mut expected = vec!["t-outage".to_owned()];
    expected.extend(from_redis.into_iter().filter(|id| id != "t-03"));
    assert_eq!(ids_of(&all_pages(&app, "limit=9", 10).await), expected);
    let zcard: usize = ::redis::cmd("ZCARD")
        .arg(format!("{}progressd:index", app.settings.key_prefix))
        .query(&mut redis_conn())
        .unwrap();
    assert_eq!(zcard, 30, "the Redis index holds exactly the live records");
}
