//! Live progress: long-polls (`?wait=N`) and Server-Sent Events
//! (`/progress/{id}/events`) on both stores, and across two instances
//! sharing one Redis.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::OwnRedis;
use common::sse::{EventStream, Next};
use common::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;

const SOON: Duration = Duration::from_secs(5);

async fn open(app: &TestApp, id: &str, headers: &[(&str, &str)]) -> EventStream {
    let (status, stream) = EventStream::open(&app.client, &app.url(&format!("/progress/{id}/events")), headers).await;
    assert_eq!(status, StatusCode::OK, "events for {id}");
    stream.unwrap()
}

async fn long_poll(
    app: &TestApp,
    id: &str,
    wait: u64,
    etag: &str,
) -> (StatusCode, Duration, Option<serde_json::Value>) {
    let started = Instant::now();
    let res = app.send(Method::GET, &format!("/progress/{id}?wait={wait}"), None, &[("if-none-match", etag)]).await;
    let status = res.status();
    let body = if status == StatusCode::OK { Some(res.json().await.unwrap()) } else { None };
    (status, started.elapsed(), body)
}

async fn events_arrive_in_order_one_per_change(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running", "current": 0, "total": 10})).await;
    let mut events = open(&app, "job", &[]).await;
    assert!(events.content_type.starts_with("text/event-stream"), "{}", events.content_type);
    let first = events.expect_event(SOON).await;
    assert_eq!((first.version(), first.event.as_deref()), (1, Some("progress")));
    assert_eq!(first.json()["current"], 0);
    assert!(first.retry.is_some(), "the first event tells EventSource when to reconnect");
    // Each write waits for its event: every version arrives, in order.
    for n in 1..=10u64 {
        app.patch_ok("job", &json!({"current": n})).await;
        let event = events.expect_event(SOON).await;
        assert_eq!(event.version(), n + 1);
        assert_eq!(event.json()["current"], n);
        assert_eq!(event.json()["version"], n + 1);
    }
    // A burst: versions only go up, and the last one always arrives.
    for n in 0..30u64 {
        app.patch_ok("job", &json!({"message": format!("burst {n}")})).await;
    }
    let mut last = 11;
    while last < 41 {
        let event = events.expect_event(SOON).await;
        assert!(event.version() > last, "version {} after {last}", event.version());
        last = event.version();
    }
    assert_eq!(last, 41);
    // A terminal status is the last event; then the stream ends.
    app.patch_ok("job", &json!({"status": "completed"})).await;
    let done = events.expect_event(SOON).await;
    assert_eq!((done.version(), done.json()["status"].as_str()), (42, Some("completed")));
    assert!(matches!(events.next(SOON).await, Next::End), "the stream ends after a terminal status");
}

