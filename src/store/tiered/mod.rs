//! Redis and PostgreSQL as one store that keeps working when either is gone.
//!
//! - **Reads**: Redis first; on a miss or a Redis failure, PostgreSQL (and,
//!   while Redis is down, this instance's newer unflushed writes). A
//!   PostgreSQL hit that has not expired goes back into Redis with its
//!   remaining TTL. No retries on the read path.
//! - **Writes**: the compare-and-set runs in Redis. Creates and terminal
//!   transitions then reach PostgreSQL before the response (when it is up);
//!   other updates join the write-behind backlog, flushed in batches so
//!   every update is in PostgreSQL within the persist interval. While Redis
//!   is down the compare-and-set runs in PostgreSQL instead.
//! - **Breakers**: each tier has one. An open breaker skips its tier at no
//!   cost; a background probe half-opens it once the tier answers. Before
//!   Redis is used again, every record PostgreSQL took during the outage is
//!   copied back into Redis (never over a newer version), so no read
//!   returns a version older than one acknowledged during the outage, and
//!   a fence in PostgreSQL stops the writes other instances still make
//!   there ([`TieredStore::recover_hot`]).
//! - **Shutdown**: the backlog is flushed before the process exits.
//!
//! The files, by concern:
//! - `read.rs`: the read path and read repair.
//! - `gone.rs`: 410 across the tiers (Redis's marker, then PostgreSQL's
//!   tombstone; 503 when only PostgreSQL could tell and cannot be asked).
//! - `write.rs`: compare-and-set and deletes, the fence and the settle time.
//! - `handover.rs`: how instances tell each other, through PostgreSQL, that
//!   their backlogs have landed once Redis fails, so writes move there.
//! - `flush.rs`: the write-behind flusher, and the flush at shutdown.
//! - `recovery.rs`: breaker probes, copy-back when Redis returns,
//!   migrations retried until PostgreSQL takes them.
//! - `bulk.rs`: bulk deletes, cleanup, listing and counts across the tiers.
//! - `breaker.rs`, `write_behind.rs`, `error_log.rs`: the circuit breaker,
//!   the backlog of updates PostgreSQL has not seen, and the log throttle
//!   of retry loops.
//! - `tiers.rs`: what the layer needs of each tier beyond the request path
//!   ([`HotTier`]: `put_if_newer`, `delete_incarnation`, `scan_page`,
//!   `exists_many`; [`DurableTier`]: `lookup`, `upsert_newer`,
//!   `updated_since`, the fenced writes, `raise_fence`, `migrate`;
//!   [`DurableMaintenance`]: purge, tombstones, listing, counts).
//!   [`TieredStore`] is generic over them: the real tiers are `RedisStore`
//!   and `PostgresStore` (`app.rs`), the unit tests (`tests/`) use fakes
//!   with injectable failures, one test per degraded mode.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    CleanupReport, Health, ListPage, ListQuery, Maintenance, ProgressStore, Read, RecordFilter, StatusCounts,
    StoreError, TierHealth,
};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics;

mod breaker;
mod bulk;
mod error_log;
mod flush;
mod gone;
mod handover;
mod read;
mod recovery;
mod tiers;
mod write;
mod write_behind;

#[cfg(test)]
mod tests;

pub use self::breaker::{BreakerState, CircuitBreaker};
pub use self::error_log::ErrorLog;
use self::handover::Decision;
pub use self::handover::{HEARTBEAT_EVERY, LIVE_MS};
pub use self::tiers::{DurableMaintenance, DurableTier, FlushState, Hot, HotTier, PeerNotice, Peers};
pub use self::write_behind::{BacklogSummary, PendingWrite, WriteBehind};

/// How the tiers are combined.
#[derive(Debug, Clone, Copy)]
pub struct TieredConfig {
    /// Every update reaches PostgreSQL within this long.
    pub persist_interval: Duration,
    /// Consecutive failures that open a breaker.
    pub breaker_failures: u32,
    /// How often an open breaker probes its tier.
    pub probe_every: Duration,
    /// Longest the flush at shutdown keeps trying PostgreSQL.
    pub shutdown_flush: Duration,
    /// Longest a request waits for the first attempt to reach PostgreSQL
    /// (its migrations) to end, on a fresh instance: the database timeout.
    pub first_answer_wait: Duration,
}

