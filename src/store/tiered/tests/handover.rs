//! The hand-over to PostgreSQL when Redis fails (`handover.rs`): writes
//! move there once every live instance has flushed its backlog, without
//! the fixed settle time unless an instance does not answer.

use super::*;
use crate::store::{FlushState, Peers};

/// Another instance over the same two fakes (as over one Redis and one
/// PostgreSQL), with its own backlog, breakers and coordinator.
fn neighbour(t: &Tiers, persist: Duration) -> Tiers {
    Tiers::fresh(persist, t.hot.clone(), t.durable.clone())
}

/// Advances the clocks until `done` holds, at most `limit`; how long it took.
async fn within(limit: Duration, done: impl Fn() -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not reached within {limit:?}");
        advance(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn one_instance_writes_to_postgres_as_soon_as_the_breaker_opens() {
    let t = Tiers::start_persisting_every(Duration::from_secs(10)).await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert_eq!((t.durable.version(&job), t.store.backlog().0), (1, 1), "version 2 waits in the backlog");
    t.hot.faults.down();
    t.open_hot_breaker().await;

    let started = tokio::time::Instant::now();
    let written = t.write(&job, &record_at("job", 3, "running", created)).await;
    assert!(written.unwrap(), "the first write after the breaker opened is taken, not refused");
    assert!(started.elapsed() < Duration::from_millis(500), "no settle time: waited {:?}", started.elapsed());
    assert_eq!(t.durable.version(&job), 3, "written on version 2, which the hand-over flushed first");
    assert_eq!(t.store.backlog().0, 0);
}

#[tokio::test(start_paused = true)]
async fn three_instances_write_to_postgres_once_every_backlog_has_landed() {
    let a = Tiers::start_persisting_every(Duration::from_secs(10)).await;
    let b = neighbour(&a, Duration::from_secs(10));
    let c = neighbour(&a, Duration::from_secs(10));
    within(Duration::from_secs(3), || a.durable.peers.count() == 3).await;
    let (job, other) = (id("job"), id("other"));
    let created = Timestamp::now();
    assert!(a.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    assert!(b.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert!(c.write(&other, &record_at("other", 1, "running", created)).await.unwrap());
    assert!(c.write(&other, &record_at("other", 2, "running", created)).await.unwrap());
    assert_eq!((b.store.backlog().0, c.store.backlog().0), (1, 1), "each holds an update PostgreSQL has not seen");
    assert_eq!(a.durable.version(&job), 1);

    a.hot.faults.down();
    a.open_hot_breaker().await;
    let started = tokio::time::Instant::now();
    // A's write on version 1 (all A knows of): B's version 2 lands first, so
    // the compare-and-set is lost (a race the service retries), never a fork.
    let stale = a.write(&job, &record_at("job", 2, "running", created)).await;
    assert!(!stale.unwrap(), "B's acknowledged version 2 reached PostgreSQL before A's write");
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(a.durable.version(&job), 2);
    assert_eq!(a.durable.version(&other), 2, "C flushed too");
    assert!(a.write(&job, &record_at("job", 3, "running", created)).await.unwrap());
    assert_eq!(a.durable.version(&job), 3);
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_does_not_answer_is_waited_for_until_the_settle_time() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    // Alive (it keeps its heartbeat) but deaf to flush requests.
    t.durable.peers.add_silent("deaf", Timestamp(i64::MAX / 2));
    t.hot.faults.down();
    t.open_hot_breaker().await;

    let started = tokio::time::Instant::now();
    let early = t.write(&job, &record_at("job", 2, "running", created)).await;
    assert!(is_unavailable(&early), "refused while an instance may hold unflushed writes: {early:?}");
    assert_eq!(started.elapsed(), FIRST_ANSWER, "after waiting the database timeout for it");
    assert_eq!(t.durable.version(&job), 1);
    // The settle time: one persist interval, two flush ticks and a second
    // (the wall clock, which the settle time reads, moves only with `advance`).
    advance(PERSIST + Duration::from_millis(100) + Duration::from_secs(1)).await;
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert_eq!(t.durable.version(&job), 2);
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_heartbeat_stopped_is_not_waited_for() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    t.durable.peers.add_silent("gone", Timestamp::now().plus_millis(-super::super::LIVE_MS - 1));
    t.hot.faults.down();
    t.open_hot_breaker().await;
    let started = tokio::time::Instant::now();
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
    assert!(started.elapsed() < Duration::from_millis(500), "waited {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_flush_for_the_others_waits_for_redis_writes_in_flight() {
    let t = Tiers::start().await;
    within(Duration::from_secs(3), || t.durable.peers.count() == 1).await;
    let at = Timestamp::now();
    // A write to Redis that has begun and not yet reached the backlog.
    let in_flight = t.store.hot_writes.read().await;
    t.durable.request_flush(Some(at)).await.unwrap();
    advance(Duration::from_millis(500)).await;
    let state = t.durable.flush_state(at, 60_000).await.unwrap();
    assert_eq!(state, FlushState::Waiting, "not confirmed while a write is in flight");
    drop(in_flight);
    // Redis answers this instance: it says so.
    let confirmed = || {
        let state = futures_util::FutureExt::now_or_never(t.durable.flush_state(at, 60_000));
        matches!(state, Some(Ok(FlushState::RedisUpElsewhere)))
    };
    within(Duration::from_secs(1), confirmed).await;
}

#[tokio::test(start_paused = true)]
async fn postgres_down_means_no_confirmation_and_the_settle_time_bounds_the_wait() {
    let t = Tiers::start().await;
    let job = id("job");
    let created = Timestamp::now();
    assert!(t.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
    t.durable.faults.fail("request_flush");
    t.hot.faults.down();
    t.open_hot_breaker().await;
    let early = t.write(&job, &record_at("job", 2, "running", created)).await;
    assert!(is_unavailable(&early), "no instance could be asked: {early:?}");
    advance(Duration::from_secs(2)).await;
    assert!(t.write(&job, &record_at("job", 2, "running", created)).await.unwrap(), "the settle time passed");
}

#[tokio::test(start_paused = true)]
async fn an_instance_leaves_when_it_shuts_down_with_its_backlog_flushed() {
    let a = Tiers::start().await;
    let b = neighbour(&a, PERSIST);
    within(Duration::from_secs(3), || a.durable.peers.count() == 2).await;
    crate::store::Maintenance::shutdown(&*b.store).await;
    assert_eq!(a.durable.peers.count(), 1, "B is no longer waited for");
}

#[tokio::test(start_paused = true)]
async fn an_instance_cut_off_from_a_redis_the_others_reach_writes_nowhere() {
    let a = Tiers::start().await;
    // B reaches a Redis of its own view that keeps answering: A alone is cut off.
    let b = Tiers::fresh(PERSIST, Arc::new(FakeHot::default()), a.durable.clone());
    within(Duration::from_secs(3), || a.durable.peers.count() == 2).await;
    let (job, created) = a.job_then_redis_down().await;
    let cut_off = a.write(&job, &record_at("job", 2, "running", created)).await;
    assert!(is_unavailable(&cut_off), "B still writes in Redis: a write in PostgreSQL would fork: {cut_off:?}");
    // Past the settle time the way time passes, a tenth of a second at a
    // time, so that B's heartbeat ticks on the way as it would. One jump of
    // 3 s left B's last heartbeat right at the 3 s liveness bound whenever
    // its ticker had not run yet after the jump (5 of 40 runs at 3905848).
    for _ in 0..30 {
        advance(Duration::from_millis(100)).await;
    }
    let still = a.write(&job, &record_at("job", 2, "running", created)).await;
    assert!(is_unavailable(&still), "not even after the settle time: {still:?}");
    assert!(is_unavailable(&a.store.delete(&job).await), "nor a delete");
    assert_eq!(a.durable.version(&job), 1);
    assert_eq!(b.hot_breaker(), BreakerState::Closed, "B answered that Redis answers it");

    // Redis dies for B too: B's PING fails, B opens its breaker and says so.
    b.hot.faults.down();
    let started = tokio::time::Instant::now();
    within(Duration::from_secs(2), || b.hot_breaker() == BreakerState::Open).await;
    within(Duration::from_secs(2), || a.store.handed_over(a.store.hot_breaker.opened_at())).await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(a.write(&job, &record_at("job", 2, "running", created)).await.unwrap());
}
