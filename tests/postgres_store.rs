//! The PostgreSQL tier: migrations, the compare-and-set and delete guards,
//! exact bytes, the version-guarded batch upsert, and what a caller sees
//! when Postgres refuses, never answers, or stops and comes back. Each test
//! has a database of its own; tests that stop Postgres start their own.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{OwnPostgres, TestDatabase, free_port};
use progressd::domain::{ClientFields, ProgressId, StoredRecord, Timestamp, Touched, WritePolicy, apply_write};
use progressd::store::{
    DurableRow, Health, PostgresStore, PostgresStoreConfig, ProgressStore, RecordFilter, StoreError,
};
use serde_json::{Value, json};

const HOUR_MS: i64 = 3_600_000;

fn store(url: &str, timeout: Duration) -> PostgresStore {
    PostgresStore::new(PostgresStoreConfig { url: url.to_owned(), pool_size: 4, timeout }).unwrap()
}

async fn migrated(db: &TestDatabase) -> PostgresStore {
    let store = store(db.url(), Duration::from_secs(5));
    store.migrate().await.unwrap();
    store
}

fn id(raw: &str) -> ProgressId {
    ProgressId::parse(raw).unwrap()
}

/// A record as the service builds one: validated fields, `apply_write`,
/// encoded; written at `at_ms` with the body's `ttl_seconds` (default one hour),
/// then given `version`.
fn record_at(raw_id: &str, version: u64, body: Value, at_ms: i64) -> StoredRecord {
    let fields = ClientFields::from_json(&body, 30 * 86_400).unwrap();
    let touched = Touched::replace(&fields);
    let policy = WritePolicy { default_ttl_seconds: 3_600, heartbeat_ms: 60_000 };
    let (mut r, mut m) = apply_write(&id(raw_id), None, fields, touched, Timestamp(at_ms), &policy);
    r.version = version;
    m.v = version;
    // Every version of an id here belongs to one incarnation: same created_at.
    r.created_at = Timestamp(*CREATED);
    m.c = *CREATED;
    StoredRecord::encode(&m, &r)
}

/// When the records of these tests were created (before any of their writes).
static CREATED: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| Timestamp::now().millis() - 3 * HOUR_MS);

fn record(raw_id: &str, version: u64, body: Value) -> StoredRecord {
    record_at(raw_id, version, body, Timestamp::now().millis())
}

/// Written two hours ago with a one-hour TTL: expired an hour ago.
fn expired(raw_id: &str, version: u64) -> StoredRecord {
    record_at(raw_id, version, json!({"status": "running"}), Timestamp::now().millis() - 2 * HOUR_MS)
}

