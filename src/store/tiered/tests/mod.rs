//! The tiering layer over in-process fakes: one test per degraded mode of
//! the README's storage section and SPEC §3, each named after the rule it
//! checks. Tokio's clock is paused, and [`advance`] moves it together with
//! the wall clock that breakers, expiries and the settle time read, so a
//! test of minutes of outage runs in milliseconds. The real-server tests
//! of the same rules are `tests/degraded.rs` and `tests/durable_tier.rs`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use self::fakes::{FakeDurable, FakeHot};
use super::{BreakerState, Hot, TieredConfig, TieredStore};
use crate::domain::{ClientFields, ProgressId, StoredRecord, Timestamp, Touched, WritePolicy, apply_write, test_clock};
use crate::store::{DurableRow, DurableTier, ProgressStore, StoreError};

mod across_tiers;
mod durable_outage;
mod fake_peers;
mod fake_tombstones;
mod fakes;
mod handover;
mod hot_outage;
mod unknown_durable;

/// Every update reaches PostgreSQL within this; at 50 ms (the shortest
/// flush tick) every backlog entry is due at the next tick.
const PERSIST: Duration = Duration::from_millis(50);
/// How often an open breaker probes its tier.
const PROBE: Duration = Duration::from_millis(100);
/// Consecutive failures that open a breaker.
const FAILURES: u32 = 3;
/// How long the flush at shutdown keeps trying.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Longest a request waits for PostgreSQL's first answer (the database timeout).
const FIRST_ANSWER: Duration = Duration::from_secs(1);
/// A record's time to live.
const TTL_MS: i64 = 3_600_000;

/// The store under test and its two fake tiers.
struct Tiers {
    store: Arc<TieredStore<FakeHot, FakeDurable>>,
    hot: Arc<FakeHot>,
    durable: Arc<FakeDurable>,
}

impl Tiers {
    /// Both tiers up; returns once PostgreSQL's migrations have run.
    async fn start() -> Self {
        let tiers = Self::start_with(|_, _| {}).await;
        tiers.wait_for(|t| t.store.breaker_states().1 != BreakerState::Open).await;
        tiers
    }

    /// Starts the store after `before` has set up the fakes' faults.
    async fn start_with(before: impl FnOnce(&FakeHot, &FakeDurable)) -> Self {
        Self::launch(PERSIST, before).await
    }

    /// Both tiers up, with a persist interval of `persist`.
    async fn start_persisting_every(persist: Duration) -> Self {
        let tiers = Self::launch(persist, |_, _| {}).await;
        tiers.wait_for(|t| t.store.breaker_states().1 != BreakerState::Open).await;
        tiers
    }

    async fn launch(persist: Duration, before: impl FnOnce(&FakeHot, &FakeDurable)) -> Self {
        let (hot, durable) = (Arc::new(FakeHot::default()), Arc::new(FakeDurable::default()));
        before(&hot, &durable);
        let tiers = Self::fresh(persist, hot, durable);
        tokio::task::yield_now().await;
        tiers
    }

    /// A fresh instance over `hot` and `durable`, returned before any of its
    /// background tasks has run: PostgreSQL's first answer is still to come.
    fn fresh(persist: Duration, hot: Arc<FakeHot>, durable: Arc<FakeDurable>) -> Self {
        let config = TieredConfig {
            persist_interval: persist,
            breaker_failures: FAILURES,
            probe_every: PROBE,
            shutdown_flush: SHUTDOWN_FLUSH,
            first_answer_wait: FIRST_ANSWER,
        };
        let layer = Hot { store: hot.clone(), tier: hot.clone(), cache: None };
        let store = TieredStore::start(Some(layer), durable.clone(), config);
        Self { store, hot, durable }
    }

    fn hot_breaker(&self) -> BreakerState {
        self.store.breaker_states().0.expect("a hot tier")
    }

    fn durable_breaker(&self) -> BreakerState {
        self.store.breaker_states().1
    }

    /// Advances the clocks a probe interval at a time until `done` holds
    /// (at most a minute of test time).
    async fn wait_for(&self, done: impl Fn(&Self) -> bool) {
        for _ in 0..600 {
            if done(self) {
                return;
            }
            advance(PROBE).await;
        }
        panic!("not reached within a minute");
    }

    /// Reads until the hot breaker opens (each read fails in Redis once).
    async fn open_hot_breaker(&self) {
        for _ in 0..FAILURES {
            let _ = self.store.get(&id("probe")).await;
        }
        assert_eq!(self.hot_breaker(), BreakerState::Open);
    }

    /// Creates `job` at version 1 (returned with its creation time), then
    /// Redis goes down and its breaker opens.
    async fn job_then_redis_down(&self) -> (ProgressId, Timestamp) {
        let (job, created) = (id("job"), Timestamp::now());
        assert!(self.write(&job, &record_at("job", 1, "running", created)).await.unwrap());
        self.hot.faults.down();
        self.open_hot_breaker().await;
        (job, created)
    }

    /// Writes `record` over the version before it (a create at version 1).
    async fn write(&self, id: &ProgressId, record: &StoredRecord) -> Result<bool, StoreError> {
        self.store.compare_and_set(id, record.version() - 1, record, TTL_MS).await
    }

    async fn version(&self, id: &ProgressId) -> Result<u64, StoreError> {
        Ok(self.store.get(id).await?.map_or(0, |r| r.version()))
    }
}

/// Moves tokio's clock and the wall clock together, letting every task
/// that wakes run.
async fn advance(by: Duration) {
    test_clock::advance_ms(i64::try_from(by.as_millis()).unwrap());
    tokio::time::advance(by).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn id(text: &str) -> ProgressId {
    ProgressId::parse(text).unwrap()
}

/// Version `version` of the record `id` in `status`, created at `created`
/// (versions of one incarnation share it).
fn record_at(id: &str, version: u64, status: &str, created: Timestamp) -> StoredRecord {
    let policy = WritePolicy { default_ttl_seconds: 3600, heartbeat_ms: 1000 };
    let fields = ClientFields::from_json(&json!({ "status": status }), 3600).unwrap();
    let (mut r, mut m) = apply_write(&self::id(id), None, fields, Touched::default(), created, &policy);
    (r.version, m.v) = (version, version);
    m.x = Timestamp::now().millis() + TTL_MS;
    StoredRecord::encode(&m, &r)
}

fn is_unavailable<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Unavailable { .. }))
}
