//! SPEC §3 degraded modes, each against stores this test started itself
//! (never the shared ones): none loses an acknowledged write.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::{OwnPostgres, TestDatabase};
use common::proxy::{Mode, Proxy};
use common::redis_server::OwnRedis;
use common::{Backend, TestApp, assert_problem, spawn_app_with, until_writes_resume};
use progressd::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Small timeouts and intervals so each mode plays out in seconds.
fn quick(s: &mut Settings, redis_url: String, database_url: String) {
    s.redis_url = Some(redis_url);
    s.database_url = Some(database_url);
    s.persist_interval_seconds = 1;
    s.breaker_probe_ms = 100;
    s.redis_timeout_ms = 300;
    s.database_timeout_ms = 500;
}

/// Consecutive failures that open a breaker (the default).
const BREAKER_FAILURES: usize = 3;

/// Sends PATCHes of `id` until one is acknowledged. Once this instance's
/// Redis breaker is open, writes go to PostgreSQL as soon as every live
/// instance has flushed its backlog (milliseconds, and waited for rather
/// than refused), so only writes that failed in Redis before the breaker
/// opened may be refused (503 `storage_unavailable`), and it takes well
/// under the fixed settle time (2.5 s with `quick`'s persist interval).
async fn writes_go_on(app: &TestApp, id: &str) {
    let started = Instant::now();
    let refused =
        until_writes_resume(Duration::from_secs(3), async || app.patch(id, &json!({"message": "handing over"})).await)
            .await;
    assert!(refused <= BREAKER_FAILURES, "only writes before the breaker opened are refused: {refused}");
    assert!(started.elapsed() < Duration::from_millis(1500), "writes went on after {:?}", started.elapsed());
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version of each record as PostgreSQL holds it.
async fn durable_versions(url: &str) -> HashMap<String, i64> {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return HashMap::new();
    };
    tokio::spawn(connection);
    match client.query("select id, version from progress", &[]).await {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(_) => HashMap::new(),
    }
}

/// Waits until PostgreSQL is migrated and in use: a create reaches it
/// before its response (a fresh id each try; a replace would be deferred).
async fn durable_ready(app: &TestApp, database_url: &str) {
    let mut attempt = 0;
    wait_for("PostgreSQL in use", Duration::from_secs(5), async || {
        attempt += 1;
        let id = format!("warm-up-{attempt}");
        app.put(&id, &json!({})).await.status().is_success() && durable_versions(database_url).await.contains_key(&id)
    })
    .await;
}

/// Our own Redis reached through a TCP proxy (to cut it off without killing
/// it), a database of our own, and an app over both with PostgreSQL in use.
async fn redis_behind_a_proxy() -> (OwnRedis, Proxy, TestDatabase, TestApp) {
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let db = TestDatabase::create().await;
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let app = spawn_app_with(Backend::Redis, |s| quick(s, url.clone(), db.url().into())).await;
    durable_ready(&app, db.url()).await;
    (redis, proxy, db, app)
}

async fn record(app: &TestApp, id: &str) -> Result<Value, StatusCode> {
    let res = app.get(id).await;
    match res.status() {
        StatusCode::OK => Ok(res.json().await.unwrap()),
        other => Err(other),
    }
}

