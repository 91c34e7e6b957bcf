//! The read cache in front of Redis: two instances on one Redis never serve
//! a version older than an acknowledged one for longer than the time a
//! change notice takes to arrive, and the cache steps aside whenever it
//! cannot hear those notices.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::OwnRedis;
use common::{Backend, TestApp, assert_problem, redis_conn, spawn_app_with, unique_prefix};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a change may take to reach another instance's cache in these
/// tests (in practice well under a millisecond; CI machines are slow).
const NOTICE_BOUND: Duration = Duration::from_millis(250);

async fn pair(tweak: impl Fn(&mut progressd::Settings) + Copy) -> (TestApp, TestApp) {
    let prefix = unique_prefix();
    let a = spawn_app_with(Backend::Redis, |s| {
        s.key_prefix = prefix.clone();
        tweak(s);
    })
    .await;
    let b = spawn_app_with(Backend::Redis, |s| {
        s.key_prefix = prefix.clone();
        tweak(s);
    })
    .await;
    // Let both change listeners subscribe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (a, b)
}

async fn version(app: &TestApp, id: &str) -> Option<u64> {
    let res = app.get(id).await;
    match res.status() {
        StatusCode::OK => Some(res.json::<Value>().await.unwrap()["version"].as_u64().unwrap()),
        StatusCode::NOT_FOUND | StatusCode::GONE => None,
        other => panic!("GET {id}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_reaches_the_others_reads() {
    let (a, b) = pair(|_| {}).await;
    a.put_ok("shared", &json!({"status": "running"})).await;
    for _ in 0..3 {
        assert_eq!(version(&a, "shared").await, Some(1)); // now cached on a
    }
    b.patch_ok("shared", &json!({"message": "from b"})).await;
    let acked = Instant::now();
    loop {
        match version(&a, "shared").await {
            Some(2) => break,
            Some(1) => assert!(acked.elapsed() < NOTICE_BOUND, "a served version 1 for {:?}", acked.elapsed()),
            other => panic!("{other:?}"),
        }
    }
    let mut res = a.get("shared").await.json::<Value>().await.unwrap();
    assert_eq!(res["message"].take(), "from b");
    b.send(reqwest::Method::DELETE, "/progress/shared", None, &[]).await;
    let acked = Instant::now();
    while version(&a, "shared").await.is_some() {
        assert!(acked.elapsed() < NOTICE_BOUND, "a served a deleted record for {:?}", acked.elapsed());
    }
}

/// The subscription to change notices logs in as the store's connections
/// do (password alone, or user and password), or the cache would stay off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_hears_notices_from_a_redis_that_wants_a_password() {
    let redis = OwnRedis::start_with(&["--requirepass", "s3cret"]);
    let urls = [
        format!("redis://:s3cret@127.0.0.1:{}", redis.port()),
        format!("redis://default:s3cret@127.0.0.1:{}", redis.port()),
    ];
    let prefix = unique_prefix();
    let on = |url: &String| {
        let (url, prefix) = (url.clone(), prefix.clone());
        move |s: &mut progressd::Settings| (s.redis_url, s.key_prefix) = (Some(url), prefix)
    };
    let (a, b) =
        (spawn_app_with(Backend::Redis, on(&urls[0])).await, spawn_app_with(Backend::Redis, on(&urls[1])).await);
    let entries = async |app: &TestApp| {
        let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line = metrics.lines().find(|l| l.starts_with("progressd_read_cache_entries ")).unwrap().to_owned();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    a.put_ok("guarded", &json!({"status": "running"})).await;
    let started = Instant::now();
    // The cache keeps entries only while notices flow.
    while entries(&a).await == 0 || entries(&b).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the caches never came on: is the subscription logged in?");
        a.put_ok("guarded", &json!({"status": "running"})).await;
        assert!(version(&b, "guarded").await.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (writer, reader) in [(&a, &b), (&b, &a)] {
        let written = writer.patch_ok("guarded", &json!({"current": 1})).await["version"].as_u64();
        let acked = Instant::now();
        while version(reader, "guarded").await != written {
            assert!(acked.elapsed() < NOTICE_BOUND, "a write was not heard of for {:?}", acked.elapsed());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_on_one_instance_never_fall_behind_writers_on_another() {
    let (a, b) = pair(|_| {}).await;
    b.put_ok("race", &json!({"status": "running", "current": 0, "total": 100000})).await;
    // Acknowledgement time of each version written through b.
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(vec![(1, Instant::now())]));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, done) = (acks.clone(), done.clone());
        let (client, url) = (b.client.clone(), b.url("/progress/race"));
        tokio::spawn(async move {
            for n in 1..=300 {
                let res = client
                    .patch(&url)
                    .header("content-type", "application/json")
                    .body(json!({"current": n}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                let v = res.json::<Value>().await.unwrap()["version"].as_u64().unwrap();
                acks.lock().unwrap().push((v, Instant::now()));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    let mut worst = Duration::ZERO;
    let mut last_seen = 0;
    while !done.load(Ordering::SeqCst) {
        let started = Instant::now();
        let acked_before: Vec<(u64, Instant)> = acks.lock().unwrap().clone();
        let newest_acked = acked_before.last().unwrap().0;
        let seen = version(&a, "race").await.unwrap();
        reads += 1;
        assert!(seen >= last_seen, "versions went backwards on one instance: {last_seen} then {seen}");
        last_seen = seen;
        if seen < newest_acked {
            // Stale: for how long had a newer version been acknowledged?
            let (_, first_newer_at) = acked_before.iter().find(|(v, _)| *v == seen + 1).unwrap();
            worst = worst.max(started.duration_since(*first_newer_at));
        }
    }
    writer.await.unwrap();
    assert!(reads > 50, "the reader ran ({reads} reads)");
    assert!(worst < NOTICE_BOUND, "a read was stale by {worst:?}");
    println!("{reads} reads; worst staleness after acknowledgement {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_really_used_and_max_age_bounds_an_unannounced_change() {
    let (a, _b) = pair(|s| s.cache_max_age_ms = 400).await;
    a.put_ok("quiet", &json!({})).await;
    // The PUT's own change notice arrives asynchronously and evicts whatever
    // a read cached before it: let it arrive, then fill the cache.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(version(&a, "quiet").await, Some(1));
    // Removed behind the service's back: no change notice.
    let key = format!("{}progress:quiet", a.settings.key_prefix);
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut redis_conn()).unwrap();
    assert_eq!(version(&a, "quiet").await, Some(1), "served from the cache");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(version(&a, "quiet").await, None, "max age reached: Redis asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_read_asks_redis() {
    let (a, _b) = pair(|s| s.cache_max_age_ms = 0).await;
    a.put_ok("nocache", &json!({})).await;
    assert_eq!(version(&a, "nocache").await, Some(1));
    let key = format!("{}progress:nocache", a.settings.key_prefix);
    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut redis_conn()).unwrap();
    assert_eq!(version(&a, "nocache").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_never_shadowed_by_the_cache() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |s| {
        s.redis_url = Some(url.clone());
        s.redis_timeout_ms = 300;
        s.cache_max_age_ms = 60_000;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.put_ok("r", &json!({})).await;
    assert_eq!(version(&app, "r").await, Some(1));
    redis.stop();
    // The listener sees the connection close a moment later; until then the
    // cache may still answer. Once it has, reads fail instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let res = app.get("r").await;
        if res.status() != StatusCode::OK || std::time::Instant::now() > deadline {
            assert_problem(res, 503, "storage_unavailable").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.start_again();
    // The restarted Redis is empty: the record must not come back from memory.
    for _ in 0..10 {
        let res = app.get("r").await;
        assert_ne!(res.status(), StatusCode::OK, "the cache served a record Redis no longer has");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.stop();
}
