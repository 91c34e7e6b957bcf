//! SPEC §3: a record lives `ttl_seconds` after its last write, on every store.

mod common;

use std::time::Duration;

use common::{Backend, assert_problem, spawn_app, spawn_app_with, unique_prefix};
use reqwest::StatusCode;
use serde_json::json;

on_both_stores!(a_record_expires_after_its_ttl, a_write_refreshes_the_ttl, the_default_ttl_comes_from_settings);

async fn a_record_expires_after_its_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app.put_ok("short", &json!({"status": "running", "ttl_seconds": 1})).await;
    assert_eq!(r["ttl_seconds"], 1);
    assert_eq!(app.get("short").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_problem(app.get("short").await, 410, "gone").await;
    assert_problem(app.patch("short", &json!({"message": "late"})).await, 410, "gone").await;
    let res = app.put("short", &json!({})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "an expired id is free again");
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["version"], 1);
}

async fn a_write_refreshes_the_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_ok("beat", &json!({"status": "running", "ttl_seconds": 1})).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        app.patch_ok("beat", &json!({"message": "still alive"})).await;
    }
    // 1.8 s after creation, alive because each write gave it another second.
    assert_eq!(app.get("beat").await.status(), StatusCode::OK);
}

async fn the_default_ttl_comes_from_settings(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.ttl_seconds = 1).await;
    let r = app.put_ok("dflt", &json!({})).await;
    assert_eq!(r["ttl_seconds"], 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(app.get("dflt").await.status(), StatusCode::GONE);
}

#[tokio::test]
async fn a_lower_max_ttl_clamps_old_records_instead_of_refusing_their_patches() {
    let prefix = unique_prefix();
    let before = spawn_app_with(Backend::Redis, |s| s.key_prefix = prefix.clone()).await;
    before.put_ok("long", &json!({"ttl_seconds": 100_000})).await;
    // The operator lowers the bound; another instance on the same Redis runs with it.
    let after = spawn_app_with(Backend::Redis, |s| {
        s.key_prefix = prefix.clone();
        s.max_ttl_seconds = 3600;
        s.ttl_seconds = 60;
    })
    .await;
    let r = after.patch_ok("long", &json!({"message": "m"})).await;
    assert_eq!(r["ttl_seconds"], 3600);
    assert_problem(after.patch("long", &json!({"ttl_seconds": 3601})).await, 422, "validation_failed").await;
}
