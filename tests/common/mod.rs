//! Test helpers: start the real server on port 0 against a chosen store,
//! with a unique Redis key prefix per test, and talk to it over HTTP.
#![allow(dead_code)]

pub mod binary;
pub mod postgres;
pub mod proxy;
pub mod redis_server;
pub mod spawned;
pub mod sse;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use progressd::Settings;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// Which hot tier a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process memory (no REDIS_URL).
    Memory,
    /// The machine's Redis, with a unique key prefix.
    Redis,
}

/// The Redis the tests use (`PROGRESS_TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("PROGRESS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test or session uses.
pub fn unique_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{}-{nanos}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// A client with no timeouts beyond the test's own.
    pub client: reqwest::Client,
    /// The settings it runs with.
    pub settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the server with default settings on `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the server with settings adjusted by `tweak`.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings {
        host: Some("127.0.0.1".parse().unwrap()),
        port: 0,
        // The default (100 ms) leaves a loaded CI machine's scheduling too
        // little room; tests of the timeout set their own.
        redis_timeout_ms: 1000,
        ..Settings::default()
    };
    if backend == Backend::Redis {
        settings.redis_url = Some(redis_url());
        settings.key_prefix = unique_prefix();
    }
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind((settings.host.expect("set above"), 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let run_settings = settings.clone();
    let server = tokio::spawn(async move {
        progressd::run(run_settings, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp { base, client: reqwest::Client::new(), settings, shutdown: Some(tx), server: Some(server) }
}

impl TestApp {
    /// URL of a path on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `method path` with an optional JSON body and extra headers.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request reaches the server")
    }

    /// PUT a JSON body.
    pub async fn put(&self, id: &str, body: &Value) -> Response {
        self.send(Method::PUT, &format!("/progress/{id}"), Some(body), &[]).await
    }

    /// PATCH a JSON body.
    pub async fn patch(&self, id: &str, body: &Value) -> Response {
        self.send(Method::PATCH, &format!("/progress/{id}"), Some(body), &[]).await
    }

    /// GET a record.
    pub async fn get(&self, id: &str) -> Response {
        self.send(Method::GET, &format!("/progress/{id}"), None, &[]).await
    }

    /// PUT and return the record, asserting success.
    pub async fn put_ok(&self, id: &str, body: &Value) -> Value {
        let res = self.put(id, body).await;
        assert!(res.status().is_success(), "PUT {id}: {}", res.status());
        res.json().await.unwrap()
    }

    /// PATCH and return the record, asserting 200.
    pub async fn patch_ok(&self, id: &str, body: &Value) -> Value {
        let res = self.patch(id, body).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "PATCH {id}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// GET and return the record, asserting 200.
    pub async fn get_ok(&self, id: &str) -> Value {
        let res = self.get(id).await;
        assert_eq!(res.status(), StatusCode::OK, "GET {id}");
        res.json().await.unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Remove this test's Redis keys; other sessions share the server.
        if self.settings.redis_url.is_some() && !self.settings.key_prefix.is_empty() {
            delete_keys(&self.settings.redis_url.clone().unwrap(), &self.settings.key_prefix);
        }
    }
}

/// Deletes every key under `prefix` with SCAN (never KEYS or FLUSHALL).
pub fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else { return };
    let keys: Vec<String> = match redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
    {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for key in keys {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query(&mut conn);
    }
}

/// A server that accepts connections, reads nothing and answers nothing:
/// its port, and the task to abort when done.
pub async fn blackhole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

/// A synchronous Redis connection to the test Redis.
pub fn redis_conn() -> redis::Connection {
    redis::Client::open(redis_url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
}

/// Asserts a problem+json response with this status and code; returns the document.
/// Sends `write` until it is acknowledged (200 or 201), which must happen
/// within `limit`; every answer before that must be 503
/// `storage_unavailable` (after Redis goes away, writes wait for every
/// instance's backlog to reach PostgreSQL). Returns how many were refused.
pub async fn until_writes_resume(limit: Duration, mut write: impl AsyncFnMut() -> Response) -> usize {
    let deadline = std::time::Instant::now() + limit;
    let mut refused = 0;
    loop {
        let res = write().await;
        if res.status() == StatusCode::OK || res.status() == StatusCode::CREATED {
            return refused;
        }
        assert_problem(res, 503, "storage_unavailable").await;
        refused += 1;
        assert!(std::time::Instant::now() < deadline, "writes did not resume on PostgreSQL within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One definition, in `spawned.rs`, which the binary-only tests include by path.
pub use spawned::assert_problem;

/// Generates one `#[tokio::test]` per store for each listed async fn taking a `Backend`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Redis).await } )*
        }
    };
}
