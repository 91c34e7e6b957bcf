//! Issue 21, cancellation: `POST /progress/{id}/cancel` records a request
//! (`cancel_requested_at`, `cancel_reason`) that the worker sees in the
//! response to its next write and acknowledges with `status: cancelled`;
//! idempotent; 409 on a finished record, 404 unknown, 410 gone; a scoped
//! token with the `cancel` claim cancels its own jobs and nothing else;
//! `GET /access` says what a token may do. Against the real router, on the
//! embedded store, Redis, and Redis over PostgreSQL.

mod common;

use std::time::Duration;

use common::postgres::TestDatabase;
use common::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use progressd::tokens::now_seconds;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

on_both_stores!(
    a_request_is_recorded_seen_by_the_next_write_and_acknowledged,
    a_second_request_keeps_the_first_time_and_reason,
    finished_unknown_and_gone_records_are_refused,
    bad_bodies_are_4xx_naming_the_member,
    a_long_poll_wakes_on_the_request,
);

const WRITE: &str = "cancel-write-token";
const READ: &str = "cancel-read-token";
const ADMIN: &str = "cancel-admin-token";
const KEY: &str = "k1:cancel-test-signing-key-0123456789abcdef";

async fn cancel(app: &TestApp, id: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Response {
    app.send(Method::POST, &format!("/progress/{id}/cancel"), body, headers).await
}

/// The record of a 202, with its ETag checked against its version.
async fn accepted(res: Response) -> Value {
    let status = res.status();
    let etag = res.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(etag, Some(format!("\"{}\"", record["version"])), "the ETag is the version");
    record
}

async fn a_request_is_recorded_seen_by_the_next_write_and_acknowledged(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.put_ok("job", &json!({"status": "running", "current": 1, "total": 10, "stage": "A"})).await;
    // Before a request, the fields are there, null, in every answer.
    assert_eq!((&created["cancel_requested_at"], &created["cancel_reason"]), (&Value::Null, &Value::Null));
    let read = app.get_ok("job").await;
    assert!(read.as_object().unwrap().contains_key("cancel_requested_at"), "{read}");

    let requested = accepted(cancel(&app, "job", Some(&json!({"reason": "user asked"})), &[]).await).await;
    let at = requested["cancel_requested_at"].as_str().expect("a time").to_owned();
    assert!(at.ends_with('Z') && at.len() == 24, "RFC 3339 with milliseconds: {at}");
    assert_eq!(requested["cancel_reason"], "user asked");
    assert_eq!(requested["version"], 2, "a write: version + 1");
    assert_eq!(requested["updated_at"], at, "a write: updated_at is the request's time");
    assert_eq!((requested["status"].as_str(), requested["progress"].as_i64()), (Some("running"), Some(10)));
    assert_eq!(requested["stage"], "A", "the client fields are untouched");
    assert_eq!(app.get_ok("job").await, requested, "GET shows it");

    // The worker only writes: its next PATCH's response carries the request…
    let patched = app.patch_ok("job", &json!({"current": 2})).await;
    assert_eq!(
        (patched["cancel_requested_at"].as_str(), patched["cancel_reason"].as_str()),
        (Some(&*at), Some("user asked"))
    );
    assert_eq!(patched["version"], 3);
    // …and so does a PUT, which replaces the client fields only.
    let put = app.put_ok("job", &json!({"status": "running", "message": "replaced"})).await;
    assert_eq!((put["cancel_requested_at"].as_str(), put["cancel_reason"].as_str()), (Some(&*at), Some("user asked")));
    // It acknowledges: terminal, with the request still on record.
    let done = app.patch_ok("job", &json!({"status": "cancelled"})).await;
    assert_eq!((done["status"].as_str(), done["cancel_requested_at"].as_str()), (Some("cancelled"), Some(&*at)));
    assert!(done["completed_at"].is_string());
    assert_eq!(app.get_ok("job").await, done);

    // A new incarnation starts without a request.
    assert_eq!(app.send(Method::DELETE, "/progress/job", None, &[]).await.status(), StatusCode::NO_CONTENT);
    let again = app.put_ok("job", &json!({"status": "running"})).await;
    assert_eq!((&again["cancel_requested_at"], &again["cancel_reason"]), (&Value::Null, &Value::Null));

    // No body, no Content-Type (curl -X POST): no reason.
    let bare = app.client.post(app.url("/progress/job/cancel")).send().await.unwrap();
    let bare = accepted(bare).await;
    assert!(bare["cancel_requested_at"].is_string() && bare["cancel_reason"].is_null(), "{bare}");
    // An empty body with a form Content-Type (curl -d ''), `{}`, `{"reason": null}`: accepted too.
    app.put_ok("job2", &json!({"status": "pending"})).await;
    let form = app
        .client
        .post(app.url("/progress/job2/cancel"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert!(accepted(form).await["cancel_reason"].is_null());
    for (i, body) in [json!({}), json!({"reason": null})].iter().enumerate() {
        let id = format!("job-{i}");
        app.put_ok(&id, &json!({"status": "pending"})).await;
        let record = accepted(cancel(&app, &id, Some(body), &[]).await).await;
        assert!(record["cancel_requested_at"].is_string() && record["cancel_reason"].is_null(), "{body}");
    }
}

async fn a_second_request_keeps_the_first_time_and_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let first = accepted(cancel(&app, "job", Some(&json!({"reason": "first"})), &[]).await).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = accepted(cancel(&app, "job", Some(&json!({"reason": "second"})), &[]).await).await;
    assert_eq!(second, first, "nothing written: the same record, version, time and reason");
    assert_eq!(app.get_ok("job").await["version"], 2);
    // A request during the worker's writes: still the first.
    app.patch_ok("job", &json!({"progress": 50})).await;
    let third = accepted(cancel(&app, "job", None, &[]).await).await;
    assert_eq!(
        (&third["cancel_requested_at"], &third["cancel_reason"]),
        (&first["cancel_requested_at"], &json!("first"))
    );
    assert_eq!(third["version"], 3, "the worker's write, no more");
}

async fn finished_unknown_and_gone_records_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    for status in ["completed", "failed", "cancelled"] {
        let id = format!("done-{status}");
        let record = app.put_ok(&id, &json!({ "status": status })).await;
        let problem = assert_problem(cancel(&app, &id, None, &[]).await, 409, "conflict_terminal").await;
        assert_eq!(problem["current_version"], record["version"]);
        assert_eq!(app.get_ok(&id).await, record, "nothing changed");
    }
    assert_problem(cancel(&app, "never-was", None, &[]).await, 404, "not_found").await;
    app.put_ok("deleted", &json!({"status": "running"})).await;
    assert_eq!(app.send(Method::DELETE, "/progress/deleted", None, &[]).await.status(), StatusCode::NO_CONTENT);
    let gone = assert_problem(cancel(&app, "deleted", None, &[]).await, 410, "gone").await;
    assert_eq!(gone["reason"], "deleted");
    assert_problem(cancel(&app, "bad%20id", None, &[]).await, 400, "invalid_id").await;
    // Only POST.
    let res = app.send(Method::GET, "/progress/deleted/cancel", None, &[]).await;
    assert_problem(res, 405, "method_not_allowed").await;
}

async fn bad_bodies_are_4xx_naming_the_member(backend: Backend) {
    let app = spawn_app(backend).await;
    let record = app.put_ok("job", &json!({"status": "running"})).await;
    let too_long = "x".repeat(2001);
    let cases: &[(Value, &str)] = &[
        (json!({"reason": 42}), "reason"),
        (json!({"reason": {"why": "x"}}), "reason"),
        (json!({"reason": too_long}), "reason"),
        (json!({"reason": "x", "force": true}), "force"),
        (json!({"cancel_requested_at": "2026-01-01T00:00:00Z"}), "cancel_requested_at"),
        (json!("stop"), ""),
        (json!(["stop"]), ""),
        (json!(null), ""),
    ];
    for (body, field) in cases {
        let problem = assert_problem(cancel(&app, "job", Some(body), &[]).await, 422, "validation_failed").await;
        assert_eq!(problem["field"], *field, "{body}");
    }
    let raw = |content_type: &'static str, body: &'static str| {
        app.client.post(app.url("/progress/job/cancel")).header("content-type", content_type).body(body).send()
    };
    assert_problem(raw("application/json", "{\"reason\": ").await.unwrap(), 400, "invalid_body").await;
    assert_problem(raw("text/plain", "stop it").await.unwrap(), 415, "unsupported_media_type").await;
    // The 413 is answered before the body is read and the connection closed:
    // a client of its own, so that the shared one's pooled connection is not it.
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(70_000));
    let own = reqwest::Client::new();
    let res = own.post(app.url("/progress/job/cancel")).header("content-type", "application/json").body(big);
    assert_problem(res.send().await.unwrap(), 413, "payload_too_large").await;
    // A client field is not the way to cancel either: the PUT/PATCH rules stand.
    let res = app.patch("job", &json!({"cancel_reason": "x"})).await;
    assert_eq!(assert_problem(res, 422, "validation_failed").await["field"], "cancel_reason");
    assert_eq!(app.get_ok("job").await, record, "no refused request changed anything");
}

