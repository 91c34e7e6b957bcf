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

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::breaker::{BreakerState, CircuitBreaker};
use super::listing::{ListPage, ListQuery};
use super::maintenance::{
    BacklogSummary, CleanupReport, MAINTENANCE_BATCH, RecordFilter, StatusCounts, TierHealth, delete_page, status_of,
};
use super::write_behind::{PendingWrite, WriteBehind};
use super::{CachedStore, DurableRow, PostgresStore, ProgressStore, RedisStore, StoreError};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics::{self, store_op};

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
    /// Longest the flush at shutdown keeps trying PostgreSQL.
    pub shutdown_flush: Duration,
}

/// The hot tier as the tiered store sees it.
pub struct HotTier {
    /// What requests use (Redis, possibly behind the read cache).
    pub store: Arc<dyn ProgressStore>,
    /// The Redis store itself, for copying records back after an outage.
    pub redis: Arc<RedisStore>,
    /// The read cache in front of it, if on: emptied after a bulk delete.
    pub cache: Option<Arc<CachedStore>>,
}

/// Redis (optional) over PostgreSQL.
pub struct TieredStore {
    hot: Option<HotTier>,
    durable: Arc<PostgresStore>,
    hot_breaker: CircuitBreaker,
    durable_breaker: CircuitBreaker,
    backlog: WriteBehind,
    config: TieredConfig,
    /// When PostgreSQL last refused this instance's write because another
    /// instance is back on Redis (ms since the epoch; 0: never): writes in
    /// PostgreSQL wait from then as from the breaker opening.
    fenced_at_ms: AtomicI64,
    /// Which of the failures to reach PostgreSQL at start-up are logged.
    durable_errors: super::ErrorLog,
}

