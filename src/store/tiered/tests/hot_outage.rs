//! Redis down, Redis back: reads and writes fall back to PostgreSQL, the
//! hand-over and the fence guard those writes, and the copy-back brings
//! Redis up to date before it is used again.

use super::*;

#[tokio::test(start_paused = true)]
async fn redis_down_reads_go_to_postgres_and_the_open_breaker_stops_calling_redis() {
    let t = Tiers::start().await;
    let job = id("job");
    let now = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", now)).await.unwrap());
    assert_eq!(t.durable.version(&job), 1, "a create reaches PostgreSQL before the response");

    t.hot.faults.down();
    for _ in 0..FAILURES {
        assert_eq!(t.version(&job).await.unwrap(), 1, "each failed Redis read falls back to PostgreSQL");
    }
    assert_eq!(t.hot_breaker(), BreakerState::Open);
    let calls = t.hot.faults.calls("get");
    assert_eq!(t.version(&job).await.unwrap(), 1);
    assert_eq!(t.hot.faults.calls("get"), calls, "with the breaker open, reads skip Redis at no cost");
}

/// The read cache in front of Redis is asked only while Redis is used (not
/// once the breaker opened), and a hit is no answer from Redis: it does not
/// reset the count of failures that opens the breaker.
#[tokio::test(start_paused = true)]
async fn the_read_cache_answers_only_while_redis_is_used_and_a_hit_is_not_redis_answering() {
    let t = Tiers::start().await;
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    assert_eq!(t.store.cached(&job).map(|r| r.version()), Some(1), "Redis is used: its cache answers");

    t.hot.faults.down();
    for _ in 0..FAILURES - 1 {
        assert_eq!(t.version(&job).await.unwrap(), 1, "a failed Redis read falls back to PostgreSQL");
        assert!(t.store.cached(&job).is_some(), "the cache has not heard yet");
    }
    assert_eq!(t.hot_breaker(), BreakerState::Closed);
    assert_eq!(t.version(&job).await.unwrap(), 1);
    assert_eq!(t.hot_breaker(), BreakerState::Open, "the hits between the failures did not reset their count");
    assert!(t.store.cached(&job).is_none(), "with the breaker open, the cache is not asked");
}

#[tokio::test(start_paused = true)]
async fn a_redis_that_hangs_opens_its_breaker_after_its_timeouts() {
    let t = Tiers::start().await;
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    t.hot.faults.hang(Duration::from_millis(250));
    let started = tokio::time::Instant::now();
    for _ in 0..FAILURES {
        assert_eq!(t.version(&job).await.unwrap(), 1);
    }
    assert_eq!(started.elapsed(), Duration::from_millis(250) * FAILURES, "one timeout per read");
    assert_eq!(t.hot_breaker(), BreakerState::Open);
    let started = tokio::time::Instant::now();
    assert_eq!(t.version(&job).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO, "then no read waits for Redis");
}

#[tokio::test(start_paused = true)]
async fn redis_down_writes_go_to_postgres() {
    let t = Tiers::start().await;
    let (job, created) = t.job_then_redis_down().await;

    // Once this instance (the only one) has flushed its backlog: see
    // `handover.rs` for several instances and one that does not answer.
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 2, "the compare-and-set ran in PostgreSQL");
    assert_eq!(t.hot.version(&job), 1, "Redis was not written");
    assert_eq!(t.version(&job).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_redis_down_at_start_up_sends_requests_to_postgres() {
    let t = Tiers::start_with(|hot, _| hot.faults.down()).await;
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open).await;
    let job = id("job");
    t.durable.upsert_newer(&[(job.clone(), record_at("job", 1, "running", Timestamp::now()))]).await.unwrap();
    for _ in 0..FAILURES {
        assert_eq!(t.version(&job).await.unwrap(), 1);
    }
    assert_eq!(t.hot_breaker(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn redis_back_gets_the_outage_writes_copied_back_and_the_fence_raised_before_it_is_used() {
    let t = Tiers::start().await;
    let (job, created) = t.job_then_redis_down().await;
    advance(Duration::from_secs(2)).await;
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 3, "running", created)).await.unwrap());
    assert_eq!(t.hot.version(&job), 1, "Redis still holds what it had before the outage");
    assert_eq!(t.durable.fence(), 0);

    t.hot.faults.up();
    t.wait_for(|t| t.hot_breaker() != BreakerState::Open).await;
    assert_eq!(t.hot.version(&job), 3, "the version acknowledged during the outage was copied back");
    assert!(t.durable.fence() > 0, "the fence was raised");
    let reads = t.durable.faults.calls("lookup");
    assert_eq!(t.version(&job).await.unwrap(), 3, "no read returns a version older than one acknowledged");
    assert_eq!(t.durable.faults.calls("lookup"), reads, "the read was answered by Redis");
    assert_eq!(t.hot_breaker(), BreakerState::Closed, "the first success closes the half-open breaker");
}