async fn a_long_poll_wakes_on_the_request(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let poll = app.client.get(app.url("/progress/job?wait=20")).header("if-none-match", "\"1\"").send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    accepted(cancel(&app, "job", None, &[]).await).await;
    let res = tokio::time::timeout(Duration::from_secs(10), poll).await.unwrap().unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the request, not by the timeout");
    let record: Value = res.json().await.unwrap();
    assert!(record["cancel_requested_at"].is_string(), "{record}");
}

/// A worker that keeps writing progress but never acknowledges is
/// `stalled` one heartbeat after the request; the request itself is not a
/// sign of life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_request_stalls_the_record_even_while_the_worker_writes() {
    let app = spawn_app_with(Backend::Memory, |s| s.heartbeat_seconds = 1).await;
    app.put_ok("job", &json!({"status": "running", "progress": 1})).await;
    let requested = accepted(cancel(&app, "job", None, &[]).await).await;
    assert_eq!(requested["stalled"], false);
    let mut last = Value::Null;
    for n in 2..=8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = app.patch_ok("job", &json!({ "progress": n })).await;
    }
    // 1.75 s after the request, written 0 s ago: stalled all the same.
    assert_eq!(last["stalled"], true, "{last}");
    assert_eq!(app.get_ok("job").await["stalled"], true);
    // Acknowledged: finished records never stall.
    assert_eq!(app.patch_ok("job", &json!({"status": "cancelled"})).await["stalled"], false);
    // Without a request, the same writes keep a record fresh.
    app.put_ok("fresh", &json!({"status": "running", "progress": 1})).await;
    for n in 2..=8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = app.patch_ok("fresh", &json!({ "progress": n })).await;
    }
    assert_eq!(last["stalled"], false);
}

