//! Never a false 404 (issue 20): a miss in Redis is "absent" only when
//! PostgreSQL said so. While PostgreSQL cannot be asked the read is
//! unavailable (503), and a fresh instance asks PostgreSQL before its first
//! answers instead of taking it for down.

use super::*;
use crate::store::Read;

/// A record written through both tiers, then lost by Redis alone.
async fn only_in_postgres(t: &Tiers, name: &str) -> ProgressId {
    let job = id(name);
    assert!(t.write(&job, &record_at(name, 1, "running", Timestamp::now())).await.unwrap());
    assert_eq!(t.durable.version(&job), 1);
    assert!(t.hot.delete(&job).await.unwrap(), "Redis loses it (a restart, an eviction)");
    job
}

#[tokio::test(start_paused = true)]
async fn a_redis_miss_with_the_postgres_breaker_open_is_unavailable_not_absent() {
    let t = Tiers::start().await;
    let job = only_in_postgres(&t, "job").await;
    t.durable.faults.down();
    for n in 0..FAILURES {
        assert!(is_unavailable(&t.store.get(&id(&format!("other-{n}"))).await), "a miss is not an answer");
    }
    assert_eq!(t.durable_breaker(), BreakerState::Open);
    let lookups = t.durable.faults.calls("lookup");
    let read = t.store.get(&job).await;
    assert!(matches!(read, Err(StoreError::Unavailable { .. })), "503, not 404: {:?}", read.map(|r| r.is_some()));
    assert_eq!(t.durable.faults.calls("lookup"), lookups, "the open breaker skips PostgreSQL");

    t.durable.faults.up();
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open).await;
    assert_eq!(t.version(&job).await.unwrap(), 1, "once PostgreSQL answers, the record is found");
}

#[tokio::test(start_paused = true)]
async fn a_redis_miss_with_the_postgres_lookup_failing_is_unavailable_not_absent() {
    let t = Tiers::start().await;
    let job = only_in_postgres(&t, "job").await;
    t.durable.faults.fail("lookup");
    assert!(is_unavailable(&t.store.get(&job).await), "503, not 404");
    assert!(is_unavailable(&t.store.get(&id("never-written")).await), "nor for an id PostgreSQL may hold");
    assert_ne!(t.durable_breaker(), BreakerState::Open, "below the threshold: the lookup itself failed");
    // The write path still creates in Redis while PostgreSQL cannot be asked.
    let new = id("new");
    assert!(t.store.read(&new, Read::ToWrite).await.unwrap().is_none(), "a miss, for a create");

    t.durable.faults.up();
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open).await; // three failures opened it
    assert_eq!(t.version(&job).await.unwrap(), 1);
    assert_eq!(t.hot.version(&job), 1, "and read repair put it back into Redis");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_instance_answers_its_first_read_from_postgres() {
    let (hot, durable) = (Arc::new(FakeHot::default()), Arc::new(FakeDurable::default()));
    let job = id("s1");
    durable.upsert_newer(&[(job.clone(), record_at("s1", 4, "running", Timestamp::now()))]).await.unwrap();
    let t = Tiers::fresh(PERSIST, hot, durable);
    assert_eq!(t.durable_breaker(), BreakerState::Open, "nothing has answered yet");
    let read = t.store.get(&job).await.unwrap();
    assert_eq!(read.map(|r| r.version()), Some(4), "the first read waited for PostgreSQL's first answer");
    assert_eq!(t.hot.version(&job), 4, "and repaired Redis");
    assert_eq!(t.durable.faults.calls("migrate"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_create_on_a_fresh_instance_is_in_postgres_at_the_response() {
    let t = Tiers::fresh(PERSIST, Arc::new(FakeHot::default()), Arc::new(FakeDurable::default()));
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    assert_eq!(t.durable.version(&job), 1, "in PostgreSQL when acknowledged, not in the backlog");
    assert_eq!(t.store.backlog().0, 0);
}

#[tokio::test(start_paused = true)]
async fn postgres_down_at_start_up_makes_redis_misses_unavailable_after_a_bounded_wait() {
    let (hot, durable) = (Arc::new(FakeHot::default()), Arc::new(FakeDurable::default()));
    // A PostgreSQL that never answers: the first migration attempt fails
    // after the database timeout.
    durable.faults.hang(FIRST_ANSWER);
    let t = Tiers::fresh(PERSIST, hot, durable);
    let started = tokio::time::Instant::now();
    assert!(is_unavailable(&t.store.get(&id("job")).await), "503, not 404");
    let waited = started.elapsed();
    assert!(waited >= FIRST_ANSWER && waited < FIRST_ANSWER + PROBE, "waited {waited:?}");
    assert_eq!(t.durable_breaker(), BreakerState::Open);

    // Known down now: no more waiting, and writes go to Redis and the backlog.
    let started = tokio::time::Instant::now();
    assert!(is_unavailable(&t.store.get(&id("job")).await));
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap(), "Redis takes it");
    assert_eq!(started.elapsed(), Duration::ZERO, "the breaker answers at once");
    assert_eq!((t.hot.version(&job), t.durable.version(&job), t.store.backlog().0), (1, 0, 1));
    assert_eq!(t.version(&job).await.unwrap(), 1, "a Redis hit needs no PostgreSQL");

    t.durable.faults.up();
    t.wait_for(|t| t.durable_breaker() != BreakerState::Open && t.store.backlog().0 == 0).await;
    assert_eq!(t.durable.version(&job), 1, "the create waited in the backlog");
    assert!(t.store.get(&id("absent")).await.unwrap().is_none(), "with PostgreSQL's answer, a miss is a 404");
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_misses_in_redis_while_postgres_cannot_be_asked_is_unavailable_and_deletes_nothing() {
    let t = Tiers::start().await;
    let job = only_in_postgres(&t, "job").await;
    t.durable.faults.fail("delete");
    let deleted = t.store.delete(&job).await;
    assert!(is_unavailable(&deleted), "503, not 404: {deleted:?}");
    assert_eq!(t.store.backlog().0, 0, "no tombstone queued for an answer that was not given");
    t.durable.faults.up();
    assert_eq!(t.version(&job).await.unwrap(), 1, "the record is still there");
    assert!(t.store.delete(&job).await.unwrap(), "and a retry deletes it");
    assert!(matches!(t.durable.row(&job), DurableRow::Deleted { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_delete_that_finds_the_record_in_redis_while_postgres_is_down_queues_its_tombstone() {
    let t = Tiers::start().await;
    let job = id("job");
    assert!(t.write(&job, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    t.durable.faults.down();
    assert!(t.store.delete(&job).await.unwrap(), "deleted from Redis: 204");
    assert_eq!(t.store.backlog().0, 1, "the tombstone waits for PostgreSQL");
    t.durable.faults.up();
    t.wait_for(|t| t.store.backlog().0 == 0).await;
    assert!(matches!(t.durable.row(&job), DurableRow::Deleted { .. }));
}
