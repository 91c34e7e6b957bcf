//! Issue 19, one stream for many jobs: `GET /progress` with
//! `Accept: text/event-stream` sends every matching record, `ready`, then
//! every change, filtered by prefix and status; across instances sharing
//! Redis, resumed with `Last-Event-ID`; inside a prefix token's prefix.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::sse::{EventStream, Next, SseEvent};
use common::{Backend, TestApp, spawn_app, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use progressd::tokens::now_seconds;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(5);

async fn open(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> EventStream {
    let (status, stream) = EventStream::open(&app.client, &app.url(&format!("/progress{query}")), headers).await;
    assert_eq!(status, StatusCode::OK, "stream {query}");
    stream.unwrap()
}

/// Events up to and including `ready`: (id → the record's JSON), and `ready`.
async fn snapshot(stream: &mut EventStream) -> (HashMap<String, Value>, SseEvent) {
    let mut records = HashMap::new();
    loop {
        let event = stream.expect_event(SOON).await;
        match event.event.as_deref() {
            Some("progress") => {
                assert_eq!(event.id, None, "snapshot events carry no id: {event:?}");
                let record = event.json();
                records.insert(record["id"].as_str().unwrap().to_owned(), record);
            }
            Some("ready") => return (records, event),
            other => panic!("unexpected {other:?} in the snapshot: {event:?}"),
        }
    }
}

/// The next event: its type and the `id` field of its data.
async fn next_of(stream: &mut EventStream) -> (String, String, SseEvent) {
    let event = stream.expect_event(SOON).await;
    let kind = event.event.clone().unwrap_or_default();
    let id = event.json()["id"].as_str().unwrap().to_owned();
    (kind, id, event)
}

async fn quiet(stream: &mut EventStream) {
    let next = stream.next(Duration::from_millis(400)).await;
    assert!(matches!(next, Next::Silent), "nothing more: {next:?}");
}

async fn snapshot_then_live_changes_filtered(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("a:1", &json!({"status": "running", "current": 1})).await;
    app.put_ok("a:2", &json!({"status": "pending"})).await;
    app.put_ok("b:1", &json!({"status": "running"})).await;
    // Without the Accept header, the listing.
    let res = app.send(Method::GET, "/progress?prefix=a:", None, &[]).await;
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.json::<Value>().await.unwrap()["items"].as_array().unwrap().len(), 2);

    let mut stream = open(&app, "?prefix=a:&status=running", &[]).await;
    let (records, ready) = snapshot(&mut stream).await;
    assert_eq!(records.keys().collect::<Vec<_>>(), vec!["a:1"]);
    assert_eq!(ready.json()["records"], 1);
    let mark: i64 = ready.id.as_deref().unwrap().parse().unwrap();
    assert!(mark > 1_700_000_000_000, "a resume point in ms: {mark}");
    assert_eq!(stream.content_type, "text/event-stream");

    app.put_ok("a:3", &json!({"status": "running"})).await; // created
    let (kind, id, event) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str(), event.json()["version"].as_u64()), ("progress", "a:3", Some(1)));
    assert!(event.id.as_deref().unwrap().parse::<i64>().unwrap() >= mark, "ids do not go back");
    app.patch_ok("a:1", &json!({"current": 2})).await; // updated
    let (kind, id, event) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str(), event.json()["current"].as_u64()), ("progress", "a:1", Some(2)));
    app.patch_ok("b:1", &json!({"current": 5})).await; // another prefix: nothing
    app.patch_ok("a:2", &json!({"message": "still pending"})).await; // another status: removed once
    let (kind, id, event) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str(), event.json()["status"].as_str()), ("removed", "a:2", Some("pending")));
    app.patch_ok("a:2", &json!({"message": "still pending, again"})).await; // not told twice
    app.patch_ok("a:2", &json!({"status": "running"})).await; // enters the filter
    let (kind, id, event) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str(), event.json()["version"].as_u64()), ("progress", "a:2", Some(4)));
    app.patch_ok("a:1", &json!({"status": "completed"})).await; // leaves it
    let (kind, id, _) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str()), ("removed", "a:1"));
    let res = app.send(Method::DELETE, "/progress/a:3", None, &[]).await; // deleted
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (kind, id, _) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str()), ("deleted", "a:3"));
    quiet(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_changes_filtered_memory() {
    snapshot_then_live_changes_filtered(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_changes_filtered_redis() {
    snapshot_then_live_changes_filtered(Backend::Redis).await;
}

/// Written through A, streamed from B; cut, written meanwhile, resumed
/// from B's last event id: everything that still exists arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_instances_with_a_reconnect_in_the_middle() {
    let a = spawn_app(Backend::Redis).await;
    let prefix = a.settings.key_prefix.clone();
    let b = spawn_app_with(Backend::Redis, |s| s.key_prefix = prefix).await;
    for n in 1..=3 {
        a.put_ok(&format!("job-{n}"), &json!({"status": "running", "current": 0})).await;
    }
    a.put_ok("other", &json!({"status": "running"})).await;
    let mut stream = open(&b, "?prefix=job-", &[]).await;
    let (records, ready) = snapshot(&mut stream).await;
    assert_eq!(records.len(), 3);
    let mut last_id = ready.id.clone().unwrap();
    for n in 1..=3u64 {
        a.patch_ok("job-1", &json!({"current": n})).await;
        let (kind, id, event) = next_of(&mut stream).await;
        assert_eq!((kind.as_str(), id.as_str(), event.json()["current"].as_u64()), ("progress", "job-1", Some(n)));
        last_id = event.id.clone().unwrap();
    }
    drop(stream);

    // Meanwhile, through A: an update, a creation, a delete.
    a.patch_ok("job-2", &json!({"current": 7})).await;
    a.put_ok("job-4", &json!({"status": "pending"})).await;
    assert_eq!(a.send(Method::DELETE, "/progress/job-3", None, &[]).await.status(), StatusCode::NO_CONTENT);
    a.patch_ok("other", &json!({"current": 1})).await;

    let mut stream = open(&b, "?prefix=job-", &[("last-event-id", &last_id)]).await;
    let (caught_up, ready) = snapshot(&mut stream).await;
    assert_eq!(caught_up["job-2"]["current"], 7, "{caught_up:?}");
    assert_eq!(caught_up["job-4"]["version"], 1);
    assert!(!caught_up.contains_key("job-3") && !caught_up.contains_key("other"), "{caught_up:?}");
    assert!(ready.id.as_deref().unwrap().parse::<i64>().unwrap() >= last_id.parse::<i64>().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.patch_ok("job-4", &json!({"status": "running"})).await;
    let (kind, id, event) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str(), event.json()["version"].as_u64()), ("progress", "job-4", Some(2)));
    quiet(&mut stream).await;
    b.stop().await;
    a.stop().await;
}

const KEY: &str = "k1:stream-all-signing-key-0123456789abcdef";

fn token(claims: Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let secret = KEY.split_once(':').unwrap().1;
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_token_streams_its_prefix_only() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["read-token-1".into()];
        s.write_tokens = vec!["write-token-1".into()];
        s.signing_keys = vec![KEY.into()];
    })
    .await;
    let write = [("authorization", "Bearer write-token-1")];
    for id in ["user-7:a", "user-7:b", "user-70:x", "user-8:a"] {
        let res = app.send(Method::PUT, &format!("/progress/{id}"), Some(&json!({"status": "running"})), &write).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let mine = token(json!({"prefix": "user-7:", "exp": now_seconds() + 600}));
    let mut stream = open(&app, &format!("?access_token={mine}"), &[]).await;
    let (records, _) = snapshot(&mut stream).await;
    let mut ids: Vec<_> = records.keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["user-7:a", "user-7:b"]);
    let res = app.send(Method::PATCH, "/progress/user-8:a", Some(&json!({"current": 1})), &write).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.send(Method::PATCH, "/progress/user-7:b", Some(&json!({"current": 1})), &write).await;
    assert_eq!(res.status(), StatusCode::OK);
    let (kind, id, _) = next_of(&mut stream).await;
    assert_eq!((kind.as_str(), id.as_str()), ("progress", "user-7:b"));
    // Narrower is fine; outside, or a one-id token, is 403.
    let bearer = format!("Bearer {mine}");
    let mut narrower = open(&app, "?prefix=user-7:a", &[("authorization", &bearer)]).await;
    assert_eq!(snapshot(&mut narrower).await.0.len(), 1);
    for query in ["?prefix=user-8:", "?prefix=user-"] {
        let (status, _) =
            EventStream::open(&app.client, &app.url(&format!("/progress{query}")), &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{query}");
    }
    let one = token(json!({"sub": "user-7:a", "exp": now_seconds() + 600}));
    let (status, _) = EventStream::open(&app.client, &app.url(&format!("/progress?access_token={one}")), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Without a token at all, the read token's class: 401.
    let (status, _) = EventStream::open(&app.client, &app.url("/progress"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_empty_stream_open_and_bad_ids_are_refused() {
    let app = spawn_app_with(Backend::Memory, |s| s.sse_heartbeat_seconds = 1).await;
    let mut stream = open(&app, "?prefix=none-", &[]).await;
    let (records, ready) = snapshot(&mut stream).await;
    assert!(records.is_empty());
    assert_eq!(ready.json()["records"], 0);
    assert!(ready.retry.is_some(), "the first event tells EventSource when to reconnect");
    assert!(matches!(stream.next(Duration::from_millis(2500)).await, Next::Silent));
    assert!(stream.comments >= 2, "heartbeats: {}", stream.comments);
    app.put_ok("none-1", &json!({"status": "running"})).await;
    assert_eq!(next_of(&mut stream).await.1, "none-1");
    let (status, _) = EventStream::open(&app.client, &app.url("/progress"), &[("last-event-id", "yesterday")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_stream() {
    let app = spawn_app(Backend::Memory).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let mut stream = open(&app, "", &[]).await;
    snapshot(&mut stream).await;
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < SOON, "stopped in {:?}", started.elapsed());
    assert!(matches!(stream.next(SOON).await, Next::End));
}

/// A snapshot larger than a page arrives whole, page after page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pages_through_the_listing() {
    let app = spawn_app(Backend::Redis).await;
    for n in 0..250 {
        app.put_ok(&format!("many-{n:03}"), &json!({"status": "running"})).await;
    }
    let mut stream = open(&app, "?prefix=many-", &[]).await;
    let (records, ready) = snapshot(&mut stream).await;
    assert_eq!((records.len(), ready.json()["records"].as_u64()), (250, Some(250)));
}

/// A stream counts once against a scoped token's rate limit, however many
/// events it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_counts_once_against_the_rate_limit() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.signing_keys = vec![KEY.into()];
        s.scoped_rate_per_second = 1;
        s.scoped_rate_burst = 2;
    })
    .await;
    let mine = token(json!({"prefix": "rl:", "exp": now_seconds() + 600}));
    let mut stream = open(&app, &format!("?access_token={mine}"), &[]).await;
    snapshot(&mut stream).await;
    for n in 0..10u64 {
        app.put_ok("rl:job", &json!({"status": "running", "current": n})).await;
        assert_eq!(next_of(&mut stream).await.2.json()["current"], n);
    }
    // One request of the burst left, then 429.
    let bearer = format!("Bearer {mine}");
    let res = app.send(Method::GET, "/progress/rl:job", None, &[("authorization", &bearer)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.send(Method::GET, "/progress/rl:job", None, &[("authorization", &bearer)]).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}
