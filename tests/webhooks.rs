//! Webhooks against the real server and a receiver in the test (issue 21):
//! retries with the same `webhook-id` and a signature that verifies with
//! an implementation of our own (HMAC-SHA256 by hand) and with the Python
//! reference library when it is installed; a delivery that outlives a
//! restart; two instances that never attempt one delivery at once; a
//! receiver that hangs without slowing writes; stalls once per silence;
//! hosts that are not allowed; the admin routes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::postgres::TestDatabase;
use common::{Backend, TestApp, spawn_app_with, unique_prefix};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "admin-token";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    at: Instant,
}

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// 503 for the first `n` attempts of each delivery, then 200.
    FailFirst(usize),
    /// 200 after `ms`.
    Slow(u64),
    /// Never answers.
    Hang,
}

struct Receiver {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<Behaviour>,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight_per_id: Mutex<usize>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let got = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8(body.to_vec()).unwrap(),
        at: Instant::now(),
    };
    let id = got.id.clone();
    let attempt = {
        let mut received = r.received.lock().unwrap();
        received.push(got);
        received.iter().filter(|g| g.id == id).count()
    };
    {
        let mut flying = r.in_flight.lock().unwrap();
        let n = flying.entry(id.clone()).or_default();
        *n += 1;
        let mut max = r.max_in_flight_per_id.lock().unwrap();
        *max = (*max).max(*n);
    }
    let behaviour = *r.behaviour.lock().unwrap();
    let answer = match behaviour {
        Behaviour::FailFirst(n) if attempt <= n => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Behaviour::FailFirst(_) => StatusCode::OK.into_response(),
        Behaviour::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    };
    *r.in_flight.lock().unwrap().get_mut(&id).unwrap() -= 1;
    answer
}

/// A receiver on a free port: its URL and its log.
async fn receiver(behaviour: Behaviour) -> (String, Arc<Receiver>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    receiver_on(listener, behaviour).await
}

async fn receiver_on(
    listener: tokio::net::TcpListener,
    behaviour: Behaviour,
) -> (String, Arc<Receiver>, tokio::task::JoinHandle<()>) {
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let state = Arc::new(Receiver {
        received: Mutex::new(Vec::new()),
        behaviour: Mutex::new(behaviour),
        in_flight: Mutex::new(HashMap::new()),
        max_in_flight_per_id: Mutex::new(0),
    });
    let app = axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state, task)
}

fn hooked(s: &mut progressd::Settings, url: &str) {
    s.webhook_url = Some(url.to_owned());
    s.webhook_secret = Some(SECRET.to_owned());
    s.admin_token = Some(ADMIN.to_owned());
}

impl Receiver {
    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn until(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            assert!(start.elapsed() < limit, "{what}: still not after {limit:?}; received {all:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The signature checked by hand: `v1,` and base64 of HMAC-SHA256 over
/// `id.timestamp.body` under the secret's bytes (standardwebhooks.com).
fn verify_by_hand(r: &Received) {
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let signed = format!("{}.{}.{}", r.id, r.timestamp, r.body);
    let mac = hmac_sha256::HMAC::mac(signed.as_bytes(), &key);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac));
    assert!(r.signature.split(' ').any(|s| s == expected), "signature {} is not {expected}", r.signature);
    let age = chrono::Utc::now().timestamp() - r.timestamp.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "the timestamp is the attempt's: {age} s old");
}

