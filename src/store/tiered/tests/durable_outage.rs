//! PostgreSQL down (at start-up or later), both tiers down, and the flush
//! at shutdown.

use super::*;

#[tokio::test(start_paused = true)]
async fn creates_and_terminal_writes_reach_postgres_before_the_response_and_updates_within_the_persist_interval() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 1, "a create is in PostgreSQL when it is acknowledged");
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 1, "an update goes through the backlog");
    assert_eq!(t.store.backlog().0, 1);
    advance(PERSIST).await;
    assert_eq!(t.durable.version(&job), 2, "within the persist interval");
    assert_eq!(t.store.backlog().0, 0);
    assert!(t.write(&job, &record_at("job", 3, "completed", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 3, "a terminal write is in PostgreSQL when it is acknowledged");
}

#[tokio::test(start_paused = true)]
async fn postgres_down_writes_go_to_redis_and_the_backlog_is_flushed_when_it_returns() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    t.durable.faults.down();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap(), "Redis takes the create");
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 3, "completed", created)).await.unwrap());
    assert_eq!(t.store.backlog().0, 1, "the updates wait in the backlog, one entry per record");
    for _ in 0..FAILURES {
        advance(PERSIST).await;
    }
    assert_eq!(t.durable_breaker(), BreakerState::Open);
    assert_eq!(t.version(&job).await.unwrap(), 3, "reads are answered by Redis");
    assert_eq!(t.durable.version(&job), 0);

    t.durable.faults.up();
    t.wait_for(|t| t.store.backlog().0 == 0).await;
    assert_eq!(t.durable.version(&job), 3, "the newest version reached PostgreSQL");
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_the_backlog_for_the_next_tick() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    t.durable.faults.fail_next(1);
    advance(PERSIST).await;
    assert_eq!(t.store.backlog().0, 1, "the failed batch stays");
    t.wait_for(|t| t.store.backlog().0 == 0).await;
    assert_eq!(t.durable.version(&job), 2);
}

#[tokio::test(start_paused = true)]
async fn postgres_down_at_start_up_keeps_its_breaker_open_until_the_migrations_run() {
    let t = Tiers::start_with(|_, durable| durable.faults.down()).await;
    assert_eq!(t.durable_breaker(), BreakerState::Open, "PostgreSQL is skipped until migrated");
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap(), "Redis takes writes");
    assert_eq!(t.store.backlog().0, 1);
    for _ in 0..3 {
        advance(PROBE).await;
    }
    assert!(t.durable.faults.calls("migrate") >= 3, "the migrations are retried every probe interval");
    assert_eq!(t.durable.faults.calls("upsert_newer"), 0, "nothing else is sent to an unmigrated PostgreSQL");

    t.durable.faults.up();
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open).await;
    t.wait_for(|t| t.store.backlog().0 == 0).await;
    assert_eq!(t.durable.version(&job), 1, "the create waited in the backlog");
}

#[tokio::test(start_paused = true)]
async fn both_tiers_down_answer_storage_unavailable() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    t.hot.faults.down();
    t.durable.faults.down();
    for _ in 0..FAILURES {
        assert!(is_unavailable(&t.store.get(&job).await));
    }
    assert_eq!((t.hot_breaker(), t.durable_breaker()), (BreakerState::Open, BreakerState::Open));
    assert!(is_unavailable(&t.store.get(&job).await), "a read");
    advance(Duration::from_secs(2)).await;
    assert!(is_unavailable(&t.write(&job, &record_at("job", 2, "running", created)).await), "a write");
    assert!(is_unavailable(&t.store.delete(&job).await), "a delete");
    let calls = (t.hot.faults.all_calls(), t.durable.faults.all_calls());
    assert!(is_unavailable(&t.store.get(&job).await));
    assert_eq!((t.hot.faults.all_calls(), t.durable.faults.all_calls()), calls, "neither tier is called");
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_flush_gives_up_after_shutdown_flush() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    t.durable.faults.down();
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    let started = tokio::time::Instant::now();
    crate::store::Maintenance::shutdown(t.store.as_ref()).await;
    let took = started.elapsed();
    assert!(took >= SHUTDOWN_FLUSH && took < SHUTDOWN_FLUSH + Duration::from_millis(300), "took {took:?}");
    assert_eq!(t.store.backlog().0, 1, "what PostgreSQL did not take is reported, not waited for");
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_flush_writes_the_backlog_as_soon_as_postgres_takes_it() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    t.durable.faults.down();
    for version in 2..=4 {
        assert!(t.write(&job, &record_at("job", version, "running", created)).await.unwrap());
    }
    for _ in 0..FAILURES {
        advance(PERSIST).await;
    }
    assert_eq!(t.durable_breaker(), BreakerState::Open);
    t.durable.faults.up();
    t.durable.faults.fail_next(2);
    let started = tokio::time::Instant::now();
    crate::store::Maintenance::shutdown(t.store.as_ref()).await;
    assert!(started.elapsed() < SHUTDOWN_FLUSH, "it did not wait out the limit");
    assert_eq!(t.store.backlog().0, 0);
    assert_eq!(t.durable.version(&job), 4, "even with the breaker open, the shutdown tries PostgreSQL");
}

#[tokio::test(start_paused = true)]
async fn a_postgres_that_hangs_costs_a_create_its_timeout_then_the_create_waits_in_the_backlog() {
    let t = Tiers::start().await;
    let job = id("job");
    t.durable.faults.hang(Duration::from_millis(500));
    let started = tokio::time::Instant::now();
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap(), "Redis took it");
    assert_eq!(started.elapsed(), Duration::from_millis(500), "one PostgreSQL timeout, no retry");
    assert_eq!(t.store.backlog().0, 1);
    t.durable.faults.up();
    t.wait_for(|t| t.store.backlog().0 == 0).await;
    assert_eq!(t.durable.version(&job), 1);
}
