//! Redis over TLS (`rediss://`), with the `progressd` binary against a
//! `redis-server` of the test's own serving a certificate from a CA of the
//! test's own (tests/common/tls.rs): verified with `PROGRESS_REDIS_CA_FILE`,
//! refused without it (and for a certificate naming another host), allowed
//! by name with `#insecure`, and change notices between two instances.
//! Never the shared Redis on 6379.

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
#[allow(dead_code)]
#[path = "common/sse.rs"]
mod sse;
#[path = "common/tls.rs"]
mod tls;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use spawned::{Running, assert_problem, key_prefix};
use sse::EventStream;
use tls::{Pki, TlsRedis};

/// Time allowed for an instance to start using its store.
const READY: Duration = Duration::from_secs(10);
/// Time allowed for a failure to show in `/readyz`.
const NOTICED: Duration = Duration::from_secs(10);

/// Whether the key of record `id` exists in `redis_url` under `prefix`
/// (the value is compressed; its existence is enough).
fn key_exists(redis_url: &str, prefix: &str, id: &str) -> bool {
    let mut conn = redis::Client::open(redis_url).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap();
    redis::cmd("EXISTS").arg(format!("{prefix}progress:{id}")).query::<i64>(&mut conn).unwrap() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_file_reads_and_writes() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.server);
    let prefix = key_prefix();
    let ca = pki.ca_path();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("rediss://{host}:{}", redis.tls_port);
        let app =
            Running::start(&[("REDIS_URL", &url), ("PROGRESS_REDIS_CA_FILE", &ca), ("PROGRESS_KEY_PREFIX", &prefix)]);
        let (id, _) = app.create_until_ok(&format!("tls-{host}"), READY).await;
        assert_eq!(app.patch_ok(&id, &json!({"current": 2})).await["version"], 2);
        let got = app.get_ok(&id).await;
        assert_eq!((got["version"].as_u64(), got["current"].as_u64()), (Some(2), Some(2)), "{got}");
        assert!(key_exists(&redis.plain_url(), &prefix, &id), "the record is in the TLS redis-server");
        let doc = app.readyz().await;
        assert_eq!(doc["dependencies"]["redis"]["state"], "up", "{doc:#}");
        assert_eq!(doc["status"], "ok", "{doc:#}");
        let (code, logs) = app.stop();
        assert_eq!(code, 0, "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_the_ca_file_is_refused_and_says_why() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.server);
    let prefix = key_prefix();
    let started = Instant::now();
    let app = Running::start(&[("REDIS_URL", &redis.url()), ("PROGRESS_KEY_PREFIX", &prefix)]);
    let doc = app.until_last_error("redis", NOTICED, |e| e.contains("certificate")).await;
    assert_eq!(doc["dependencies"]["redis"]["state"], "down", "{doc:#}");
    assert_eq!(doc["status"], "unavailable", "{doc:#}");
    assert_problem(app.put("refused", &json!({"status": "running"})).await, 503, "storage_unavailable").await;
    assert!(!key_exists(&redis.plain_url(), &prefix, "refused"), "nothing was written");

    // The log says why, without repeating itself line after line.
    app.until_logged("certificate", Duration::from_secs(5)).await;
    let deadline = started + Duration::from_secs(4);
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    let logs = app.logs();
    let (repeats, line) = app.most_repeated("certificate");
    eprintln!("most repeated line about the certificate ({repeats}x): {line}");
    assert!(repeats <= 3, "the same line {repeats} times in 4 s: {line}\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_a_certificate_for_another_name() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.other);
    let prefix = key_prefix();
    let ca = pki.ca_path();
    let app = Running::start(&[
        ("REDIS_URL", &redis.url()),
        ("PROGRESS_REDIS_CA_FILE", &ca),
        ("PROGRESS_KEY_PREFIX", &prefix),
    ]);
    let doc = app.until_last_error("redis", NOTICED, |e| e.contains("certificate") || e.contains("name")).await;
    assert_eq!(doc["dependencies"]["redis"]["state"], "down", "{doc:#}");
    assert_problem(app.put("refused", &json!({"status": "running"})).await, 503, "storage_unavailable").await;
    assert!(!key_exists(&redis.plain_url(), &prefix, "refused"), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_insecure_connects_without_the_ca_file_and_warns() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.server);
    let prefix = key_prefix();
    let url = format!("rediss://127.0.0.1:{}/#insecure", redis.tls_port);
    let app = Running::start(&[("REDIS_URL", &url), ("PROGRESS_KEY_PREFIX", &prefix)]);
    let (id, _) = app.create_until_ok("insecure", READY).await;
    assert_eq!(app.get_ok(&id).await["version"], 1);
    assert!(key_exists(&redis.plain_url(), &prefix, &id));
    let warned = app.lines_at("WARN", "insecure").len() + app.lines_at("WARN", "verif").len();
    assert!(warned > 0, "a WARN says verification is off:\n{}", app.logs());
}

/// Two instances on one TLS Redis and one prefix: a change through A
/// reaches an event stream on B, and B's read cache (30 s) does not serve
/// the version it held before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_notices_cross_instances_over_tls() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki, &pki.server);
    let prefix = key_prefix();
    let ca = pki.ca_path();
    let env = [
        ("REDIS_URL", redis.url()),
        ("PROGRESS_REDIS_CA_FILE", ca),
        ("PROGRESS_KEY_PREFIX", prefix),
        ("PROGRESS_CACHE_MAX_AGE_MS", "30000".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Running::start(&env);
    let b = Running::start(&env);
    let (id, _) = a.create_until_ok("shared", READY).await;
    // B reads version 1 (into its cache) and streams the record.
    let deadline = Instant::now() + READY;
    loop {
        let res = b.get(&id).await;
        if res.status() == StatusCode::OK {
            assert_eq!(res.json::<serde_json::Value>().await.unwrap()["version"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "B never read the record: {}\n{}", res.status(), b.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, stream) = EventStream::open(&b.client, &b.url(&format!("/progress/{id}/events")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let mut on_b = stream.unwrap();
    assert_eq!(on_b.expect_event(Duration::from_secs(5)).await.version(), 1);
    // Let B's subscription to change notices settle before relying on it.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 2..=4u64 {
        assert_eq!(a.patch_ok(&id, &json!({"current": n})).await["version"], n);
        let event = on_b.expect_event(Duration::from_secs(5)).await;
        assert_eq!((event.version(), event.json()["current"].as_u64()), (n, Some(n)), "B's stream sees A's write");
        // B's cache heard the notice as well: the new version, not the cached one.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let got = b.get_ok(&id).await;
            if got["version"] == n {
                break;
            }
            assert!(Instant::now() < deadline, "B still serves version {} after A wrote {n}", got["version"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Without waiting for the stream: a read on B soon after A's write.
    let written = a.patch_ok(&id, &json!({"current": 9})).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = b.get_ok(&id).await;
        if got["version"] == written["version"] {
            assert_eq!(got["current"], 9);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still serves version {} after A wrote {}",
            got["version"],
            written["version"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