/// The signature checked by the Python reference library (`pip install
/// standardwebhooks`), in the virtual environment `.ci/run` makes; skipped,
/// saying so, where it is missing.
fn verify_with_python_reference(r: &Received) {
    let python = ["target/schemathesis-venv/bin/python", "python3"].into_iter().find(|p| {
        std::process::Command::new(p).args(["-c", "import standardwebhooks"]).output().is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        eprintln!("SKIPPED: the Python standardwebhooks library is not installed (.ci/run installs it)");
        return;
    };
    let script = "import sys, json\nfrom standardwebhooks.webhooks import Webhook\n\
                  h = json.loads(sys.argv[2])\nWebhook(sys.argv[1]).verify(sys.stdin.read(), h)\nprint('ok')";
    let headers = json!({"webhook-id": r.id, "webhook-timestamp": r.timestamp, "webhook-signature": r.signature});
    let mut child = std::process::Command::new(python)
        .args(["-c", script, SECRET, &headers.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(r.body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference library refuses: {}", String::from_utf8_lossy(&out.stderr));
}

async fn admin(app: &TestApp, method: Method, path: &str) -> (StatusCode, Value) {
    let auth = format!("Bearer {ADMIN}");
    let res = app.send(method, path, None, &[("authorization", &auth)]).await;
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_one_delivery_in_three_attempts_with_one_id() {
    let (url, receiver, _task) = receiver(Behaviour::FailFirst(2)).await;
    let app = spawn_app_with(Backend::Memory, |s| hooked(s, &url)).await;
    app.put_ok("job-1", &json!({"status": "running", "total": 3})).await;
    assert!(receiver.all().is_empty(), "a running write sends nothing");
    app.patch_ok("job-1", &json!({"status": "completed", "current": 3})).await;
    // While it waits for its retry, the admin route lists it as pending.
    let got = receiver.until(Duration::from_secs(5), "a first attempt", |r| !r.is_empty()).await;
    let (status, listed) = admin(&app, Method::GET, "/admin/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    let pending = &listed["deliveries"][0];
    assert_eq!((pending["state"].as_str(), pending["id"].as_str()), (Some("pending"), Some(got[0].id.as_str())));
    assert_eq!(pending["last_error"], "HTTP 503");
    // The retries come about 5 s and then about 30 s later.
    let all = receiver.until(Duration::from_secs(60), "three attempts", |r| r.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_after = receiver.all();
    assert_eq!(all_after.len(), 3, "no attempt after the 200: {all_after:#?}");
    assert!(all.iter().all(|r| r.id == all[0].id), "one webhook-id: {all:#?}");
    let first_gap = all[1].at - all[0].at;
    let second_gap = all[2].at - all[1].at;
    assert!(first_gap >= Duration::from_secs(3) && first_gap <= Duration::from_secs(8), "{first_gap:?}");
    assert!(second_gap >= Duration::from_secs(20) && second_gap <= Duration::from_secs(40), "{second_gap:?}");
    for attempt in &all {
        verify_by_hand(attempt);
    }
    verify_with_python_reference(&all[2]);
    let body: Value = serde_json::from_str(&all[2].body).unwrap();
    assert_eq!(body["type"], "progress.completed");
    assert_eq!((body["data"]["id"].as_str(), body["data"]["status"].as_str()), (Some("job-1"), Some("completed")));
    assert_eq!(body["data"]["version"], 2);
    let (_, listed) = admin(&app, Method::GET, "/admin/webhooks").await;
    assert_eq!(listed["deliveries"], json!([]), "delivered, not listed");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"progressd_webhook_attempts_total{event="progress.completed",result="retry"} "#,
        r#"progressd_webhook_deliveries_total{event="progress.completed",outcome="delivered"} "#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_delivery_outlives_a_restart_while_its_receiver_is_down() {
    let database = TestDatabase::create().await;
    let prefix = unique_prefix();
    // The receiver's port, closed for now: connections are refused.
    let port = common::binary::free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let settings = |s: &mut progressd::Settings| {
        hooked(s, &url);
        s.database_url = Some(database.url().to_owned());
        s.key_prefix = prefix.clone();
    };
    let mut first = spawn_app_with(Backend::Redis, settings).await;
    first.put_ok("job-r", &json!({"status": "running"})).await;
    first.patch_ok("job-r", &json!({"status": "failed", "error": "disk full"})).await;
    // The first attempt is refused; the delivery waits for its retry.
    let start = Instant::now();
    loop {
        let (_, listed) = admin(&first, Method::GET, "/admin/webhooks").await;
        if listed["deliveries"][0]["attempts"] == 1 {
            assert!(listed["deliveries"][0]["last_error"].as_str().unwrap().contains("error"), "{listed}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no first attempt: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.settings.key_prefix.clear(); // keep the Redis keys for the second instance
    first.stop().await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (_, receiver, _task) = receiver_on(listener, Behaviour::FailFirst(0)).await;
    let second = spawn_app_with(Backend::Redis, settings).await;
    let got = receiver.until(Duration::from_secs(20), "the delivery after the restart", |r| !r.is_empty()).await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!((body["type"].as_str(), body["data"]["error"].as_str()), (Some("progress.failed"), Some("disk full")));
    verify_by_hand(&got[0]);
    // Recorded in PostgreSQL, where it outlives Redis too; gone once delivered.
    let db = database.connect().await;
    let start = Instant::now();
    loop {
        let rows = db.query("SELECT state FROM progress_webhooks", &[]).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "delivered and removed: {} rows", rows.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop().await;
}

/// Two instances on one store: 20 jobs, each finished through the other
/// instance than the one that started it; each delivery arrives once.
async fn two_instances(backend: Backend, database: Option<&TestDatabase>) {
    let (url, receiver, _task) = receiver(Behaviour::Slow(150)).await;
    let prefix = unique_prefix();
    let settings = |s: &mut progressd::Settings| {
        hooked(s, &url);
        s.key_prefix = prefix.clone();
        s.database_url = database.map(|d| d.url().to_owned());
    };
    let mut a = spawn_app_with(backend, settings).await;
    let b = spawn_app_with(backend, settings).await;
    for n in 0..20 {
        let (writer, finisher) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        writer.put_ok(&format!("job-{n}"), &json!({"status": "running"})).await;
        finisher.patch_ok(&format!("job-{n}"), &json!({"status": "completed"})).await;
    }
    let all = receiver.until(Duration::from_secs(30), "20 deliveries", |r| r.len() >= 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_after = receiver.all();
    assert_eq!(all_after.len(), 20, "each delivered once: {all:#?}");
    let mut ids: Vec<&str> = all_after.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "20 webhook-ids");
    assert_eq!(*receiver.max_in_flight_per_id.lock().unwrap(), 1, "never two attempts of one at once");
    a.settings.key_prefix.clear();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_instances_on_redis_deliver_each_webhook_once_and_never_attempt_one_at_once() {
    two_instances(Backend::Redis, None).await;
}

#[tokio::test]
async fn two_instances_on_postgres_deliver_each_webhook_once_and_never_attempt_one_at_once() {
    let database = TestDatabase::create().await;
    two_instances(Backend::Memory, Some(&database)).await;
}

#[tokio::test]
async fn a_receiver_that_hangs_does_not_hold_up_writes() {
    let (url, receiver, _task) = receiver(Behaviour::Hang).await;
    let app = spawn_app_with(Backend::Memory, |s| {
        hooked(s, &url);
        s.webhook_timeout_seconds = 5;
        s.webhook_concurrency = 2;
    })
    .await;
    let mut slowest = Duration::ZERO;
    for n in 0..30 {
        let id = format!("hang-{n}");
        app.put_ok(&id, &json!({"status": "running"})).await;
        let start = Instant::now();
        app.patch_ok(&id, &json!({"status": "completed"})).await;
        slowest = slowest.max(start.elapsed());
    }
    // Blocked on the receiver, a write would take the 5 s timeout.
    assert!(slowest < Duration::from_secs(2), "the slowest terminal write took {slowest:?}");
    let got = receiver.until(Duration::from_secs(5), "attempts in flight", |r| r.len() >= 2).await;
    assert_eq!(got.len(), 2, "at most PROGRESS_WEBHOOK_CONCURRENCY in flight");
    let (_, listed) = admin(&app, Method::GET, "/admin/webhooks?limit=1000").await;
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 30, "every one recorded: {listed}");
}

#[tokio::test]
async fn a_silent_job_is_reported_stalled_once_per_silence() {
    let (url, receiver, _task) = receiver(Behaviour::FailFirst(0)).await;
    let app = spawn_app_with(Backend::Memory, |s| {
        hooked(s, &url);
        s.heartbeat_seconds = 1;
    })
    .await;
    app.put_ok("quiet", &json!({"status": "running", "stage": "copy"})).await;
    app.put_ok("busy", &json!({"status": "running"})).await;
    let busy = async {
        for _ in 0..12 {
            app.patch_ok("busy", &json!({"message": "still here"})).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    busy.await;
    let stalled = |r: &[Received]| -> Vec<Value> {
        r.iter()
            .map(|g| serde_json::from_str::<Value>(&g.body).unwrap())
            .filter(|b| b["type"] == "progress.stalled" && b["data"]["id"] == "quiet")
            .collect()
    };
    let all = receiver.until(Duration::from_secs(5), "a stall", |r| !stalled(r).is_empty()).await;
    let first = stalled(&all);
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!((first[0]["data"]["id"].as_str(), first[0]["data"]["stalled"].as_bool()), (Some("quiet"), Some(true)));
    // Later scans find the same silence: nothing more (while "busy", now
    // silent too, is reported once of its own).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stalled(&receiver.all()).len(), 1, "once per silence");
    let busy_stalls = receiver
        .all()
        .iter()
        .filter(|g| g.body.contains(r#""type":"progress.stalled""#) && g.body.contains(r#""id":"busy""#))
        .count();
    assert_eq!(busy_stalls, 1, "busy went silent after its loop: reported once");
    // A write ends the silence; the next one is reported again.
    app.patch_ok("quiet", &json!({"message": "woke up"})).await;
    let all = receiver.until(Duration::from_secs(8), "a second stall", |r| stalled(r).len() >= 2).await;
    assert_eq!(stalled(&all)[1]["data"]["version"], 2);
}

#[tokio::test]
async fn a_record_names_only_allowed_hosts_and_gets_its_own_events() {
    let (url, receiver, _task) = receiver(Behaviour::FailFirst(0)).await;
    let app = spawn_app_with(Backend::Memory, |s| {
        s.webhook_secret = Some(SECRET.to_owned());
        s.webhook_allowed_hosts = vec!["127.0.0.1".into()];
        s.admin_token = Some(ADMIN.to_owned());
    })
    .await;
    let refused = app
        .put("evil", &json!({"status": "running", "webhook": {"url": "http://169.254.169.254/latest/meta-data"}}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "validation_failed");
    assert!(problem["detail"].as_str().unwrap().contains("\"169.254.169.254\""), "{problem}");
    assert_eq!(app.get("evil").await.status(), StatusCode::NOT_FOUND, "nothing stored");
    let bad_shapes = [
        (json!({"webhook": {"url": "ftp://127.0.0.1/"}}), "http or https"),
        (json!({"webhook": {"url": "http://127.0.0.1/", "events": ["progress.done"]}}), "not an event"),
        (json!({"webhook": {"events": ["progress.failed"]}}), "webhook.url: is required"),
        (json!({"webhook": "http://127.0.0.1/"}), "must be an object"),
    ];
    for (body, words) in bad_shapes {
        let res = app.put("shape", &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let problem: Value = res.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(words), "{body}: {problem}");
    }
    // Allowed: its own events, and no operator URL is set.
    let own = json!({"url": url, "events": ["progress.completed", "progress.stage"]});
    app.put_ok("mine", &json!({"status": "running", "stage": "fetch", "webhook": own})).await;
    let patch_away = app.patch("mine", &json!({"webhook": {"url": "http://10.1.2.3/"}})).await;
    assert_eq!(patch_away.status(), StatusCode::UNPROCESSABLE_ENTITY, "a PATCH is checked too");
    app.patch_ok("mine", &json!({"stage": "store"})).await;
    app.patch_ok("mine", &json!({"status": "completed"})).await;
    let all = receiver.until(Duration::from_secs(5), "three events", |r| r.len() >= 3).await;
    let mut types: Vec<String> = all
        .iter()
        .map(|g| serde_json::from_str::<Value>(&g.body).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["progress.completed", "progress.stage", "progress.stage"], "{all:#?}");
}

#[tokio::test]
async fn with_webhooks_off_a_record_may_not_name_one_and_the_admin_routes_say_so() {
    let app = spawn_app_with(Backend::Memory, |s| s.admin_token = Some(ADMIN.to_owned())).await;
    let res = app.put("x", &json!({"webhook": {"url": "http://127.0.0.1/"}})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("PROGRESS_WEBHOOK_SECRET"), "{problem}");
    let (status, listed) = admin(&app, Method::GET, "/admin/webhooks").await;
    assert_eq!((status, listed), (StatusCode::OK, json!({"enabled": false, "deliveries": []})));
    let (status, problem) = admin(&app, Method::POST, "/admin/webhooks/msg_x/retry").await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, problem) = admin(&app, Method::GET, "/admin/webhooks?limit=0").await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    let res = app.send(Method::GET, "/admin/webhooks", None, &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_delivery_given_up_is_listed_and_retried_by_hand() {
    let (url, receiver, _task) = receiver(Behaviour::FailFirst(0)).await;
    // 404 ends a delivery at once.
    let gone = url.replace("/hooks", "/nowhere");
    let app = spawn_app_with(Backend::Memory, |s| hooked(s, &gone)).await;
    app.put_ok("g", &json!({"status": "cancelled"})).await;
    let start = Instant::now();
    let failed = loop {
        let (_, listed) = admin(&app, Method::GET, "/admin/webhooks").await;
        if listed["deliveries"][0]["state"] == "failed" {
            break listed["deliveries"][0].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((failed["last_error"].as_str(), failed["attempts"].as_u64()), (Some("HTTP 404"), Some(1)));
    assert_eq!(failed["event"], "progress.cancelled");
    let (status, answer) =
        admin(&app, Method::POST, &format!("/admin/webhooks/{}/retry", failed["id"].as_str().unwrap())).await;
    assert_eq!((status, answer["state"].as_str()), (StatusCode::ACCEPTED, Some("pending")));
    // Still the wrong path: failed again, one more attempt.
    let start = Instant::now();
    loop {
        let (_, listed) = admin(&app, Method::GET, "/admin/webhooks").await;
        if listed["deliveries"][0]["attempts"] == 2 {
            assert_eq!(listed["deliveries"][0]["state"], "failed");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.all().is_empty(), "the receiver's real path was never called");
}
