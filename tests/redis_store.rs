//! The Redis tier: key layout and TTL, and what a request sees when Redis
//! refuses, dies, comes back, or accepts connections but never answers.
//! Tests that stop a Redis start their own `redis-server` on a free port.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::OwnRedis;
use common::{Backend, assert_problem, redis_conn, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn records_live_at_the_prefixed_key_with_their_ttl() {
    let app = spawn_app(Backend::Redis).await;
    app.put_ok("layout", &json!({"status": "running", "ttl_seconds": 100})).await;
    let key = format!("{}progress:layout", app.settings.key_prefix);
    let mut conn = redis_conn();
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");
    app.patch_ok("layout", &json!({"ttl_seconds": 500})).await;
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((498_000..=500_000).contains(&pttl), "a write refreshes the TTL: {pttl}");
    // The header line as it is (the scripts read it), then the body
    // compressed (`~`, an LZ4 block), which reads back as the record.
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let newline = value.iter().position(|b| *b == b'\n').expect("a header line");
    let header: Value = serde_json::from_slice(&value[..newline]).unwrap();
    assert_eq!((header["v"].as_u64(), header["t"].as_str()), (Some(2), Some("running")), "{header}");
    assert_eq!(value[newline + 1], b'~', "the body is stored compressed");
    let stored = progressd::store::from_redis(value.clone()).unwrap();
    assert!(value.len() < stored.raw().len(), "{} bytes stored for {}", value.len(), stored.raw().len());
    let body: Value = serde_json::from_slice(&stored.raw()[newline + 1..]).unwrap();
    assert_eq!(
        (body["id"].as_str(), body["version"].as_u64(), body["ttl_seconds"].as_u64()),
        (Some("layout"), Some(2), Some(500))
    );
}

#[tokio::test]
async fn a_foreign_value_at_the_key_is_an_opaque_500() {
    let app = spawn_app(Backend::Redis).await;
    let key = format!("{}progress:foreign", app.settings.key_prefix);
    let mut conn = redis_conn();
    let _: () = redis::cmd("SET").arg(&key).arg("not ours").query(&mut conn).unwrap();
    let doc = assert_problem(app.get("foreign").await, 500, "internal").await;
    assert_eq!(doc["detail"], "internal error");
    assert_problem(app.put("foreign", &json!({})).await, 500, "internal").await;
    let _: () = redis::cmd("SET").arg(&key).arg("still not ours").query(&mut conn).unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_a_fast_503() {
    let port = free_port();
    let app = spawn_app_with(Backend::Redis, |s| s.redis_url = Some(format!("redis://127.0.0.1:{port}"))).await;
    let started = Instant::now();
    let res = app.get("x").await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_problem(res, 503, "storage_unavailable").await;
    assert_problem(app.put("x", &json!({})).await, 503, "storage_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_redis_that_never_answers_does_not_hang_requests() {
    let (port, blackhole) = common::blackhole().await;
    let app = spawn_app_with(Backend::Redis, |s| {
        s.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        s.redis_timeout_ms = 300;
    })
    .await;
    for _ in 0..3 {
        let started = Instant::now();
        let res = app.patch("x", &json!({"message": "m"})).await;
        let took = started.elapsed();
        assert_problem(res, 503, "storage_unavailable").await;
        // The bound is the Redis timeout (300 ms here) plus scheduling slack.
        assert!(took < Duration::from_millis(900), "took {took:?}");
    }
    blackhole.abort();
}

#[tokio::test]
async fn the_store_reconnects_after_redis_restarts() {
    let mut redis = OwnRedis::start();
    let app = spawn_app_with(Backend::Redis, |s| {
        s.redis_url = Some(redis.url());
        s.redis_timeout_ms = 500;
    })
    .await;
    app.put_ok("r", &json!({"status": "running"})).await;
    redis.stop();
    // A write must reach Redis (a read of "r" may still be answered by the
    // read cache until the change listener notices the connection is gone).
    assert_problem(app.patch("r", &json!({"message": "m"})).await, 503, "storage_unavailable").await;
    assert_problem(app.get("never-cached").await, 503, "storage_unavailable").await;
    redis.start_again();
    // The first request after the restart may still meet the dead connection.
    let mut recovered = false;
    for _ in 0..20 {
        if app.put("r", &json!({"status": "running"})).await.status() == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes work again after Redis returns");
    assert_eq!(app.get_ok("r").await["version"], 1, "the restarted Redis was empty");
    redis.stop();
}

/// Writes, deletes and listing run Lua scripts by `EVALSHA`; a Redis that
/// does not hold them (fresh, restarted, or after `SCRIPT FLUSH`) answers
/// NOSCRIPT, and the store loads the script and sends the call again.
#[tokio::test]
async fn scripts_that_redis_lost_are_loaded_again() {
    let mut redis = OwnRedis::start();
    let app = spawn_app_with(Backend::Redis, |s| s.redis_url = Some(redis.url())).await;
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let loaded = |conn: &mut redis::Connection| -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
        let line =
            info.lines().find(|l| l.starts_with("number_of_cached_scripts:")).expect("INFO memory counts scripts");
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    for round in 0..2 {
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        assert_eq!(loaded(&mut conn), 0, "round {round}");
        let id = format!("lost-{round}");
        assert_eq!(app.put(&id, &json!({"status": "running"})).await.status(), StatusCode::CREATED, "round {round}");
        assert_eq!(app.patch_ok(&id, &json!({"current": 3})).await["version"], 2);
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        let listed: Value = app.send(reqwest::Method::GET, "/progress?limit=10", None, &[]).await.json().await.unwrap();
        assert!(listed["items"].as_array().unwrap().iter().any(|r| r["id"] == id), "{listed}");
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        let deleted = app.send(reqwest::Method::DELETE, &format!("/progress/{id}"), None, &[]).await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "round {round}");
        assert!(loaded(&mut conn) >= 1, "round {round}: the delete script was loaded");
    }
    redis.stop();
}

/// The compare-and-set of a write compares the whole header it read, so a
/// write built on one incarnation of an id never lands on the next one,
/// even at the same version (deleted, then created again meanwhile).
#[tokio::test]
async fn a_write_built_on_an_earlier_incarnation_is_refused() {
    use progressd::domain::{ClientFields, ProgressId, StoredRecord, Timestamp, Touched, WritePolicy, next_record};
    use progressd::store::{ProgressStore, RedisStore, RedisStoreConfig};

    let prefix = common::unique_prefix();
    let store = RedisStore::new(RedisStoreConfig {
        url: common::redis_url(),
        key_prefix: prefix.clone(),
        pool_size: 2,
        shared_connections: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let id = ProgressId::parse("again").unwrap();
    let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
    let write = |prev: Option<&StoredRecord>, at_ms: i64, body: serde_json::Value| {
        let fields = ClientFields::from_json(&body, 3600).unwrap();
        let touched = Touched::replace(&fields);
        let prev = prev.map(|p| (p.server_state().unwrap(), *p.meta()));
        let (record, meta) = next_record(&id, prev, fields, touched, Timestamp(at_ms), &policy);
        StoredRecord::encode(&meta, &record)
    };
    let now = Timestamp::now().millis();
    let first = write(None, now - 5_000, json!({"status": "running"}));
    assert!(store.compare_and_swap(&id, None, &first, 60_000).await.unwrap());
    assert!(store.delete(&id).await.unwrap());
    let second = write(None, now - 1_000, json!({"status": "pending"}));
    assert!(store.compare_and_swap(&id, None, &second, 60_000).await.unwrap());
    assert_eq!((first.version(), second.version()), (1, 1));

    let on_first = write(Some(&first), now, json!({"status": "completed"}));
    assert!(
        !store.compare_and_swap(&id, Some(&first), &on_first, 60_000).await.unwrap(),
        "same version, other incarnation"
    );
    let on_second = write(Some(&second), now, json!({"status": "running"}));
    assert!(store.compare_and_swap(&id, Some(&second), &on_second, 60_000).await.unwrap());
    assert!(!store.compare_and_swap(&id, None, &second, 60_000).await.unwrap(), "a create over a record is refused");
    let held = store.get(&id).await.unwrap().unwrap();
    assert_eq!((held.version(), held.meta().c), (2, second.meta().c));
    // The same with no index to change (the status stays, the expiry moves
    // later): the write that changes the record in place compares the
    // header too. Version 2 of the first incarnation, like the record held.
    let first_v2 = write(Some(&first), now, json!({"status": "running"}));
    let on_first_v2 = write(Some(&first_v2), now + 1, json!({"status": "running"}));
    assert_eq!((first_v2.version(), first_v2.meta().t), (held.version(), held.meta().t));
    assert!(
        !store.compare_and_swap(&id, Some(&first_v2), &on_first_v2, 60_000).await.unwrap(),
        "in place, other incarnation"
    );
    let on_held = write(Some(&held), now + 1, json!({"status": "running", "message": "in place"}));
    assert!(store.compare_and_swap(&id, Some(&held), &on_held, 60_000).await.unwrap());
    let held = store.get(&id).await.unwrap().unwrap();
    assert_eq!((held.version(), held.meta().c), (3, second.meta().c));

    // The indexes moved with the status: the record is listed as running only.
    let mut conn = redis_conn();
    let member = format!("{:015}:again", second.meta().c);
    for (status, listed) in [("pending", false), ("running", true), ("completed", false)] {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{prefix}progressd:index:{status}"))
            .arg(&member)
            .query(&mut conn)
            .unwrap();
        assert_eq!(score.is_some(), listed, "{status}");
    }
    common::delete_keys(&common::redis_url(), &prefix);
}

/// Some scripts hold the change channel, `{prefix}progress:changes`, as a
/// Lua string literal: a prefix with quotes, backslashes, brackets, a
/// newline or non-ASCII letters still names the channel every write is
/// announced on, whichever script stores it.
#[tokio::test]
async fn writes_are_announced_on_the_channel_of_any_key_prefix() {
    let safe = common::unique_prefix();
    let prefix = format!("{safe}q\"u'o\\te]] [[x]]\n\u{e9}\\0:");
    let app = spawn_app_with(Backend::Redis, |s| s.key_prefix = prefix.clone()).await;
    let mut listener = redis::Client::open(common::redis_url()).unwrap().get_connection().unwrap();
    let mut notices = listener.as_pubsub();
    notices.subscribe(format!("{prefix}progress:changes")).unwrap();
    notices.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A create, then writes that change an index (the status) and that
    // change none (the message).
    app.put_ok("odd", &json!({"status": "pending"})).await;
    app.put_ok("odd", &json!({"status": "running"})).await;
    app.patch_ok("odd", &json!({"message": "a"})).await;
    app.put_ok("odd", &json!({"status": "running", "message": "b"})).await;
    for version in 1..=4 {
        let notice: String = notices.get_message().expect("a change notice within 5 s").get_payload().unwrap();
        assert_eq!(notice, format!("{version}:odd"));
    }
    let key = format!("{prefix}progress:odd");
    let mut conn = redis_conn();
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    assert_eq!(progressd::store::from_redis(value).unwrap().version(), 4);
    // The test harness deletes keys by a SCAN pattern, in which `\` and
    // `[` mean something: delete them under the plain part of the prefix.
    drop(notices);
    common::delete_keys(&common::redis_url(), &safe);
}

/// Gone is not unknown (issue 19): the gone marker beside each record says
/// deleted or expired, and when, for the tombstone time, then expires by
/// itself; an id never written has none.
#[tokio::test]
async fn the_gone_marker_says_deleted_or_expired_for_the_tombstone_time() {
    use progressd::domain::{ClientFields, ProgressId, StoredRecord, Timestamp, Touched, WritePolicy, next_record};
    use progressd::store::{GoneKind, ProgressStore, RedisStore, RedisStoreConfig, Tombstones};

    let prefix = common::unique_prefix();
    let store = RedisStore::new(RedisStoreConfig {
        url: common::redis_url(),
        key_prefix: prefix.clone(),
        pool_size: 2,
        shared_connections: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
    .with_tombstone(Duration::from_secs(1));
    let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
    let write = |id: &ProgressId, ttl_ms: i64| {
        let fields = ClientFields::from_json(&json!({"status": "running"}), 3600).unwrap();
        let touched = Touched::replace(&fields);
        let (record, mut meta) = next_record(id, None, fields, touched, Timestamp::now(), &policy);
        meta.x = Timestamp::now().millis() + ttl_ms;
        StoredRecord::encode(&meta, &record)
    };
    let (deleted, expiring) = (ProgressId::parse("deleted").unwrap(), ProgressId::parse("expiring").unwrap());
    let first = write(&deleted, 60_000);
    assert!(store.compare_and_swap(&deleted, None, &first, 60_000).await.unwrap());
    assert!(store.compare_and_swap(&expiring, None, &write(&expiring, 300), 300).await.unwrap());
    assert_eq!(store.gone(&deleted).await.unwrap(), None, "live: not gone");
    let mut conn = redis_conn();
    let marker: String = redis::cmd("GET").arg(format!("{prefix}gone:deleted")).query(&mut conn).unwrap();
    assert_eq!(marker, format!("x{}", first.meta().x), "every write leaves its expiry");
    let pttl: i64 = redis::cmd("PTTL").arg(format!("{prefix}gone:deleted")).query(&mut conn).unwrap();
    assert!((59_000..=61_000).contains(&pttl), "the record's TTL and the tombstone's: {pttl}");
    let before = Timestamp::now().millis();
    assert!(store.delete(&deleted).await.unwrap());
    let gone = store.gone(&deleted).await.unwrap().expect("deleted");
    assert_eq!(gone.kind, GoneKind::Deleted);
    assert!(gone.at.millis() >= before && gone.at.millis() <= Timestamp::now().millis(), "{gone:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let gone = store.gone(&expiring).await.unwrap().expect("expired");
    assert_eq!(gone.kind, GoneKind::Expired);
    // A delete of what had expired changes nothing.
    assert!(!store.delete(&expiring).await.unwrap());
    assert_eq!(store.gone(&expiring).await.unwrap().map(|g| g.kind), Some(GoneKind::Expired));
    assert_eq!(store.gone(&ProgressId::parse("never").unwrap()).await.unwrap(), None);
    // After the tombstone time the markers are gone too: unknown again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(store.gone(&deleted).await.unwrap(), None);
    assert_eq!(store.gone(&expiring).await.unwrap(), None);
    common::delete_keys(&common::redis_url(), &prefix);
}
