//! A read cache in front of Redis that stays coherent across instances.
//!
//! Every write and delete in Redis publishes `{version}:{id}` on the
//! channel `{prefix}progress:changes` from inside its Lua script, so the
//! notice leaves Redis in the same atomic step as the change. Each
//! instance listens ([`super::ChangeNotices`]) and drops the entry. A read
//! that misses fetches from Redis and caches the result only if no change
//! notice for that id (nor a reconnect) arrived while it was in flight, so
//! an old version can never be cached after a newer one was announced.
//!
//! A write through this instance keeps what it stored: once the
//! compare-and-set succeeds, the new version replaces the entry, so the
//! next write of the record reads its previous version from memory and
//! costs one Redis round trip (the compare-and-set) instead of two. The
//! compare-and-set checks in Redis that the record is still the one the
//! write read, so a stale entry never loses an update: it only makes the
//! write retry, after the entry is dropped. Only the write's own change notice (the one carrying the
//! version it wrote) leaves that entry in place; any other notice for the
//! id drops it, and so does one that arrived between the compare-and-set
//! and the insert unless it was that very notice, so a write never caches
//! a version that a notice it has already heard of superseded.
//!
//! The cache serves only while the listener's subscription is live and
//! answers pings; otherwise it is cleared and every read goes to Redis.
//! Entries also expire with the record and after `max_age` at the latest,
//! which bounds staleness even if a notice were silently lost.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::shard::{Entry, Shard};
use self::write_guard::WriteGuard;
use super::{
    BacklogSummary, ChangeSink, CleanupReport, Health, ListPage, ListQuery, Maintenance, ProgressStore, Read,
    RecordFilter, StatusCounts, Store, StoreError, TierHealth,
};
use crate::domain::{ProgressId, StoredRecord, Timestamp};

mod shard;
mod write_guard;

/// Shards of the cache, each with its own lock.
const SHARDS: usize = 16;

/// Read cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Longest time an entry is served without re-reading Redis.
    pub max_age: Duration,
    /// Most entries held; past it, misses are not cached.
    pub max_entries: usize,
}

/// A store that answers reads from memory when it safely can.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    config: CacheConfig,
    shards: Vec<Mutex<Shard>>,
    /// Bumped for every change notice of an id hashing to the shard.
    epochs: Vec<AtomicU64>,
    /// Bumped on every loss or regain of the subscription.
    generation: AtomicU64,
    /// Whether change notices are arriving.
    live: AtomicBool,
    hasher: foldhash::quality::RandomState,
}

impl CachedStore {
    /// A cache over `inner`, off until [`CachedStore::reset`] says notices flow.
    pub fn new(inner: Arc<dyn Store>, config: CacheConfig) -> Self {
        Self {
            inner,
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hasher: Default::default(),
        }
    }

    fn shard_of(&self, id: &str) -> usize {
        (self.hasher.hash_one(id) as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn capacity(&self) -> usize {
        self.config.max_entries.div_ceil(SHARDS)
    }

    /// Drops the entry for `id` and stops reads in flight from caching it.
    pub fn invalidate(&self, id: &str) {
        let i = self.shard_of(id);
        self.epochs[i].fetch_add(1, Ordering::SeqCst);
        self.shard(i).remove(id);
    }

    /// A change notice: `id` is now at `version` (0: deleted). Drops the
    /// entry unless it is the version a write through this instance just
    /// stored, waiting for exactly this notice; stops reads in flight from
    /// caching what they read.
    pub fn noticed(&self, id: &str, version: u64) {
        let i = self.shard_of(id);
        self.epochs[i].fetch_add(1, Ordering::SeqCst);
        self.shard(i).noticed(id, version);
    }

    /// Reads `id` from the inner store and caches the answer unless a
    /// notice (or a reconnect, or a write through this instance) for its
    /// shard came while the read was in flight.
    async fn read_through(&self, i: usize, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let epoch = self.epochs[i].load(Ordering::SeqCst);
        let record = self.inner.get(id).await?;
        let mut shard = self.shard(i);
        let Some(record) = record else {
            shard.remove(id.as_str());
            return Ok(None);
        };
        // Checked under the shard lock, which `invalidate` also takes, so a
        // notice cannot slip between this check and the insert.
        let unchanged = self.is_live()
            && self.generation.load(Ordering::SeqCst) == generation
            && self.epochs[i].load(Ordering::SeqCst) == epoch;
        if !unchanged {
            return Ok(Some(record));
        }
        // The caller's copy shares the entry's compressed bodies.
        let record = record.with_packed_bodies();
        let entry = Entry { record: record.clone_decoded(), cached_at: Instant::now(), awaiting_own_notice: false };
        shard.drop_stale(self.config.max_age);
        shard.insert(self.capacity(), id.as_str(), entry);
        drop(shard);
        Ok(Some(record))
    }

    /// Empties the cache and turns serving from memory on or off.
    pub fn reset(&self, live: bool) {
        self.live.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for i in 0..SHARDS {
            self.shard(i).clear();
        }
        self.live.store(live, Ordering::SeqCst);
    }

    /// Empties the cache and stops reads in flight from caching what they
    /// read, leaving serving from memory on or off as it is.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for i in 0..SHARDS {
            self.shard(i).clear();
        }
    }