async fn resumes_from_last_event_id(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running", "current": 1})).await;
    app.patch_ok("job", &json!({"current": 2})).await;
    app.patch_ok("job", &json!({"current": 3})).await;

    // Saw version 1, missed 2 and 3: the current record comes first.
    let mut behind = open(&app, "job", &[("last-event-id", "1")]).await;
    let event = behind.expect_event(SOON).await;
    assert_eq!((event.version(), event.json()["current"].as_u64()), (3, Some(3)));

    // Saw the current version: nothing until the next change.
    let mut current = open(&app, "job", &[("last-event-id", "3")]).await;
    assert!(matches!(current.next(Duration::from_millis(300)).await, Next::Silent));
    app.patch_ok("job", &json!({"current": 4})).await;
    assert_eq!(current.expect_event(SOON).await.version(), 4);
    assert_eq!(behind.expect_event(SOON).await.version(), 4);

    // Finished: a client without the last event gets it, then the end ...
    app.patch_ok("job", &json!({"status": "failed", "error": {"message": "disk full"}})).await;
    let (status, stream) =
        EventStream::open(&app.client, &app.url("/progress/job/events"), &[("last-event-id", "4")]).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    let event = stream.expect_event(SOON).await;
    assert_eq!((event.version(), event.json()["status"].as_str()), (5, Some("failed")));
    assert!(matches!(stream.next(SOON).await, Next::End));
    // ... and one that has it gets 204, which stops EventSource reconnecting.
    let (status, _) = EventStream::open(&app.client, &app.url("/progress/job/events"), &[("last-event-id", "5")]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

async fn a_deleted_record_ends_its_stream(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("gone", &json!({"status": "running"})).await;
    let mut events = open(&app, "gone", &[]).await;
    assert_eq!(events.expect_event(SOON).await.version(), 1);
    let res = app.send(Method::DELETE, "/progress/gone", None, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let deleted = events.expect_event(SOON).await;
    assert_eq!(deleted.event.as_deref(), Some("gone"));
    let data = deleted.json();
    assert_eq!((&data["id"], &data["reason"]), (&json!("gone"), &json!("deleted")), "{data}");
    assert!(matches!(events.next(SOON).await, Next::End));
}

async fn events_refuse_bad_requests(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.send(Method::GET, "/progress/nope/events", None, &[]).await;
    assert_problem(res, 404, "not_found").await;
    let res = app.send(Method::GET, "/progress/a%2Fb/events", None, &[]).await;
    assert_problem(res, 400, "invalid_id").await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let res = app.send(Method::GET, "/progress/job/events", None, &[("last-event-id", "seven")]).await;
    assert_problem(res, 400, "invalid_header").await;
    let res = app.send(Method::POST, "/progress/job/events", None, &[]).await;
    assert_problem(res, 405, "method_not_allowed").await;
}

async fn heartbeats_keep_a_quiet_stream_open(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.sse_heartbeat_seconds = 1).await;
    app.put_ok("quiet", &json!({"status": "running"})).await;
    let mut events = open(&app, "quiet", &[]).await;
    events.expect_event(SOON).await;
    let quiet = events.next(Duration::from_millis(2500)).await;
    assert!(matches!(quiet, Next::Silent), "{quiet:?}");
    assert!(events.comments >= 2, "comment lines while nothing changes: {}", events.comments);
    app.patch_ok("quiet", &json!({"current": 1})).await;
    assert_eq!(events.expect_event(SOON).await.version(), 2);
}

async fn long_poll_wakes_on_a_change(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running", "current": 1})).await;
    let writer = {
        let (client, url) = (app.client.clone(), app.url("/progress/job"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            client.patch(url).header("content-type", "application/json").body(r#"{"current":2}"#).send().await.unwrap();
        })
    };
    let (status, took, body) = long_poll(&app, "job", 20, "\"1\"").await;
    writer.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap()["current"], 2);
    assert!(took >= Duration::from_millis(350), "held until the change: {took:?}");
    assert!(took < Duration::from_secs(5), "answered at the change, not at the deadline: {took:?}");
}

async fn long_poll_times_out_with_304(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let (status, took, _) = long_poll(&app, "job", 1, "\"1\"").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(took >= Duration::from_millis(950), "waited the whole second: {took:?}");
    // A stale ETag or none: answered at once.
    let (status, took, body) = long_poll(&app, "job", 30, "\"0\"").await;
    assert_eq!((status, body.unwrap()["version"].as_u64()), (StatusCode::OK, Some(1)));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let started = Instant::now();
    let res = app.send(Method::GET, "/progress/job?wait=30", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn long_poll_sees_a_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let deleter = {
        let (client, url) = (app.client.clone(), app.url("/progress/job"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.delete(url).send().await.unwrap();
        })
    };
    let res = app.send(Method::GET, "/progress/job?wait=20", None, &[("if-none-match", "\"1\"")]).await;
    deleter.await.unwrap();
    assert_problem(res, 410, "gone").await;
}

async fn long_poll_refuses_bad_waits(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    for bad in ["61", "-1", "1.5", "soon", "", "99999999999999999999"] {
        let res =
            app.send(Method::GET, &format!("/progress/job?wait={bad}"), None, &[("if-none-match", "\"1\"")]).await;
        let doc = assert_problem(res, 400, "invalid_query").await;
        assert!(doc["detail"].as_str().unwrap().contains("wait"), "{doc}");
    }
    let res = app.send(Method::GET, "/progress/job?wait=1&wait=2", None, &[("if-none-match", "\"1\"")]).await;
    assert_problem(res, 400, "invalid_query").await;
    // Other parameters (cache busters) are ignored.
    let res = app.send(Method::GET, "/progress/job?_=12345", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
}

on_both_stores!(
    events_arrive_in_order_one_per_change,
    resumes_from_last_event_id,
    a_deleted_record_ends_its_stream,
    events_refuse_bad_requests,
    heartbeats_keep_a_quiet_stream_open,
    long_poll_wakes_on_a_change,
    long_poll_times_out_with_304,
    long_poll_sees_a_delete,
    long_poll_refuses_bad_waits,
);

/// Two instances over one Redis: a write through either reaches streams and
/// long-polls on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_subscribers_on_every_instance() {
    let a = spawn_app(Backend::Redis).await;
    let prefix = a.settings.key_prefix.clone();
    let b = spawn_app_with(Backend::Redis, |s| s.key_prefix = prefix).await;
    a.put_ok("shared", &json!({"status": "running", "current": 0})).await;
    let mut on_b = open(&b, "shared", &[]).await;
    let mut on_a = open(&a, "shared", &[]).await;
    assert_eq!(on_b.expect_event(SOON).await.version(), 1);
    assert_eq!(on_a.expect_event(SOON).await.version(), 1);
    // Let B's subscription to change notices settle before relying on it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=5u64 {
        let writer = if n % 2 == 0 { &a } else { &b };
        writer.patch_ok("shared", &json!({"current": n})).await;
        for stream in [&mut on_a, &mut on_b] {
            let event = stream.expect_event(SOON).await;
            assert_eq!((event.version(), event.json()["current"].as_u64()), (n + 1, Some(n)));
        }
    }
    // A long-poll on A wakes for a write through B.
    let poll = {
        let (client, url) = (a.client.clone(), a.url("/progress/shared?wait=20"));
        tokio::spawn(async move {
            let res = client.get(url).header("if-none-match", "\"6\"").send().await.unwrap();
            (res.status(), res.json::<serde_json::Value>().await.ok())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.patch_ok("shared", &json!({"status": "completed"})).await;
    let (status, body) = tokio::time::timeout(SOON, poll).await.expect("woken within 5 s").unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap()["status"], "completed");
    for stream in [&mut on_a, &mut on_b] {
        assert_eq!(stream.expect_event(SOON).await.json()["status"], "completed");
        assert!(matches!(stream.next(SOON).await, Next::End));
    }
}

/// Waiting costs no reads: with many long-polls and streams open on a quiet
/// record, Redis sees only the subscription's pings, and one change costs
/// one read, not one per waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_do_not_poll_redis() {
    let redis = OwnRedis::start();
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, |s| {
        s.redis_url = Some(url);
        s.cache_max_age_ms = 0; // every read reaches Redis, so reads are counted
    })
    .await;
    app.put_ok("quiet", &json!({"status": "running"})).await;
    let mut waiters = Vec::new();
    for _ in 0..200 {
        let (client, url) = (app.client.clone(), app.url("/progress/quiet?wait=20"));
        waiters.push(tokio::spawn(async move {
            client.get(url).header("if-none-match", "\"1\"").send().await.unwrap().status()
        }));
    }
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(open(&app, "quiet", &[("last-event-id", "1")]).await);
    }
    // The PUT's read, then one read per waiter as it arrives; wait until all have.
    let arrived = Instant::now();
    while redis_reads(&redis) < 1 + 200 + 50 {
        assert!(arrived.elapsed() < Duration::from_secs(30), "waiters did not arrive: {} reads", redis_reads(&redis));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads_before = redis_reads(&redis);
    assert_eq!(reads_before, 251, "one read per waiter");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads_quiet = redis_reads(&redis) - reads_before;
    assert_eq!(reads_quiet, 0, "no reads while nothing changes");

    app.patch_ok("quiet", &json!({"current": 1})).await; // one read and one CAS by the write itself
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), StatusCode::OK);
    }
    for stream in &mut streams {
        assert_eq!(stream.expect_event(SOON).await.version(), 2);
    }
    let reads_for_change = redis_reads(&redis) - reads_before;
    assert!(reads_for_change <= 4, "one change, 250 waiters: {reads_for_change} reads");
}