/// Which of the hot tier's reads [`TieredStore::read`] makes.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// [`ProgressStore::get`]
    Cached,
    /// [`ProgressStore::get_to_write`]
    ToWrite,
    /// [`ProgressStore::get_uncached`]
    Uncached,
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
            fenced_at_ms: AtomicI64::new(0),
            durable_errors: super::ErrorLog::default(),
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

    /// A read: Redis first (through or past its read cache, as `how`
    /// says), then PostgreSQL and this instance's unflushed writes.
    async fn read(&self, id: &ProgressId, how: Read) -> Result<Option<StoredRecord>, StoreError> {
        let mut hot_missed = false;
        if let Some(hot) = self.hot_usable() {
            let read = match how {
                Read::Cached => hot.store.get(id).await,
                Read::ToWrite => hot.store.get_to_write(id).await,
                Read::Uncached => hot.store.get_uncached(id).await,
            };
            match Self::observe(&self.hot_breaker, read) {
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
        if self.hot.is_some() {
            metrics::fallback_read(hot_missed);
        }
        let newest = match (pending, durable) {
            (Some(PendingWrite::Delete), _) => None,
            (Some(PendingWrite::Upsert(mine)), DurableRow::Live(theirs)) if theirs.recency() > mine.recency() => {
                Some(theirs)
            }
            // Deleted (by any instance) after the incarnation we hold was created.
            (Some(PendingWrite::Upsert(mine)), DurableRow::Deleted { created_at })
                if created_at.millis() >= mine.meta().c =>
            {
                None
            }
            (Some(PendingWrite::Upsert(mine)), _) => Some(mine).filter(|r| r.meta().x > Timestamp::now().millis()),
            (None, DurableRow::Live(found)) => Some(found),
            (None, _) => None,
        };
        if let (true, Some(hot), Some(record)) = (hot_missed, self.hot.as_ref(), &newest) {
            // Read repair: back into Redis with what is left of its TTL.
            let ttl = record.meta().x - Timestamp::now().millis();
            if ttl > 0
                && let Err(e) = hot.redis.put_if_newer(id, record, ttl).await
            {
                tracing::debug!(error = %e, "could not put a record back into redis");
            }
        }
        Ok(newest)
    }

    /// A compare-and-set of `expected` (the version of `current`, when the
    /// caller has it): in Redis while it is usable, else in PostgreSQL.
    async fn swap(
        &self,
        id: &ProgressId,
        expected: u64,
        current: Option<Option<&StoredRecord>>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            let written = match current {
                Some(current) => hot.store.compare_and_swap(id, current, record, ttl_ms).await,
                None => hot.store.compare_and_set(id, expected, record, ttl_ms).await,
            };
            let stored = Self::observe(&self.hot_breaker, written)?;
            if stored {
                self.persist(id, record, expected == 0 || record.meta().d).await;
            }
            return Ok(stored);
        }
        let fence = self.durable_fence(true)?;
        // PostgreSQL is the store of record now; first make it as new as
        // what this instance acknowledged from Redis.
        if let Some(PendingWrite::Upsert(mine)) = self.backlog.pending(id) {
            Self::observe(&self.durable_breaker, self.durable.upsert_newer(&[(id.clone(), mine.clone())]).await)?;
            self.backlog.supersede(id, mine.version());
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        let written = self.durable.compare_and_set_fenced(id, expected, record, fence).await;
        Self::observe(&self.durable_breaker, written)?.ok_or_else(|| self.fenced_off())
    }

    /// The fence for a write in PostgreSQL made because Redis is unusable
    /// (see [`PostgresStore::compare_and_set_fenced`]): `None` with
    /// PostgreSQL alone, else since when this instance has been without
    /// Redis. `settle`: refuse the write until other instances' backlogs
    /// have had time to land (see [`Self::settle_ms`]). Deletes need not
    /// wait for backlogs (a tombstone outranks every version), but once the
    /// fence has refused this instance in this outage, Redis is back for
    /// others and would not hear of a delete here either: then every write
    /// waits.
    fn durable_fence(&self, settle: bool) -> Result<Option<Timestamp>, StoreError> {
        if self.hot.is_none() {
            return match self.durable_breaker.allows() {
                true => Ok(None),
                false => Err(unavailable("postgres", "circuit breaker open")),
            };
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("redis", "both tiers are down"));
        }
        let (opened, fenced) = (self.hot_breaker.opened_at(), Timestamp(self.fenced_at_ms.load(Ordering::Acquire)));
        let since = opened.max(fenced);
        if (settle || fenced > opened) && Timestamp::now() < since.plus_millis(self.settle_ms()) {
            return Err(unavailable(
                "redis",
                "redis is down; writes resume on postgresql once every instance's backlog has reached it",
            ));
        }
        Ok(Some(since))
    }

    /// PostgreSQL refused a write behind the fence: another instance found
    /// Redis answering again and is back on it, so this one must not write
    /// past it. Redis may have taken writes since that other instances hold
    /// in their backlogs, so writes here wait as from a new outage, unless
    /// this instance's own probe reaches Redis first.
    fn fenced_off(&self) -> StoreError {
        self.fenced_at_ms.fetch_max(Timestamp::now().millis(), Ordering::AcqRel);
        unavailable("redis", "redis is back for other instances; this one returns to it once its own probe reaches it")
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
        let horizon = flush_horizon(self.config.persist_interval);
        let mut settled = 0;
        loop {
            if !self.durable_breaker.allows() {
                return Err(unavailable("postgres", "circuit breaker open"));
            }
            let batch = self.backlog.due(horizon, self.config.persist_interval, everything, FLUSH_BATCH);
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
            let started = std::time::Instant::now();
            let written = async {
                if !upserts.is_empty() {
                    Self::observe(&self.durable_breaker, self.durable.upsert_newer(&upserts).await.map(|_| ()))?;
                }
                for due in batch.iter().filter(|d| matches!(d.write, PendingWrite::Delete)) {
                    Self::observe(&self.durable_breaker, self.durable.delete(&due.id).await)?;
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = written {
                self.backlog.release(&batch);
                return Err(e);
            }
            self.backlog.settle(&batch);
            tracing::debug!(
                rows = batch.len(),
                took_us = started.elapsed().as_micros() as u64,
                "write-behind batch flushed"
            );
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
    /// the outage (while writes go on there), raise the fence, which waits
    /// for every instance's writes in PostgreSQL in flight and refuses all
    /// later ones, copy back what came in meanwhile, then let requests use
    /// Redis again. Without the fence, an instance whose probe has not yet
    /// reached Redis would go on writing in PostgreSQL on a version older
    /// than the one this instance writes in Redis, and one of the two
    /// acknowledged writes would be lost (the chaos run caught that).
    async fn recover_hot(&self, hot: &HotTier) -> Result<(), StoreError> {
        // A second of slack for clocks of other instances.
        let outage_began = self.hot_breaker.opened_at().plus_millis(-1000);
        let first_pass = self.copy_back_since(hot, outage_began).await?;
        Self::observe(&self.durable_breaker, self.durable.raise_fence(Timestamp::now()).await)?;
        self.copy_back_since(hot, first_pass.plus_millis(-1000)).await?;
        self.hot_breaker.half_open();
        Ok(())
    }
}

fn unavailable(tier: &'static str, reason: &str) -> StoreError {
    StoreError::Unavailable { tier, reason: reason.to_owned() }
}

impl TieredStore {
    /// How long after Redis went away writes wait before PostgreSQL takes
    /// them: Redis may have lost updates that other instances acknowledged
    /// and hold in their backlogs, due in PostgreSQL within the persist
    /// interval. A write on PostgreSQL's older version before they land
    /// would fork the record, and whichever version lands last would undo
    /// an acknowledged write. One persist interval, two flush ticks and a
    /// second of slack cover every backlog (an instance that sees Redis
    /// fail flushes all of its backlog at once).
    fn settle_ms(&self) -> i64 {
        let interval = self.config.persist_interval;
        let settle = interval + flush_tick(interval) * 2 + Duration::from_secs(1);
        i64::try_from(settle.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The flusher wakes this often, at a fixed rate.
fn flush_tick(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Entries whose deadline falls within this horizon are flushed now: one
/// tick, plus half a tick of slack for a slow flush or a late wake-up, so
/// none waits longer than the persist interval.
fn flush_horizon(interval: Duration) -> Duration {
    flush_tick(interval) * 3 / 2
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
                store_op!("postgres", "migrate").observe(s.durable.migrate()).await
            };
            match ready {
                Ok(()) => {
                    if !migrated {
                        tracing::info!("postgres migrations applied");
                    }
                    migrated = true;
                    s.durable_breaker.half_open();
                }
                Err(e) if !migrated => {
                    let error = e.to_string();
                    // Failing to connect is the tier watcher's to report (`app`).
                    if error.contains("cannot connect") || error.contains("no answer within") {
                        tracing::debug!(error, "postgres is not reachable yet; migrations will retry");
                    } else if s.durable_errors.should_log(&error) {
                        tracing::warn!(error, "postgres answers but the migrations failed; retrying");
                    }
                }
                Err(_) => {}
            }
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

async fn flush_periodically(store: std::sync::Weak<TieredStore>) {
    let Some(tick) = store.upgrade().map(|s| flush_tick(s.config.persist_interval)) else { return };
    // Fixed rate: the time a flush takes does not push the next one back.
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(s) = store.upgrade() else { return };
        // While Redis is down, PostgreSQL is the store of record: flush everything.
        let everything = s.hot.is_some() && !s.hot_breaker.allows();
        if !s.backlog.is_empty()
            && s.durable_breaker.allows()
            && let Err(e) = s.flush(everything).await
        {
            tracing::debug!(error = %e, "flush failed; the backlog is kept");
        }
        drop(s);
    }
}

#[async_trait]
impl ProgressStore for TieredStore {
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

    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.read(id, Read::Cached).await
    }

    async fn get_to_write(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.read(id, Read::ToWrite).await
    }

    async fn get_uncached(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.read(id, Read::Uncached).await
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
        if let Some(hot) = self.hot_usable() {
            let deleted = Self::observe(&self.hot_breaker, hot.store.compare_and_delete(id, expected).await)?;
            if deleted {
                self.delete_durable(id).await;
            }
            return Ok(deleted);
        }
        let fence = self.durable_fence(false)?;
        let deleted =
            Self::observe(&self.durable_breaker, self.durable.compare_and_delete_fenced(id, expected, fence).await)?
                .ok_or_else(|| self.fenced_off())?;
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
        let fence = self.durable_fence(false)?;
        let unflushed = matches!(self.backlog.pending(id),
            Some(PendingWrite::Upsert(r)) if r.meta().x > Timestamp::now().millis());
        let removed = Self::observe(&self.durable_breaker, self.durable.delete_fenced(id, fence).await)?
            .ok_or_else(|| self.fenced_off())?;
        self.forget_during_outage(id);
        Ok(removed || unflushed)
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.durable.ping().await
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (hot, durable) = match &self.hot {
            Some(hot) => tokio::join!(async { Some(hot.redis.health().await) }, self.durable.health()),
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

    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        // PostgreSQL's advisory lock decides which instance cleans up.
        let Some(rows) = self.durable.purge_expired(exclusive).await? else { return Ok(None) };
        let mut report = CleanupReport { postgres_expired_rows: Some(rows), ..CleanupReport::default() };
        if let Some(hot) = &self.hot {
            let redis = hot.redis.cleanup(false).await?.unwrap_or_default();
            report.redis_orphaned_index_entries = redis.redis_orphaned_index_entries;
        }
        Ok(Some(report))
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let Some(hot) = self.hot_usable() else { return self.delete_matching_durable(filter).await };
        // Redis decides for every record it holds, judged by its current
        // version (PostgreSQL may be a persist interval behind): each match is
        // compare-and-deleted at the version read, then tombstoned in PostgreSQL.
        let prefix = filter.id_prefix.as_deref().unwrap_or("");
        let (mut cursor, mut deleted) = (0, 0);
        loop {
            let (next, page) = Self::observe(&self.hot_breaker, hot.redis.scan_page(cursor, prefix).await)?;
            let ids = Self::observe(&self.hot_breaker, delete_page(hot.store.as_ref(), page, filter).await)?;
            deleted += ids.len() as u64;
            self.delete_durable_many(&ids).await;
            if next == 0 {
                break;
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
        // Then what only PostgreSQL holds (Redis lost it): read repair would bring it back.
        if self.durable_breaker.allows() {
            deleted += self.delete_durable_only(hot, filter).await?;
        }
        // The Redis deletes evicted their own entries; a record Redis lost
        // may still be cached here, and must not be served after this answer.
        if let Some(cache) = &hot.cache {
            cache.forget_all();
        }
        Ok(deleted)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        if let Some(hot) = self.hot_usable() {
            match Self::observe(&self.hot_breaker, hot.store.list(query).await) {
                Ok(page) => return Ok(page),
                Err(StoreError::Unavailable { .. }) => {}
                Err(corrupt) => return Err(corrupt),
            }
        }
        if !self.durable_breaker.allows() {
            let tier = if self.hot.is_some() { "redis" } else { "postgres" };
            return Err(unavailable(
                tier,
                if self.hot.is_some() { "both tiers are down" } else { "circuit breaker open" },
            ));
        }
        let mut page = Self::observe(&self.durable_breaker, self.durable.list_page(query).await)?;
        // PostgreSQL may be behind this instance's own acknowledged writes.
        let now = Timestamp::now().millis();
        page.items.retain_mut(|(id, theirs)| match self.backlog.pending(id) {
            Some(PendingWrite::Delete) => false,
            Some(PendingWrite::Upsert(mine)) if mine.recency() > theirs.recency() => {
                // Same incarnation (same place in the order), still live and still matching.
                let keep = mine.meta().c == theirs.meta().c
                    && mine.meta().x > now
                    && status_of(&mine).is_ok_and(|s| query.matches_status(s));
                if keep {
                    *theirs = mine;
                }
                keep
            }
            _ => true,
        });
        Ok(page)
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        if self.durable_breaker.allows() {
            // This instance's unflushed updates first, so that they count.
            if let Err(e) = self.flush(true).await {
                tracing::debug!(error = %e, "flush before counting failed");
            }
            match self.durable.count_statuses().await {
                Ok(counts) => return Ok(counts),
                Err(e) if self.hot_usable().is_none() => return Err(e),
                Err(e) => tracing::debug!(error = %e, "counting in postgres failed; counting in redis"),
            }
        }
        match self.hot_usable() {
            Some(hot) => hot.store.count_by_status().await,
            None => Err(unavailable("postgres", "circuit breaker open")),
        }
    }

    fn write_behind(&self) -> Option<BacklogSummary> {
        Some(BacklogSummary { pending: self.backlog.len(), oldest_age: self.backlog.oldest_age() })
    }

    async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_flush;
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
        if self.durable_breaker.allows()
            && let Ok(removed) = Self::observe(&self.durable_breaker, self.durable.delete(id).await)
        {
            self.backlog.supersede(id, u64::MAX);
            return removed;
        }
        self.backlog.enqueue(id, PendingWrite::Delete);
        false
    }
}

/// Bulk deletes beyond what Redis holds.
impl TieredStore {
    /// PostgreSQL is the store of record (Redis is down or not configured):
    /// tombstone its matching rows, after flushing what this instance
    /// acknowledged and PostgreSQL has not seen. The tombstones reach Redis
    /// with the copy-back when it returns. Behind the fence, like a single
    /// delete: once another instance is back on Redis, this one deletes
    /// nothing more here (the batches before are copied back by that
    /// instance's second pass).
    async fn delete_matching_durable(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let fence = self.durable_fence(false)?;
        if !self.backlog.is_empty() {
            self.flush(true).await?;
        }
        let (ids, fenced) = Self::observe(&self.durable_breaker, self.durable.tombstone_matching(filter, fence).await)?;
        for id in &ids {
            self.forget_during_outage(id);
        }
        match fenced {
            true => Err(self.fenced_off()),
            false => Ok(ids.len() as u64),
        }
    }

    /// Tombstones records just deleted from Redis, or queues the tombstones
    /// while PostgreSQL is down.
    async fn delete_durable_many(&self, ids: &[ProgressId]) {
        if ids.is_empty() {
            return;
        }
        if self.durable_breaker.allows()
            && Self::observe(&self.durable_breaker, self.durable.tombstone_ids(ids).await).is_ok()
        {
            for id in ids {
                self.backlog.supersede(id, u64::MAX);
            }
            return;
        }
        for id in ids {
            self.backlog.enqueue(id, PendingWrite::Delete);
        }
    }

    /// Tombstones the live PostgreSQL rows matching `filter` that Redis does
    /// not hold (the Redis pass judged the others by their current version),
    /// judging by this instance's unflushed write where it has one.
    async fn delete_durable_only(&self, hot: &HotTier, filter: &RecordFilter) -> Result<u64, StoreError> {
        let (mut after, mut deleted) = (String::new(), 0);
        loop {
            let page = Self::observe(
                &self.durable_breaker,
                self.durable.matching_page(filter, &after, MAINTENANCE_BATCH as i64).await,
            )?;
            let Some((last, _)) = page.last() else { return Ok(deleted) };
            after = last.as_str().to_owned();
            let ids: Vec<ProgressId> = page.iter().map(|(id, _)| id.clone()).collect();
            let held = Self::observe(&self.hot_breaker, hot.redis.exists_many(&ids).await)?;
            let mut stale = Vec::new();
            for ((id, version), in_redis) in page.iter().zip(held) {
                // The row matched; this instance's unflushed write, if any, is newer.
                let matches = match self.backlog.pending(id) {
                    _ if in_redis => continue,
                    None => true,
                    Some(PendingWrite::Delete) => continue,
                    Some(PendingWrite::Upsert(mine)) => filter.matches(id, &mine)?,
                };
                if matches {
                    stale.push((id.clone(), *version));
                }
            }
            let gone = Self::observe(&self.durable_breaker, self.durable.tombstone_versions(&stale).await)?;
            for id in &gone {
                self.backlog.supersede(id, u64::MAX);
            }
            deleted += gone.len() as u64;
            if page.len() < MAINTENANCE_BATCH {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}