    /// Whether reads may be served from memory.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for `id` if it may be served, else what Redis holds (see
    /// [`CachedStore::hit`] for `to_write`).
    async fn lookup(&self, id: &ProgressId, to_write: bool) -> Result<Option<StoredRecord>, StoreError> {
        let i = self.shard_of(id.as_str());
        match self.hit(i, id, to_write) {
            Some(record) => Ok(Some(record)),
            None => self.read_through(i, id).await,
        }
    }

    /// The entry for `id` (in shard `i`) if it may be served; `to_write`:
    /// the decoded record goes with it (see [`Read::ToWrite`]).
    fn hit(&self, i: usize, id: &ProgressId, to_write: bool) -> Option<StoredRecord> {
        if !self.is_live() {
            return None;
        }
        let mut shard = self.shard(i);
        let entry = shard.entries.get_mut(id.as_str()).filter(|e| self.fresh(e))?;
        if !to_write {
            return Some(entry.record.clone_decoded());
        }
        let record = entry.record.hand_over_decoded();
        shard.decoded -= usize::from(record.is_decoded());
        Some(record)
    }

    fn fresh(&self, entry: &Entry) -> bool {
        entry.cached_at.elapsed() < self.config.max_age && Timestamp::now().millis() < entry.record.meta().x
    }
}

// The cache holds records, not tombstones: a read that found nothing asks Redis.
#[async_trait]
impl super::Tombstones for CachedStore {
    async fn gone(&self, id: &ProgressId) -> Result<Option<super::Gone>, StoreError> {
        self.inner.gone(id).await
    }
}

#[async_trait]
impl ProgressStore for CachedStore {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.lookup(id, false).await
    }

    fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        self.hit(self.shard_of(id.as_str()), id, false)
    }

    async fn read(&self, id: &ProgressId, how: Read) -> Result<Option<StoredRecord>, StoreError> {
        match how {
            Read::Cached => self.lookup(id, false).await,
            Read::ToWrite => self.lookup(id, true).await,
            Read::Uncached => self.read_through(self.shard_of(id.as_str()), id).await,
        }
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let write = WriteGuard::begin(self, id.as_str());
        let stored = self.inner.compare_and_set(id, expected, record, ttl_ms).await;
        // Stored: cache it, unless a newer change was heard of meanwhile.
        // Refused (the entry was stale) or failed (even a timeout may have
        // written): the entry is dropped.
        write.finish(matches!(stored, Ok(true)).then_some(record));
        stored
    }

    async fn compare_and_swap(
        &self,
        id: &ProgressId,
        current: Option<&StoredRecord>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let write = WriteGuard::begin(self, id.as_str());
        let stored = self.inner.compare_and_swap(id, current, record, ttl_ms).await;
        write.finish(matches!(stored, Ok(true)).then_some(record));
        stored
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        let deleted = self.inner.compare_and_delete(id, expected).await;
        self.invalidate(id.as_str());
        deleted
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        let deleted = self.inner.delete(id).await;
        self.invalidate(id.as_str());
        deleted
    }

    // Pages are not cached: each is one bounded round trip to the inner store.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.inner.list(query).await
    }
}

#[async_trait]
impl Health for CachedStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn report_metrics(&self) {
        crate::metrics::set_read_cache_entries(self.len());
        self.inner.report_metrics();
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.inner.ping().await
    }

    async fn health(&self) -> Vec<TierHealth> {
        self.inner.health().await
    }
}

#[async_trait]
impl Maintenance for CachedStore {
    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        self.inner.cleanup(exclusive).await
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let deleted = self.inner.delete_matching(filter).await;
        // Each delete's notice evicts its entry too, but only once it has
        // travelled through Redis: this instance must not serve one after answering.
        self.forget_all();
        deleted
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.inner.count_by_status().await
    }

    fn write_behind(&self) -> Option<BacklogSummary> {
        self.inner.write_behind()
    }
}

impl ChangeSink for CachedStore {
    fn changed(&self, id: &str, version: u64) {
        self.noticed(id, version);
    }

    fn listening(&self, live: bool) {
        self.reset(live);
    }
}

#[cfg(test)]
mod tests;