/// Mode 1: Redis is killed while a writer and a reader run. Reads and
/// writes go on from PostgreSQL once the breaker opens (writes once this
/// instance's backlog has landed there, which they wait for rather than
/// fail); every acknowledged write is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_while_a_writer_and_a_reader_run() {
    let mut redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let app = Arc::new(spawn_app_with(Backend::Redis, |s| quick(s, redis.url(), db.url().into())).await);
    durable_ready(&app, db.url()).await;
    app.put_ok("job", &json!({"status": "running", "current": 0, "total": 1000})).await;

    let stop = Arc::new(AtomicBool::new(false));
    let last_acked = Arc::new(Mutex::new((0u64, 0u64))); // (current, version)
    let failures = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let writer = {
        let (app, stop, last_acked, failures) = (app.clone(), stop.clone(), last_acked.clone(), failures.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let res = app.patch("job", &json!({"current": n})).await;
                if res.status() == StatusCode::OK {
                    let v: Value = res.json().await.unwrap();
                    *last_acked.lock().unwrap() = (n, v["version"].as_u64().unwrap());
                } else {
                    failures.lock().unwrap().push((Instant::now(), format!("PATCH {}", res.status())));
                }
            }
        })
    };
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (app, stop, failures, reads) = (app.clone(), stop.clone(), failures.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Err(status) = record(&app, "job").await {
                    failures.lock().unwrap().push((Instant::now(), format!("GET {status}")));
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_before_the_kill = last_acked.lock().unwrap().1;
    redis.stop();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    reader.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    // Reads fall back to PostgreSQL at once, and so do writes once this
    // instance (the only one) has flushed its backlog: only requests that
    // failed in Redis before the breaker opened (a few, at once) fail.
    let (reads_failed, writes_failed): (Vec<_>, Vec<_>) =
        failures.iter().partition(|(_, what)| what.starts_with("GET"));
    assert!(reads_failed.len() <= BREAKER_FAILURES, "{reads_failed:?}");
    let late_reads: Vec<_> =
        reads_failed.iter().filter(|(at, _)| at.duration_since(killed) > Duration::from_millis(500)).collect();
    assert!(late_reads.is_empty(), "reads failed after the breaker opened: {late_reads:?}");
    assert!(writes_failed.iter().all(|(_, what)| what == "PATCH 503 Service Unavailable"), "{writes_failed:?}");
    assert!(writes_failed.len() <= BREAKER_FAILURES, "writes refused after the breaker opened: {writes_failed:?}");
    let late_writes: Vec<_> =
        writes_failed.iter().filter(|(at, _)| at.duration_since(killed) > Duration::from_millis(500)).collect();
    assert!(late_writes.is_empty(), "writes failed after the breaker opened: {late_writes:?}");
    assert!(reads.load(Ordering::SeqCst) > 20);
    assert!(last_acked.lock().unwrap().1 > acked_before_the_kill + 5, "writes went on in PostgreSQL");

    let (current, version) = *last_acked.lock().unwrap();
    let now = record(&app, "job").await.expect("readable with Redis dead");
    assert_eq!((now["current"].as_u64().unwrap(), now["version"].as_u64().unwrap()), (current, version));
    wait_for("the last acknowledged version in PostgreSQL", Duration::from_secs(3), async || {
        durable_versions(db.url()).await.get("job") == Some(&(version as i64))
    })
    .await;
}

/// Mode 2a: Redis comes back empty; reads never return a version older
/// than one acknowledged during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_serves_what_the_outage_acknowledged() {
    let mut redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let app = spawn_app_with(Backend::Redis, |s| quick(s, redis.url(), db.url().into())).await;
    app.put_ok("r", &json!({"status": "running", "message": "before"})).await;
    app.patch_ok("r", &json!({"current": 1})).await;
    durable_ready(&app, db.url()).await;
    redis.stop();
    // Writes go to PostgreSQL once the breaker is open.
    writes_go_on(&app, "r").await;
    let mut acked = 0;
    let mut statuses = Vec::new();
    for n in 2..=6 {
        let res = app.patch("r", &json!({"current": n})).await;
        statuses.push(res.status().as_u16());
        let body: Value = res.json().await.unwrap();
        if let Some(v) = body["version"].as_u64() {
            acked = v;
        }
    }
    assert!(acked >= 4, "writes were acknowledged during the outage: {statuses:?}");
    redis.start_again();
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(2) {
        let r = record(&app, "r").await.expect("readable");
        assert!(r["version"].as_u64().unwrap() >= acked, "regressed to {} after {acked}", r["version"]);
    }
    // Writes go through Redis again and continue from the outage's version.
    let r = app.patch_ok("r", &json!({"message": "after"})).await;
    assert_eq!(r["version"].as_u64().unwrap(), acked + 1);
}

