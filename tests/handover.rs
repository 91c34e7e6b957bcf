//! Issue 20, "wait only for what can exist": Redis is killed while writers
//! run at 50 writes a second on one instance and on three; writes move to
//! PostgreSQL once every live instance has flushed its backlog, so none is
//! refused after the breaker opens on one instance, and on three the
//! refusals (if any) end within a second. Nothing acknowledged is lost.
//! The unit tests of the same rules are in `src/store/tiered/tests/handover.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::TestDatabase;
use common::proxy::{Mode, Proxy};
use common::redis_server::OwnRedis;
use common::{Backend, TestApp, spawn_app_with};
use progressd::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Consecutive failures that open a breaker (the default).
const BREAKER_FAILURES: usize = 3;

fn quick(s: &mut Settings, redis_url: String, database_url: String, prefix: String) {
    s.redis_url = Some(redis_url);
    s.database_url = Some(database_url);
    s.key_prefix = prefix;
    // Long enough that every instance holds a backlog when Redis dies.
    s.persist_interval_seconds = 5;
    s.breaker_probe_ms = 100;
    s.redis_timeout_ms = 300;
    s.database_timeout_ms = 1000;
}

/// What one writer saw: each write's time and whether it was acknowledged
/// (with the `current` and version it was acknowledged at).
#[derive(Default)]
struct Log {
    writes: Vec<(Instant, Written)>,
}

/// Acknowledged at (`current`, version), or refused with this status.
type Written = Result<(u64, u64), u16>;

/// PATCHes `id` 50 times a second with a growing `current` until `stop`.
async fn writer(app: Arc<TestApp>, id: String, until: Instant, log: Arc<Mutex<Log>>) {
    let mut n = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let res = app.patch(&id, &json!({"current": n})).await;
        let at = Instant::now();
        let outcome = match res.status() {
            StatusCode::OK => Ok((n, res.json::<Value>().await.unwrap()["version"].as_u64().unwrap())),
            other => Err(other.as_u16()),
        };
        log.lock().unwrap().writes.push((at, outcome));
    }
}

struct Outcome {
    acknowledged: usize,
    refused: Vec<(Instant, u16)>,
    last: Option<(u64, u64)>,
}

fn outcome(log: &Log) -> Outcome {
    let refused: Vec<_> = log.writes.iter().filter_map(|(at, r)| r.err().map(|s| (*at, s))).collect();
    let acknowledged = log.writes.iter().filter(|(_, r)| r.is_ok()).count();
    let last = log.writes.iter().rev().find_map(|(_, r)| r.ok());
    Outcome { acknowledged, refused, last }
}

