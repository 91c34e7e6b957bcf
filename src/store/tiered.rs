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
//!   returns a version older than one acknowledged during the outage.
//! - **Shutdown**: the backlog is flushed before the process exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::breaker::{BreakerState, CircuitBreaker};
use super::write_behind::{PendingWrite, WriteBehind};
use super::{DurableRow, PostgresStore, ProgressStore, RedisStore, StoreError};
use crate::domain::{ProgressId, StoredRecord, Timestamp};

/// Most records written to PostgreSQL in one statement.
const FLUSH_BATCH: usize = 500;
/// Records copied back per query while repairing Redis after an outage.
const REPAIR_PAGE: i64 = 1000;

/// How the tiers are combined.
#[derive(Debug, Clone, Copy)]
pub struct TieredConfig {
    /// Every update reaches PostgreSQL within this long.
    pub persist_interval: Duration,
    /// Consecutive failures that open a breaker.
    pub breaker_failures: u32,
    /// How often an open breaker probes its tier.
    pub probe_every: Duration,
}

/// The hot tier as the tiered store sees it.
pub struct HotTier {
    /// What requests use (Redis, possibly behind the read cache).
    pub store: Arc<dyn ProgressStore>,
    /// The Redis store itself, for copying records back after an outage.
    pub redis: Arc<RedisStore>,
}

/// Redis (optional) over PostgreSQL.
pub struct TieredStore {
    hot: Option<HotTier>,
    durable: Arc<PostgresStore>,
    hot_breaker: CircuitBreaker,
    durable_breaker: CircuitBreaker,
    backlog: WriteBehind,
    config: TieredConfig,
    /// Compare-and-sets running against PostgreSQL because Redis is down;
    /// recovery waits for them before its final copy-back.
    durable_writes_in_flight: AtomicUsize,
}

