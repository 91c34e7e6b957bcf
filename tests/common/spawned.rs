//! The `progressd` binary as a child process that a test keeps running and
//! talks to over HTTP, for settings only the binary reads (environment
//! variables) and logs only it writes. Built on [`super::binary::progressd`]
//! (a cleared environment: nothing of the test process's own `PG*` or
//! `REDIS_*` reaches the child). Output goes to files, so a chatty process
//! never blocks on a full pipe and the test can read its logs at any time.
//! Killed (SIGKILL to its own pid) on drop, also when the test panics.
//!
//! Refers to nothing in `tests/common/mod.rs` (only to its sibling
//! `binary`), so that a test file of binary-only tests can include it with
//! `#[path]` next to `#[path = "common/binary.rs"] mod binary;` and does not
//! depend on the library's API.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use super::binary::{free_port, progressd};

/// Bound on each plain request a test sends (not on event streams).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A Redis key prefix no other test or session uses.
pub fn key_prefix() -> String {
    let name = unique_name("prefix");
    format!("{}:", name.file_name().unwrap().to_str().unwrap())
}

/// Asserts a problem+json response with this status and `code`; returns the document.
pub async fn assert_problem(res: Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "status for {code}: {text}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("problem is JSON ({e}): {text}"));
    assert_eq!(doc["code"], code, "{text}");
    assert_eq!(doc["status"], status, "{text}");
    for member in ["type", "title", "detail"] {
        assert!(doc[member].is_string(), "problem has {member}: {text}");
    }
    doc
}

/// Settings every spawned instance gets unless the test says otherwise:
/// JSON logs (to read them line by line) and short timeouts, so that a
/// dependency that cannot be reached is reported within a second or two.
pub const QUICK: &[(&str, &str)] = &[
    ("PROGRESS_LOG_FORMAT", "json"),
    ("PROGRESS_REDIS_TIMEOUT_MS", "500"),
    ("PROGRESS_DATABASE_TIMEOUT_MS", "1000"),
    ("PROGRESS_BREAKER_PROBE_MS", "100"),
];

/// A running `progressd` this test started.
pub struct Running {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    /// A client without an overall timeout (event streams stay open);
    /// the helpers below bound each request themselves.
    pub client: reqwest::Client,
    stdout: PathBuf,
    stderr: PathBuf,
}