/// Redis (optional) over PostgreSQL; in general, a [`HotTier`] (optional)
/// over a [`DurableTier`]. Generic rather than over trait objects: the
/// tiers' calls are then static, and their futures are not boxed.
pub struct TieredStore<H, D> {
    hot: Option<Hot<H>>,
    durable: Arc<D>,
    hot_breaker: CircuitBreaker,
    durable_breaker: CircuitBreaker,
    backlog: WriteBehind,
    config: TieredConfig,
    /// When PostgreSQL last refused this instance's write because another
    /// instance is back on Redis (ms since the epoch; 0: never): writes in
    /// PostgreSQL wait from then as from the breaker opening.
    fenced_at_ms: AtomicI64,
    /// Which of the failures to reach PostgreSQL at start-up are logged.
    durable_errors: ErrorLog,
    /// Set once the first attempt to reach PostgreSQL (its migrations) has
    /// ended, either way: until then PostgreSQL is unknown, not down.
    durable_tried: watch::Sender<bool>,
    /// This instance's name among the others ([`Peers`]): random per start.
    instance: String,
    /// Held (shared) by every write to Redis until it has reached the
    /// backlog or PostgreSQL; taken alone by a flush for the other
    /// instances, so that it covers every write acknowledged before it.
    hot_writes: tokio::sync::RwLock<()>,
    /// How the hand-over of the latest Redis outage ended, if it has
    /// (`handover.rs`).
    handed_over: watch::Sender<Decision>,
}

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// Builds the store and starts its background work: migrations (retried
    /// until PostgreSQL answers), breaker probes and the flusher. PostgreSQL
    /// is skipped until its migrations have run; requests that need it
    /// before the first attempt has ended wait for that attempt
    /// (`first_durable_answer`).
    pub fn start(hot: Option<Hot<H>>, durable: Arc<D>, config: TieredConfig) -> Arc<Self> {
        let store = Arc::new(Self {
            hot,
            durable,
            hot_breaker: CircuitBreaker::new("redis", config.breaker_failures, config.probe_every),
            durable_breaker: CircuitBreaker::new_open("postgres", config.breaker_failures, config.probe_every),
            backlog: WriteBehind::default(),
            config,
            fenced_at_ms: AtomicI64::new(0),
            durable_errors: ErrorLog::default(),
            durable_tried: watch::Sender::new(false),
            instance: format!("{:016x}", fastrand::u64(..)),
            hot_writes: tokio::sync::RwLock::new(()),
            handed_over: watch::Sender::new(Decision::NONE),
        });
        tokio::spawn(recovery::probe_durable(Arc::downgrade(&store)));
        if store.hot.is_some() {
            tokio::spawn(recovery::probe_hot(Arc::downgrade(&store)));
            tokio::spawn(handover::coordinate(Arc::downgrade(&store)));
            tokio::spawn(handover::heartbeat(Arc::downgrade(&store)));
        }
        tokio::spawn(flush::flush_periodically(Arc::downgrade(&store)));
        store
    }

    /// Breaker states: (Redis, PostgreSQL); Redis is `None` when not configured.
    pub fn breaker_states(&self) -> (Option<BreakerState>, BreakerState) {
        (self.hot.as_ref().map(|_| self.hot_breaker.state()), self.durable_breaker.state())
    }

    /// Pending writes and the age of the oldest.
    pub fn backlog(&self) -> (usize, Option<Duration>) {
        (self.backlog.len(), self.backlog.oldest_age())
    }

    /// On a fresh instance, waits (at most `first_answer_wait`) until the
    /// first attempt to reach PostgreSQL has ended, so that PostgreSQL's
    /// breaker, open from start-up until then, says whether it answers
    /// rather than only that nothing is known yet. At once afterwards.
    /// Called by every request that needs PostgreSQL, before its breaker.
    async fn first_durable_answer(&self) {
        if *self.durable_tried.borrow() {
            return;
        }
        let mut tried = self.durable_tried.subscribe();
        let _ = tokio::time::timeout(self.config.first_answer_wait, tried.wait_for(|tried| *tried)).await;
    }

    /// When PostgreSQL last refused this instance's write behind the fence.
    fn fenced_at(&self) -> Timestamp {
        Timestamp(self.fenced_at_ms.load(std::sync::atomic::Ordering::Acquire))
    }

    fn hot_usable(&self) -> Option<&Hot<H>> {
        self.hot.as_ref().filter(|_| self.hot_breaker.allows())
    }

    /// An unfenced delete in PostgreSQL: the durable copy of a delete the
    /// hot tier took, or a queued one.
    async fn delete_unfenced(&self, id: &ProgressId) -> Result<bool, StoreError> {
        Ok(self.durable.delete_fenced(id, None).await?.unwrap_or(false))
    }

    /// Accounts a tier's answer in its breaker and passes it on.
    fn observe<T>(breaker: &CircuitBreaker, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) | Err(StoreError::Corrupt(_)) => breaker.record_success(),
            Err(StoreError::Unavailable { .. }) => {
                breaker.record_failure();
            }
        }
        result
    }
}