async fn version_of(store: &PostgresStore, raw_id: &str) -> Option<u64> {
    store.get(&id(raw_id)).await.unwrap().map(|r| r.version())
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Unavailable { tier, reason }) => {
            assert_eq!(tier, "postgres");
            reason
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = TestDatabase::create().await;
    let (a, b) = (store(db.url(), Duration::from_secs(5)), store(db.url(), Duration::from_secs(5)));
    let (first, second) = tokio::join!(a.migrate(), b.migrate());
    first.unwrap();
    second.unwrap();
    a.migrate().await.unwrap();
    a.migrate().await.unwrap();
    let client = db.connect().await;
    let applied: i64 = client.query_one("SELECT count(*) FROM progressd_schema_history", &[]).await.unwrap().get(0);
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count() as i64;
    assert_eq!(applied, shipped, "every migration is recorded once");
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'progress' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected = [
        ("id", "text"),
        ("version", "bigint"),
        ("status", "text"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("expires_at", "timestamp with time zone"),
        ("record", "bytea"),
        ("deleted", "boolean"),
        ("gone_at", "timestamp with time zone"),
    ];
    assert_eq!(columns, expected.map(|(c, t)| (c.to_owned(), t.to_owned())));
    let indexes: i64 =
        client.query_one("SELECT count(*) FROM pg_indexes WHERE tablename = 'progress'", &[]).await.unwrap().get(0);
    assert_eq!(indexes, 6, "primary key, expires_at, updated_at, status, and the two listing indexes");
    // Writes work on the migrated schema from either store.
    assert!(b.compare_and_set(&id("m"), 0, &record("m", 1, json!({})), 0).await.unwrap());
    assert_eq!(version_of(&a, "m").await, Some(1));
}

#[tokio::test]
async fn compare_and_set_creates_then_updates_only_the_expected_version() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    assert_eq!(store.kind(), "postgres");
    let j = id("job-1");
    assert!(store.get(&j).await.unwrap().is_none());
    assert!(!store.compare_and_set(&j, 1, &record("job-1", 2, json!({})), 0).await.unwrap(), "no row to update");
    assert!(store.compare_and_set(&j, 0, &record("job-1", 1, json!({"status": "running"})), 0).await.unwrap());
    assert!(
        !store.compare_and_set(&j, 0, &record("job-1", 1, json!({})), 0).await.unwrap(),
        "a live row blocks a create"
    );
    assert!(!store.compare_and_set(&j, 7, &record("job-1", 8, json!({})), 0).await.unwrap(), "version mismatch");
    assert_eq!(version_of(&store, "job-1").await, Some(1));
    let done = record("job-1", 2, json!({"status": "completed"}));
    assert!(store.compare_and_set(&j, 1, &done, 0).await.unwrap());
    assert!(!store.compare_and_set(&j, 1, &record("job-1", 2, json!({})), 0).await.unwrap(), "1 is stale now");
    assert_eq!(store.get(&j).await.unwrap().unwrap().raw(), done.raw());

    // The columns beside the bytes follow the record.
    let row = db
        .connect()
        .await
        .query_one(
            "SELECT version, status, (extract(epoch FROM created_at) * 1000)::bigint, \
             (extract(epoch FROM updated_at) * 1000)::bigint, (extract(epoch FROM expires_at) * 1000)::bigint \
             FROM progress WHERE id = 'job-1'",
            &[],
        )
        .await
        .unwrap();
    let body = done.record().unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "completed");
    assert_eq!(row.get::<_, i64>(2), body.created_at.millis());
    assert_eq!(row.get::<_, i64>(3), body.updated_at.millis());
    assert_eq!(row.get::<_, i64>(4), done.meta().x);
}

#[tokio::test]
async fn an_expired_row_counts_as_absent() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let e = id("old");
    assert!(store.compare_and_set(&e, 0, &expired("old", 5), 0).await.unwrap());
    assert!(store.get(&e).await.unwrap().is_none(), "an expired row is not returned");
    assert!(!store.compare_and_set(&e, 5, &expired("old", 6), 0).await.unwrap(), "nor updated");
    assert!(!store.compare_and_delete(&e, 5).await.unwrap(), "nor deleted by version");
    // A create overwrites it: the job id starts over.
    assert!(store.compare_and_set(&e, 0, &record("old", 1, json!({})), 0).await.unwrap());
    assert_eq!(version_of(&store, "old").await, Some(1));
}

#[tokio::test]
async fn stored_bytes_round_trip_exactly() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let body = json!({
        "status": "running",
        "message": "caf\u{e9} \u{1F680} \"quoted\"\nnext line",
        "metadata": {"big": 9007199254740993u64, "f": 0.1, "zeta": 1, "alpha": [1.5e300, -0.0, {"z": null, "a": true}]},
        "result": {"b": 2, "a": 1}
    });
    let written = record("exact", 1, body);
    assert!(store.compare_and_set(&id("exact"), 0, &written, 0).await.unwrap());
    let read = store.get(&id("exact")).await.unwrap().unwrap();
    assert_eq!(read.raw(), written.raw(), "byte for byte");
    let text = std::str::from_utf8(read.raw()).unwrap();
    assert!(text.contains("\"big\":9007199254740993"), "{text}");
    assert!(text.contains("\"f\":0.1"), "{text}");
    assert!(text.contains("\"zeta\":1,\"alpha\""), "key order is kept: {text}");
    let rendered: Value = serde_json::from_slice(&read.render(Timestamp::now().millis())).unwrap();
    assert_eq!(rendered["metadata"]["big"].to_string(), "9007199254740993");
    // The same through the batch upsert and the scan.
    assert_eq!(store.upsert_newer(&[(id("exact2"), written.clone())]).await.unwrap(), 1);
    let scanned = store.updated_since(Timestamp(0), 10).await.unwrap();
    assert!(scanned.iter().all(|(_, row, _)| matches!(row, DurableRow::Live(r) if r.raw() == written.raw())));
}