/// `instances` instances over one Redis and one PostgreSQL, a writer on
/// each; Redis is killed 1.5 s in. Returns each writer's outcome and the
/// kill time, after checking that every last acknowledged write is served.
async fn kill_redis_under_writers(instances: usize) -> (Vec<Outcome>, Instant) {
    let mut redis = OwnRedis::start();
    let db = TestDatabase::create().await;
    let prefix = common::unique_prefix();
    let mut apps = Vec::new();
    for _ in 0..instances {
        let (url, database, prefix) = (redis.url(), db.url().to_owned(), prefix.clone());
        apps.push(Arc::new(spawn_app_with(Backend::Redis, move |s| quick(s, url, database, prefix)).await));
    }
    // Every instance has run its migrations and said it is alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let rows = client.query("select count(*) from progress_instances", &[]).await;
        if rows.is_ok_and(|r| r[0].get::<_, i64>(0) == instances as i64) {
            break;
        }
        assert!(Instant::now() < deadline, "the instances did not all register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (n, app) in apps.iter().enumerate() {
        app.put_ok(&format!("job-{n}"), &json!({"status": "running", "total": 100000})).await;
    }
    let until = Instant::now() + Duration::from_secs(5);
    let logs: Vec<_> = (0..instances).map(|_| Arc::new(Mutex::new(Log::default()))).collect();
    let writers: Vec<_> = apps
        .iter()
        .zip(&logs)
        .enumerate()
        .map(|(n, (app, log))| tokio::spawn(writer(app.clone(), format!("job-{n}"), until, log.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.stop();
    let killed = Instant::now();
    for w in writers {
        w.await.unwrap();
    }
    let outcomes: Vec<_> = logs.iter().map(|l| outcome(&l.lock().unwrap())).collect();
    for (n, o) in outcomes.iter().enumerate() {
        let (current, version) = o.last.expect("writes were acknowledged");
        for app in &apps {
            let r = app.get_ok(&format!("job-{n}")).await;
            assert_eq!((r["current"].as_u64(), r["version"].as_u64()), (Some(current), Some(version)), "job-{n}");
        }
    }
    (outcomes, killed)
}

fn report(instances: usize, outcomes: &[Outcome], killed: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    for (n, o) in outcomes.iter().enumerate() {
        let window = match (o.refused.first(), o.refused.last()) {
            (Some((first, _)), Some((last, _))) => last.duration_since(*first),
            _ => Duration::ZERO,
        };
        longest = longest.max(window);
        let after_kill: Vec<_> = o.refused.iter().map(|(at, s)| (at.duration_since(killed).as_millis(), s)).collect();
        println!(
            "{instances} instance(s), writer {n}: {} acknowledged, {} refused {after_kill:?} (ms after the kill, status), refusal window {window:?}",
            o.acknowledged,
            o.refused.len()
        );
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_refuses_no_write_after_its_breaker_opens() {
    let (outcomes, killed) = kill_redis_under_writers(1).await;
    report(1, &outcomes, killed);
    let o = &outcomes[0];
    // Only writes that failed in Redis before the breaker opened may be
    // refused (at 50 a second, at most the few that opened it).
    assert!(o.refused.len() <= BREAKER_FAILURES, "refused: {:?}", o.refused.len());
    assert!(o.refused.iter().all(|(_, s)| *s == 503));
    assert!(
        o.refused.iter().all(|(at, _)| at.duration_since(killed) < Duration::from_millis(500)),
        "a write was refused after the breaker opened"
    );
    assert!(o.acknowledged > 150, "writes went on: {}", o.acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refuse_writes_for_at_most_a_second() {
    let (outcomes, killed) = kill_redis_under_writers(3).await;
    let longest = report(3, &outcomes, killed);
    assert!(longest <= Duration::from_secs(1), "refusal window {longest:?}");
    for o in &outcomes {
        assert!(o.refused.iter().all(|(_, s)| *s == 503));
        assert!(o.acknowledged > 150, "writes went on: {}", o.acknowledged);
    }
}

/// Redis cut off from one instance only (its proxy refuses): that instance
/// must not write in PostgreSQL while the other writes the same record in
/// Redis (a fork: one of two acknowledged writes on one version would be
/// lost). Its writes are refused until it reaches Redis again; the other's
/// go on; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_redis_refuses_writes_while_the_other_goes_on() {
    let redis = OwnRedis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let db = TestDatabase::create().await;
    let prefix = common::unique_prefix();
    let (via_proxy, direct) = (format!("redis://127.0.0.1:{}", proxy.port()), redis.url());
    let (database, p) = (db.url().to_owned(), prefix.clone());
    let a = spawn_app_with(Backend::Redis, move |s| quick(s, via_proxy, database, p)).await;
    let (database, p) = (db.url().to_owned(), prefix.clone());
    let b = spawn_app_with(Backend::Redis, move |s| quick(s, direct, database, p)).await;
    b.put_ok("job", &json!({"status": "running", "current": 0})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("job").await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "A never read the record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both instances have a heartbeat row: an instance whose first heartbeat
    // has not landed yet is not asked (see ARCHITECTURE.md, "The hand-over").
    let rows = db.connect().await;
    while rows.query_one("SELECT count(*) FROM progress_instances", &[]).await.unwrap().get::<_, i64>(0) < 2 {
        assert!(Instant::now() < deadline, "the instances never both had a heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.set_mode(Mode::Reset).await;
    proxy.set_mode(Mode::Refuse).await;
    let mut last = 0;
    for n in 1..=20 {
        // B writes in Redis; A, cut off, must not write the same record elsewhere.
        last = b.patch_ok("job", &json!({"current": n})).await["version"].as_u64().unwrap();
        let res = a.patch("job", &json!({"message": format!("from A {n}")})).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "A's write {n} was taken while cut off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set_mode(Mode::Forward).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = a.patch("job", &json!({"message": "A is back"})).await;
        if res.status() == StatusCode::OK {
            let r: Value = res.json().await.unwrap();
            assert_eq!(r["version"].as_u64(), Some(last + 1), "A wrote on B's last version: {r}");
            assert_eq!(r["current"].as_u64(), Some(20), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "A never wrote again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for app in [&a, &b] {
        let r = app.get_ok("job").await;
        assert_eq!((r["version"].as_u64(), r["current"].as_u64()), (Some(last + 1), Some(20)), "{r}");
    }
}