fn unavailable(tier: &'static str, reason: &str) -> StoreError {
    StoreError::Unavailable { tier, reason: reason.to_owned() }
}

#[async_trait]
impl<H: HotTier, D: DurableTier> ProgressStore for TieredStore<H, D> {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.read_tiers(id, Read::Cached).await
    }

    /// The hot tier's read cache, while the tier is used: a hit is no
    /// answer from Redis, so it leaves the breaker alone (`get` through the
    /// cache counted one as Redis answering, and reset the failure count).
    fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        self.hot_usable()?.store.cached(id)
    }

    async fn read(&self, id: &ProgressId, how: Read) -> Result<Option<StoredRecord>, StoreError> {
        self.read_tiers(id, how).await
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.swap(id, expected, None, record, ttl_ms).await
    }

    async fn compare_and_swap(
        &self,
        id: &ProgressId,
        current: Option<&StoredRecord>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.swap(id, current.map_or(0, StoredRecord::version), Some(current), record, ttl_ms).await
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        self.delete_if_version(id, expected).await
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        self.delete_everywhere(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.list_across_tiers(query).await
    }
}

#[async_trait]
impl<H: HotTier, D: DurableTier> Health for TieredStore<H, D> {
    fn kind(&self) -> &'static str {
        if self.hot.is_some() { "redis+postgres" } else { "postgres" }
    }

    fn report_metrics(&self) {
        let (hot, durable) = self.breaker_states();
        if let Some(hot) = hot {
            metrics::set_breaker_state("redis", hot);
        }
        metrics::set_breaker_state("postgres", durable);
        let (pending, oldest) = self.backlog();
        metrics::set_backlog(pending, oldest);
        if let Some(hot) = &self.hot {
            hot.store.report_metrics();
        }
        self.durable.report_metrics();
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.durable.ping().await
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (hot, durable) = match &self.hot {
            Some(hot) => tokio::join!(async { Some(hot.tier.health().await) }, self.durable.health()),
            None => (None, self.durable.health().await),
        };
        let mut tiers = Vec::new();
        for mut tier in hot.into_iter().flatten() {
            tier.breaker = Some(self.hot_breaker.state());
            tiers.push(tier);
        }
        for mut tier in durable {
            tier.breaker = Some(self.durable_breaker.state());
            tiers.push(tier);
        }
        tiers
    }
}

#[async_trait]
impl<H: HotTier, D: DurableTier> Maintenance for TieredStore<H, D> {
    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        self.cleanup_across_tiers(exclusive).await
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        self.delete_matching_across_tiers(filter).await
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.count_across_tiers().await
    }

    fn write_behind(&self) -> Option<BacklogSummary> {
        Some(BacklogSummary { pending: self.backlog.len(), oldest_age: self.backlog.oldest_age() })
    }

    async fn shutdown(&self) {
        self.flush_at_shutdown().await
    }
}