#[tokio::test]
async fn upsert_newer_never_moves_a_version_backwards() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    assert_eq!(store.upsert_newer(&[]).await.unwrap(), 0);
    assert_eq!(store.upsert_newer(&[(id("u"), record("u", 3, json!({})))]).await.unwrap(), 1);
    assert_eq!(
        store.upsert_newer(&[(id("u"), record("u", 2, json!({})))]).await.unwrap(),
        0,
        "stale: skipped, no error"
    );
    assert_eq!(store.upsert_newer(&[(id("u"), record("u", 3, json!({})))]).await.unwrap(), 0, "same version: skipped");
    assert_eq!(version_of(&store, "u").await, Some(3));

    // A batch: one new id, one newer, one stale, and one id twice (its highest version wins).
    store.upsert_newer(&[(id("w"), record("w", 5, json!({})))]).await.unwrap();
    let batch = vec![
        (id("v"), record("v", 1, json!({}))),
        (id("u"), record("u", 4, json!({"status": "completed"}))),
        (id("w"), record("w", 4, json!({}))),
        (id("x"), record("x", 2, json!({}))),
        (id("x"), record("x", 9, json!({}))),
        (id("x"), record("x", 3, json!({}))),
    ];
    assert_eq!(store.upsert_newer(&batch).await.unwrap(), 3, "v, u and x");
    assert_eq!(version_of(&store, "v").await, Some(1));
    assert_eq!(version_of(&store, "u").await, Some(4));
    assert_eq!(version_of(&store, "w").await, Some(5));
    assert_eq!(version_of(&store, "x").await, Some(9));

    // An expired row is no guard: a record created again starts at version 1.
    store.upsert_newer(&[(id("y"), expired("y", 8))]).await.unwrap();
    assert_eq!(store.upsert_newer(&[(id("y"), record("y", 1, json!({})))]).await.unwrap(), 1);
    assert_eq!(version_of(&store, "y").await, Some(1));

    // Two instances flushing overlapping batches at once: both succeed, newest wins.
    let ids: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    let low: Vec<_> = ids.iter().map(|i| (id(i), record(i, 1, json!({})))).collect();
    let high: Vec<_> = ids.iter().rev().map(|i| (id(i), record(i, 2, json!({})))).collect();
    let (a, b) = tokio::join!(store.upsert_newer(&low), store.upsert_newer(&high));
    assert!(a.unwrap() + b.unwrap() >= 50);
    for i in &ids {
        assert_eq!(version_of(&store, i).await, Some(2));
    }
}