/// Mode 2b: Redis comes back with its old data (it was unreachable, not
/// dead); the records written during the outage are copied back over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_with_old_data_never_shadows_the_outage() {
    let (redis, proxy, _db, app) = redis_behind_a_proxy().await;
    for id in ["a", "b", "c"] {
        app.put_ok(id, &json!({"status": "running", "current": 0})).await;
        app.patch_ok(id, &json!({"current": 1})).await;
    }
    proxy.set_mode(Mode::Reset).await;
    proxy.set_mode(Mode::Refuse).await;
    writes_go_on(&app, "a").await;
    let mut acked = HashMap::new();
    for round in 2..=4 {
        for id in ["a", "b", "c"] {
            let res = app.patch(id, &json!({"current": round})).await;
            if res.status() == StatusCode::OK {
                acked.insert(id, res.json::<Value>().await.unwrap()["version"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(acked.len(), 3, "every record took writes during the outage");
    proxy.set_mode(Mode::Forward).await; // Redis still holds version 2 of each
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(2) {
        for (id, version) in &acked {
            let r = record(&app, id).await.expect("readable");
            assert!(r["version"].as_u64().unwrap() >= *version, "{id} regressed to {} after {version}", r["version"]);
        }
    }
    // Redis itself now holds the outage's versions.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    for (id, version) in &acked {
        let raw: Vec<u8> =
            redis::cmd("GET").arg(format!("{}progress:{id}", app.settings.key_prefix)).query(&mut conn).unwrap();
        assert!(
            raw.starts_with(format!("{{\"v\":{version},").as_bytes()),
            "{id}: {}",
            String::from_utf8_lossy(&raw[..30])
        );
    }
}

/// Redis comes back for one instance while another is still cut off from
/// it (its probe has not reached Redis yet: here a proxy keeps refusing it).
/// The first copies back what PostgreSQL took and returns to Redis; from
/// then on PostgreSQL refuses the second's writes (503), which would build
/// on the version PostgreSQL holds, older than the one in Redis: two
/// acknowledged writes on one version, and one of them lost (the chaos run
/// caught that). Once the second reaches Redis too, it writes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_a_returned_redis_cannot_fork_a_record() {
    let redis = OwnRedis::start();
    let (proxy_a, proxy_b) = (Proxy::start(redis.addr()).await, Proxy::start(redis.addr()).await);
    let db = TestDatabase::create().await;
    let prefix = common::unique_prefix();
    let instance = |proxy: &Proxy| {
        let (url, prefix, database) =
            (format!("redis://127.0.0.1:{}", proxy.port()), prefix.clone(), db.url().to_owned());
        spawn_app_with(Backend::Redis, move |s| {
            quick(s, url, database);
            s.key_prefix = prefix;
            s.cache_max_age_ms = 0;
            s.admin_token = Some("admin".into());
        })
    };
    let (a, b) = (instance(&proxy_a).await, instance(&proxy_b).await);
    durable_ready(&a, db.url()).await;
    a.put_ok("job", &json!({"status": "running", "current": 0})).await;

    for proxy in [&proxy_a, &proxy_b] {
        proxy.set_mode(Mode::Reset).await;
        proxy.set_mode(Mode::Refuse).await;
    }
    writes_go_on(&a, "job").await;
    writes_go_on(&b, "job").await;
    let in_postgres = b.patch_ok("job", &json!({"current": 1})).await["version"].as_u64().unwrap();

    // Redis answers A again; A copies back and returns to it.
    proxy_a.set_mode(Mode::Forward).await;
    wait_for("A back on Redis", Duration::from_secs(5), async || {
        let doc: Value = a.client.get(a.url("/readyz")).send().await.unwrap().json().await.unwrap();
        doc["dependencies"]["redis"]["breaker"] != "open"
    })
    .await;
    let in_redis = a.patch_ok("job", &json!({"current": 2})).await;
    assert_eq!(in_redis["version"].as_u64(), Some(in_postgres + 1), "A wrote on the version B left in PostgreSQL");

    // B is still cut off: PostgreSQL still holds `in_postgres` (A's write is
    // in its backlog), and B must not write on it.
    for _ in 0..3 {
        assert_problem(b.patch("job", &json!({"current": 3})).await, 503, "storage_unavailable").await;
    }
    // Nor delete it there, one by one or in bulk: Redis (serving A) would
    // never hear of it.
    assert_problem(b.send(reqwest::Method::DELETE, "/progress/job", None, &[]).await, 503, "storage_unavailable").await;
    let bulk =
        b.send(reqwest::Method::DELETE, "/admin/progress?prefix=jo", None, &[("authorization", "Bearer admin")]).await;
    assert_problem(bulk, 503, "storage_unavailable").await;
    assert_eq!(a.get_ok("job").await["version"].as_u64(), Some(in_postgres + 1), "the record stays, in Redis");
    assert_eq!(
        durable_versions(db.url()).await.get("job").copied(),
        Some(in_postgres as i64),
        "and live in PostgreSQL"
    );

    // B reaches Redis and writes there, on A's version.
    proxy_b.set_mode(Mode::Forward).await;
    until_writes_resume(Duration::from_secs(5), async || b.patch("job", &json!({"current": 4})).await).await;
    for app in [&a, &b] {
        let r = app.get_ok("job").await;
        assert_eq!((r["version"].as_u64(), r["current"].as_u64()), (Some(in_postgres + 2), Some(4)), "{r}");
    }
    wait_for("PostgreSQL holds the last write", Duration::from_secs(3), async || {
        durable_versions(db.url()).await.get("job").copied() == Some(in_postgres as i64 + 2)
    })
    .await;
}

/// Mode 3: PostgreSQL is killed; writes are acknowledged from Redis and,
/// once it returns, every record's latest version reaches it within the
/// persist interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_then_back_gets_every_latest_version() {
    let mut pg = OwnPostgres::start();
    let app = spawn_app_with(Backend::Redis, |s| {
        let redis = s.redis_url.clone().unwrap();
        quick(s, redis, pg.url());
    })
    .await;
    durable_ready(&app, &pg.url()).await;
    pg.stop();
    let mut latest = HashMap::new();
    for n in 0..10 {
        let id = format!("job-{n}");
        app.put_ok(&id, &json!({"status": "running"})).await;
        let r = app.patch_ok(&id, &json!({"current": n})).await;
        latest.insert(id, r["version"].as_i64().unwrap());
    }
    let r = app.patch_ok("job-0", &json!({"status": "completed"})).await;
    latest.insert("job-0".into(), r["version"].as_i64().unwrap());
    pg.start_again();
    let back = Instant::now();
    wait_for("every latest version in PostgreSQL", Duration::from_secs(4), async || {
        let durable = durable_versions(&pg.url()).await;
        latest.iter().all(|(id, v)| durable.get(id) == Some(v))
    })
    .await;
    println!("PostgreSQL caught up {:?} after it came back", back.elapsed());
}

/// Mode 4: both down: 503 `storage_unavailable` with Retry-After, nothing
/// acknowledged; the service recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_down_is_503_and_recovers_by_itself() {
    let mut redis = OwnRedis::start();
    let mut pg = OwnPostgres::start();
    let app = spawn_app_with(Backend::Redis, |s| quick(s, redis.url(), pg.url())).await;
    durable_ready(&app, &pg.url()).await;
    redis.stop();
    pg.stop();
    for _ in 0..5 {
        let res = app.put("lost", &json!({"status": "running"})).await;
        assert_eq!(res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("1"));
        assert_problem(res, 503, "storage_unavailable").await;
        assert_problem(app.get("warm-up-1").await, 503, "storage_unavailable").await;
    }
    redis.start_again();
    pg.start_again();
    wait_for("writes accepted again", Duration::from_secs(5), async || {
        app.put("after", &json!({})).await.status().is_success()
    })
    .await;
    // Issue 20, "never a false 404": a Redis miss is 404 only once PostgreSQL
    // answers; until its breaker lets reads through again it is 503. Writes
    // resume as soon as Redis is back, which may be before that.
    wait_for("reads answered by PostgreSQL again", Duration::from_secs(5), async || {
        record(&app, "lost").await != Err(StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert_eq!(record(&app, "lost").await.unwrap_err(), StatusCode::NOT_FOUND, "nothing was acknowledged");
    assert!(!durable_versions(&pg.url()).await.contains_key("lost"));
}

/// Mode 6: Redis accepts connections and never answers. Requests are
/// bounded by PROGRESS_REDIS_TIMEOUT_MS (300 ms here) until the breaker
/// opens, then Redis costs them nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_is_bounded_then_skipped() {
    let (redis, proxy, _db, app) = redis_behind_a_proxy().await;
    app.put_ok("b", &json!({"status": "running"})).await;
    proxy.set_mode(Mode::Blackhole).await;
    // The PUT left its record in the read cache, which serves it until the
    // change listener notices that Redis stopped answering (two pings at
    // most) and steps aside; from then on reads ask Redis.
    wait_for("the read cache to step aside", Duration::from_secs(5), async || {
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metrics.lines().any(|l| l == "progressd_read_cache_entries 0")
    })
    .await;
    let mut latencies = Vec::new();
    for _ in 0..12 {
        let started = Instant::now();
        let res = app.get("b").await;
        latencies.push(started.elapsed());
        assert_eq!(res.status(), StatusCode::OK, "reads fall back to PostgreSQL");
    }
    let slowest = latencies.iter().max().unwrap();
    assert!(*slowest < Duration::from_millis(700), "bounded by the Redis timeout: {latencies:?}");
    // Any request that still tried Redis would take the full 300 ms timeout;
    // 250 ms leaves room for a loaded CI machine and still tells them apart.
    let after_open = &latencies[4..];
    assert!(after_open.iter().all(|l| *l < Duration::from_millis(250)), "breaker open: {latencies:?}");
    // A write while the breaker is open goes to PostgreSQL without waiting
    // on Redis.
    writes_go_on(&app, "b").await;
    let started = Instant::now();
    app.patch_ok("b", &json!({"message": "during"})).await;
    assert!(started.elapsed() < Duration::from_millis(250), "no Redis timeout paid: {:?}", started.elapsed());
    proxy.set_mode(Mode::Forward).await;
    wait_for("Redis in use again", Duration::from_secs(5), async || {
        let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
        let raw: Option<Vec<u8>> =
            redis::cmd("GET").arg(format!("{}progress:b", app.settings.key_prefix)).query(&mut conn).unwrap();
        raw.is_some_and(|r| r.starts_with(b"{\"v\":3,"))
    })
    .await;
}

/// Mode 6 with the default PROGRESS_REDIS_TIMEOUT_MS (100 ms): the first
/// ten requests after Redis stops answering, PATCHes and GETs in turn. A
/// request pays at most two Redis timeouts (a write's read and its
/// compare-and-set) before the breaker opens; after that, none. The
/// latencies are printed (`-- --nocapture`); bench/blackhole_latency.py
/// measures the same against the release binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_costs_the_first_requests_at_most_two_default_timeouts() {
    let timeout = Duration::from_millis(Settings::default().redis_timeout_ms);
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let db = TestDatabase::create().await;
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let app = spawn_app_with(Backend::Redis, |s| {
        quick(s, url.clone(), db.url().into());
        s.redis_timeout_ms = Settings::default().redis_timeout_ms;
        s.cache_max_age_ms = 0;
    })
    .await;
    durable_ready(&app, db.url()).await;
    for n in 0..10 {
        app.put_ok(&format!("bh-{n}"), &json!({"status": "running"})).await;
    }
    proxy.set_mode(Mode::Blackhole).await;
    let mut latencies = Vec::new();
    for n in 0..10 {
        let started = Instant::now();
        let res = if n % 2 == 0 {
            app.patch(&format!("bh-{n}"), &json!({"current": n})).await
        } else {
            app.get(&format!("bh-{n}")).await
        };
        latencies.push((if n % 2 == 0 { "PATCH" } else { "GET" }, res.status().as_u16(), started.elapsed()));
    }
    println!("first ten requests with Redis blackholed (timeout {timeout:?}): {latencies:?}");
    for (method, status, took) in &latencies {
        assert!(*status == 200 || *status == 503, "{method} answered {status}");
        // Two timeouts, a PostgreSQL round trip and a loaded CI machine's slack.
        assert!(*took < timeout * 2 + Duration::from_millis(400), "{method} took {took:?}: {latencies:?}");
    }
    let refused = latencies.iter().filter(|(_, status, _)| *status == 503).count();
    assert!(refused <= 1, "only a write before the breaker opened may fail: {latencies:?}");
    let after_open = &latencies[4..];
    assert!(after_open.iter().all(|(_, s, _)| *s == 200), "{latencies:?}");
}

/// Mode 5: SIGTERM with a backlog: the process flushes it and exits 0;
/// after FLUSHALL on Redis every record is still served, latest version,
/// from PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_backlog_before_exiting() {
    let redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let port = common::postgres::free_port();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_progressd"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("PROGRESS_HOST", "127.0.0.1")
            .env("REDIS_URL", redis.url())
            .env("DATABASE_URL", db.url())
            // Long enough that nothing is flushed before the signal.
            .env("PROGRESS_PERSIST_INTERVAL_SECONDS", "300")
            .env("PROGRESS_BREAKER_PROBE_MS", "100")
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let put = async |id: &str, body: Value| {
        client
            .put(format!("{base}/progress/{id}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
    };
    let child = start();
    // A create reaches PostgreSQL before its response once PostgreSQL is in
    // use: a fresh id each try (a replace would wait for the backlog).
    let mut attempt = 0;
    wait_for("the server and its PostgreSQL", Duration::from_secs(10), async || {
        attempt += 1;
        let id = format!("warm-up-{attempt}");
        put(&id, json!({})).await.is_ok_and(|r| r.status().is_success())
            && durable_versions(db.url()).await.contains_key(&id)
    })
    .await;
    let mut latest = HashMap::new();
    for n in 0..20 {
        let id = format!("job-{n}");
        assert!(put(&id, json!({"status": "running"})).await.unwrap().status().is_success());
        for step in 1..=3 {
            let res = client
                .patch(format!("{base}/progress/{id}"))
                .header("content-type", "application/json")
                .body(json!({"current": step, "message": format!("step {step}")}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        latest.insert(id, 4i64);
    }
    let before = durable_versions(db.url()).await;
    assert!(latest.keys().all(|id| before.get(id) == Some(&1)), "only the creates were persisted so far");

    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{logs}");
    assert!(logs.contains("flushed"), "{logs}");
    let after = durable_versions(db.url()).await;
    assert!(latest.iter().all(|(id, v)| after.get(id) == Some(v)), "{after:?}");

    let _: () =
        redis::cmd("FLUSHALL").query(&mut redis::Client::open(redis.url()).unwrap().get_connection().unwrap()).unwrap();
    let mut child = start();
    wait_for("the server again", Duration::from_secs(10), async || {
        client.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    for id in latest.keys() {
        let mut served = None;
        wait_for("a record served from PostgreSQL", Duration::from_secs(5), async || {
            let res = client.get(format!("{base}/progress/{id}")).send().await.unwrap();
            if res.status() == StatusCode::OK {
                served = Some(res.json::<Value>().await.unwrap());
            }
            served.is_some()
        })
        .await;
        let served = served.unwrap();
        assert_eq!((served["version"].as_i64(), served["message"].as_str()), (Some(4), Some("step 3")), "{id}");
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Redis restarts between two requests (too fast for the breaker to see):
/// updates acknowledged but not yet flushed are still served, from this
/// instance's backlog, not the older PostgreSQL version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_redis_restart_does_not_roll_back_unflushed_updates() {
    let mut redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let app = spawn_app_with(Backend::Redis, |s| {
        quick(s, redis.url(), db.url().into());
        s.persist_interval_seconds = 300;
    })
    .await;
    durable_ready(&app, db.url()).await;
    app.put_ok("quick", &json!({"status": "running"})).await;
    for n in 1..=3 {
        app.patch_ok("quick", &json!({"current": n})).await;
    }
    assert_eq!(durable_versions(db.url()).await.get("quick"), Some(&1), "only the create is persisted");
    redis.stop();
    redis.start_again();
    let r = record(&app, "quick").await.expect("readable");
    assert_eq!((r["version"].as_u64(), r["current"].as_u64()), (Some(4), Some(3)));
    let r = app.patch_ok("quick", &json!({"current": 4})).await;
    assert_eq!(r["version"], 5, "the next write builds on the latest version");
}
