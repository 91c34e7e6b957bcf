//! The `progressd` binary as hosting platforms configure it: Redis and
//! PostgreSQL from discrete variables (`REDIS_HOST`, `REDIS_PORT`,
//! `REDIS_PASSWORD`, `REDIS_TLS`; libpq's `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGDATABASE`, `PGSSLMODE`) instead of URLs, a URL winning over them, a
//! half-set group refused at start-up, listening on both loopbacks without
//! `PROGRESS_HOST`, and `--help` / `--version`.
//!
//! Every store is one the test started itself. The binary runs with a
//! cleared environment (tests/common/binary.rs), so nothing of this
//! process's own `PG*` or `REDIS_*` variables reaches it.

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

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use postgres::OwnPostgres;
use redis_server::OwnRedis;
use spawned::{Running, key_prefix};
use tls::{Pki, TlsRedis, tls_postgres};

/// Time allowed for an instance to start using its store.
const READY: Duration = Duration::from_secs(15);

/// Whether the key of record `id` exists in `redis_url` under `prefix`
/// (the value is compressed; its existence is enough).
fn key_exists(redis_url: &str, prefix: &str, id: &str) -> bool {
    let mut conn = redis::Client::open(redis_url).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap();
    redis::cmd("EXISTS").arg(format!("{prefix}progress:{id}")).query::<i64>(&mut conn).unwrap() == 1
}

/// The version PostgreSQL holds for `id` (None: no row, or no table yet).
async fn row_version(db: &tokio_postgres::Client, id: &str) -> Option<i64> {
    match db.query_opt("select version from progress where id = $1 and not deleted", &[&id]).await {
        Ok(row) => row.map(|r| r.get(0)),
        Err(_) => None,
    }
}

