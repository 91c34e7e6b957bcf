//! PostgreSQL over TLS, with the `progressd` binary against private
//! clusters (tests/common/postgres.rs `OwnPostgres`) that serve a
//! certificate from a CA of the test's own and let TCP clients in over TLS
//! only (`hostssl`). The test itself reads rows over the Unix socket
//! (`local … trust`). Never the shared server on 5432.
//!
//! Without REDIS_URL PostgreSQL is the only tier and writes go straight to
//! it, so an acknowledged write is proof that the connection works.

// Binary-only tests: the helpers by path, not `mod common;` (whose
// in-process helpers follow the library's `Settings`).
#[allow(dead_code)]
#[path = "common/binary.rs"]
mod binary;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/redis_server.rs"]
mod redis_server;
#[path = "common/spawned.rs"]
mod spawned;
#[path = "common/tls.rs"]
mod tls;

use std::time::{Duration, Instant};

use serde_json::json;

use postgres::OwnPostgres;
use redis_server::OwnRedis;
use spawned::{Running, assert_problem, key_prefix};
use tls::{Pki, tls_postgres};

/// Time allowed for an instance to connect, migrate and acknowledge a write.
const READY: Duration = Duration::from_secs(15);
/// Time allowed for a failure to show in `/readyz`.
const NOTICED: Duration = Duration::from_secs(10);

/// `postgres://postgres@HOST:PORT/postgres{query}`
fn url(pg: &OwnPostgres, host: &str, query: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres{query}", pg.port())
}

/// The version PostgreSQL holds for `id` (None: no row, or no table yet).
async fn row_version(db: &tokio_postgres::Client, id: &str) -> Option<i64> {
    match db.query_opt("select version from progress where id = $1 and not deleted", &[&id]).await {
        Ok(row) => row.map(|r| r.get(0)),
        Err(_) => None,
    }
}

