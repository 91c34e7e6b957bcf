//! What spans the tiers: health reports with the breakers, listing and
//! counts when Redis cannot answer them, and bulk deletes.

use super::*;
use crate::store::{Health, ListQuery, Maintenance, RecordFilter, TierState};

#[tokio::test(start_paused = true)]
async fn health_reports_each_tier_with_its_breaker_and_a_postgres_down_at_start_up() {
    let t = Tiers::start_with(|_, durable| durable.faults.down()).await;
    let health = t.store.health().await;
    let states: Vec<_> = health.iter().map(|h| (h.tier, h.state, h.breaker)).collect();
    assert_eq!(
        states,
        [("redis", TierState::Up, Some(BreakerState::Closed)), ("postgres", TierState::Down, Some(BreakerState::Open))]
    );
    t.durable.faults.up();
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open).await;
    assert!(t.store.health().await.iter().all(|h| h.state == TierState::Up));
}

#[tokio::test(start_paused = true)]
async fn redis_down_listing_comes_from_postgres_corrected_by_this_instances_unflushed_writes() {
    let t = Tiers::start().await;
    let created = Timestamp::now();
    for name in ["a", "b"] {
        assert!(t.write(&id(name), &record_at(name, 1, "running", created)).await.unwrap());
    }
    assert!(t.write(&id("a"), &record_at("a", 2, "completed", created)).await.unwrap());
    assert!(t.write(&id("b"), &record_at("b", 2, "running", created)).await.unwrap());
    t.hot.faults.down();
    t.durable.faults.fail("upsert_newer"); // keep version 2 of "b" in the backlog
    t.open_hot_breaker().await;
    let page = t.store.list(&ListQuery::default()).await.unwrap();
    let listed: Vec<(&str, u64)> = page.items.iter().map(|(id, r)| (id.as_str(), r.version())).collect();
    assert_eq!(listed, [("b", 2), ("a", 2)], "PostgreSQL holds b at version 1; this instance's version 2 wins");
}

#[tokio::test(start_paused = true)]
async fn counts_come_from_postgres_after_flushing_and_from_redis_when_postgres_is_down() {
    let t = Tiers::start().await;
    let created = Timestamp::now();
    assert!(t.write(&id("a"), &record_at("a", 1, "running", created)).await.unwrap());
    assert!(t.write(&id("a"), &record_at("a", 2, "running", created)).await.unwrap());
    let counts = t.store.count_by_status().await.unwrap();
    assert_eq!((counts.source, counts.total()), ("postgres", 1));
    assert_eq!(t.store.backlog().0, 0, "the backlog was flushed first");
    t.durable.faults.down();
    let counts = t.store.count_by_status().await.unwrap();
    assert_eq!((counts.source, counts.total()), ("redis", 1));
}

#[tokio::test(start_paused = true)]
async fn a_bulk_delete_judges_what_redis_holds_and_what_only_postgres_holds() {
    let t = Tiers::start().await;
    let created = Timestamp::now();
    for name in ["job-1", "job-2", "keep"] {
        assert!(t.write(&id(name), &record_at(name, 1, "failed", created)).await.unwrap());
    }
    let lost = record_at("job-3", 1, "failed", created);
    t.durable.upsert_newer(&[(id("job-3"), lost)]).await.unwrap(); // Redis lost it
    let filter = RecordFilter { id_prefix: Some("job-".into()), ..RecordFilter::default() };
    assert_eq!(t.store.delete_matching(&filter).await.unwrap(), 3);
    for name in ["job-1", "job-2", "job-3"] {
        assert!(matches!(t.durable.row(&id(name)), DurableRow::Deleted { .. }), "{name} tombstoned");
        assert_eq!(t.version(&id(name)).await.unwrap(), 0);
    }
    assert_eq!(t.version(&id("keep")).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn redis_down_a_bulk_delete_tombstones_in_postgres_behind_the_fence() {
    let t = Tiers::start().await;
    let created = Timestamp::now();
    for name in ["job-1", "keep"] {
        assert!(t.write(&id(name), &record_at(name, 1, "failed", created)).await.unwrap());
    }
    t.hot.faults.down();
    t.open_hot_breaker().await;
    let filter = RecordFilter { id_prefix: Some("job-".into()), ..RecordFilter::default() };
    assert_eq!(t.store.delete_matching(&filter).await.unwrap(), 1);
    assert!(matches!(t.durable.row(&id("job-1")), DurableRow::Deleted { .. }));
    t.durable.raise_fence(Timestamp::now()).await.unwrap();
    let keep = RecordFilter { id_prefix: Some("keep".into()), ..RecordFilter::default() };
    assert!(is_unavailable(&t.store.delete_matching(&keep).await), "another instance is back on Redis");
    assert_eq!(t.durable.version(&id("keep")), 1);
}
