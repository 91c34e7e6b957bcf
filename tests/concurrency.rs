//! SPEC §2 concurrency rules: atomic merges, If-Match, and records that
//! do not move backwards once finished.

mod common;

use common::{Backend, assert_problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_stores!(
    fifty_parallel_patches_leave_fifty_children,
    parallel_puts_count_every_version,
    if_match_makes_a_write_conditional,
    a_finished_record_does_not_move_backwards,
    if_none_match_star_makes_put_create_only,
    if_match_makes_a_delete_conditional,
);

async fn fifty_parallel_patches_leave_fifty_children(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("par", &json!({"status": "running"})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = app.client.clone();
        let url = app.url("/progress/par");
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"children": {format!("child-{i}"): {"progress": i * 2}}, "metadata": {format!("k{i}"): i}});
            let res = client
                .patch(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            res.status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let r = app.get_ok("par").await;
    assert_eq!(r["children"].as_object().unwrap().len(), 50);
    assert_eq!(r["metadata"].as_object().unwrap().len(), 50);
    assert_eq!(r["version"], 51, "every accepted write bumped the version once");
}

async fn parallel_puts_count_every_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = app.client.clone();
        let url = app.url("/progress/puts");
        tasks.push(tokio::spawn(async move {
            let res = client
                .put(url)
                .header("content-type", "application/json")
                .body(json!({"message": i.to_string()}).to_string())
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            (status, body["version"].as_u64().unwrap())
        }));
    }
    let mut versions = Vec::new();
    let mut created = 0;
    for task in tasks {
        let (status, version) = task.await.unwrap();
        created += usize::from(status == StatusCode::CREATED);
        versions.push(version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=30).collect::<Vec<_>>(), "each write got its own version");
    assert_eq!(created, 1, "exactly one PUT created the record");
}

async fn if_match_makes_a_write_conditional(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("im", &json!({"status": "running"})).await;
    let res = app.send(Method::PATCH, "/progress/im", Some(&json!({"message": "a"})), &[("if-match", "\"1\"")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.send(Method::PATCH, "/progress/im", Some(&json!({"message": "b"})), &[("if-match", "\"1\"")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    let res =
        app.send(Method::PUT, "/progress/im", Some(&json!({"message": "b"})), &[("if-match", "\"5\", \"2\"")]).await;
    assert_eq!(res.status(), StatusCode::OK, "any listed version may match");
    let res = app.send(Method::PUT, "/progress/im", Some(&json!({})), &[("if-match", "3")]).await;
    assert_eq!(res.status(), StatusCode::OK, "a bare version is accepted");
    let res = app.send(Method::PUT, "/progress/im", Some(&json!({})), &[("if-match", "W/\"4\"")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    let res = app.send(Method::PUT, "/progress/new-one", Some(&json!({})), &[("if-match", "*")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    let res = app.send(Method::PUT, "/progress/im", Some(&json!({})), &[("if-match", "*")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.get_ok("im").await["version"], 5);
}

async fn a_finished_record_does_not_move_backwards(backend: Backend) {
    let app = spawn_app(backend).await;
    for terminal in ["completed", "failed", "cancelled"] {
        let id = format!("fin-{terminal}");
        app.put_ok(&id, &json!({"status": "running"})).await;
        let done = app.patch_ok(&id, &json!({"status": terminal, "result": {"ok": true}})).await;
        let version = done["version"].as_u64().unwrap();
        let path = format!("/progress/{id}");
        let doc = assert_problem(app.patch(&id, &json!({"status": "running"})).await, 409, "conflict_terminal").await;
        assert_eq!(doc["current_version"], version);
        assert_problem(app.put(&id, &json!({"status": "running"})).await, 409, "conflict_terminal").await;
        assert_problem(app.patch(&id, &json!({"message": "late"})).await, 409, "conflict_terminal").await;
        let res = app.send(Method::PATCH, &path, Some(&json!({"status": "running"})), &[("if-match", "*")]).await;
        assert_problem(res, 409, "conflict_terminal").await;
        let stale = (version - 1).to_string();
        let res = app
            .send(Method::PATCH, &path, Some(&json!({"status": "running"})), &[("if-match", &format!("\"{stale}\""))])
            .await;
        assert_problem(res, 412, "precondition_failed").await;
        assert_eq!(app.get_ok(&id).await["status"], terminal, "nothing moved");

        let tag = format!("\"{version}\"");
        let res = app.send(Method::PATCH, &path, Some(&json!({"status": "running"})), &[("if-match", &tag)]).await;
        assert_eq!(res.status(), StatusCode::OK, "a writer that saw it finish may restart it");
        let restarted: Value = res.json().await.unwrap();
        assert_eq!(restarted["status"], "running");
        assert_eq!(restarted["completed_at"], Value::Null);
    }
}

async fn if_none_match_star_makes_put_create_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let res =
        app.send(Method::PUT, "/progress/once", Some(&json!({"message": "first"})), &[("if-none-match", "*")]).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res =
        app.send(Method::PUT, "/progress/once", Some(&json!({"message": "second"})), &[("if-none-match", "*")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    let res = app
        .send(Method::PATCH, "/progress/once", Some(&json!({"message": "third"})), &[("if-none-match", "\"1\"")])
        .await;
    assert_problem(res, 412, "precondition_failed").await;
    assert_eq!(app.get_ok("once").await["message"], "first");
}

async fn if_match_makes_a_delete_conditional(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("del", &json!({})).await;
    app.patch_ok("del", &json!({"message": "v2"})).await;
    let res = app.send(Method::DELETE, "/progress/del", None, &[("if-match", "\"1\"")]).await;
    assert_problem(res, 412, "precondition_failed").await;
    assert_eq!(app.get("del").await.status(), StatusCode::OK, "the stale delete removed nothing");
    let res = app.send(Method::DELETE, "/progress/del", None, &[("if-match", "\"2\"")]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.send(Method::DELETE, "/progress/del", None, &[("if-match", "*")]).await;
    assert_problem(res, 412, "precondition_failed").await;
}