#[tokio::test(start_paused = true)]
async fn redis_back_gets_the_outage_deletes_copied_back() {
    let t = Tiers::start().await;
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    t.hot.faults.down();
    t.open_hot_breaker().await;
    assert!(t.store.delete(&job).await.unwrap(), "a delete needs no settle time: a tombstone outranks every version");
    assert!(matches!(t.durable.row(&job), DurableRow::Deleted { .. }));
    t.hot.faults.up();
    t.wait_for(|t| t.hot_breaker() != BreakerState::Open).await;
    assert_eq!(t.hot.version(&job), 0, "the tombstone reached Redis");
    assert_eq!(t.version(&job).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn redis_is_not_used_again_while_the_copy_back_fails() {
    let t = Tiers::start().await;
    let (job, created) = t.job_then_redis_down().await;
    advance(Duration::from_secs(2)).await;
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    t.hot.faults.up();
    t.hot.faults.fail("put_if_newer");
    for _ in 0..5 {
        advance(PROBE).await;
    }
    assert_eq!(t.hot_breaker(), BreakerState::Open, "Redis answers pings, but the copy-back has not gone through");
    assert_eq!(t.version(&job).await.unwrap(), 2, "reads stay on PostgreSQL");
    t.hot.faults.up();
    t.wait_for(|t| t.hot_breaker() != BreakerState::Open).await;
    assert_eq!(t.hot.version(&job), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fenced_instance_has_its_postgres_writes_refused_and_waits_again() {
    let t = Tiers::start().await;
    let (job, created) = t.job_then_redis_down().await;
    advance(Duration::from_secs(2)).await;
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());

    // Another instance found Redis answering and raised the fence.
    advance(Duration::from_millis(10)).await;
    t.durable.raise_fence(Timestamp::now()).await.unwrap();
    advance(Duration::from_millis(10)).await;
    let fenced = t.write(&job, &record_at("job", 3, "running", created)).await;
    assert!(is_unavailable(&fenced), "the fence refuses a write in PostgreSQL: {fenced:?}");
    assert_eq!(t.durable.version(&job), 2);
    let deleted = t.store.delete(&job).await;
    assert!(is_unavailable(&deleted), "once fenced off, deletes wait too: {deleted:?}");
    assert_eq!(t.durable.version(&job), 2);

    // Still cut off from Redis: writes resume after the settle time, counted from the refusal.
    advance(Duration::from_secs(1)).await;
    assert!(is_unavailable(&t.write(&job, &record_at("job", 3, "running", created)).await));
    advance(Duration::from_secs(1)).await;
    assert!(t.write(&job, &record_at("job", 3, "running", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 3);
}

#[tokio::test(start_paused = true)]
async fn redis_down_reads_return_this_instances_unflushed_write_when_it_is_newer_than_postgres() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert_eq!((t.durable.version(&job), t.store.backlog().0), (1, 1), "version 2 waits in the backlog");
    t.hot.faults.down();
    t.open_hot_breaker().await;
    assert_eq!(t.version(&job).await.unwrap(), 2, "not PostgreSQL's older version 1");
}

#[tokio::test(start_paused = true)]
async fn redis_down_the_first_write_brings_postgres_up_to_this_instances_acknowledged_version() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    t.hot.faults.down();
    t.open_hot_breaker().await;
    t.durable.faults.fail("upsert_newer"); // the flusher cannot land it on its own
    advance(Duration::from_secs(2)).await;
    assert_eq!((t.durable.version(&job), t.store.backlog().0), (1, 1));
    t.durable.faults.up();
    assert!(t.write(&job, &record_at("job", 3, "running", created)).await.unwrap(), "written on version 2");
    assert_eq!(t.durable.version(&job), 3);
    assert_eq!(t.store.backlog().0, 0);
}

#[tokio::test(start_paused = true)]
async fn redis_down_flushes_the_whole_backlog_at_the_next_tick() {
    let t = Tiers::start_persisting_every(Duration::from_secs(10)).await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    advance(Duration::from_secs(1)).await;
    assert_eq!(t.durable.version(&job), 1, "with Redis up, the update is due within 10 s, not yet");
    t.hot.faults.down();
    t.open_hot_breaker().await;
    advance(Duration::from_secs(1)).await;
    assert_eq!(t.durable.version(&job), 2, "with Redis down, everything is flushed at the next tick (1 s)");
}

#[tokio::test(start_paused = true)]
async fn an_expired_record_is_never_served_from_postgres() {
    let t = Tiers::start().await;
    let job = id("job");
    let mut record = record_at("job", 1, "running", Timestamp::now());
    t.durable.upsert_newer(&[(job.clone(), record.clone())]).await.unwrap();
    advance(Duration::from_millis(u64::try_from(TTL_MS).unwrap() + 1)).await;
    assert_eq!(t.version(&job).await.unwrap(), 0, "a miss in Redis, and the row has expired");
    assert_eq!(t.hot.version(&job), 0, "nothing was put back");
    record = record_at("job", 1, "running", Timestamp::now());
    assert!(t.write(&job, &record).await.unwrap(), "an expired record counts as absent for a create");
}

#[tokio::test(start_paused = true)]
async fn a_read_repair_puts_a_postgres_hit_back_into_redis_with_its_remaining_ttl() {
    let t = Tiers::start().await;
    let job = id("job");
    let record = record_at("job", 4, "running", Timestamp::now());
    t.durable.upsert_newer(&[(job.clone(), record.clone())]).await.unwrap();
    advance(Duration::from_secs(60)).await;
    assert_eq!(t.hot.version(&job), 0, "Redis lost the record");

    assert_eq!(t.version(&job).await.unwrap(), 4, "the read falls back to PostgreSQL");
    assert_eq!(t.hot.version(&job), 4, "and puts the record back into Redis");
    let left = t.hot.ttl_ms(&job).unwrap();
    let remaining = record.meta().x - Timestamp::now().millis();
    // Record times follow the wall clock (plus the paused clock's
    // advance), so real time passes between the repair and this line: on
    // a loaded machine running the suite, more than 50 ms (a failure seen
    // once). A full TTL is 60 s off either way.
    let slack = 5_000;
    assert!(
        (remaining - slack..=remaining + slack).contains(&left),
        "with what was left of its TTL ({remaining} ms now): {left} ms, not {TTL_MS}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_a_paused_redis_runs_late_loses_to_the_same_version_postgres_acknowledged() {
    let t = Tiers::start().await;
    let (job, created) = t.job_then_redis_down().await;
    assert!(t.write(&job, &record_at("job", 2, "completed", created)).await.unwrap(), "acknowledged in PostgreSQL");
    // Redis resumes and runs a write that timed out (and was refused) on
    // version 1: another version 2.
    t.hot.put(&job, &record_at("job", 2, "failed", created), TTL_MS);
    t.hot.faults.up();
    t.wait_for(|t| t.hot_breaker() != BreakerState::Open).await;
    let served = t.store.get(&job).await.unwrap().unwrap();
    assert_eq!(crate::store::bulk::status_of(&served).unwrap().as_str(), "completed", "the acknowledged version 2");
    assert_eq!(t.hot.version(&job), 2);
}
