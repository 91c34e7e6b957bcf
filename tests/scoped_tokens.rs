//! Issue 19, scoped read tokens: HS256 JWTs under PROGRESS_SIGNING_KEYS,
//! minted by POST /tokens, `progressd token` or any JWT library; sent as a
//! bearer token or `?access_token=`; reads inside their scope only.

mod common;

use std::time::{Duration, Instant};

use common::binary::{free_port, progressd, terminate, wait_ready};
use common::spawned::Running;
use common::sse::EventStream;
use common::{Backend, TestApp, assert_problem, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use progressd::http::Access;
use progressd::tokens::{Scope, SigningKeys, now_seconds};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

const READ: &str = "read-token-77aa";
const WRITE: &str = "write-token-88bb";
const ADMIN: &str = "admin-token-99cc";
const NEW: &str = "new:scoped-key-new-0123456789abcdefghijkl";
const OLD: &str = "old:scoped-key-old-0123456789abcdefghijkl";

fn secret(entry: &str) -> &str {
    entry.split_once(':').unwrap().1
}

async fn app_with(keys: &[&str], tweak: impl FnOnce(&mut progressd::Settings)) -> TestApp {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    spawn_app_with(Backend::Memory, |s| {
        s.read_tokens = vec![READ.into()];
        s.write_tokens = vec![WRITE.into()];
        s.admin_token = Some(ADMIN.into());
        s.signing_keys = keys;
        tweak(s);
    })
    .await
}

async fn secured() -> TestApp {
    app_with(&[NEW, OLD], |_| {}).await
}

/// A token signed with `secret` under `kid`, with these claims.
fn sign(kid: Option<&str>, claims: &Value, secret: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn in_ten_minutes() -> u64 {
    now_seconds() + 600
}

fn for_id(id: &str) -> String {
    sign(Some("new"), &json!({"sub": id, "exp": in_ten_minutes()}), secret(NEW))
}

fn for_prefix(prefix: &str) -> String {
    sign(Some("new"), &json!({"prefix": prefix, "exp": in_ten_minutes()}), secret(NEW))
}

async fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    let body = match method {
        Method::PUT | Method::PATCH => Some(json!({"status": "running"})),
        Method::POST => Some(json!({"id": "book-42"})),
        _ => None,
    };
    app.send(method, path, body.as_ref(), &headers).await
}

async fn get(app: &TestApp, path: &str, token: &str) -> Response {
    call(app, Method::GET, path, Some(token)).await
}

/// A 401 for a presented token, with the RFC 6750 challenge and a reason.
async fn assert_invalid_token(res: Response, reason: &str) {
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let doc = assert_problem(res, 401, "unauthorized").await;
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="progressd", error="invalid_token""#), "{doc}");
    assert!(doc["detail"].as_str().unwrap().contains(reason), "{reason}: {doc}");
}

async fn seed(app: &TestApp, ids: &[&str]) {
    for id in ids {
        let res = call(app, Method::PUT, &format!("/progress/{id}"), Some(WRITE)).await;
        assert_eq!(res.status(), StatusCode::CREATED, "PUT {id}");
    }
}

#[tokio::test]
async fn an_id_token_reads_its_id_and_nothing_else() {
    let app = secured().await;
    seed(&app, &["book-4", "book-42"]).await;
    let token = for_id("book-4");
    assert_eq!(get(&app, "/progress/book-4", &token).await.status(), StatusCode::OK);
    let doc = assert_problem(get(&app, "/progress/book-42", &token).await, 403, "forbidden_scope").await;
    assert!(!doc.to_string().contains(&token), "{doc}");
    assert_problem(get(&app, "/progress/book-", &token).await, 403, "forbidden_scope").await;
    assert_problem(get(&app, "/progress", &token).await, 403, "forbidden_scope").await;
    // An id it does not cover that is not even a valid id: still 403, nothing about the id.
    assert_problem(get(&app, "/progress/a%20b", &token).await, 403, "forbidden_scope").await;
    // Static tokens are unchanged beside it.
    assert_eq!(get(&app, "/progress/book-42", READ).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_prefix_token_reads_and_lists_inside_its_prefix() {
    let app = secured().await;
    seed(&app, &["user-7", "user-7:", "user-7:a", "user-7:b", "user-70:x", "user-8:a"]).await;
    let token = for_prefix("user-7:");
    for inside in ["user-7:", "user-7:a", "user-7:b"] {
        assert_eq!(get(&app, &format!("/progress/{inside}"), &token).await.status(), StatusCode::OK, "{inside}");
    }
    for outside in ["user-7", "user-70:x", "user-8:a"] {
        assert_problem(get(&app, &format!("/progress/{outside}"), &token).await, 403, "forbidden_scope").await;
    }
    let listed = |res: Value| -> Vec<String> {
        let mut ids: Vec<String> =
            res["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let res = get(&app, "/progress", &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(listed(res.json().await.unwrap()), ["user-7:", "user-7:a", "user-7:b"]);
    let res = get(&app, "/progress?prefix=user-7:a", &token).await;
    assert_eq!(listed(res.json().await.unwrap()), ["user-7:a"]);
    for outside in ["user-7", "user-", "user-70:", "user-8:"] {
        let res = get(&app, &format!("/progress?prefix={outside}"), &token).await;
        assert_problem(res, 403, "forbidden_scope").await;
    }
}

#[tokio::test]
async fn a_scoped_token_never_writes_mints_or_reaches_admin() {
    let app = secured().await;
    seed(&app, &["user-7:a"]).await;
    let closed: Vec<_> = progressd::http::routes()
        .into_iter()
        .filter(|r| matches!(r.access, Access::Write | Access::Admin | Access::Cancel))
        .collect();
    assert!(closed.iter().any(|r| r.path == "/tokens"), "POST /tokens is a write");
    // Without the cancel claim, a scoped token cannot ask for a cancellation either.
    assert!(closed.iter().any(|r| r.access == Access::Cancel));
    for token in [for_id("user-7:a"), for_prefix("user-7:")] {
        for route in &closed {
            let path = route.path.replace("{id}", "user-7:a");
            let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
            let res = call(&app, method.clone(), &path, Some(&token)).await;
            assert_problem(res, 403, "forbidden_scope").await;
            let res = call(&app, method, &format!("{path}?access_token={token}"), None).await;
            assert_problem(res, 403, "forbidden_scope").await;
        }
    }
    assert_eq!(get_ok_as(&app, "user-7:a", READ).await["status"], "running", "nothing was written");
}

#[tokio::test]
async fn forged_none_expired_and_premature_tokens_are_401_invalid_token() {
    let app = secured().await;
    seed(&app, &["a"]).await;
    let exp = in_ten_minutes();
    let forged = sign(Some("new"), &json!({"sub": "a", "exp": exp}), "not-the-key-but-32-bytes-long-or-more");
    assert_invalid_token(get(&app, "/progress/a", &forged).await, "signature").await;
    // A real token's signature over a widened payload.
    let good = for_id("a");
    let parts: Vec<&str> = good.split('.').collect();
    let widened = sign(Some("new"), &json!({"prefix": "", "exp": exp}), "x".repeat(32).as_str());
    let widened_payload = widened.split('.').nth(1).unwrap();
    let spliced = format!("{}.{widened_payload}.{}", parts[0], parts[2]);
    assert_invalid_token(get(&app, "/progress/a", &spliced).await, "").await;
    // alg: none, unsigned.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert_invalid_token(get(&app, "/progress/a", &none).await, "").await;
    let expired = sign(Some("new"), &json!({"sub": "a", "exp": now_seconds() - 30}), secret(NEW));
    assert_invalid_token(get(&app, "/progress/a", &expired).await, "expired").await;
    let premature = sign(Some("new"), &json!({"sub": "a", "exp": exp, "nbf": now_seconds() + 300}), secret(NEW));
    assert_invalid_token(get(&app, "/progress/a", &premature).await, "not valid yet").await;
    let unknown_kid = sign(Some("gone"), &json!({"sub": "a", "exp": exp}), secret(NEW));
    assert_invalid_token(get(&app, "/progress/a", &unknown_kid).await, "kid").await;
    // The same answers through the query parameter.
    let res = call(&app, Method::GET, &format!("/progress/a?access_token={expired}"), None).await;
    assert_invalid_token(res, "expired").await;
}

#[tokio::test]
async fn rotation_an_old_key_verifies_while_it_is_listed() {
    let exp = in_ten_minutes();
    let by_old = sign(Some("old"), &json!({"sub": "a", "exp": exp}), secret(OLD));
    let by_old_no_kid = sign(None, &json!({"sub": "a", "exp": exp}), secret(OLD));
    let both = app_with(&[NEW, OLD], |_| {}).await;
    seed(&both, &["a"]).await;
    assert_eq!(get(&both, "/progress/a", &by_old).await.status(), StatusCode::OK);
    assert_eq!(get(&both, "/progress/a", &by_old_no_kid).await.status(), StatusCode::OK, "no kid: each key");
    // What this instance mints is signed by the first key.
    let minted = mint(&both, &json!({"id": "a"}), WRITE).await;
    let kid = jsonwebtoken::decode_header(minted["token"].as_str().unwrap()).unwrap().kid;
    assert_eq!(kid.as_deref(), Some("new"));
    both.stop().await;

    let rotated = app_with(&[NEW], |_| {}).await;
    seed(&rotated, &["a"]).await;
    assert_invalid_token(get(&rotated, "/progress/a", &by_old).await, "kid").await;
    assert_invalid_token(get(&rotated, "/progress/a", &by_old_no_kid).await, "signature").await;
    assert_eq!(get(&rotated, "/progress/a", minted["token"].as_str().unwrap()).await.status(), StatusCode::OK);
}

async fn mint(app: &TestApp, body: &Value, token: &str) -> Value {
    let res = app.send(Method::POST, "/tokens", Some(body), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(res.status(), StatusCode::OK, "POST /tokens {body}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

#[tokio::test]
async fn post_tokens_mints_what_the_server_accepts() {
    let app = secured().await;
    seed(&app, &["book-42", "book-43"]).await;
    let minted = mint(&app, &json!({"id": "book-42", "ttl_seconds": 3600}), WRITE).await;
    let token = minted["token"].as_str().unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(minted["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires.timestamp() - now_seconds() as i64;
    assert!((3590..=3600).contains(&ttl), "expires in {ttl} s");
    assert_eq!(get(&app, "/progress/book-42", token).await.status(), StatusCode::OK);
    assert_problem(get(&app, "/progress/book-43", token).await, 403, "forbidden_scope").await;
    let by_admin = mint(&app, &json!({"prefix": "book-"}), ADMIN).await;
    assert_eq!(get(&app, "/progress/book-43", by_admin["token"].as_str().unwrap()).await.status(), StatusCode::OK);

    let post = |body: Value, token: &'static str| {
        let app = &app;
        async move { app.send(Method::POST, "/tokens", Some(&body), &[("authorization", &format!("Bearer {token}"))]).await }
    };
    let doc =
        assert_problem(post(json!({"id": "a", "ttl_seconds": 2_592_001}), WRITE).await, 422, "validation_failed").await;
    assert_eq!(doc["field"], "ttl_seconds", "{doc}");
    assert!(doc["detail"].as_str().unwrap().contains("PROGRESS_MAX_TOKEN_TTL_SECONDS"), "{doc}");
    for (body, field) in [
        (json!({"id": "a", "prefix": "a"}), ""),
        (json!({}), ""),
        (json!({"id": "a b"}), "id"),
        (json!({"prefix": "x/"}), "prefix"),
        (json!({"sub": "a"}), "sub"),
    ] {
        let doc = assert_problem(post(body.clone(), WRITE).await, 422, "validation_failed").await;
        assert_eq!(doc["field"], field, "{body}: {doc}");
    }
    assert_eq!(post(json!({"id": "a"}), READ).await.status(), StatusCode::UNAUTHORIZED, "a read token cannot mint");
}

#[tokio::test]
async fn without_signing_keys_post_tokens_says_what_to_set() {
    let app = app_with(&[], |_| {}).await;
    let body = json!({"id": "a"});
    let res = app.send(Method::POST, "/tokens", Some(&body), &[("authorization", "Bearer write-token-88bb")]);
    let doc = assert_problem(res.await, 403, "signing_disabled").await;
    assert!(doc["detail"].as_str().unwrap().contains("PROGRESS_SIGNING_KEYS"), "{doc}");
    // And a JWT is just a wrong token.
    let res = get(&app, "/progress/a", &for_id("a")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scoped_tokens_work_when_reads_are_open() {
    let app = spawn_app_with(Backend::Memory, |s| s.signing_keys = vec![NEW.into()]).await;
    app.put_ok("book-4", &json!({"status": "running"})).await;
    app.put_ok("book-42", &json!({"status": "running"})).await;
    let token = for_id("book-4");
    assert_eq!(get(&app, "/progress/book-4", &token).await.status(), StatusCode::OK);
    assert_problem(get(&app, "/progress/book-42", &token).await, 403, "forbidden_scope").await;
    assert_eq!(app.get("book-42").await.status(), StatusCode::OK, "no token: open as before");
    let prefix = for_prefix("book-4");
    let page: Value = get(&app, "/progress", &prefix).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "book-4 and book-42: {page}");
    let expired = sign(Some("new"), &json!({"sub": "book-4", "exp": now_seconds() - 30}), secret(NEW));
    assert_invalid_token(get(&app, "/progress/book-4", &expired).await, "expired").await;
}

#[tokio::test]
async fn access_token_in_the_query_for_get_long_poll_and_events() {
    let app = secured().await;
    seed(&app, &["job-1"]).await;
    let token = for_id("job-1");
    let res = call(&app, Method::GET, &format!("/progress/job-1?access_token={token}"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let version = res.headers()["etag"].to_str().unwrap().to_owned();
    // Long-poll: held, then answered by a write.
    let url = app.url(&format!("/progress/job-1?wait=5&access_token={token}"));
    let poll = tokio::spawn({
        let client = app.client.clone();
        async move { client.get(url).header("if-none-match", version).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&app, Method::PATCH, "/progress/job-1", Some(WRITE)).await;
    let res = poll.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Events, as EventSource sends them.
    let (status, stream) =
        EventStream::open(&app.client, &app.url(&format!("/progress/job-1/events?access_token={token}")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let event = stream.unwrap().expect_event(Duration::from_secs(5)).await;
    assert_eq!(event.json()["id"], "job-1");
    let (status, _) =
        EventStream::open(&app.client, &app.url(&format!("/progress/job-2/events?access_token={token}")), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Static tokens go in the header only.
    let res = call(&app, Method::GET, &format!("/progress/job-1?access_token={READ}"), None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Routes that refuse unknown parameters take and ignore access_token.
    let prefix = for_prefix("job-");
    let res = call(&app, Method::GET, &format!("/progress?limit=5&access_token={prefix}"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(&app, Method::GET, &format!("/progress?access_token={prefix}"), Some(READ)).await;
    assert_eq!(res.status(), StatusCode::OK, "the header wins, the parameter is ignored");
    let res = call(&app, Method::GET, "/admin/stats?access_token=whatever", Some(ADMIN)).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn reads_with_a_scoped_token_are_rate_limited_per_token() {
    let app = app_with(&[NEW], |s| {
        s.scoped_rate_per_second = 1;
        s.scoped_rate_burst = 3;
    })
    .await;
    seed(&app, &["a", "b"]).await;
    let token = for_id("a");
    for n in 0..3 {
        assert_eq!(get(&app, "/progress/a", &token).await.status(), StatusCode::OK, "request {n}");
    }
    let res = get(&app, "/progress/a", &token).await;
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_problem(res, 429, "rate_limited").await;
    assert_eq!(get(&app, "/progress/b", &for_id("b")).await.status(), StatusCode::OK, "each token has its own");
    for _ in 0..10 {
        assert_eq!(get(&app, "/progress/a", READ).await.status(), StatusCode::OK, "static tokens are not limited");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&app, "/progress/a", &token).await.status(), StatusCode::OK, "refilled");
}

#[tokio::test]
async fn a_token_minted_by_pyjwt_is_accepted() {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/schemathesis-venv/bin/python");
    let has_pyjwt =
        std::process::Command::new(python).args(["-c", "import jwt"]).output().is_ok_and(|o| o.status.success());
    if !has_pyjwt {
        println!("skipped: PyJWT is not installed in target/schemathesis-venv (.ci/run installs it)");
        return;
    }
    let app = secured().await;
    seed(&app, &["book-42", "book-43"]).await;
    let script = "import jwt, sys, time\n\
                  print(jwt.encode({'sub': 'book-42', 'exp': int(time.time()) + 600}, sys.argv[1], \
                  algorithm='HS256', headers={'kid': 'new'}))";
    let out = std::process::Command::new(python).args(["-c", script, secret(NEW)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(get(&app, "/progress/book-42", &token).await.status(), StatusCode::OK);
    assert_problem(get(&app, "/progress/book-43", &token).await, 403, "forbidden_scope").await;
    // And what the server mints, PyJWT verifies.
    let minted = mint(&app, &json!({"prefix": "user-7:"}), WRITE).await;
    let verify = "import jwt, sys\nprint(jwt.decode(sys.argv[1], sys.argv[2], algorithms=['HS256'])['prefix'])";
    let out = std::process::Command::new(python)
        .args(["-c", verify, minted["token"].as_str().unwrap(), secret(NEW)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "user-7:", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_library_and_the_server_agree_on_scopes() {
    let keys = SigningKeys::new(&[NEW.to_owned()]).unwrap().unwrap();
    let (token, _) = keys.mint(&Scope::prefix("p:").unwrap(), 60, now_seconds()).unwrap();
    assert_eq!(keys.verify(&token), Ok(Scope::Prefix("p:".into())));
}

async fn get_ok_as(app: &TestApp, id: &str, token: &str) -> Value {
    let res = get(app, &format!("/progress/{id}"), token).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[test]
fn the_query_token_never_reaches_the_logs() {
    let port = free_port();
    let child = progressd(&[
        ("PORT", &port.to_string()),
        ("RUST_LOG", "trace"),
        ("PROGRESS_READ_TOKENS", READ),
        ("PROGRESS_WRITE_TOKENS", WRITE),
        ("PROGRESS_SIGNING_KEYS", NEW),
    ])
    .spawn()
    .unwrap();
    wait_ready(port);
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let put = client.put(url("/progress/job-1")).bearer_auth(WRITE).header("content-type", "application/json");
    assert_eq!(put.body("{}").send().unwrap().status(), 201);
    let good = for_id("job-1");
    let expired = sign(Some("new"), &json!({"sub": "job-1", "exp": now_seconds() - 30}), secret(NEW));
    let garbage = "eyJnot.a-real.token-5e1f";
    let status =
        |path: String| client.get(url(&path)).header("x-request-id", "scoped-log-check").send().unwrap().status();
    assert_eq!(status(format!("/progress/job-1?access_token={good}")), 200);
    assert_eq!(status(format!("/progress/job-2?access_token={good}")), 403);
    assert_eq!(status(format!("/progress/job-1?access_token={expired}")), 401);
    assert_eq!(status(format!("/progress/job-1?access_token={garbage}")), 401);
    assert_eq!(status(format!("/progress?access_token={good}")), 403);
    assert_eq!(status(format!("/no-such-route?access_token={good}")), 404);
    assert_eq!(status(format!("/progress/job-1?wait=1&access_token={good}")), 200);
    let events = client.get(url(&format!("/progress/job-1/events?access_token={good}"))).send().unwrap();
    assert_eq!(events.status(), 200);
    drop(events);
    let (code, logs) = terminate(child);
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("scoped-log-check"), "the request lines were logged: {logs}");
    assert!(logs.contains("/progress/job-1"), "paths are logged: {logs}");
    for (name, token) in [("good", good.as_str()), ("expired", expired.as_str()), ("garbage", garbage)] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "the {name} token is in the logs:\n{logs}");
    }
    assert!(!logs.contains("access_token="), "{logs}");
}

#[test]
fn progressd_token_mints_offline_with_the_same_keys() {
    let keys = format!("{NEW},{OLD}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = progressd(env).arg("token").args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, token, stderr) = run(&["--id", "book-42", "--ttl", "3600"], &[("PROGRESS_SIGNING_KEYS", &keys)]);
    assert_eq!(code, Some(0), "{stderr}");
    let verified = SigningKeys::new(&[NEW.to_owned()]).unwrap().unwrap().verify(token.trim());
    assert_eq!(verified, Ok(Scope::id("book-42").unwrap()));
    assert!(stderr.contains("expires at"), "{stderr}");
    let (code, token, _) = run(&["--prefix", "user-7:"], &[("PROGRESS_SIGNING_KEYS", &keys)]);
    assert_eq!(code, Some(0));
    assert_eq!(
        SigningKeys::new(&[NEW.to_owned()]).unwrap().unwrap().verify(token.trim()),
        Ok(Scope::prefix("user-7:").unwrap())
    );
    // --cancel: the claim that lets the token ask for its job to stop.
    let (code, token, _) = run(&["--id", "book-42", "--cancel"], &[("PROGRESS_SIGNING_KEYS", &keys)]);
    assert_eq!(code, Some(0));
    let rights = SigningKeys::new(&[NEW.to_owned()]).unwrap().unwrap().verify_rights(token.trim()).unwrap();
    assert_eq!((rights.scope, rights.cancel), (Scope::id("book-42").unwrap(), true));
    let (code, _, stderr) = run(&["--id", "a", "--cancel=yes"], &[("PROGRESS_SIGNING_KEYS", &keys)]);
    assert_eq!(code, Some(2), "--cancel takes no value: {stderr}");
    let (code, _, stderr) = run(&["--id", "a"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("PROGRESS_SIGNING_KEYS"), "{stderr}");
    let (code, _, stderr) = run(
        &["--id", "a", "--ttl", "61"],
        &[("PROGRESS_SIGNING_KEYS", &keys), ("PROGRESS_MAX_TOKEN_TTL_SECONDS", "60")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--ttl") && stderr.contains("PROGRESS_MAX_TOKEN_TTL_SECONDS"), "{stderr}");
    let out = progressd(&[]).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("progressd token --id"), "--help shows the command");
}

#[test]
fn an_open_server_on_a_public_address_says_so_once() {
    let warning = "anyone who can reach this port can read, write and list every job";
    // Its own log says when it listens (connecting to the port could reach
    // another test's server that got the same free port).
    let start = |host: &str, extra: &[(&str, &str)]| {
        let mut env = vec![("PROGRESS_HOST", host)];
        env.extend_from_slice(extra);
        let running = Running::spawn(&env, |_| {});
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.stderr().contains("progressd listening") {
            assert!(Instant::now() < deadline, "progressd did not log that it listens:\n{}", running.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let (code, logs) = running.stop();
        assert_eq!(code, 0, "{logs}");
        logs
    };
    let logs = start("0.0.0.0", &[]);
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(lines[0].contains(r#""level":"WARN""#), "{logs}");
    assert!(!start("127.0.0.1", &[]).contains(warning), "loopback: only this machine can reach it");
    assert!(!start("0.0.0.0", &[("PROGRESS_WRITE_TOKENS", WRITE)]).contains(warning), "a token is set");
}
