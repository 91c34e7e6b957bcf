//! The browser side: `/client.js` and `/dashboard` as files (types, caching,
//! CSP, compression, no token needed), and in a real headless Chromium
//! (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/node_modules`). Each browser scenario is a node script in
//! `tests/browser/`; this test starts the server, writes the records the
//! script expects, runs `node tests/browser/<scenario>.mjs <base_url>
//! <artifact_dir>` and does the writes the script asks for while the
//! browser watches (`STEP write [...]` on its stdout, `OK [...]` on its
//! stdin). Screenshots land in `target/test-artifacts/browser/`.
//!
//! Without chromium, node or `npm ci --prefix tests/browser`, the browser
//! scenarios print a loud SKIP and pass, unless `PROGRESS_REQUIRE_BROWSER=1`
//! (as `.ci/run` sets), when they fail.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestApp, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------
// The files themselves (no browser needed)

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn the_assets_are_served_with_their_types_validators_and_policies() {
    // Tokens configured: the assets hold no data and need none.
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["r".into()];
        s.write_tokens = vec!["w".into()];
    })
    .await;
    let cases = [
        ("/client.js", "application/javascript; charset=utf-8", "public, max-age=300", "progressd.watch"),
        ("/dashboard", "text/html; charset=utf-8", "no-cache", "<title>progressd dashboard</title>"),
        ("/dashboard/app.js", "application/javascript; charset=utf-8", "no-cache", "renderList"),
        ("/dashboard/cancel.js", "application/javascript; charset=utf-8", "no-cache", "progressdCancel"),
        ("/dashboard/app.css", "text/css; charset=utf-8", "no-cache", ".bar-fill"),
    ];
    for (path, content_type, cache_control, needle) in cases {
        let res = app.send(Method::GET, path, None, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        assert_eq!(header(&res, "cache-control"), cache_control, "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        let etag = header(&res, "etag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18, "{path}: {etag}");
        let body = res.text().await.unwrap();
        assert!(body.contains(needle), "{path} holds {needle}");

        let res = app.send(Method::GET, path, None, &[("if-none-match", &etag)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{path} revalidates");
        assert_eq!(header(&res, "etag"), etag, "{path}");
        assert!(res.bytes().await.unwrap().is_empty());

        let res = app.send(Method::HEAD, path, None, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "HEAD {path}");

        // Compressed like any response of 256 bytes or more.
        let res = app.send(Method::GET, path, None, &[("accept-encoding", "gzip")]).await;
        assert_eq!(header(&res, "content-encoding"), "gzip", "{path}");
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&res.bytes().await.unwrap()[..]).read_to_string(&mut unzipped).unwrap();
        assert_eq!(unzipped, body, "{path} unzips to the file");
    }

    let res = app.send(Method::GET, "/dashboard", None, &[]).await;
    let csp = header(&res, "content-security-policy");
    for directive in
        ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "CSP has {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&res, "referrer-policy"), "no-referrer");
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style in the page");

    let res = app.send(Method::GET, "/client.js", None, &[]).await;
    assert_eq!(header(&res, "cross-origin-resource-policy"), "cross-origin", "any page may embed client.js");
    // The API behind it still needs the token.
    let res = app.get("anything").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn client_js_is_a_plain_script_with_no_imports() {
    let source = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("assets/client.js")).unwrap();
    for banned in ["import ", "export ", "require(", "https://", "http://"] {
        let code: String =
            source.lines().filter(|l| !l.trim_start().starts_with("*") && !l.trim_start().starts_with("//")).collect();
        assert!(!code.contains(banned), "client.js code contains {banned:?}");
    }
    let app = spawn_app(Backend::Memory).await;
    let served = app.send(Method::GET, "/client.js", None, &[]).await.text().await.unwrap();
    assert_eq!(served, source, "the binary serves the file as it is in assets/");
}

// ---------------------------------------------------------------------------
// The browser scenarios

/// Node, Chromium and playwright-core, when all three are there.
struct Browser {
    chromium: PathBuf,
}

/// The browser tools, or `None` after a loud SKIP; panics when they are
/// missing and `PROGRESS_REQUIRE_BROWSER=1`.
fn browser(scenario: &str) -> Option<Browser> {
    let chromium = PathBuf::from(std::env::var("PROGRESS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let playwright = Path::new(MANIFEST_DIR).join("tests/browser/node_modules/playwright-core/package.json");
    let mut missing = Vec::new();
    if !node {
        missing.push("node (apt-get install nodejs)".to_owned());
    }
    if !chromium.exists() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    if !playwright.exists() {
        missing.push("tests/browser/node_modules (npm ci --prefix tests/browser)".to_owned());
    }
    if missing.is_empty() {
        return Some(Browser { chromium });
    }
    let message = format!("browser scenario {scenario}: missing {}", missing.join(", "));
    if std::env::var("PROGRESS_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{message}; PROGRESS_REQUIRE_BROWSER=1 requires the browser tests to run");
    }
    // Straight to the process's stderr, past the test harness's capture, so it shows in every run.
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIP {message}\nSKIP the browser tests did not run (set PROGRESS_REQUIRE_BROWSER=1 to make this a failure)\n{bar}\n"
    );
    None
}

/// One browser at a time: two cores do not run three Chromiums and their
/// servers without making the timing assertions flaky.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where screenshots go.
fn artifact_dir() -> PathBuf {
    Path::new(MANIFEST_DIR).join("target/test-artifacts/browser")
}

/// Runs `tests/browser/<scenario>.mjs` against `app`, doing the writes it
/// asks for with `write_token`; returns its output when it passed.
async fn run_scenario(browser: &Browser, scenario: &str, app: &TestApp, write_token: Option<&str>) -> String {
    let _one = ONE_BROWSER.lock().await;
    let script = Path::new(MANIFEST_DIR).join(format!("tests/browser/{scenario}.mjs"));
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&app.base)
        .arg(artifact_dir())
        .env("PROGRESS_CHROMIUM", &browser.chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });

    let mut output = String::new();
    let conversation = async {
        while let Some(line) = lines.next_line().await.expect("node's stdout is readable") {
            output.push_str(&line);
            output.push('\n');
            let Some(step) = line.strip_prefix("STEP ") else { continue };
            let (name, data) = step.split_once(' ').unwrap_or((step, "null"));
            let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("step {name}: {e}: {data}"));
            let answer = match name {
                "write" => do_writes(app, &data, write_token).await,
                "respond" => respond(app, &data, write_token).await,
                other => panic!("{scenario} asked for an unknown step {other}"),
            };
            stdin.write_all(format!("OK {answer}\n").as_bytes()).await.unwrap();
            stdin.flush().await.unwrap();
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(170), conversation).await;
    let status = match finished {
        Ok(()) => tokio::time::timeout(Duration::from_secs(10), child.wait()).await.ok().and_then(Result::ok),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let stderr =
        tokio::time::timeout(Duration::from_secs(5), stderr_task).await.ok().and_then(Result::ok).unwrap_or_default();
    let report = format!("--- {scenario}.mjs stdout ---\n{output}--- stderr ---\n{stderr}");
    println!("{report}");
    assert!(status.is_some(), "{scenario}.mjs did not finish in time\n{report}");
    assert!(status.unwrap().success(), "{scenario}.mjs failed ({:?})\n{report}", status.unwrap());
    assert!(output.lines().any(|l| l == format!("PASS {scenario}")), "{scenario}.mjs did not report PASS\n{report}");
    output
}