#[tokio::test]
async fn updated_since_lists_live_records_oldest_first() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let now = Timestamp::now().millis();
    let batch = vec![
        (id("t2"), record_at("t2", 1, json!({}), now - 2_000)),
        (id("t0"), record_at("t0", 1, json!({}), now - 4_000)),
        (id("t1"), record_at("t1", 1, json!({}), now - 3_000)),
        (id("t3"), record_at("t3", 1, json!({}), now - 1_000)),
        (id("gone"), expired("gone", 1)),
    ];
    assert_eq!(store.upsert_newer(&batch).await.unwrap(), 5);
    let names = |rows: Vec<(ProgressId, DurableRow, Timestamp)>| {
        rows.iter().map(|(i, _, _)| i.as_str().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(names(store.updated_since(Timestamp(0), 100).await.unwrap()), ["t0", "t1", "t2", "t3"]);
    assert_eq!(names(store.updated_since(Timestamp(now - 3_000), 100).await.unwrap()), ["t1", "t2", "t3"], "inclusive");
    assert_eq!(names(store.updated_since(Timestamp(now - 3_000), 2).await.unwrap()), ["t1", "t2"]);
    assert!(store.updated_since(Timestamp(now), 100).await.unwrap().is_empty());
    let (_, first, _) = &store.updated_since(Timestamp(0), 1).await.unwrap()[0];
    assert!(matches!(first, DurableRow::Live(r) if r.raw() == batch[1].1.raw()));
}

#[tokio::test]
async fn delete_and_compare_and_delete_remove_only_live_rows() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let d = id("d");
    assert!(!store.delete(&d).await.unwrap(), "nothing to delete");
    assert!(store.compare_and_set(&d, 0, &record("d", 1, json!({})), 0).await.unwrap());
    assert!(!store.compare_and_delete(&d, 2).await.unwrap(), "other version");
    assert!(!store.compare_and_delete(&d, 0).await.unwrap());
    assert!(store.compare_and_delete(&d, 1).await.unwrap());
    assert!(store.get(&d).await.unwrap().is_none());
    assert!(!store.compare_and_delete(&d, 1).await.unwrap(), "already gone");

    assert!(store.compare_and_set(&d, 0, &record("d", 1, json!({})), 0).await.unwrap());
    assert!(store.delete(&d).await.unwrap());
    assert!(!store.delete(&d).await.unwrap());

    // An expired row: gone after delete, but there was no record to delete.
    assert!(store.compare_and_set(&d, 0, &expired("d", 4), 0).await.unwrap());
    assert!(!store.delete(&d).await.unwrap());
    // What is left is a tombstone, never a record.
    let left: i64 =
        db.connect().await.query_one("SELECT count(*) FROM progress WHERE NOT deleted", &[]).await.unwrap().get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn ping_measures_one_round_trip() {
    let db = TestDatabase::create().await;
    let store = store(db.url(), Duration::from_secs(5));
    let latency = store.ping().await.unwrap();
    assert!(latency < Duration::from_secs(5));
    let via_trait: &dyn Health = &store;
    via_trait.ping().await.unwrap();
}

#[tokio::test]
async fn a_bad_url_is_refused_without_its_password() {
    for url in
        ["postgres://user:hunter22secret@host:notaport/db", "postgres://user:hunter22secret@host/db?sslmode=sometimes"]
    {
        let Err(e) =
            PostgresStore::new(PostgresStoreConfig { url: url.into(), pool_size: 1, timeout: Duration::from_secs(1) })
        else {
            panic!("{url} is accepted");
        };
        assert!(!e.contains("hunter22secret"), "{e}");
        assert!(e.contains("invalid"), "{e}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_at_once() {
    let port = free_port();
    let store =
        store(&format!("postgres://progressd:hunter22secret@127.0.0.1:{port}/progress"), Duration::from_secs(2));
    for _ in 0..3 {
        let started = Instant::now();
        let reason = assert_unavailable(store.get(&id("x")).await);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!reason.contains("hunter22secret"), "{reason}");
        assert!(reason.contains("refused"), "the cause is in the reason: {reason}");
    }
    assert_unavailable(store.compare_and_set(&id("x"), 0, &record("x", 1, json!({})), 0).await);
    assert_unavailable(store.upsert_newer(&[(id("x"), record("x", 1, json!({})))]).await);
    assert_unavailable(store.ping().await);
    assert_unavailable(store.migrate().await);
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_within_the_timeout() {
    let (port, blackhole) = common::blackhole().await;
    let timeout = Duration::from_millis(300);
    let store = store(&format!("postgres://progressd:hunter22secret@127.0.0.1:{port}/progress"), timeout);
    // The bound is the timeout plus scheduling slack.
    let slack = Duration::from_millis(400);
    for _ in 0..3 {
        let started = Instant::now();
        let reason = assert_unavailable(store.get(&id("x")).await);
        assert!(started.elapsed() < timeout + slack, "took {:?}", started.elapsed());
        assert!(!reason.contains("hunter22secret"), "{reason}");
        let started = Instant::now();
        assert_unavailable(store.compare_and_set(&id("x"), 0, &record("x", 1, json!({})), 0).await);
        assert_unavailable(store.ping().await);
        assert!(started.elapsed() < 2 * (timeout + slack), "took {:?}", started.elapsed());
    }
    let started = Instant::now();
    assert_unavailable(store.migrate().await);
    assert!(started.elapsed() < timeout + slack, "migrate took {:?}", started.elapsed());
    blackhole.abort();
}

#[tokio::test]
async fn the_store_works_again_after_postgres_restarts() {
    let mut pg = OwnPostgres::start();
    eprintln!("OwnPostgres::start took {:?}", pg.last_start());
    let store = store(&pg.url(), Duration::from_secs(1));
    store.migrate().await.unwrap();
    let r = id("r");
    assert!(store.compare_and_set(&r, 0, &record("r", 1, json!({"status": "running"})), 0).await.unwrap());

    pg.stop();
    let started = Instant::now();
    assert_unavailable(store.get(&r).await);
    assert_unavailable(store.compare_and_set(&r, 1, &record("r", 2, json!({})), 0).await);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    pg.start_again();
    eprintln!("OwnPostgres::start_again took {:?}", pg.last_start());
    // A connection from before the restart may fail one more operation.
    let mut back = None;
    for _ in 0..20 {
        if let Ok(found) = store.get(&r).await {
            back = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = back.expect("reads work again after Postgres returns");
    assert_eq!(back.map(|b| b.version()), Some(1), "the acknowledged write survived the restart");
    assert!(store.compare_and_set(&r, 1, &record("r", 2, json!({})), 0).await.unwrap());
    assert_eq!(version_of(&store, "r").await, Some(2));
    store.ping().await.unwrap();
}

/// `progressd migrate` with this environment: exit code, stdout, stderr.
fn run_migrate(env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_progressd"));
    cmd.arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn the_migrate_command_applies_the_schema_or_says_why_not() {
    let (code, _, err) = run_migrate(&[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    let db = TestDatabase::create().await;
    for _ in 0..2 {
        let (code, out, err) = run_migrate(&[("DATABASE_URL", db.url())]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let rows: i64 = db.connect().await.query_one("SELECT count(*) FROM progress", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "the table exists");

    let url = format!("postgres://progressd:hunter22secret@127.0.0.1:{}/progress", free_port());
    let (code, out, err) = run_migrate(&[("DATABASE_URL", &url), ("PROGRESS_DATABASE_TIMEOUT_MS", "500")]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!format!("{out}{err}").contains("hunter22secret"), "{err}");
}

/// The fence (`migrations/V4__redis_fence.sql`): a write made while Redis
/// is down for its instance since `since` goes through until an instance
/// raises the fence at or after `since`; then it is refused (`None`) and
/// writes nothing. Writes without a fence and writes of a later outage go
/// on, and the fence never moves back.
#[tokio::test]
async fn writes_behind_the_fence_stop_once_it_is_raised_after_their_outage_began() {
    let db = TestDatabase::create().await;
    let store = migrated(&db).await;
    let job = id("job");
    let outage = Timestamp::now();
    let v = |n: u64| record("job", n, json!({"status": "running", "current": n}));
    let bulk = RecordFilter { id_prefix: Some("bulk-".into()), ..RecordFilter::default() };
    for n in 0..3 {
        let raw = format!("bulk-{n}");
        assert_eq!(
            store.compare_and_set_fenced(&id(&raw), 0, &record(&raw, 1, json!({})), Some(outage)).await.unwrap(),
            Some(true)
        );
    }
    assert_eq!(store.compare_and_set_fenced(&job, 0, &v(1), Some(outage)).await.unwrap(), Some(true));
    assert_eq!(store.compare_and_set_fenced(&job, 1, &v(2), Some(outage)).await.unwrap(), Some(true));
    assert_eq!(
        store.compare_and_set_fenced(&job, 1, &v(2), Some(outage)).await.unwrap(),
        Some(false),
        "version mismatch"
    );

    store.raise_fence(outage.plus_millis(10)).await.unwrap();
    assert_eq!(store.compare_and_set_fenced(&job, 2, &v(3), Some(outage)).await.unwrap(), None);
    assert_eq!(
        store.compare_and_set_fenced(&id("new"), 0, &record("new", 1, json!({})), Some(outage)).await.unwrap(),
        None
    );
    assert_eq!(store.compare_and_delete_fenced(&job, 2, Some(outage)).await.unwrap(), None);
    assert_eq!(store.delete_fenced(&job, Some(outage)).await.unwrap(), None);
    assert_eq!(
        store.tombstone_matching(&bulk, Some(outage)).await.unwrap(),
        (vec![], true),
        "a bulk delete is fenced too"
    );
    assert_eq!(
        store.compare_and_set_fenced(&job, 2, &v(3), Some(outage.plus_millis(10))).await.unwrap(),
        None,
        "raised at `since` itself"
    );
    assert_eq!(version_of(&store, "job").await, Some(2), "nothing fenced off was written");
    assert_eq!(version_of(&store, "new").await, None);
    assert_eq!(version_of(&store, "bulk-0").await, Some(1), "nothing fenced off was deleted");

    store.raise_fence(outage).await.unwrap(); // older: the fence stays where it is
    assert_eq!(store.compare_and_set_fenced(&job, 2, &v(3), Some(outage.plus_millis(5))).await.unwrap(), None);
    assert_eq!(
        store.compare_and_set_fenced(&job, 2, &v(3), Some(outage.plus_millis(11))).await.unwrap(),
        Some(true),
        "a later outage"
    );
    assert_eq!(store.compare_and_set_fenced(&job, 3, &v(4), None).await.unwrap(), Some(true), "no fence");
    assert!(store.compare_and_set(&job, 4, &v(5), 0).await.unwrap(), "the store's own compare-and-set is not fenced");
    assert_eq!(store.delete_fenced(&job, Some(outage.plus_millis(11))).await.unwrap(), Some(true));
    assert_eq!(version_of(&store, "job").await, None);
    let (mut gone, fenced) = store.tombstone_matching(&bulk, Some(outage.plus_millis(11))).await.unwrap();
    gone.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!((gone, fenced), (vec![id("bulk-0"), id("bulk-1"), id("bulk-2")], false), "a later outage's bulk delete");
    assert_eq!(version_of(&store, "bulk-1").await, None);
}

/// What the fence relies on, both ways round: raising it waits for a
/// fenced write in flight (which holds the fence row shared until it
/// commits), and a fenced write that meets a raise in flight waits for it
/// and then sees the raised fence.
#[tokio::test]
async fn raising_the_fence_and_fenced_writes_wait_for_each_other() {
    let db = TestDatabase::create().await;
    let store = std::sync::Arc::new(migrated(&db).await);
    let outage = Timestamp::now();
    let other = db.connect().await;

    // A fenced write in flight, as another instance's would be.
    other.batch_execute("BEGIN; SELECT redis_back_ms FROM progress_fence FOR SHARE").await.unwrap();
    let raise = tokio::spawn({
        let store = store.clone();
        async move { store.raise_fence(outage.plus_millis(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!raise.is_finished(), "the raise waits for the write in flight");
    other.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), raise).await.unwrap().unwrap().unwrap();

    // A raise in flight, as another instance's would be.
    other.batch_execute("BEGIN; UPDATE progress_fence SET redis_back_ms = redis_back_ms + 100").await.unwrap();
    let since = outage.plus_millis(50); // after the fence, before the raise in flight
    let write = tokio::spawn({
        let store = store.clone();
        async move { store.compare_and_set_fenced(&id("job"), 0, &record("job", 1, json!({})), Some(since)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits for the raise in flight");
    other.batch_execute("COMMIT").await.unwrap();
    let written = tokio::time::timeout(Duration::from_secs(3), write).await.unwrap().unwrap().unwrap();
    assert_eq!(written, None, "the write sees the raised fence");
    assert_eq!(version_of(&store, "job").await, None);
}

/// Gone is not unknown (issue 19): a tombstone says deleted and when, an
/// expired row says expired and when, until the tombstone time has passed
/// (then cleanup purges it); a tombstone written where nothing was, and an
/// id never seen, say nothing (404).
#[tokio::test]
async fn deleted_and_expired_rows_say_how_and_when_they_went() {
    use progressd::store::{GoneKind, Maintenance, Tombstones};

    let db = TestDatabase::create().await;
    let store = migrated(&db).await.with_tombstone(Duration::from_secs(3 * 3_600));
    let now = Timestamp::now().millis();
    assert!(store.compare_and_set(&id("live"), 0, &record("live", 1, json!({"status": "running"})), 0).await.unwrap());
    assert_eq!(store.gone(&id("live")).await.unwrap(), None, "live: not gone");
    assert!(store.delete(&id("live")).await.unwrap());
    let gone = store.gone(&id("live")).await.unwrap().expect("deleted");
    assert_eq!(gone.kind, GoneKind::Deleted);
    assert!((gone.at.millis() - now).abs() < 5_000, "deleted about now: {gone:?}");
    // A second delete keeps the first one's time.
    assert!(!store.delete(&id("live")).await.unwrap());
    assert_eq!(store.gone(&id("live")).await.unwrap(), Some(gone));
    // A compare-and-delete leaves the same.
    assert!(store.compare_and_set(&id("cad"), 0, &record("cad", 1, json!({"status": "running"})), 0).await.unwrap());
    assert!(store.compare_and_delete(&id("cad"), 1).await.unwrap());
    assert_eq!(store.gone(&id("cad")).await.unwrap().map(|g| g.kind), Some(GoneKind::Deleted));
    // Expired an hour ago: expired then, also after a delete reached it.
    let old = expired("old", 1);
    assert!(store.compare_and_set(&id("old"), 0, &old, 0).await.unwrap());
    let gone = store.gone(&id("old")).await.unwrap().expect("expired");
    assert_eq!((gone.kind, gone.at.millis()), (GoneKind::Expired, old.meta().x));
    assert!(!store.delete(&id("old")).await.unwrap());
    let after = store.gone(&id("old")).await.unwrap().expect("still expired");
    assert_eq!((after.kind, after.at.millis()), (GoneKind::Expired, old.meta().x));
    // Nothing was there: the delete's tombstone tells nothing.
    assert!(!store.delete(&id("nothing")).await.unwrap());
    assert_eq!(store.gone(&id("nothing")).await.unwrap(), None);
    assert_eq!(store.gone(&id("never")).await.unwrap(), None);
    // Cleanup keeps what answers 410 ...
    store.cleanup(false).await.unwrap();
    assert!(store.gone(&id("old")).await.unwrap().is_some(), "kept for the tombstone time");
    // ... and with a tombstone time shorter than an hour, the expired row is
    // unknown again, and purged.
    let brief = store.with_tombstone(Duration::from_secs(1_800));
    let expired_write = expired("older", 1);
    assert!(brief.compare_and_set(&id("older"), 0, &expired_write, 0).await.unwrap());
    assert_eq!(brief.gone(&id("older")).await.unwrap(), None, "expired longer ago than the tombstone time");
    brief.cleanup(false).await.unwrap();
    let pg = db.connect().await;
    let rows = pg.query("SELECT id FROM progress WHERE id = 'older'", &[]).await.unwrap();
    assert!(rows.is_empty(), "purged");
}