impl TieredStore {
    /// Builds the store and starts its background work: migrations (retried
    /// until PostgreSQL answers), breaker probes and the flusher. PostgreSQL
    /// is skipped until its migrations have run.
    pub fn start(hot: Option<HotTier>, durable: Arc<PostgresStore>, config: TieredConfig) -> Arc<Self> {
        let store = Arc::new(Self {
            hot,
            durable,
            hot_breaker: CircuitBreaker::new("redis", config.breaker_failures, config.probe_every),
            durable_breaker: CircuitBreaker::new_open("postgres", config.breaker_failures, config.probe_every),
            backlog: WriteBehind::default(),
            config,
            durable_writes_in_flight: AtomicUsize::new(0),
        });
        tokio::spawn(probe_durable(Arc::downgrade(&store)));
        if store.hot.is_some() {
            tokio::spawn(probe_hot(Arc::downgrade(&store)));
        }
        tokio::spawn(flush_periodically(Arc::downgrade(&store)));
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

    fn hot_usable(&self) -> Option<&HotTier> {
        self.hot.as_ref().filter(|_| self.hot_breaker.allows())
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

    async fn durable_lookup(&self, id: &ProgressId) -> Result<DurableRow, StoreError> {
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        Self::observe(&self.durable_breaker, self.durable.lookup(id).await)
    }

    /// Persists an acknowledged hot-tier write: at once when it matters
    /// (create, terminal status) and PostgreSQL is up, else via the backlog.
    async fn persist(&self, id: &ProgressId, record: &StoredRecord, urgent: bool) {
        if urgent && self.durable_breaker.allows() {
            let written = self.durable.upsert_newer(&[(id.clone(), record.clone())]).await;
            if Self::observe(&self.durable_breaker, written).is_ok() {
                self.backlog.supersede(id, record.version());
                return;
            }
        }
        self.backlog.enqueue(id, PendingWrite::Upsert(record.clone()));
    }

    /// Writes due backlog entries to PostgreSQL; returns how many were settled.
    async fn flush(&self, everything: bool) -> Result<usize, StoreError> {
        let tick = flush_tick(self.config.persist_interval);
        let mut settled = 0;
        loop {
            if !self.durable_breaker.allows() {
                return Err(unavailable("postgres", "circuit breaker open"));
            }
            let batch = self.backlog.due(tick, self.config.persist_interval, everything, FLUSH_BATCH);
            if batch.is_empty() {
                return Ok(settled);
            }
            let upserts: Vec<(ProgressId, StoredRecord)> = batch
                .iter()
                .filter_map(|d| match &d.write {
                    PendingWrite::Upsert(r) => Some((d.id.clone(), r.clone())),
                    PendingWrite::Delete => None,
                })
                .collect();
            if !upserts.is_empty() {
                Self::observe(&self.durable_breaker, self.durable.upsert_newer(&upserts).await.map(|_| ()))?;
            }
            for due in batch.iter().filter(|d| matches!(d.write, PendingWrite::Delete)) {
                Self::observe(&self.durable_breaker, self.durable.delete(&due.id).await)?;
            }
            self.backlog.settle(&batch);
            settled += batch.len();
            if batch.len() < FLUSH_BATCH {
                return Ok(settled);
            }
        }
    }

    /// Copies what PostgreSQL took since `since` into Redis: records (never
    /// over a newer one) and deletes (never of a record created after the
    /// delete). Returns the time the copy started, for a second pass.
    async fn copy_back_since(&self, hot: &HotTier, since: Timestamp) -> Result<Timestamp, StoreError> {
        let started = Timestamp::now();
        let mut from = since;
        loop {
            let page = self.durable.updated_since(from, REPAIR_PAGE).await?;
            for (id, row, _) in &page {
                match row {
                    DurableRow::Live(record) => {
                        let ttl = record.meta().x - Timestamp::now().millis();
                        if ttl > 0 {
                            hot.redis.put_if_newer(id, record, ttl).await?;
                        }
                    }
                    DurableRow::Deleted { created_at } => {
                        hot.redis.delete_incarnation(id, *created_at).await?;
                    }
                    DurableRow::Absent => {}
                }
            }
            match page.last() {
                Some((_, _, updated)) if page.len() as i64 == REPAIR_PAGE && *updated > from => from = *updated,
                _ => return Ok(started),
            }
        }
    }

    /// After Redis answers a probe: copy back what PostgreSQL took during
    /// the outage, let requests use Redis again, wait for compare-and-sets
    /// still running against PostgreSQL, and copy back once more.
    async fn recover_hot(&self, hot: &HotTier) -> Result<(), StoreError> {
        // A second of slack for clocks of other instances.
        let outage_began = self.hot_breaker.opened_at().plus_millis(-1000);
        let first_pass = self.copy_back_since(hot, outage_began).await?;
        self.hot_breaker.half_open();
        while self.durable_writes_in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.copy_back_since(hot, first_pass.plus_millis(-1000)).await {
            self.hot_breaker.open();
            return Err(e);
        }
        Ok(())
    }
}

fn unavailable(tier: &'static str, reason: &str) -> StoreError {
    StoreError::Unavailable { tier, reason: reason.to_owned() }
}

/// The flusher wakes this often; entries due within one tick are flushed,
/// so none waits longer than the persist interval.
fn flush_tick(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

async fn probe_hot(store: std::sync::Weak<TieredStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let every = s.hot_breaker.probe_every();
        if s.hot_breaker.state() == BreakerState::Open {
            let hot = s.hot.as_ref().expect("probe_hot runs only with a hot tier");
            if hot.store.ping().await.is_ok() {
                match s.recover_hot(hot).await {
                    Ok(()) => tracing::info!("redis is back; records written during the outage were copied back"),
                    Err(e) => tracing::warn!(error = %e, "redis answers but copying records back failed; retrying"),
                }
            }
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

async fn probe_durable(store: std::sync::Weak<TieredStore>) {
    let mut migrated = false;
    loop {
        let Some(s) = store.upgrade() else { return };
        let every = s.durable_breaker.probe_every();
        if s.durable_breaker.state() == BreakerState::Open {
            let ready = if migrated {
                s.durable.ping().await.map(|_| ())
            } else {
                s.durable.migrate().await
            };
            match ready {
                Ok(()) => {
                    if !migrated {
                        tracing::info!("postgres migrations applied");
                    }
                    migrated = true;
                    s.durable_breaker.half_open();
                }
                Err(e) if !migrated => tracing::warn!(error = %e, "postgres is not reachable yet; migrations will retry"),
                Err(_) => {}
            }
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

async fn flush_periodically(store: std::sync::Weak<TieredStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let tick = flush_tick(s.config.persist_interval);
        // While Redis is down, PostgreSQL is the store of record: flush everything.
        let everything = s.hot.is_some() && !s.hot_breaker.allows();
        if !s.backlog.is_empty() && s.durable_breaker.allows() {
            if let Err(e) = s.flush(everything).await {
                tracing::debug!(error = %e, "flush failed; the backlog is kept");
            }
        }
        drop(s);
        tokio::time::sleep(tick).await;
    }
}

#[async_trait]
impl ProgressStore for TieredStore {
    fn kind(&self) -> &'static str {
        if self.hot.is_some() { "redis+postgres" } else { "postgres" }
    }

    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let mut hot_missed = false;
        if let Some(hot) = self.hot_usable() {
            match Self::observe(&self.hot_breaker, hot.store.get(id).await) {
                Ok(Some(record)) => return Ok(Some(record)),
                Ok(None) => hot_missed = true,
                Err(StoreError::Unavailable { .. }) => {}
                Err(corrupt) => return Err(corrupt),
            }
        }
        // Redis is down or missed: PostgreSQL, and our own newer writes that
        // PostgreSQL has not seen yet (Redis may have lost them: a restart
        // between two requests need not open the breaker).
        let pending = self.backlog.pending(id);
        let durable = match self.durable_lookup(id).await {
            Ok(found) => found,
            Err(_) if hot_missed => return Ok(None),
            Err(e) => return Err(e),
        };
        let newest = match (pending, durable) {
            (Some(PendingWrite::Delete), _) => None,
            (Some(PendingWrite::Upsert(mine)), DurableRow::Live(theirs)) if theirs.recency() > mine.recency() => Some(theirs),
            // Deleted (by any instance) after the incarnation we hold was created.
            (Some(PendingWrite::Upsert(mine)), DurableRow::Deleted { created_at }) if created_at.millis() >= mine.meta().c => None,
            (Some(PendingWrite::Upsert(mine)), _) => Some(mine).filter(|r| r.meta().x > Timestamp::now().millis()),
            (None, DurableRow::Live(found)) => Some(found),
            (None, _) => None,
        };
        if let (true, Some(hot), Some(record)) = (hot_missed, self.hot.as_ref(), &newest) {
            // Read repair: back into Redis with what is left of its TTL.
            let ttl = record.meta().x - Timestamp::now().millis();
            if ttl > 0 {
                if let Err(e) = hot.redis.put_if_newer(id, record, ttl).await {
                    tracing::debug!(error = %e, "could not put a record back into redis");
                }
            }
        }
        Ok(newest)
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            let stored = Self::observe(&self.hot_breaker, hot.store.compare_and_set(id, expected, record, ttl_ms).await)?;
            if stored {
                self.persist(id, record, expected == 0 || record.meta().d).await;
            }
            return Ok(stored);
        }
        if self.hot.is_some() && !self.durable_breaker.allows() {
            return Err(unavailable("redis", "both tiers are down"));
        }
        // PostgreSQL is the store of record now; first make it as new as
        // what this instance acknowledged from Redis.
        self.durable_writes_in_flight.fetch_add(1, Ordering::SeqCst);
        let result = async {
            if let Some(PendingWrite::Upsert(mine)) = self.backlog.pending(id) {
                Self::observe(&self.durable_breaker, self.durable.upsert_newer(&[(id.clone(), mine.clone())]).await)?;
                self.backlog.supersede(id, mine.version());
            }
            if !self.durable_breaker.allows() {
                return Err(unavailable("postgres", "circuit breaker open"));
            }
            Self::observe(&self.durable_breaker, self.durable.compare_and_set(id, expected, record, ttl_ms).await)
        }
        .await;
        self.durable_writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            let deleted = Self::observe(&self.hot_breaker, hot.store.compare_and_delete(id, expected).await)?;
            if deleted {
                self.delete_durable(id).await;
            }
            return Ok(deleted);
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        let deleted = Self::observe(&self.durable_breaker, self.durable.compare_and_delete(id, expected).await)?;
        if deleted {
            self.forget_during_outage(id);
        }
        Ok(deleted)
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            // The tombstone first: a reader that misses Redis in between must
            // find the record deleted, not bring it back from a backlog.
            let in_durable = self.delete_durable(id).await;
            let in_hot = Self::observe(&self.hot_breaker, hot.store.delete(id).await)?;
            return Ok(in_hot || in_durable);
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        let unflushed = matches!(self.backlog.pending(id),
            Some(PendingWrite::Upsert(r)) if r.meta().x > Timestamp::now().millis());
        let removed = Self::observe(&self.durable_breaker, self.durable.delete(id).await)?;
        self.forget_during_outage(id);
        Ok(removed || unflushed)
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.durable.ping().await
    }

    async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.backlog.is_empty() {
                tracing::info!("write-behind backlog flushed");
                return;
            }
            if self.durable_breaker.state() == BreakerState::Open {
                // Shutting down: try PostgreSQL now rather than wait for the probe.
                self.durable_breaker.half_open();
            }
            match self.flush(true).await {
                Ok(n) => tracing::info!(records = n, "flushed the write-behind backlog"),
                Err(e) => tracing::warn!(error = %e, "flushing the backlog failed; retrying"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(pending = self.backlog.len(), "giving up on the backlog: PostgreSQL did not take it");
                return;
            }
            if !self.backlog.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl TieredStore {
    /// A record deleted from PostgreSQL while Redis is down: its pending
    /// write is void. (Its tombstone reaches Redis on recovery.)
    fn forget_during_outage(&self, id: &ProgressId) {
        self.backlog.supersede(id, u64::MAX);
    }

    /// Removes the PostgreSQL row now, or queues the removal; true when a
    /// row was removed now.
    async fn delete_durable(&self, id: &ProgressId) -> bool {
        if self.durable_breaker.allows() {
            if let Ok(removed) = Self::observe(&self.durable_breaker, self.durable.delete(id).await) {
                self.backlog.supersede(id, u64::MAX);
                return removed;
            }
        }
        self.backlog.enqueue(id, PendingWrite::Delete);
        false
    }
}
