//! SPEC §1–2: creating, reading, replacing, patching and deleting records,
//! with the server-owned and derived fields.

mod common;

use common::{Backend, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_stores!(
    put_creates_then_replaces,
    get_returns_the_record_with_its_etag,
    if_none_match_answers_304,
    numbers_round_trip_exactly,
    patch_merges_and_null_removes,
    children_merge_per_child_and_drive_progress,
    progress_derives_from_counters,
    stages_are_kept_with_durations,
    lifecycle_timestamps_and_eta,
    delete_removes_the_record,
    patch_of_a_missing_record_is_404,
    a_quiet_running_record_is_stalled,
    a_stalled_record_has_no_eta_wherever_it_is_read,
);

async fn put_creates_then_replaces(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.put("job-1", &json!({"status": "running", "message": "hi", "stage": "A"})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["location"], "/progress/job-1");
    assert_eq!(res.headers()["etag"], "\"1\"");
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["id"], "job-1");
    assert_eq!(created["version"], 1);
    assert_eq!(created["message"], "hi");
    assert_eq!(created["stalled"], false);
    assert_eq!(created["ttl_seconds"], 86400);

    let res = app.put("job-1", &json!({"status": "running"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let replaced: Value = res.json().await.unwrap();
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["message"], Value::Null, "PUT replaces every client field");
    assert_eq!(replaced["created_at"], created["created_at"], "created_at survives a replace");
}

async fn get_returns_the_record_with_its_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let written = app.put_ok("a.b:c_d-1", &json!({"status": "pending", "metadata": {"k": [1, 2]}})).await;
    let res = app.get("a.b:c_d-1").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let read: Value = res.json().await.unwrap();
    assert_eq!(read, written);
    common::assert_problem(app.get("nobody").await, 404, "not_found").await;
}

async fn if_none_match_answers_304(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("j", &json!({})).await;
    let res = app.send(Method::GET, "/progress/j", None, &[("if-none-match", "\"1\"")]).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert!(res.bytes().await.unwrap().is_empty());
    for tag in ["\"7\", \"1\"", "W/\"1\"", "*"] {
        let res = app.send(Method::GET, "/progress/j", None, &[("if-none-match", tag)]).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{tag}");
    }
    app.patch_ok("j", &json!({"message": "moved"})).await;
    let res = app.send(Method::GET, "/progress/j", None, &[("if-none-match", "\"1\"")]).await;
    assert_eq!(res.status(), StatusCode::OK, "the version moved");
    assert_eq!(res.headers()["etag"], "\"2\"");
}

async fn numbers_round_trip_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = r#"{"result":{"n":9007199254740993,"f":0.1,"e":1e400,"neg":-0.0,"big":123456789012345678901234567890,"s":"é\u0000"},"metadata":{"bookId":18446744073709551615,"ratio":3.141592653589793238}}"#;
    let res = app
        .client
        .put(app.url("/progress/nums"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let text = app.get("nums").await.text().await.unwrap();
    for literal in [
        r#""n":9007199254740993"#,
        r#""f":0.1"#,
        // serde_json writes exponents with a sign: same number, normalized text.
        r#""e":1e+400"#,
        r#""big":123456789012345678901234567890"#,
        r#""bookId":18446744073709551615"#,
        r#""ratio":3.141592653589793238"#,
    ] {
        assert!(text.contains(literal), "{literal} in {text}");
    }
    // A PATCH elsewhere leaves them untouched.
    let res = app.patch("nums", &json!({"message": "m"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(text.contains(r#""n":9007199254740993"#) && text.contains(r#""ratio":3.141592653589793238"#), "{text}");
}

async fn patch_merges_and_null_removes(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok(
        "p",
        &json!({"status": "running", "message": "m", "stage": "S", "metadata": {"a": 1, "b": {"c": 2, "d": 3}}}),
    )
    .await;
    let res = app
        .client
        .patch(app.url("/progress/p"))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"message": null, "metadata": {"a": null, "b": {"c": 5}, "e": true}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let r: Value = res.json().await.unwrap();
    assert_eq!(r["message"], Value::Null);
    assert_eq!(r["stage"], "S", "untouched fields stay");
    assert_eq!(r["metadata"], json!({"b": {"c": 5, "d": 3}, "e": true}));
    assert_eq!(r["version"], 2);
    assert_eq!(r["status"], "running");
}

async fn children_merge_per_child_and_drive_progress(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("c", &json!({"status": "running", "children": {"ch1": {"title": "One", "progress": 100}}})).await;
    let r =
        app.patch_ok("c", &json!({"children": {"ch2": {"title": "Two", "current": 1, "total": 4, "weight": 2}}})).await;
    assert_eq!(r["children"]["ch1"], json!({"title": "One", "progress": 100}));
    assert_eq!(r["children"]["ch2"]["current"], 1);
    // (100·1 + 25·2) / 3 = 50
    assert_eq!(r["progress"], 50);
    let r = app.patch_ok("c", &json!({"children": {"ch2": {"current": 4}}})).await;
    assert_eq!(r["children"]["ch2"]["title"], "Two", "a child merges field by field");
    assert_eq!(r["progress"], 100);
    let r = app.patch_ok("c", &json!({"children": {"ch1": null}})).await;
    assert_eq!(r["children"].as_object().unwrap().len(), 1);
}

async fn progress_derives_from_counters(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.put_ok("n", &json!({"status": "running", "current": 2, "total": 10})).await;
    assert_eq!(r["progress"], 20);
    let r = app.patch_ok("n", &json!({"current": 1, "total": 3})).await;
    assert_eq!(r["progress"], 33.33);
    let r = app.patch_ok("n", &json!({"total": 0})).await;
    assert_eq!(r["progress"], 33.33, "a zero total does not divide; the last value stays");
    let r = app.patch_ok("n", &json!({"progress": 70})).await;
    assert_eq!(r["progress"], 70, "an explicit value wins");
    let r = app.patch_ok("n", &json!({"status": "completed"})).await;
    assert_eq!(r["progress"], 100, "completing fills the bar");
}

async fn stages_are_kept_with_durations(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("s", &json!({"status": "running", "stage": "RESEARCH"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    app.patch_ok("s", &json!({"stage": "CHAPTERS"})).await;
    app.patch_ok("s", &json!({"message": "same stage"})).await;
    let r = app.patch_ok("s", &json!({"status": "completed"})).await;
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["name"], "RESEARCH");
    assert!(stages[0]["duration_ms"].as_i64().unwrap() >= 30, "{}", stages[0]);
    assert_eq!(stages[1]["name"], "CHAPTERS");
    assert!(stages[1]["finished_at"].is_string(), "a terminal status closes the open stage");
}

async fn lifecycle_timestamps_and_eta(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.put_ok("l", &json!({"status": "pending"})).await;
    assert_eq!(r["started_at"], Value::Null);
    assert_eq!(r["eta"], Value::Null);
    let r = app.patch_ok("l", &json!({"status": "running", "progress": 10})).await;
    assert!(r["started_at"].is_string());
    assert_eq!(r["eta"], Value::Null, "one point gives no rate");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = app.patch_ok("l", &json!({"progress": 50})).await;
    let eta = chrono::DateTime::parse_from_rfc3339(r["eta"].as_str().expect("two points give an eta")).unwrap();
    let updated = chrono::DateTime::parse_from_rfc3339(r["updated_at"].as_str().unwrap()).unwrap();
    assert!(eta > updated);
    let r = app.patch_ok("l", &json!({"status": "failed", "error": {"reason": "disk"}})).await;
    assert!(r["completed_at"].is_string());
    assert_eq!(r["eta"], Value::Null);
    assert_eq!(r["error"]["reason"], "disk");
    let expires = chrono::DateTime::parse_from_rfc3339(r["expires_at"].as_str().unwrap()).unwrap();
    let updated = chrono::DateTime::parse_from_rfc3339(r["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - updated).num_seconds(), 86400);
}

async fn delete_removes_the_record(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("d", &json!({})).await;
    let res = app.send(Method::DELETE, "/progress/d", None, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    common::assert_problem(app.get("d").await, 410, "gone").await;
    let res = app.send(Method::DELETE, "/progress/d", None, &[]).await;
    common::assert_problem(res, 410, "gone").await;
    let res = app.put("d", &json!({})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "a deleted id can be created again");
}

async fn patch_of_a_missing_record_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    common::assert_problem(app.patch("ghost", &json!({"message": "x"})).await, 404, "not_found").await;
}

#[tokio::test]
async fn healthz_answers() {
    let app = spawn_app(Backend::Memory).await;
    let res = app.send(Method::GET, "/healthz", None, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

async fn a_quiet_running_record_is_stalled(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.heartbeat_seconds = 1).await;
    app.put_ok("quiet", &json!({"status": "running"})).await;
    app.put_ok("waiting", &json!({"status": "pending"})).await;
    assert_eq!(app.get_ok("quiet").await["stalled"], false);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(app.get_ok("quiet").await["stalled"], true, "no write for longer than the heartbeat");
    assert_eq!(app.get_ok("waiting").await["stalled"], false, "only running records stall");
    let r = app.patch_ok("quiet", &json!({"message": "heartbeat"})).await;
    assert_eq!(r["stalled"], false, "a write is a heartbeat");
}

/// Once a record has stalled its estimate is stale: `eta` is null in a GET,
/// a long-poll, the listing and the event stream, and comes back with the
/// next write.
async fn a_stalled_record_has_no_eta_wherever_it_is_read(backend: Backend) {
    use common::sse::EventStream;
    let app = spawn_app_with(backend, |s| s.heartbeat_seconds = 1).await;
    app.put_ok("late", &json!({"status": "running", "progress": 10})).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let written = app.patch_ok("late", &json!({"progress": 20})).await;
    assert!(written["eta"].is_string(), "two samples make an estimate: {written}");
    assert_eq!(app.get_ok("late").await["eta"], written["eta"]);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let read = app.get_ok("late").await;
    assert_eq!((&read["stalled"], &read["eta"]), (&json!(true), &Value::Null), "GET: {read}");
    let res = app.send(Method::GET, "/progress/late?wait=5", None, &[("if-none-match", "\"1\"")]).await;
    let polled: Value = res.json().await.unwrap();
    assert_eq!((&polled["stalled"], &polled["eta"]), (&json!(true), &Value::Null), "long-poll: {polled}");
    let page: Value = app.send(Method::GET, "/progress", None, &[]).await.json().await.unwrap();
    let listed = page["items"].as_array().unwrap().iter().find(|r| r["id"] == "late").unwrap();
    assert_eq!((&listed["stalled"], &listed["eta"]), (&json!(true), &Value::Null), "listing: {listed}");
    let (status, stream) = EventStream::open(&app.client, &app.url("/progress/late/events"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let event = stream.unwrap().expect_event(std::time::Duration::from_secs(2)).await.json();
    assert_eq!((&event["stalled"], &event["eta"]), (&json!(true), &Value::Null), "event: {event}");
    // Everything else is as written.
    let mut expected = written.clone();
    expected["eta"] = Value::Null;
    expected["stalled"] = json!(true);
    assert_eq!(read, expected);

    let resumed = app.patch_ok("late", &json!({"progress": 30})).await;
    assert_eq!((&resumed["stalled"], resumed["eta"].is_string()), (&json!(false), true), "{resumed}");
}
