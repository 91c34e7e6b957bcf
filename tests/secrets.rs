//! No secret ever leaves the service: the Redis password, the PostgreSQL
//! password and every bearer token stay out of every response (status line,
//! headers, body) and out of the whole log, while the real binary goes
//! through errors in every tier: refused, missing and misplaced tokens, bad
//! input, Redis refusing, resetting, blackholed, stopped and rejecting its
//! password, PostgreSQL refusing, resetting, blackholed, stopped and
//! rejecting its password (at start-up and while running), and URLs that
//! do not parse. Each secret is also looked for percent-encoded,
//! JSON-escaped, hex and base64 (decoded at every alignment), and the test
//! checks that the failures really happened, so it cannot pass by seeing
//! nothing.
//!
//! The PostgreSQL password is one the server checks: an own cluster whose
//! `pg_hba.conf` asks the service's role for an md5 password. The Redis
//! password is an own `redis-server --requirepass`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{free_port, progressd, wait_ready};
use common::postgres::OwnPostgres;
use common::proxy::{Mode, Proxy};
use common::redis_server::OwnRedis;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::task::block_in_place;

// ---------------------------------------------------------------- secrets

/// Every secret of one test, each unique to the run and holding characters
/// that URLs percent-encode (`+`, `/`, `!`, `*`), so the encoded forms differ
/// from the raw ones.
struct Secrets {
    redis_pw: String,
    /// What Redis asks for after the password is changed while running.
    redis_pw_rotated: String,
    /// A wrong password the second instance starts with.
    redis_pw_wrong: String,
    pg_pw: String,
    pg_pw_rotated: String,
    pg_pw_wrong: String,
    read_token: String,
    write_token: String,
    write_token_2: String,
    admin_token: String,
}

impl Secrets {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let n = format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff);
        Self {
            redis_pw: format!("Rds+Pw/{tag}{n}!a*"),
            redis_pw_rotated: format!("RdsRot+{tag}{n}/b!"),
            redis_pw_wrong: format!("RdsWrong+{tag}{n}/c!"),
            pg_pw: format!("Pg+Pw/{tag}{n}!d*"),
            pg_pw_rotated: format!("PgRot+{tag}{n}/e!"),
            pg_pw_wrong: format!("PgWrong+{tag}{n}/f!"),
            read_token: format!("rd-Tok.{tag}{n}/g+h"),
            write_token: format!("wr-Tok.{tag}{n}/i+j"),
            write_token_2: format!("wr2-Tok.{tag}{n}~k"),
            admin_token: format!("adm-Tok.{tag}{n}/l+m"),
        }
    }

    fn all(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("redis password", &self.redis_pw),
            ("rotated redis password", &self.redis_pw_rotated),
            ("wrong redis password", &self.redis_pw_wrong),
            ("postgres password", &self.pg_pw),
            ("rotated postgres password", &self.pg_pw_rotated),
            ("wrong postgres password", &self.pg_pw_wrong),
            ("read token", &self.read_token),
            ("write token", &self.write_token),
            ("second write token", &self.write_token_2),
            ("admin token", &self.admin_token),
        ]
    }
}

/// Percent-encodes every byte that is not unreserved (RFC 3986), in `upper`
/// or lower case hex; `all` encodes every byte.
fn percent(s: &str, upper: bool, all: bool) -> String {
    s.bytes()
        .map(|b| {
            if !all && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                (b as char).to_string()
            } else if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
        out.push_str(&"=".repeat(3 - chunk.len()));
    }
    out
}

/// The value of a base64 character (standard or URL-safe alphabet), or None.
fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        b'/' | b'_' => 63,
        _ => return None,
    } as u32)
}