/// Client connections over TCP, and how many of them use TLS.
async fn tcp_connections(db: &tokio_postgres::Client) -> (i64, i64) {
    let row = db
        .query_one(
            "select count(*), count(*) filter (where s.ssl) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.client_addr is not null",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Writes through `app` work: a create (201), read back (200), and the row in PostgreSQL.
async fn assert_works(app: &Running, db: &tokio_postgres::Client, what: &str) {
    let (id, created) = app.create_until_ok(what, READY).await;
    let got = app.get_ok(&id).await;
    assert_eq!(got["version"], created["version"], "{what}: {got}");
    assert_eq!(row_version(db, &id).await, Some(1), "{what}: the create is in PostgreSQL");
}

/// Writes through `app` are refused (503 `storage_unavailable`) and
/// `/readyz` says why in PostgreSQL's `last_error` (`check` gets it lower-cased).
async fn assert_refused(app: &Running, check: impl Fn(&str) -> bool, what: &str) -> String {
    let doc = app.until_last_error("postgres", NOTICED, check).await;
    assert_eq!(doc["dependencies"]["postgres"]["state"], "down", "{what}: {doc:#}");
    assert_eq!(doc["status"], "unavailable", "{what}: {doc:#}");
    assert_problem(app.put("refused", &json!({"status": "running"})).await, 503, "storage_unavailable").await;
    doc["dependencies"]["postgres"]["last_error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_works() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let db = pg.connect_local("postgres").await;
    let app = Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", "?sslmode=require"))]);
    assert_works(&app, &db, "require").await;
    let (tcp, tls) = tcp_connections(&db).await;
    assert!(tcp > 0 && tls == tcp, "progressd's connections use TLS: {tls} of {tcp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_works_with_the_ca_in_the_url_or_in_pgsslrootcert() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let db = pg.connect_local("postgres").await;
    let ca = pki.ca_path();
    let with_root = format!("?sslmode=verify-full&sslrootcert={ca}");
    let by_ip = Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", &with_root))]);
    let by_name = Running::start(&[("DATABASE_URL", &url(&pg, "localhost", &with_root))]);
    let by_env =
        Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", "?sslmode=verify-full")), ("PGSSLROOTCERT", &ca)]);
    assert_works(&by_ip, &db, "verify-full-ip").await;
    assert_works(&by_name, &db, "verify-full-localhost").await;
    assert_works(&by_env, &db, "verify-full-pgsslrootcert").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_for_another_host() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.other);
    let db = pg.connect_local("postgres").await;
    let ca = pki.ca_path();
    let verifying =
        Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", &format!("?sslmode=verify-full&sslrootcert={ca}")))]);
    let error = assert_refused(
        &verifying,
        |e| e.contains("certificate") || e.contains("host name") || e.contains("hostname"),
        "verify-full, wrong name",
    )
    .await;
    eprintln!("verify-full against other.example: {error}");
    verifying.until_logged("certificate", Duration::from_secs(5)).await;
    // The same server is fine for a client that does not check the name.
    let requiring = Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", "?sslmode=require"))]);
    assert_works(&requiring, &db, "require, wrong name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_disable_is_refused_by_a_hostssl_only_cluster() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let app = Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", "?sslmode=disable"))]);
    let error = assert_refused(
        &app,
        |e| e.contains("pg_hba") || e.contains("no encryption") || e.contains("ssl") || e.contains("tls"),
        "sslmode=disable",
    )
    .await;
    eprintln!("sslmode=disable against hostssl: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_fails_clearly() {
    let pg = OwnPostgres::start();
    let app = Running::start(&[("DATABASE_URL", &url(&pg, "127.0.0.1", "?sslmode=require"))]);
    let error = assert_refused(
        &app,
        |e| {
            (e.contains("tls") || e.contains("ssl"))
                && (e.contains("support") || e.contains("refus") || e.contains("not"))
        },
        "sslmode=require, ssl off",
    )
    .await;
    eprintln!("sslmode=require against ssl = off: {error}");
}

/// Redis (plain, of the test's own) over the TLS cluster with verify-full:
/// a create is in PostgreSQL when it is acknowledged, an update within the
/// persist interval (1 s, plus a flush tick and slack for a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_and_the_write_behind_flush_over_verify_full() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let db = pg.connect_local("postgres").await;
    let redis = OwnRedis::start();
    let prefix = key_prefix();
    let database_url = url(&pg, "127.0.0.1", &format!("?sslmode=verify-full&sslrootcert={}", pki.ca_path()));
    let app = Running::start(&[
        ("REDIS_URL", &redis.url()),
        ("DATABASE_URL", &database_url),
        ("PROGRESS_KEY_PREFIX", &prefix),
        ("PROGRESS_PERSIST_INTERVAL_SECONDS", "1"),
    ]);
    // Until PostgreSQL is in use: a create that is in PostgreSQL at its response.
    let deadline = Instant::now() + READY;
    let mut n = 0;
    let id = loop {
        let (id, _) = app.create_until_ok(&format!("warm-up-{n}"), READY).await;
        if row_version(&db, &id).await == Some(1) {
            break id;
        }
        assert!(Instant::now() < deadline, "creates never reached PostgreSQL at once:\n{}", app.logs());
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Each further create is there at its response.
    for n in 0..3 {
        let job = format!("job-{n}");
        let res = app.put(&job, &json!({"status": "running", "current": 0})).await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        assert_eq!(row_version(&db, &job).await, Some(1), "{job} is in PostgreSQL at the response");
    }
    // An update follows within the persist interval.
    let patched = app.patch_ok(&id, &json!({"current": 5})).await;
    assert_eq!(patched["version"], 2);
    let acknowledged = Instant::now();
    loop {
        if row_version(&db, &id).await == Some(2) {
            break;
        }
        assert!(
            acknowledged.elapsed() < Duration::from_secs(3),
            "the update did not reach PostgreSQL within 3 s:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("update reached PostgreSQL over TLS after {:?}", acknowledged.elapsed());
    let (tcp, tls) = tcp_connections(&db).await;
    assert!(tcp > 0 && tls == tcp, "progressd's connections use TLS: {tls} of {tcp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_libpq_parameter_is_warned_about_once() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let db = pg.connect_local("postgres").await;
    let app = Running::start(&[(
        "DATABASE_URL",
        &url(&pg, "127.0.0.1", "?sslmode=require&sslcert=/nope&gssencmode=disable"),
    )]);
    assert_works(&app, &db, "unknown-parameter").await;
    // Concurrent writes make the pool open more connections; the warning stays one.
    let body = json!({"status": "running"});
    let ids: Vec<String> = (0..8).map(|n| format!("burst-{n}")).collect();
    let writes = ids.iter().map(|id| app.put(id, &body));
    for res in futures::future::join_all(writes).await {
        assert!(res.status().is_success(), "{}", res.status());
    }
    let warnings = app.lines_at("WARN", "gssencmode");
    assert_eq!(warnings.len(), 1, "one WARN names gssencmode: {warnings:#?}\n{}", app.logs());
}