/// The fields go through PostgreSQL and back: flushed, then read from
/// PostgreSQL alone (no Redis), as a restart after losing Redis would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_is_persisted_and_read_back_from_postgres() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let app = spawn_app_with(Backend::Redis, |s| {
        s.database_url = Some(url.clone());
        s.persist_interval_seconds = 1;
    })
    .await;
    app.put_ok("job", &json!({"status": "running"})).await;
    let requested = accepted(cancel(&app, "job", Some(&json!({"reason": "über \"quoted\" \n"})), &[]).await).await;
    let mut stored = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pg = spawn_app_with(Backend::Memory, |s| s.database_url = Some(url.clone())).await;
        stored = pg.get_ok("job").await;
        pg.stop().await;
        if stored["version"] == requested["version"] {
            break;
        }
    }
    assert_eq!(stored, requested, "the write-behind flushed the request, byte for byte");
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Who may cancel

async fn secured() -> TestApp {
    spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec![READ.into()];
        s.write_tokens = vec![WRITE.into()];
        s.admin_token = Some(ADMIN.into());
        s.signing_keys = vec![KEY.into()];
    })
    .await
}

fn jwt(claims: Value) -> String {
    let (kid, secret) = KEY.split_once(':').unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_admin_tokens_and_scoped_tokens_with_the_claim_may_cancel() {
    let app = secured().await;
    let auth = bearer(WRITE);
    for id in ["user-7:a", "user-7:b", "user-7:c", "user-8:x", "w", "adm"] {
        let res = app
            .send(
                Method::PUT,
                &format!("/progress/{id}"),
                Some(&json!({"status": "running"})),
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{id}");
    }
    let exp = now_seconds() + 600;
    let own = jwt(json!({"sub": "user-7:a", "exp": exp, "cancel": true}));
    let reader = jwt(json!({"sub": "user-7:b", "exp": exp}));
    let prefix = jwt(json!({"prefix": "user-7:", "exp": exp, "cancel": true}));

    // Static tokens: write and admin yes, read no, none no.
    accepted(cancel(&app, "w", None, &[("authorization", &bearer(WRITE))]).await).await;
    accepted(cancel(&app, "adm", None, &[("authorization", &bearer(ADMIN))]).await).await;
    assert_problem(cancel(&app, "user-7:c", None, &[("authorization", &bearer(READ))]).await, 401, "unauthorized")
        .await;
    assert_problem(cancel(&app, "user-7:c", None, &[]).await, 401, "unauthorized").await;

    // A one-id token with the claim: its own job, in the header or the query.
    let record =
        accepted(cancel(&app, "user-7:a", Some(&json!({"reason": "mine"})), &[("authorization", &bearer(&own))]).await)
            .await;
    assert_eq!(record["cancel_reason"], "mine");
    let res = app.send(Method::POST, &format!("/progress/user-7:a/cancel?access_token={own}"), None, &[]).await;
    accepted(res).await;
    // …and nothing else: another id, a write, a delete.
    let refused = assert_problem(
        cancel(&app, "user-7:c", None, &[("authorization", &bearer(&own))]).await,
        403,
        "forbidden_scope",
    )
    .await;
    assert_eq!(refused["detail"], "the token does not grant this id");
    let res = app
        .send(
            Method::PATCH,
            "/progress/user-7:a",
            Some(&json!({"status": "cancelled"})),
            &[("authorization", &bearer(&own))],
        )
        .await;
    assert_problem(res, 403, "forbidden_scope").await;
    let res = app.send(Method::DELETE, "/progress/user-7:a", None, &[("authorization", &bearer(&own))]).await;
    assert_problem(res, 403, "forbidden_scope").await;
    // Without the claim: its own job neither, with a detail that says why.
    let refused = assert_problem(
        cancel(&app, "user-7:b", None, &[("authorization", &bearer(&reader))]).await,
        403,
        "forbidden_scope",
    )
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("\"cancel\": true"), "{refused}");
    assert_eq!(
        app.send(Method::GET, "/progress/user-7:b", None, &[("authorization", &bearer(&reader))]).await.status(),
        StatusCode::OK,
        "it still reads"
    );
    // A prefix token with the claim: inside its prefix only.
    accepted(cancel(&app, "user-7:c", None, &[("authorization", &bearer(&prefix))]).await).await;
    assert_problem(
        cancel(&app, "user-8:x", None, &[("authorization", &bearer(&prefix))]).await,
        403,
        "forbidden_scope",
    )
    .await;
    // An expired or forged token is a 401.
    let expired = jwt(json!({"sub": "user-7:b", "exp": now_seconds() - 60, "cancel": true}));
    assert_problem(cancel(&app, "user-7:b", None, &[("authorization", &bearer(&expired))]).await, 401, "unauthorized")
        .await;
    let unchanged = app.send(Method::GET, "/progress/user-7:b", None, &[("authorization", &bearer(READ))]).await;
    assert!(unchanged.json::<Value>().await.unwrap()["cancel_requested_at"].is_null(), "no refused request wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_tokens_and_the_command_line_mint_the_claim() {
    let app = secured().await;
    let auth = bearer(WRITE);
    let write = [("authorization", auth.as_str())];
    app.send(Method::PUT, "/progress/book-42", Some(&json!({"status": "running"})), &write).await;
    let res = app.send(Method::POST, "/tokens", Some(&json!({"id": "book-42", "cancel": true})), &write).await;
    assert_eq!(res.status(), StatusCode::OK);
    let token = res.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    accepted(cancel(&app, "book-42", None, &[("authorization", &bearer(&token))]).await).await;
    let res = app.send(Method::POST, "/tokens", Some(&json!({"id": "book-42", "cancel": "yes"})), &write).await;
    assert_eq!(assert_problem(res, 422, "validation_failed").await["field"], "cancel");
    // The plain token minted without it reads and does not cancel.
    let res = app.send(Method::POST, "/tokens", Some(&json!({"id": "book-42"})), &write).await;
    let plain = res.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    assert_problem(cancel(&app, "book-42", None, &[("authorization", &bearer(&plain))]).await, 403, "forbidden_scope")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_access_says_what_a_token_may_do() {
    let app = secured().await;
    let access = |auth: Option<String>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let res = app.send(Method::GET, "/access", None, &headers).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["cache-control"], "no-store");
            res.json::<Value>().await.unwrap()
        }
    };
    let row = |v: &Value| {
        (
            v["token"].as_str().unwrap().to_owned(),
            [&v["read"], &v["list"], &v["write"], &v["cancel"], &v["admin"]].map(|b| b.as_bool().unwrap()),
        )
    };
    let exp = now_seconds() + 600;
    assert_eq!(row(&access(None).await), ("none".into(), [false; 5]));
    assert_eq!(row(&access(Some(bearer(READ))).await), ("static".into(), [true, true, false, false, false]));
    assert_eq!(row(&access(Some(bearer(WRITE))).await), ("static".into(), [true, false, true, true, false]));
    assert_eq!(row(&access(Some(bearer(ADMIN))).await), ("static".into(), [true; 5]));
    assert_eq!(row(&access(Some(bearer("wrong"))).await), ("unknown".into(), [false; 5]));
    let canceller = access(Some(bearer(&jwt(json!({"sub": "book-42", "exp": exp, "cancel": true}))))).await;
    assert_eq!(row(&canceller), ("scoped".into(), [true, false, false, true, false]));
    assert_eq!(canceller["scope"], json!({"id": "book-42"}));
    let reader = access(Some(bearer(&jwt(json!({"prefix": "user-7:", "exp": exp}))))).await;
    assert_eq!(row(&reader), ("scoped".into(), [true, true, false, false, false]));
    assert_eq!(reader["scope"], json!({"prefix": "user-7:"}));
    let expired = access(Some(bearer(&jwt(json!({"sub": "a", "exp": exp - 1200}))))).await;
    assert_eq!(
        (expired["token"].as_str(), expired["reason"].as_str()),
        (Some("invalid"), Some("the token has expired"))
    );
    // In the query, as EventSource pages send scoped tokens.
    let token = jwt(json!({"sub": "book-42", "exp": exp, "cancel": true}));
    let res = app.send(Method::GET, &format!("/access?access_token={token}"), None, &[]).await;
    assert_eq!(res.json::<Value>().await.unwrap()["cancel"], true);
    // With no tokens configured, anyone may cancel (as anyone may write).
    let open = spawn_app(Backend::Memory).await;
    let res = open.send(Method::GET, "/access", None, &[]).await;
    let everything = res.json::<Value>().await.unwrap();
    assert_eq!(row(&everything), ("none".into(), [true, true, true, true, false]));
}