/// Decodes `run` in whole groups of four, padding ignored.
fn unbase64(run: &[u8]) -> Vec<u8> {
    let sextets: Vec<u32> = run.iter().filter_map(|&c| sextet(c)).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for group in sextets.chunks(4) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &s)| n | (s << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

/// The forms a secret could take in text.
fn forms(secret: &str) -> Vec<(&'static str, String)> {
    let b64 = base64(secret.as_bytes()).trim_end_matches('=').to_owned();
    vec![
        ("raw", secret.to_owned()),
        ("percent-encoded", percent(secret, true, false)),
        ("percent-encoded, lower-case hex", percent(secret, false, false)),
        ("fully percent-encoded", percent(secret, true, true)),
        ("JSON-escaped", secret.replace('/', "\\/")),
        ("hex", secret.bytes().map(|b| format!("{b:02x}")).collect()),
        ("HEX", secret.bytes().map(|b| format!("{b:02X}")).collect()),
        ("base64url", b64.replace('+', "-").replace('/', "_")),
        ("base64", b64),
    ]
}

/// The first of `secrets` that shows in `text` in any of its forms: its
/// name and where, or None.
fn find_secrets(text: &str, secrets: &[(&str, &str)]) -> Option<String> {
    for (name, secret) in secrets {
        for (form, needle) in forms(secret) {
            if let Some(at) = text.find(needle.as_str()) {
                return Some(format!("the {name}, {form} at byte {at}: …{}…", context(text, at)));
            }
        }
    }
    // Base64 of anything that holds a secret (e.g. `user:password`): decode
    // every run of base64 characters at each of its four alignments.
    let shortest = secrets.iter().map(|(_, s)| s.len()).min().unwrap_or(0);
    let bytes = text.as_bytes();
    let is_b64 = |c: u8| c == b'=' || sextet(c).is_some();
    let mut start = 0;
    while start < bytes.len() {
        if !is_b64(bytes[start]) {
            start += 1;
            continue;
        }
        let end = (start..bytes.len()).find(|&i| !is_b64(bytes[i])).unwrap_or(bytes.len());
        if end - start >= shortest * 4 / 3 {
            for offset in 0..4.min(end - start) {
                let decoded = unbase64(&bytes[start + offset..end]);
                let decoded = String::from_utf8_lossy(&decoded);
                if let Some((name, _)) = secrets.iter().find(|(_, s)| decoded.contains(s)) {
                    return Some(format!("the {name}, inside base64 at byte {start}: …{}…", context(text, start)));
                }
            }
        }
        start = end;
    }
    None
}

fn find_secret(text: &str, secret: &str) -> Option<String> {
    find_secrets(text, &[("secret", secret)])
}

fn context(text: &str, at: usize) -> String {
    let from = text.floor_char_boundary(at.saturating_sub(120));
    let to = text.ceil_char_boundary((at + 160).min(text.len()));
    text[from..to].to_owned()
}

fn assert_no_secrets(what: &str, text: &str, secrets: &Secrets) {
    if let Some(found) = find_secrets(text, &secrets.all()) {
        panic!("a secret leaks into {what}: {found}");
    }
}

#[test]
fn the_leak_finder_finds_every_form() {
    let secrets = Secrets::new("self");
    let s = &secrets.admin_token;
    let basic = base64(format!("user:{s}").as_bytes());
    let shifted = base64(format!("xx{s}yy").as_bytes());
    for text in [
        format!("a {s} b"),
        format!("url=redis://default:{}@h", percent(s, true, false)),
        percent(s, false, false).to_string(),
        percent(s, true, true).to_string(),
        format!("{{\"t\":\"{}\"}}", s.replace('/', "\\/")),
        format!("Basic {basic}"),
        format!("\"{}\"", shifted.replace('+', "-").replace('/', "_")),
        format!("x{}", s.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
    ] {
        assert!(find_secret(&text, s).is_some(), "not found in {text}");
    }
    assert!(find_secret(&format!("{} {}", secrets.read_token, base64(b"unrelated text here")), s).is_none());
    assert_eq!(unbase64(base64(b"hello world!?").as_bytes()), b"hello world!?");
}

// ---------------------------------------------------------------- the binary

/// The binary as a child whose stdout and stderr are drained as they come
/// (a debug log fills a pipe quickly), all kept.
struct Service {
    child: Option<Child>,
    port: u16,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(env: &[(&str, &str)]) -> Self {
        let service = Self::spawn(env, &[]);
        block_in_place(|| wait_ready(service.port));
        service
    }

    /// Runs `progressd args…` until it exits by itself or `within` passes
    /// (then SIGTERM): the exit code if it exited by itself, and the output.
    fn run_briefly(env: &[(&str, &str)], args: &[&str], within: Duration) -> (Option<i32>, String) {
        let mut service = Self::spawn(env, args);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = service.child.as_mut().unwrap().try_wait().unwrap() {
                service.child = None;
                for reader in service.readers.drain(..) {
                    reader.join().unwrap();
                }
                return (Some(status.code().unwrap_or(-1)), service.logs());
            }
            block_in_place(|| std::thread::sleep(Duration::from_millis(20)));
        }
        (None, service.terminate().1)
    }

    fn spawn(env: &[(&str, &str)], args: &[&str]) -> Self {
        let port = free_port();
        let port_s = port.to_string();
        let mut all = vec![("PORT", port_s.as_str())];
        all.extend_from_slice(env);
        let mut child = progressd(&all).args(args).spawn().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for mut pipe in pipes {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        Self { child: Some(child), port, output, readers }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// SIGTERM, wait, and the exit code with the complete output.
    fn terminate(mut self) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let code = block_in_place(|| {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status.code().unwrap_or(-1);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("progressd did not exit after SIGTERM: {}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (code, self.logs())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------- the requests

/// Everything the service answered, and what the answers were.
#[derive(Default)]
struct Transcript {
    text: String,
    /// `(status, problem code or "")` → how often.
    seen: BTreeMap<(u16, String), usize>,
    /// The `last_error` of every tier in every `/readyz` answer.
    readyz_errors: Vec<String>,
    readyz_statuses: BTreeMap<String, usize>,
}

impl Transcript {
    fn saw(&self, status: u16, code: &str) -> usize {
        self.seen.get(&(status, code.to_owned())).copied().unwrap_or(0)
    }

    fn saw_status(&self, status: u16) -> usize {
        self.seen.iter().filter(|((s, _), _)| *s == status).map(|(_, n)| n).sum()
    }
}

struct Driver<'a> {
    service: &'a Service,
    client: reqwest::Client,
    secrets: &'a Secrets,
    /// Whether the service has an admin token (else admin routes are 403).
    admin_enabled: bool,
    transcript: Transcript,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Raw(&'a str),
}

impl<'a> Driver<'a> {
    fn new(service: &'a Service, secrets: &'a Secrets, admin_enabled: bool) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Self { service, client, secrets, admin_enabled, transcript: Transcript::default() }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, self.service.url(path));
        match auth {
            Auth::None => {}
            Auth::Bearer(token) => req = req.header("authorization", format!("Bearer {token}")),
            Auth::Raw(value) => req = req.header("authorization", value),
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body.to_owned());
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                req = req.header("content-type", "application/json");
            }
        }
        req
    }

    /// Sends a request and records the whole answer; the body as text.
    async fn send(
        &mut self,
        label: &str,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        let label = format!("{label}: {method} {path}");
        let res =
            self.request(method, path, auth, headers, body).send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let status = res.status().as_u16();
        let mut text = format!("=== {label}\nHTTP {status} {:?}\n", res.version());
        for (name, value) in res.headers() {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        text.push('\n');
        let is_stream =
            res.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if is_stream {
            // An event stream does not end: keep what arrives until the
            // first complete event (or a moment passes).
            let mut stream = res.bytes_stream();
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
                got.extend_from_slice(&chunk);
                if got.windows(2).any(|w| w == b"\n\n") {
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        } else {
            let bytes = res.bytes().await.unwrap_or_else(|e| panic!("{label}: body: {e}"));
            String::from_utf8_lossy(&bytes).into_owned()
        };
        text.push_str(&body);
        text.push('\n');
        // Checked per response too, so that a failure names the request.
        assert_no_secrets(&format!("the response to {label}"), &text, self.secrets);
        self.transcript.text.push_str(&text);
        let code = if is_stream {
            "event-stream".to_owned()
        } else {
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default()
        };
        *self.transcript.seen.entry((status, code)).or_default() += 1;
        (status, body)
    }

    /// `/readyz`, recorded; its status and document.
    async fn readyz(&mut self, label: &str) -> (u16, Value) {
        let (status, body) = self.send(label, Method::GET, "/readyz", Auth::None, &[], None).await;
        let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz is JSON ({e}): {body}"));
        if let Some(status) = doc["status"].as_str() {
            *self.transcript.readyz_statuses.entry(status.to_owned()).or_default() += 1;
        }
        for tier in ["redis", "postgres"] {
            if let Some(e) = doc["dependencies"][tier]["last_error"].as_str() {
                self.transcript.readyz_errors.push(format!("{tier}: {e}"));
            }
        }
        (status, doc)
    }

    /// Polls `/readyz` until `done` holds for its document (10 s at most).
    async fn wait_readyz(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, doc) = self.readyz(&format!("waiting for {what}")).await;
            if done(&doc) {
                return doc;
            }
            assert!(Instant::now() < deadline, "{what} did not happen: {doc}\n{}", self.service.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every route, with every kind of refusal and bad input, and the
    /// authorised calls; none of the answers is asserted but for secrets
    /// (that happens in `record`) — which errors each phase produces is
    /// checked over the whole transcript at the end.
    async fn sweep(&mut self, phase: &str) {
        let s = self.secrets;
        let (read, write, write2, admin) =
            (s.read_token.as_str(), s.write_token.as_str(), s.write_token_2.as_str(), s.admin_token.as_str());
        let basic_admin = format!("Basic {}", base64(format!("progressd:{admin}").as_bytes()));
        let lowercase_bearer = format!("bearer {write}x");
        let id = format!("job-{phase}");
        let rec = format!("/progress/{id}");
        let events = format!("{rec}/events");
        let record = r#"{"status":"running","stage":"A","current":1,"total":4,"metadata":{"k":"v"}}"#;
        let g = Method::GET;
        let p = |l: &str| format!("{phase} {l}");

        // Public routes, and the router's own 404 and 405.
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/client.js",
            "/dashboard",
            "/dashboard/app.js",
            "/dashboard/cancel.js",
            "/dashboard/app.css",
            "/nowhere",
        ] {
            self.send(&p("public"), g.clone(), path, Auth::Bearer(admin), &[], None).await;
        }
        self.send(&p("405"), Method::POST, "/healthz", Auth::None, &[], None).await;

        // Refusals, on every access class.
        let refusals: Vec<(Method, String, Auth)> = vec![
            (g.clone(), rec.clone(), Auth::None),
            (g.clone(), rec.clone(), Auth::Bearer("not-a-token")),
            (g.clone(), rec.clone(), Auth::Raw(&basic_admin)),
            (g.clone(), events.clone(), Auth::None),
            (g.clone(), events.clone(), Auth::Raw("Bearer")),
            (g.clone(), "/progress".into(), Auth::None),
            (g.clone(), "/progress".into(), Auth::Bearer(write)),
            (Method::PUT, rec.clone(), Auth::None),
            (Method::PUT, rec.clone(), Auth::Bearer(read)),
            (Method::PATCH, rec.clone(), Auth::Raw(&lowercase_bearer)),
            (Method::DELETE, rec.clone(), Auth::Bearer(read)),
            (Method::POST, "/admin/cleanup".into(), Auth::None),
            (Method::POST, "/admin/cleanup".into(), Auth::Bearer(write)),
            (Method::DELETE, "/admin/progress?status=failed".into(), Auth::Bearer(read)),
            (g.clone(), "/admin/stats".into(), Auth::Bearer(write2)),
            (g.clone(), "/admin/stats".into(), Auth::Raw(&basic_admin)),
        ];
        for (method, path, auth) in refusals {
            let body = matches!(method, Method::PUT | Method::PATCH).then_some(record);
            let (status, body) = self.send(&p("refused"), method.clone(), &path, auth, &[], body).await;
            let expected = if path.starts_with("/admin/") && !self.admin_enabled { 403 } else { 401 };
            assert_eq!(status, expected, "{phase}: {method} {path} is refused: {body}");
        }

        // Authorised calls, well-formed and not.
        self.send(&p("create"), Method::PUT, &rec, Auth::Bearer(write), &[], Some(record)).await;
        self.send(
            &p("patch"),
            Method::PATCH,
            &rec,
            Auth::Bearer(write2),
            &[],
            Some(r#"{"current":2,"message":"half"}"#),
        )
        .await;
        self.send(&p("read"), g.clone(), &rec, Auth::Bearer(read), &[], None).await;
        self.send(&p("read as admin"), g.clone(), &rec, Auth::Bearer(admin), &[("if-none-match", "\"1\"")], None).await;
        self.send(
            &p("long-poll"),
            g.clone(),
            &format!("{rec}?wait=0"),
            Auth::Bearer(read),
            &[("if-none-match", "\"99\"")],
            None,
        )
        .await;
        self.send(&p("events"), g.clone(), &events, Auth::Bearer(read), &[], None).await;
        self.send(
            &p("events, bad Last-Event-ID"),
            g.clone(),
            &events,
            Auth::Bearer(read),
            &[("last-event-id", "zz")],
            None,
        )
        .await;
        self.send(&p("list"), g.clone(), "/progress?limit=5", Auth::Bearer(read), &[], None).await;
        self.send(
            &p("list as admin"),
            g.clone(),
            "/progress?status=running,pending&prefix=job",
            Auth::Bearer(admin),
            &[],
            None,
        )
        .await;
        for bad in [
            "/progress?limit=0",
            "/progress?colour=red",
            "/progress?cursor=not-a-cursor",
            "/progress?status=sleeping",
            "/progress?limit=1&limit=2",
        ] {
            self.send(&p("bad query"), g.clone(), bad, Auth::Bearer(read), &[], None).await;
        }
        self.send(&p("bad wait"), g.clone(), &format!("{rec}?wait=99"), Auth::Bearer(read), &[], None).await;
        self.send(&p("bad JSON"), Method::PUT, &rec, Auth::Bearer(write), &[], Some("{\"status\": ")).await;
        self.send(&p("empty body"), Method::PATCH, &rec, Auth::Bearer(write), &[], Some("")).await;
        self.send(
            &p("not JSON"),
            Method::PUT,
            &rec,
            Auth::Bearer(write),
            &[("content-type", "text/plain")],
            Some("hello"),
        )
        .await;
        self.send(
            &p("unknown field"),
            Method::PUT,
            &rec,
            Auth::Bearer(write),
            &[],
            Some(r#"{"status":"running","colour":"red"}"#),
        )
        .await;
        self.send(&p("out of range"), Method::PATCH, &rec, Auth::Bearer(write), &[], Some(r#"{"progress":140}"#)).await;
        self.send(&p("bad id"), g.clone(), "/progress/bad%20id!", Auth::Bearer(read), &[], None).await;
        self.send(&p("bad id write"), Method::PUT, "/progress/a%2Fb", Auth::Bearer(write), &[], Some(record)).await;
        self.send(
            &p("bad If-Match"),
            Method::PATCH,
            &rec,
            Auth::Bearer(write),
            &[("if-match", "not a tag")],
            Some("{}"),
        )
        .await;
        self.send(&p("stale If-Match"), Method::DELETE, &rec, Auth::Bearer(write), &[("if-match", "\"999\"")], None)
            .await;
        self.send(&p("patch absent"), Method::PATCH, &format!("{rec}-absent"), Auth::Bearer(write), &[], Some("{}"))
            .await;
        self.send(&p("stats"), g.clone(), "/admin/stats", Auth::Bearer(admin), &[], None).await;
        self.send(&p("cleanup"), Method::POST, "/admin/cleanup", Auth::Bearer(admin), &[], None).await;
        self.send(&p("bulk delete"), Method::DELETE, "/admin/progress?prefix=zz-none", Auth::Bearer(admin), &[], None)
            .await;
        self.send(&p("bulk delete, no filter"), Method::DELETE, "/admin/progress", Auth::Bearer(admin), &[], None)
            .await;
        self.send(
            &p("bulk delete, bad filter"),
            Method::DELETE,
            "/admin/progress?older_than=soon",
            Auth::Bearer(admin),
            &[],
            None,
        )
        .await;
        self.send(&p("delete"), Method::DELETE, &rec, Auth::Bearer(write), &[], None).await;
    }
}

// ---------------------------------------------------------------- the dependencies

/// An own PostgreSQL whose role `progressd` has a password the server
/// checks (md5 over TCP: scram-sha-256 works as well, but its PBKDF2 in the
/// unoptimised test build of the service can take most of a short connect
/// timeout on a loaded machine); the superuser `postgres` stays trusted for
/// the test's own statements.
struct Postgres {
    own: OwnPostgres,
}

impl Postgres {
    async fn start(password: &str) -> Self {
        let own = block_in_place(OwnPostgres::start);
        let pg = Self { own };
        pg.admin(&format!("SET password_encryption = 'md5'; CREATE ROLE progressd LOGIN PASSWORD '{password}'")).await;
        pg.admin("CREATE DATABASE progress OWNER progressd").await;
        pg.own.set_hba(
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 md5\n",
        );
        // The reload is asynchronous: wait until a wrong password is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wrong = format!("postgres://progressd:not-it@127.0.0.1:{}/progress", pg.own.port());
            match tokio_postgres::connect(&wrong, tokio_postgres::NoTls).await {
                Err(e) if format!("{e:?}").contains("password authentication failed") => break,
                other => {
                    assert!(Instant::now() < deadline, "pg_hba.conf was not applied: {:?}", other.map(|_| ()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let right =
            format!("postgres://progressd:{}@127.0.0.1:{}/progress", percent(password, true, false), pg.own.port());
        let (client, connection) =
            tokio_postgres::connect(&right, tokio_postgres::NoTls).await.expect("the password is accepted");
        drop(client);
        let _ = connection.await;
        pg
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.own.port()))
    }

    /// Runs SQL as the trusted superuser.
    async fn admin(&self, sql: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.own.url(), tokio_postgres::NoTls).await.expect("superuser connects");
        let connection = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        drop(client);
        let _ = connection.await;
    }

    /// Changes the service role's password and ends its sessions, so the
    /// service's next connection presents the old one.
    async fn rotate_password(&self, password: &str) {
        self.admin(&format!(
            "SET password_encryption = 'md5'; ALTER ROLE progressd PASSWORD '{password}'; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'progressd';"
        ))
        .await;
    }
}

/// A synchronous connection to the own Redis with `password`.
fn redis_admin(port: u16, password: &str) -> redis::Connection {
    let url = format!("redis://default:{}@127.0.0.1:{port}/", percent(password, true, false));
    redis::Client::open(url).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
}

/// Changes Redis's password from `old` to `new` and drops every client, so
/// the service reconnects with the password it has.
fn rotate_redis_password(port: u16, old: &str, new: &str) {
    let mut conn = redis_admin(port, old);
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(new).query(&mut conn).unwrap();
    for kind in ["normal", "pubsub"] {
        let _: i64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind).arg("SKIPME").arg("yes").query(&mut conn).unwrap();
    }
}

fn tier(doc: &Value, name: &str) -> (String, String) {
    let t = &doc["dependencies"][name];
    (t["state"].as_str().unwrap_or("").to_owned(), t["last_error"].as_str().unwrap_or("").to_owned())
}

// ---------------------------------------------------------------- the scenario

/// Makes `proxy` refuse connections as a dead process would: `Refuse` alone
/// leaves established connections forwarding, so reset them first and wait
/// until the service has seen it (the proxy's connections watch only the
/// latest mode: switching on at once could skip the reset).
async fn refuse(d: &mut Driver<'_>, proxy: &Proxy, name: &str) {
    proxy.set_mode(Mode::Reset).await;
    d.wait_readyz(&format!("{name} reset"), |doc| tier(doc, name).0 == "down").await;
    proxy.set_mode(Mode::Refuse).await;
}

async fn scenario(tag: &str, log_env: &[(&'static str, &'static str)]) {
    let started = Instant::now();
    let secrets = Secrets::new(tag);
    let mut redis = block_in_place(|| OwnRedis::start_with(&["--requirepass", &secrets.redis_pw]));
    let mut pg = Postgres::start(&secrets.pg_pw).await;
    let redis_proxy = Proxy::start(redis.addr()).await;
    let pg_proxy = Proxy::start(pg.addr()).await;

    let redis_url =
        format!("redis://default:{}@127.0.0.1:{}/0", percent(&secrets.redis_pw, true, false), redis_proxy.port());
    let database_url =
        format!("postgres://progressd:{}@127.0.0.1:{}/progress", percent(&secrets.pg_pw, true, false), pg_proxy.port());
    let read_tokens = format!("{},other-reader", secrets.read_token);
    let write_tokens = format!("{}, {}", secrets.write_token, secrets.write_token_2);
    let mut env: Vec<(&str, &str)> = vec![
        ("REDIS_URL", &redis_url),
        ("DATABASE_URL", &database_url),
        ("PROGRESS_READ_TOKENS", &read_tokens),
        ("PROGRESS_WRITE_TOKENS", &write_tokens),
        ("PROGRESS_ADMIN_TOKEN", &secrets.admin_token),
        ("PROGRESS_KEY_PREFIX", "secrets:"),
        ("PROGRESS_REDIS_TIMEOUT_MS", "300"),
        ("PROGRESS_DATABASE_TIMEOUT_MS", "800"),
        ("PROGRESS_BREAKER_PROBE_MS", "100"),
        ("PROGRESS_PERSIST_INTERVAL_SECONDS", "1"),
        ("PROGRESS_CLEANUP_INTERVAL_SECONDS", "1"),
        ("PROGRESS_SSE_HEARTBEAT_SECONDS", "1"),
    ];
    env.extend_from_slice(log_env);

    // ---- one instance with the right passwords, through every failure.
    let service = Service::start(&env);
    let mut d = Driver::new(&service, &secrets, true);
    d.wait_readyz("both tiers up", |doc| doc["status"] == "ok").await;
    d.sweep("healthy").await;

    for (phase, mode) in
        [("redis-refused", Mode::Refuse), ("redis-reset", Mode::Reset), ("redis-blackholed", Mode::Blackhole)]
    {
        if mode == Mode::Refuse {
            refuse(&mut d, &redis_proxy, "redis").await;
        } else {
            redis_proxy.set_mode(mode).await;
        }
        d.wait_readyz(phase, |doc| tier(doc, "redis").0 == "down").await;
        d.sweep(phase).await;
    }
    redis_proxy.set_mode(Mode::Forward).await;
    block_in_place(|| redis.stop());
    d.wait_readyz("redis stopped", |doc| tier(doc, "redis").0 == "down").await;
    d.sweep("redis-stopped").await;
    block_in_place(|| redis.start_again());
    d.wait_readyz("redis back", |doc| doc["status"] == "ok").await;

    // Redis's password changes under the running service.
    block_in_place(|| rotate_redis_password(redis.port(), &secrets.redis_pw, &secrets.redis_pw_rotated));
    let doc = d
        .wait_readyz("redis refusing the password", |doc| {
            let (state, error) = tier(doc, "redis");
            state == "down"
                && (error.contains("WRONGPASS") || error.contains("NOAUTH") || error.to_lowercase().contains("auth"))
        })
        .await;
    let redis_auth_error = tier(&doc, "redis").1;
    d.sweep("redis-wrong-password").await;
    block_in_place(|| rotate_redis_password(redis.port(), &secrets.redis_pw_rotated, &secrets.redis_pw));
    d.wait_readyz("redis accepting the password again", |doc| doc["status"] == "ok").await;

    // Both tiers away: nothing can serve.
    for (phase, mode) in
        [("both-refused", Mode::Refuse), ("both-reset", Mode::Reset), ("both-blackholed", Mode::Blackhole)]
    {
        if redis_proxy.mode() != Mode::Refuse {
            refuse(&mut d, &redis_proxy, "redis").await;
        }
        if mode == Mode::Refuse {
            refuse(&mut d, &pg_proxy, "postgres").await;
        } else {
            pg_proxy.set_mode(mode).await;
        }
        d.wait_readyz(phase, |doc| doc["status"] == "unavailable").await;
        d.sweep(phase).await;
    }
    redis_proxy.set_mode(Mode::Forward).await;
    pg_proxy.set_mode(Mode::Forward).await;
    d.wait_readyz("both back", |doc| doc["status"] == "ok").await;

    // PostgreSQL stopped, then started again.
    block_in_place(|| pg.own.stop());
    d.wait_readyz("postgres stopped", |doc| tier(doc, "postgres").0 == "down").await;
    d.sweep("postgres-stopped").await;
    block_in_place(|| pg.own.start_again());
    d.wait_readyz("postgres back", |doc| doc["status"] == "ok").await;

    // PostgreSQL's password changes under the running service, with Redis
    // away so that requests reach PostgreSQL.
    pg.rotate_password(&secrets.pg_pw_rotated).await;
    refuse(&mut d, &redis_proxy, "redis").await;
    let doc = d
        .wait_readyz("postgres refusing the password", |doc| {
            let (state, error) = tier(doc, "postgres");
            state == "down" && error.contains("password authentication failed")
        })
        .await;
    let pg_auth_error = tier(&doc, "postgres").1;
    d.sweep("postgres-wrong-password").await;
    pg.rotate_password(&secrets.pg_pw).await;
    redis_proxy.set_mode(Mode::Forward).await;
    d.wait_readyz("everything back", |doc| doc["status"] == "ok").await;
    d.sweep("recovered").await;

    let transcript = std::mem::take(&mut d.transcript);
    let (code, logs) = service.terminate();

    // ---- a second instance that starts with wrong passwords and no admin token.
    let wrong_redis_url =
        format!("redis://default:{}@127.0.0.1:{}/0", percent(&secrets.redis_pw_wrong, false, false), redis.port());
    let wrong_database_url = format!(
        "postgresql://progressd:{}@127.0.0.1:{}/progress?connect_timeout=2",
        percent(&secrets.pg_pw_wrong, false, false),
        pg.own.port()
    );
    let mut env2: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| !["REDIS_URL", "DATABASE_URL", "PROGRESS_ADMIN_TOKEN"].contains(k))
        .collect();
    env2.push(("REDIS_URL", &wrong_redis_url));
    env2.push(("DATABASE_URL", &wrong_database_url));
    let service2 = Service::start(&env2);
    let mut d2 = Driver::new(&service2, &secrets, false);
    let doc = d2
        .wait_readyz("both passwords refused at start-up", |doc| {
            let (redis_state, redis_error) = tier(doc, "redis");
            let (pg_state, pg_error) = tier(doc, "postgres");
            doc["status"] == "unavailable"
                && redis_state == "down"
                && redis_error.to_lowercase().contains("auth")
                && pg_state == "down"
                && pg_error.contains("password authentication failed")
        })
        .await;
    let startup_redis_error = tier(&doc, "redis").1;
    d2.sweep("wrong-passwords-at-start").await;
    let transcript2 = std::mem::take(&mut d2.transcript);
    let (code2, logs2) = service2.terminate();

    // ---- URLs that do not parse stop start-up; `migrate` with a wrong password fails.
    let mut startup_outputs = Vec::new();
    let bad_redis = format!("redis://default:{}@127.0.0.1:notaport/0", percent(&secrets.redis_pw, true, false));
    let bad_pg = format!("postgres://progressd:{}@127.0.0.1:notaport/progress", percent(&secrets.pg_pw, true, false));
    // Passwords written into the URL without percent-encoding ('/', '+', '!', '*').
    let unencoded_redis = format!("redis://default:{}@127.0.0.1:{}/0", secrets.redis_pw, redis.port());
    let unencoded_pg = format!("postgres://progressd:{}@127.0.0.1:1/progress", secrets.pg_pw);
    let typo_redis =
        format!("rediss//default:{}@127.0.0.1:{}/0", percent(&secrets.redis_pw, true, false), redis.port());
    for (what, extra, args) in [
        ("a Redis URL that does not parse", vec![("REDIS_URL", bad_redis.as_str())], vec![]),
        ("a PostgreSQL URL that does not parse", vec![("DATABASE_URL", bad_pg.as_str())], vec![]),
        ("migrate with a wrong password", vec![("DATABASE_URL", wrong_database_url.as_str())], vec!["migrate"]),
        ("a Redis URL with an unencoded password", vec![("REDIS_URL", unencoded_redis.as_str())], vec![]),
        ("a Redis URL without its ://", vec![("REDIS_URL", typo_redis.as_str())], vec![]),
        ("migrate with an unencoded password", vec![("DATABASE_URL", unencoded_pg.as_str())], vec!["migrate"]),
        ("serve with an unencoded PostgreSQL password", vec![("DATABASE_URL", unencoded_pg.as_str())], vec![]),
    ] {
        let mut vars: Vec<(&str, &str)> = extra;
        vars.extend_from_slice(log_env);
        let (code, text) = Service::run_briefly(&vars, &args, Duration::from_secs(2));
        assert_ne!(code, Some(0), "{what} is no success: {text}");
        assert!(!text.is_empty(), "{what} says something");
        startup_outputs.push((what, text));
    }

    // ---- a third instance, on PostgreSQL alone, given its connection in
    // the key=value form, which it accepts as well as a URL.
    let key_value = format!(
        "host=127.0.0.1 port={} user=progressd password='{}' dbname=progress connect_timeout=2",
        pg.own.port(),
        secrets.pg_pw
    );
    let mut env3: Vec<(&str, &str)> =
        env.iter().copied().filter(|(k, _)| !["REDIS_URL", "DATABASE_URL"].contains(k)).collect();
    env3.push(("DATABASE_URL", &key_value));
    let service3 = Service::start(&env3);
    let mut d3 = Driver::new(&service3, &secrets, true);
    // Seen: right after start-up /readyz can say "ok" while PostgreSQL's
    // breaker is still open (it is open at start-up) and a write is a 503;
    // once half-open, a request goes through (and closes it).
    let ready = d3
        .wait_readyz("postgres alone with a key=value connection string", |doc| {
            doc["status"] == "ok" && doc["dependencies"]["postgres"]["breaker"] != "open"
        })
        .await;
    let (status, body) =
        d3.send("key=value", Method::PUT, "/progress/kv-1", Auth::Bearer(&secrets.write_token), &[], Some("{}")).await;
    assert_eq!(status, 201, "the key=value connection works: {body}; /readyz said {ready}");
    let transcript3 = std::mem::take(&mut d3.transcript);
    let (_, logs3) = service3.terminate();
    startup_outputs.push(("an instance with a key=value DATABASE_URL", logs3));
    startup_outputs.push(("its responses", transcript3.text));

    // ---- no secret anywhere.
    let mut leaks = Vec::new();
    let outputs = [
        ("the responses of the first instance".to_owned(), &transcript.text),
        ("the responses of the second instance".to_owned(), &transcript2.text),
        ("the log of the first instance".to_owned(), &logs),
        ("the log of the second instance".to_owned(), &logs2),
    ];
    let more = startup_outputs.iter().map(|(what, text)| (format!("the output of {what}"), text));
    for (what, text) in outputs.into_iter().chain(more) {
        if let Some(found) = find_secrets(text, &secrets.all()) {
            leaks.push(format!("a secret leaks into {what}: {found}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));

    // ---- and the failures really happened.
    let t = &transcript;
    for (status, code) in [
        (401, "unauthorized"),
        (400, "invalid_body"),
        (400, "invalid_id"),
        (400, "invalid_query"),
        (400, "invalid_header"),
        (400, "filter_required"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (415, "unsupported_media_type"),
        (422, "validation_failed"),
        (503, "storage_unavailable"),
    ] {
        assert!(t.saw(status, code) > 0, "no {status} {code} among {:?}", t.seen);
    }
    assert!(t.saw_status(201) > 0 && t.saw_status(200) > 0 && t.saw_status(204) > 0, "{:?}", t.seen);
    assert!(t.saw(200, "event-stream") > 0, "an event stream was read: {:?}", t.seen);
    assert!(t.saw(503, "") > 0, "/readyz said 503: {:?}", t.seen);
    for status in ["ok", "degraded", "unavailable"] {
        assert!(t.readyz_statuses.contains_key(status), "/readyz was {status} at some point: {:?}", t.readyz_statuses);
    }
    assert!(t.readyz_errors.iter().any(|e| e.starts_with("redis: ") && e.contains("refused")), "{:?}", t.readyz_errors);
    assert!(
        t.readyz_errors.iter().any(|e| e.starts_with("postgres: ") && e.contains("refused")),
        "{:?}",
        t.readyz_errors
    );
    assert!(pg_auth_error.contains("password authentication failed"), "{pg_auth_error}");
    assert!(redis_auth_error.to_lowercase().contains("auth"), "{redis_auth_error}");
    assert!(t.text.contains("\"status\":\"running\""), "records were served in the healthy phases");
    assert!(transcript2.saw(403, "admin_disabled") > 0, "{:?}", transcript2.seen);
    assert!(transcript2.saw(503, "storage_unavailable") > 0, "{:?}", transcript2.seen);
    assert!(transcript2.saw(401, "unauthorized") > 0, "{:?}", transcript2.seen);
    assert!(startup_redis_error.to_lowercase().contains("auth"), "{startup_redis_error}");

    for (what, logs) in [("first", &logs), ("second", &logs2)] {
        assert!(logs.contains("storage unavailable"), "the {what} log shows 503s: {logs}");
        assert!(logs.contains("redis is unavailable"), "the {what} log names Redis failures: {logs}");
        assert!(logs.contains("postgres is unavailable"), "the {what} log names PostgreSQL failures: {logs}");
        assert!(logs.contains(":****@"), "the {what} log shows the redacted URLs: {logs}");
    }
    assert!(logs.contains("circuit breaker open"), "{logs}");
    assert!(
        logs2.contains("password authentication failed"),
        "the second log shows the wrong PostgreSQL password refused: {logs2}"
    );
    if log_env.contains(&("PROGRESS_LOG_LEVEL", "debug")) {
        assert!(logs.contains("request refused"), "debug logs show refusals: {logs}");
    }
    assert_eq!(code, 0, "the first instance exits 0: {logs}");
    assert!(code2 >= 0, "the second instance exits: {logs2}");
    let (_, redis_text) = &startup_outputs[0];
    assert!(redis_text.contains("REDIS_URL") && redis_text.contains(":****@"), "{redis_text}");
    let (_, pg_text) = &startup_outputs[1];
    assert!(pg_text.contains("DATABASE_URL"), "{pg_text}");
    let (_, migrate_text) = &startup_outputs[2];
    assert!(migrate_text.contains("password authentication failed"), "{migrate_text}");
    let mut errors: Vec<&String> = t.readyz_errors.iter().chain(&transcript2.readyz_errors).collect();
    errors.sort();
    errors.dedup();
    eprintln!("{tag}: the failures /readyz reported: {errors:#?}");
    eprintln!(
        "{tag}: {} responses ({} bytes), logs of {} + {} bytes, {:?}",
        t.seen.values().sum::<usize>() + transcript2.seen.values().sum::<usize>(),
        t.text.len() + transcript2.text.len(),
        logs.len(),
        logs2.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_at_debug_level() {
    scenario("dbg", &[("PROGRESS_LOG_LEVEL", "debug")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_at_the_default_level_in_json() {
    scenario("dflt", &[("PROGRESS_LOG_FORMAT", "json")]).await;
}