/// Executes `[{method, id, body}|{pause_ms}]`, each write must succeed; the statuses.
async fn do_writes(app: &TestApp, ops: &Value, token: Option<&str>) -> Value {
    let mut statuses = Vec::new();
    for op in ops.as_array().expect("a list of writes") {
        if let Some(ms) = op["pause_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            continue;
        }
        let method = Method::from_bytes(op["method"].as_str().unwrap().as_bytes()).unwrap();
        let path = format!("/progress/{}", op["id"].as_str().unwrap());
        let body = Some(&op["body"]).filter(|b| !b.is_null());
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let res = app.send(method.clone(), &path, body, &headers).await;
        let status = res.status();
        assert!(status.is_success(), "{method} {path}: {status} {}", res.text().await.unwrap_or_default());
        statuses.push(status.as_u16());
    }
    json!(statuses)
}

/// One write, `{method, id, body}`, as a worker would send it: its
/// response's body, which must be a success.
async fn respond(app: &TestApp, op: &Value, token: Option<&str>) -> Value {
    let method = Method::from_bytes(op["method"].as_str().unwrap().as_bytes()).unwrap();
    let path = format!("/progress/{}", op["id"].as_str().unwrap());
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let res = app.send(method.clone(), &path, Some(&op["body"]), &headers).await;
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

/// Creates a record, then lets the clock move: creation times have millisecond
/// resolution, and the scenarios expect the listing's newest-first order to be
/// the order of these calls.
async fn put(app: &TestApp, id: &str, body: Value, token: Option<&str>) {
    do_writes(app, &json!([{"method": "PUT", "id": id, "body": body}]), token).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
}

/// (a) The dashboard lists records, moves a bar when progress moves, filters,
/// highlights failed and stalled records and shows a record in detail, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_filters_highlights_and_follows_records() {
    let Some(browser) = browser("dashboard") else { return };
    // A short heartbeat window, so an untouched running record is stalled within the test.
    let app = spawn_app_with(Backend::Memory, |s| s.heartbeat_seconds = 2).await;
    put(
        &app,
        "dash-run",
        json!({
            "status": "running", "stage": "RESEARCH", "progress": 10, "message": "reading sources",
            "children": {"ch1": {"title": "Chapter 1", "status": "completed", "progress": 100},
                         "ch2": {"title": "Chapter 2", "status": "running", "progress": 25}},
            "metadata": {"bookId": 7}
        }),
        None,
    )
    .await;
    put(
        &app,
        "dash-failed",
        json!({
            "status": "failed", "error": {"message": "the printer caught fire", "code": "E_FIRE"}
        }),
        None,
    )
    .await;
    put(&app, "dash-done", json!({
        "status": "completed", "result": {"url": "https://example.com/book.pdf", "pages": 312}, "metadata": {"bookId": 42}
    }), None).await;
    put(&app, "dash-stalled", json!({"status": "running", "progress": 35, "stage": "WAITING"}), None).await;
    // A second sample: an estimate, soon past, which must not show once stalled.
    put(&app, "dash-stalled", json!({"status": "running", "progress": 40, "stage": "WAITING"}), None).await;
    put(
        &app,
        "dash-xss",
        json!({
            "status": "running", "progress": 5,
            "message": "<img src=x onerror=\"window.__pwned=1\">",
            "metadata": {"html": "<script>window.__pwned=1</script>", "attr": "\" onmouseover=\"window.__pwned=1"}
        }),
        None,
    )
    .await;
    let output = run_scenario(&browser, "dashboard", &app, None).await;
    assert!(output.contains("screenshot") && artifact_dir().join("dashboard.png").exists(), "a screenshot was saved");
}