// --------------------------------------------------------------------- Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_from_host_and_port() {
    let redis = OwnRedis::start();
    let prefix = key_prefix();
    let port = redis.port().to_string();
    let app = Running::start(&[("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", &port), ("PROGRESS_KEY_PREFIX", &prefix)]);
    let (id, _) = app.create_until_ok("discrete", READY).await;
    assert_eq!(app.get_ok(&id).await["version"], 1);
    assert!(key_exists(&redis.url(), &prefix, &id), "the record is in the Redis REDIS_HOST and REDIS_PORT name");
    assert_eq!(app.readyz().await["dependencies"]["redis"]["state"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_password_from_its_own_variable() {
    let redis = OwnRedis::start_with(&["--requirepass", "pl4tform-pw"]);
    let prefix = key_prefix();
    let port = redis.port().to_string();
    let app = Running::start(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", &port),
        ("REDIS_PASSWORD", "pl4tform-pw"),
        ("PROGRESS_KEY_PREFIX", &prefix),
    ]);
    let (id, _) = app.create_until_ok("with-password", READY).await;
    let authenticated = format!("redis://:pl4tform-pw@127.0.0.1:{}", redis.port());
    assert!(key_exists(&authenticated, &prefix, &id));
    let logs = app.logs();
    assert!(!logs.contains("pl4tform-pw"), "the password is never logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_from_its_own_variable() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.server);
    let prefix = key_prefix();
    let (port, ca) = (redis.tls_port.to_string(), pki.ca_path());
    let app = Running::start(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", &port),
        ("REDIS_TLS", "true"),
        ("PROGRESS_REDIS_CA_FILE", &ca),
        ("PROGRESS_KEY_PREFIX", &prefix),
    ]);
    let (id, _) = app.create_until_ok("over-tls", READY).await;
    assert!(key_exists(&redis.plain_url(), &prefix, &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_host_alone_is_enough() {
    // The default port (6379) is the shared Redis on this machine: a host
    // that resolves nowhere keeps the test away from it. Start-up must not
    // refuse the group for the missing port.
    let app = Running::start(&[("REDIS_HOST", "nonexistent.invalid"), ("PROGRESS_KEY_PREFIX", &key_prefix())]);
    let res = app.send(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let doc = app.readyz().await;
    assert_ne!(doc["dependencies"]["redis"]["state"], "not_configured", "REDIS_HOST configures Redis: {doc:#}");
    assert_eq!(doc["dependencies"]["memory"]["state"], "not_configured", "{doc:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_wins_over_the_discrete_variables() {
    let redis = OwnRedis::start();
    let prefix = key_prefix();
    let app = Running::start(&[
        ("REDIS_URL", &redis.url()),
        ("REDIS_HOST", "nonexistent.invalid"),
        ("REDIS_PORT", "1"),
        ("PROGRESS_KEY_PREFIX", &prefix),
    ]);
    let (id, _) = app.create_until_ok("url-wins", READY).await;
    assert!(key_exists(&redis.url(), &prefix, &id), "the record is in the Redis REDIS_URL names");
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_from_libpq_variables() {
    let pg = OwnPostgres::start();
    let admin = pg.connect_local("postgres").await;
    admin.batch_execute("CREATE DATABASE platform_vars").await.unwrap();
    let db = pg.connect_local("platform_vars").await;
    let port = pg.port().to_string();
    let app = Running::start(&[
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &port),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "platform_vars"),
    ]);
    let (id, _) = app.create_until_ok("libpq", READY).await;
    assert_eq!(row_version(&db, &id).await, Some(1), "the record is in the database PGDATABASE names");
    assert_eq!(row_version(&admin, &id).await, None, "and not in the default one");

    // DATABASE_URL wins over the variables.
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let app =
        Running::start(&[("DATABASE_URL", &url), ("PGHOST", "nonexistent.invalid"), ("PGDATABASE", "platform_vars")]);
    let (id, _) = app.create_until_ok("url-wins", READY).await;
    assert_eq!(row_version(&admin, &id).await, Some(1), "the record is in the database DATABASE_URL names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_from_libpq_variables_over_tls() {
    let pki = Pki::new();
    let pg = tls_postgres(&pki.server);
    let db = pg.connect_local("postgres").await;
    let port = pg.port().to_string();
    let app = Running::start(&[
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", &port),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "postgres"),
        ("PGSSLMODE", "require"),
    ]);
    let (id, _) = app.create_until_ok("libpq-tls", READY).await;
    assert_eq!(row_version(&db, &id).await, Some(1));
}

// ------------------------------------------------------------ half-set groups

/// Starts the binary with `env` and expects it to stop at once, non-zero,
/// with one stderr line naming `variable`; returns that line.
fn refused_at_start_up(env: &[(&str, &str)], variable: &str) -> String {
    let mut app = Running::spawn(env, |_| {});
    let code = app.wait_exit(Duration::from_secs(5));
    let stderr = app.stderr();
    assert!(code.is_some_and(|c| c != 0), "exits non-zero at once with {env:?}: {code:?}\n{}", app.logs());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(variable), "names {variable}: {stderr}");
    eprintln!("{env:?}: exit {code:?}: {stderr}");
    stderr
}

#[test]
fn a_password_without_its_host_stops_start_up() {
    let line = refused_at_start_up(&[("REDIS_PASSWORD", "s3cret-pw")], "REDIS_HOST");
    assert!(!line.contains("s3cret-pw"), "{line}");
    let line = refused_at_start_up(&[("PGPASSWORD", "s3cret-pw")], "PGHOST");
    assert!(!line.contains("s3cret-pw"), "{line}");
}

// ------------------------------------------------------------------ listening

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_progress_host_it_answers_on_both_loopbacks() {
    let mut app = Running::spawn(&[], |command| {
        command.env_remove("PROGRESS_HOST");
    });
    app.wait_listening();
    let v4 = app.send(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(v4.status(), StatusCode::OK);
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping the IPv6 half: this machine has no IPv6 loopback ([::1] cannot be bound)");
        return;
    }
    let v6 = app
        .client
        .get(format!("http://[::1]:{}/healthz", app.port))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("nothing answers on [::1]:{}: {e}\n{}", app.port, app.logs()));
    assert_eq!(v6.status(), StatusCode::OK);
    assert_eq!(v6.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));
}

// ------------------------------------------------------------ --help, --version

/// Runs the binary with `arg`; its exit code and stdout (it must exit within 5 s).
fn run_with(arg: &str) -> (i32, String, String) {
    let mut app = Running::spawn(&[], |command| {
        command.arg(arg);
    });
    let code = app.wait_exit(Duration::from_secs(5));
    assert!(code.is_some(), "progressd {arg} exits by itself:\n{}", app.logs());
    (code.unwrap(), app.stdout(), app.stderr())
}

#[test]
fn help_prints_usage_and_exits_zero() {
    let (code, stdout, stderr) = run_with("--help");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.to_lowercase().contains("usage"), "usage on stdout: {stdout}{stderr}");
    assert!(stdout.contains("progressd"), "{stdout}");
}

#[test]
fn version_prints_the_package_version_and_exits_zero() {
    let (code, stdout, stderr) = run_with("--version");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{} on stdout: {stdout}{stderr}", env!("CARGO_PKG_VERSION"));
}
