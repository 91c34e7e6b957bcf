//! Slow and idle clients cannot hold the server: the header timeout closes
//! connections whose request head never arrives in full, the idle timeout
//! keep-alive connections with nothing in progress, and past
//! `PROGRESS_MAX_CONNECTIONS` new connections are refused at once. Event
//! streams and long-polls are requests in progress, never idle. Real sockets.

mod common;

use std::time::{Duration, Instant};

use common::sse::{EventStream, Next};
use common::{Backend, TestApp, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: progressd\r\nUser-Agent: slow";
const FULL_GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: progressd\r\n\r\n";

fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (EOF or reset); what it sent, and when it
/// closed. Gives up after `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (received, None),
            Ok(Ok(0) | Err(_)) => return (received, Some(Instant::now())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one `/healthz` answer off a keep-alive connection.
async fn read_healthz(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.ends_with(br#"{"status":"ok"}"#) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("the connection stays open");
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Enough file descriptors for `connections` client sockets and the
/// server's side of them (the soft limit raised towards the hard one).
fn files_for(connections: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
    let room = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(300) / 2;
    if room < connections {
        eprintln!("open-file limit {limit}: {room} connections instead of {connections}");
    }
    room.min(connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_closed_within_the_header_timeout() {
    let count = files_for(1000);
    let app = spawn_app_with(Backend::Memory, |s| s.header_timeout_seconds = 1).await;
    let address = address(&app);
    let header_timeout = Duration::from_secs(1);

    let mut slow = Vec::new();
    for _ in 0..count {
        // Connected one after another (all within a few tens of ms): a
        // thousand connects at once overflowed the listen queue now and
        // then, and a dropped handshake is only retried by the kernel
        // seconds later, which the timing below would blame on the server.
        let mut stream = TcpStream::connect(&address).await.expect("connects");
        let connected = Instant::now();
        slow.push(tokio::spawn(async move {
            stream.write_all(HALF_HEAD).await.expect("half a head is sent");
            let (answer, closed) = until_closed(&mut stream, Duration::from_secs(10)).await;
            (connected, answer, closed)
        }));
    }
    // Meanwhile a normal client is served at once, on fresh connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let started = Instant::now();
        let res = client.get(app.url("/healthz")).send().await.expect("GET /healthz");
        assert_eq!(res.status(), StatusCode::OK);
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    eprintln!("GET /healthz beside {count} half-sent heads: {latencies:?}");
    assert!(slowest < Duration::from_millis(100), "GET took {slowest:?} beside {count} half-sent heads");

    let mut longest = Duration::ZERO;
    for task in slow {
        let (connected, answer, closed) = task.await.unwrap();
        let closed = closed.expect("closed by the server within 10 s");
        assert!(answer.is_empty(), "closed without an answer: {}", String::from_utf8_lossy(&answer));
        longest = longest.max(closed - connected);
    }
    eprintln!("{count} half-sent heads: the last closed {longest:?} after its connect");
    assert!(longest <= header_timeout + Duration::from_secs(1), "held for {longest:?}");
    assert!(longest >= header_timeout - Duration::from_millis(50), "closed too early: {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_the_excess_at_once() {
    let app = spawn_app_with(Backend::Memory, |s| s.max_connections = 20).await;
    let address = address(&app);
    let refused_before = metric(&app, "progressd_connections_refused_total").await;
    // That connection is closed; let the server see it go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Twenty keep-alive connections, each served once (so each was let in).
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(FULL_GET).await.unwrap();
        assert!(read_healthz(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    let started = Instant::now();
    let mut excess = TcpStream::connect(&address).await.unwrap();
    let _ = excess.write_all(FULL_GET).await;
    let (answer, closed) = until_closed(&mut excess, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed.is_some(), "the excess connection was left open");
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The twenty are still served.
    held[0].write_all(FULL_GET).await.unwrap();
    assert!(read_healthz(&mut held[0]).await.starts_with("HTTP/1.1 200"));

    // A closed connection makes room at once.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = TcpStream::connect(&address).await.unwrap();
    next.write_all(FULL_GET).await.unwrap();
    assert!(read_healthz(&mut next).await.starts_with("HTTP/1.1 200"));
    drop(next);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused_after = metric(&app, "progressd_connections_refused_total").await;
    assert!(refused_after >= refused_before + 1.0, "{refused_before} → {refused_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.idle_timeout_seconds = 1;
        s.header_timeout_seconds = 10;
    })
    .await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    // Keep-alive works: two requests on one connection.
    for _ in 0..2 {
        stream.write_all(FULL_GET).await.unwrap();
        assert!(read_healthz(&mut stream).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answered = Instant::now() - Duration::from_millis(500);
    let (_, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
    let idle = closed.expect("closed within 5 s") - answered;
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000), "closed after {idle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_idle_while_a_half_sent_head_gets_the_header_timeout() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.idle_timeout_seconds = 10;
        s.header_timeout_seconds = 1;
    })
    .await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream.write_all(FULL_GET).await.unwrap();
    read_healthz(&mut stream).await;
    // Idle longer than the header timeout: the idle timeout applies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(HALF_HEAD).await.expect("still open after 1.5 s idle");
    let started = Instant::now();
    let (_, closed) = until_closed(&mut stream, Duration::from_secs(5)).await;
    let took = closed.expect("closed within 5 s") - started;
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2000), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_long_polls_outlive_the_idle_timeout() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.idle_timeout_seconds = 1;
        s.header_timeout_seconds = 1;
    })
    .await;
    app.put_ok("job", &json!({"status": "running", "current": 1})).await;
    let (status, stream) = EventStream::open(&app.client, &app.url("/progress/job/events"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    assert_eq!(stream.expect_event(Duration::from_secs(2)).await.version(), 1);
    let started = Instant::now();
    let poll = app.send(Method::GET, "/progress/job?wait=3", None, &[("if-none-match", "\"1\"")]).await;
    assert_eq!(poll.status(), StatusCode::NOT_MODIFIED, "a 3 s long-poll with a 1 s idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(2900), "{:?}", started.elapsed());
    // The stream, silent for 3 s, is still open.
    app.patch_ok("job", &json!({"current": 2})).await;
    assert_eq!(stream.expect_event(Duration::from_secs(2)).await.version(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.patch_ok("job", &json!({"current": 3})).await;
    match stream.next(Duration::from_secs(2)).await {
        Next::Event(event) => assert_eq!(event.version(), 3),
        other => panic!("the stream ended or went silent: {other:?}"),
    }
}

/// Shutdown closes idle keep-alive connections at once, and a half-sent
/// head holds it no longer than the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_by_idle_or_slow_connections() {
    let app = spawn_app_with(Backend::Memory, |s| s.header_timeout_seconds = 1).await;
    let mut idle = TcpStream::connect(address(&app)).await.unwrap();
    idle.write_all(FULL_GET).await.unwrap();
    read_healthz(&mut idle).await;
    let mut slow = TcpStream::connect(address(&app)).await.unwrap();
    slow.write_all(HALF_HEAD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "shutdown took {took:?}");
    for stream in [&mut idle, &mut slow] {
        assert!(until_closed(stream, Duration::from_secs(1)).await.1.is_some(), "closed by the shutdown");
    }
}

/// The value of an unlabelled metric, 0 when absent (the gauge of open
/// connections must be there), over a connection that is closed after.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let text = client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l.starts_with("progressd_connections_open ")), "{text}");
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}