/// (b) client.js on a page of another origin: order, terminal stop, resuming
/// a quiet stream with Last-Event-ID, cancel(), deletion, a fatal 401, and
/// the fallback to polling with the stream blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_watches_in_order_stops_cancels_and_falls_back_to_polling() {
    let Some(browser) = browser("client") else { return };
    let app = spawn_app_with(Backend::Memory, |s| {
        s.cors_origins = vec!["*".into()];
        // `ui-secret`: the README snippet's read token.
        s.read_tokens = vec!["reader".into(), "ui-secret".into()];
    })
    .await;
    for id in ["c-order", "c-resume", "c-cancel", "c-poll", "c-del", "c-del-poll"] {
        put(&app, id, json!({"status": "running"}), None).await;
    }
    put(&app, "book-42", json!({"status": "running", "progress": 10}), None).await;
    run_scenario(&browser, "client", &app, None).await;
}

/// (c) With tokens configured the dashboard asks for one, says clearly when
/// it is missing or wrong, and works with the read token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_with_a_read_token_and_says_when_it_needs_one() {
    let Some(browser) = browser("auth") else { return };
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["reader-token".into()];
        s.write_tokens = vec!["writer-token".into()];
        s.admin_token = Some("admin-token".into());
    })
    .await;
    put(&app, "auth-job", json!({"status": "running", "progress": 20, "stage": "RUN"}), Some("writer-token")).await;
    run_scenario(&browser, "auth", &app, Some("writer-token")).await;
}

/// (d) Scoped tokens in the browser: EventSource with `?access_token=`,
/// watchAll with a token function (refreshed after a 401), and the
/// dashboard with a prefix token, live, showing only that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_watch_a_job_and_a_prefix_live_in_the_browser() {
    let Some(browser) = browser("scoped") else { return };
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["scoped-reader".into()];
        s.write_tokens = vec!["scoped-writer".into()];
        s.signing_keys = vec!["k1:browser-scoped-signing-key-0123456789abcdef".into()];
    })
    .await;
    let writer = Some("scoped-writer");
    put(&app, "user-7:book", json!({"status": "running", "progress": 10}), writer).await;
    put(&app, "user-7:draft", json!({"status": "pending"}), writer).await;
    put(&app, "user-8:other", json!({"status": "running", "progress": 50}), writer).await;
    run_scenario(&browser, "scoped", &app, writer).await;
}

/// (e) Cancellation from a browser: `handle.requestCancel` through client.js
/// with a scoped token carrying the cancel claim, seen by the worker's next
/// PATCH; refusals for another id and without the claim; the dashboard's
/// Cancel button only with a token that may cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cancels_their_own_job_from_the_browser_and_the_worker_sees_it() {
    let Some(browser) = browser("cancel") else { return };
    let app = spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec!["cancel-reader".into()];
        s.write_tokens = vec!["cancel-writer".into()];
        s.signing_keys = vec!["k1:browser-cancel-signing-key-0123456789abcdef".into()];
    })
    .await;
    let writer = Some("cancel-writer");
    put(&app, "user-7:book", json!({"status": "running", "progress": 10}), writer).await;
    put(&app, "user-7:draft", json!({"status": "pending"}), writer).await;
    put(&app, "user-7:done", json!({"status": "completed"}), writer).await;
    put(&app, "user-7:run", json!({"status": "running", "progress": 30}), writer).await;
    put(&app, "user-8:other", json!({"status": "running", "progress": 50}), writer).await;
    let output = run_scenario(&browser, "cancel", &app, writer).await;
    assert!(output.contains("the worker saw the request"), "the scenario reached the worker's PATCH");
    assert!(artifact_dir().join("dashboard-cancel-button.png").exists(), "a screenshot was saved");
}