/// Record reads Redis has served (GET, what `get` sends), from INFO commandstats.
fn redis_reads(redis: &OwnRedis) -> u64 {
    let mut conn = ::redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let info: String = ::redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_get:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// Shutdown ends open streams and long-polls instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_long_polls() {
    let app = spawn_app(Backend::Memory).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let mut events = open(&app, "job", &[]).await;
    events.expect_event(SOON).await;
    let poll = {
        let (client, url) = (app.client.clone(), app.url("/progress/job?wait=60"));
        tokio::spawn(async move { client.get(url).header("if-none-match", "\"1\"").send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "stopped in {:?}", started.elapsed());
    assert!(matches!(events.next(SOON).await, Next::End));
    assert_eq!(poll.await.unwrap().ok(), Some(StatusCode::NOT_MODIFIED));
}

/// PostgreSQL alone: the instance hears its own writes. Redis over
/// PostgreSQL: writes through one instance reach streams on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_follow_records_on_the_durable_tiers() {
    let db = common::postgres::TestDatabase::create().await;
    let url = db.url().to_owned();
    let alone = spawn_app_with(Backend::Memory, |s| s.database_url = Some(url.clone())).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !alone.put("pg-job", &json!({"status": "running", "current": 0})).await.status().is_success() {
        assert!(Instant::now() < deadline, "PostgreSQL never became usable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events = open(&alone, "pg-job", &[]).await;
    let first = events.expect_event(SOON).await.version();
    alone.patch_ok("pg-job", &json!({"current": 1})).await;
    assert_eq!(events.expect_event(SOON).await.version(), first + 1);
    let (status, _, body) = {
        let etag = format!("\"{}\"", first + 1);
        let poll = long_poll(&alone, "pg-job", 20, &etag);
        let write = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            alone.patch_ok("pg-job", &json!({"status": "completed"})).await;
        };
        let (polled, ()) = tokio::join!(poll, write);
        polled
    };
    assert_eq!((status, body.unwrap()["status"].as_str()), (StatusCode::OK, Some("completed")));
    assert_eq!(events.expect_event(SOON).await.json()["status"], "completed");
    assert!(matches!(events.next(SOON).await, Next::End));
    alone.stop().await;

    let a = spawn_app_with(Backend::Redis, |s| s.database_url = Some(url.clone())).await;
    let prefix = a.settings.key_prefix.clone();
    let b = spawn_app_with(Backend::Redis, |s| {
        s.database_url = Some(url.clone());
        s.key_prefix = prefix;
    })
    .await;
    a.put_ok("tiered-job", &json!({"status": "running"})).await;
    let mut on_b = open(&b, "tiered-job", &[]).await;
    assert_eq!(on_b.expect_event(SOON).await.version(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.patch_ok("tiered-job", &json!({"current": 7})).await;
    let event = on_b.expect_event(SOON).await;
    assert_eq!((event.version(), event.json()["current"].as_u64()), (2, Some(7)));
}