fn unique_name(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!(
        "progressd-{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Running {
    /// Starts `progressd` with [`QUICK`], then `env`, on a free port, and
    /// waits until it listens on 127.0.0.1.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut running = Self::spawn(env, |_| {});
        running.wait_listening();
        running
    }

    /// Starts `progressd` without waiting; `tweak` may change the command
    /// (arguments, removing a variable) before it is spawned.
    pub fn spawn(env: &[(&str, &str)], tweak: impl FnOnce(&mut Command)) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut all: Vec<(&str, &str)> = QUICK.to_vec();
        all.push(("PORT", &port_text));
        all.extend_from_slice(env);
        let mut command = progressd(&all);
        let (stdout, stderr) = (unique_name("stdout"), unique_name("stderr"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        tweak(&mut command);
        let child = command.spawn().expect("the progressd binary starts");
        Self { child: Some(child), port, client: reqwest::Client::new(), stdout, stderr }
    }

    /// Waits (10 s at most) until something listens on the port; fails with
    /// the logs if the process exits first.
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("progressd exited with {status} before listening:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "progressd did not listen on {} within 10 s:\n{}",
                self.port,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the process to exit by itself: its exit code
    /// (-1 for a signal), or None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Both, stderr first (the logs go there).
    pub fn logs(&self) -> String {
        format!("{}{}", self.stderr(), self.stdout())
    }

    /// Every log line that is a JSON object (with `PROGRESS_LOG_FORMAT=json`).
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Log lines at `level` (e.g. `WARN`) whose text contains `needle`,
    /// case-insensitively.
    pub fn lines_at(&self, level: &str, needle: &str) -> Vec<Value> {
        let needle = needle.to_lowercase();
        self.log_lines()
            .into_iter()
            .filter(|line| line["level"].as_str().is_some_and(|l| l.eq_ignore_ascii_case(level)))
            .filter(|line| line.to_string().to_lowercase().contains(&needle))
            .collect()
    }

    /// Waits up to `limit` until the log contains `needle`
    /// (case-insensitively); fails with the log otherwise.
    pub async fn until_logged(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let needle = needle.to_lowercase();
        while !self.logs().to_lowercase().contains(&needle) {
            assert!(Instant::now() < deadline, "the log did not mention {needle:?} within {limit:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Among the log lines containing `needle` (case-insensitively), how
    /// often the most repeated one occurs, and that line. Lines are the same
    /// when everything but their time (and span context) is.
    pub fn most_repeated(&self, needle: &str) -> (usize, String) {
        let needle = needle.to_lowercase();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for mut line in self.log_lines() {
            if !line.to_string().to_lowercase().contains(&needle) {
                continue;
            }
            let object = line.as_object_mut().unwrap();
            for volatile in ["timestamp", "span", "spans", "threadId", "threadName"] {
                object.remove(volatile);
            }
            let key = line.to_string();
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
        }
        counts.into_iter().map(|(k, n)| (n, k)).max().unwrap_or((0, String::new()))
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// PUT a JSON body to `/progress/{id}`.
    pub async fn put(&self, id: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PUT, &format!("/progress/{id}"), Some(body)).await
    }

    /// PATCH a JSON body to `/progress/{id}`.
    pub async fn patch(&self, id: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PATCH, &format!("/progress/{id}"), Some(body)).await
    }

    /// GET `/progress/{id}`.
    pub async fn get(&self, id: &str) -> Response {
        self.send(reqwest::Method::GET, &format!("/progress/{id}"), None).await
    }

    /// Sends a request, bounded by [`REQUEST_TIMEOUT`].
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Response {
        let mut request = self.client.request(method.clone(), self.url(path)).timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        request.send().await.unwrap_or_else(|e| panic!("{method} {path}: no answer ({e}); logs:\n{}", self.logs()))
    }

    /// PATCH, asserting 200; the record.
    pub async fn patch_ok(&self, id: &str, body: &Value) -> Value {
        let res = self.patch(id, body).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "PATCH {id}: {text}; logs:\n{}", self.logs());
        serde_json::from_str(&text).unwrap()
    }

    /// GET, asserting 200; the record.
    pub async fn get_ok(&self, id: &str) -> Value {
        let res = self.get(id).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {id}: {text}; logs:\n{}", self.logs());
        serde_json::from_str(&text).unwrap()
    }

    /// Creates records `{prefix}-0`, `{prefix}-1`, … (a fresh id each try;
    /// characters of `prefix` outside A-Z a-z 0-9 become `-`)
    /// until one PUT is acknowledged, which must be a 201 within `limit`;
    /// every answer before that must be 503 `storage_unavailable` (the store
    /// still connecting, migrating or letting requests in). Returns the id
    /// created and the record.
    pub async fn create_until_ok(&self, prefix: &str, limit: Duration) -> (String, Value) {
        let deadline = Instant::now() + limit;
        let prefix: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        for n in 0.. {
            let id = format!("{prefix}-{n}");
            let res = self.put(&id, &json!({"status": "running", "current": 1, "total": 10})).await;
            let status = res.status();
            let text = res.text().await.unwrap();
            if status.is_success() {
                assert_eq!(status, StatusCode::CREATED, "a new id is created: {text}");
                let record: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(record["version"], 1, "{text}");
                return (id, record);
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "PUT {id} before the store is in use: {text}");
            assert!(text.contains("storage_unavailable"), "{text}");
            assert!(
                Instant::now() < deadline,
                "writes were not acknowledged within {limit:?}; last answer {status} {text}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!()
    }

    /// The `/readyz` document (whatever its status code).
    pub async fn readyz(&self) -> Value {
        let res = self.send(reqwest::Method::GET, "/readyz", None).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE, "/readyz {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {text}"))
    }

    /// Polls `/readyz` until `dependency` has a `last_error` for which
    /// `check` (given it lower-cased) holds; fails after `limit` with the
    /// last document and the logs. Returns the document.
    pub async fn until_last_error(&self, dependency: &str, limit: Duration, check: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let doc = self.readyz().await;
            if doc["dependencies"][dependency]["last_error"].as_str().is_some_and(|e| check(&e.to_lowercase())) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never gave {dependency} the expected last_error within {limit:?}; last: {doc:#}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then (10 s at most) the exit code and everything it wrote.
    pub fn stop(mut self) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("progressd did not exit within 10 s of SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, self.logs())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}
