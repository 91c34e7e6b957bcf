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
//! The cache serves only while the listener's subscription is live and
//! answers pings; otherwise it is cleared and every read goes to Redis.
//! Entries also expire with the record and after `max_age` at the latest,
//! which bounds staleness even if a notice were silently lost.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use super::listing::{ListPage, ListQuery};
use super::maintenance::{CleanupReport, RecordFilter, StatusCounts, TierHealth};
use super::{ChangeSink, ProgressStore, StoreError};
use crate::domain::{ProgressId, StoredRecord, Timestamp};

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
    inner: Arc<dyn ProgressStore>,
    config: CacheConfig,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Bumped for every change notice of an id hashing to the shard.
    epochs: Vec<AtomicU64>,
    /// Bumped on every loss or regain of the subscription.
    generation: AtomicU64,
    /// Whether change notices are arriving.
    live: AtomicBool,
    hasher: std::collections::hash_map::RandomState,
}

struct Entry {
    record: StoredRecord,
    cached_at: Instant,
}

impl CachedStore {
    /// A cache over `inner`, off until [`CachedStore::reset`] says notices flow.
    pub fn new(inner: Arc<dyn ProgressStore>, config: CacheConfig) -> Self {
        Self {
            inner,
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hasher: Default::default(),
        }
    }

    fn shard_of(&self, id: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        id.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the entry for `id` and stops reads in flight from caching it.
    pub fn invalidate(&self, id: &str) {
        let i = self.shard_of(id);
        self.epochs[i].fetch_add(1, Ordering::SeqCst);
        self.shard(i).remove(id);
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

    fn fresh(&self, entry: &Entry) -> bool {
        entry.cached_at.elapsed() < self.config.max_age && Timestamp::now().millis() < entry.record.meta().x
    }
}

#[async_trait]
impl ProgressStore for CachedStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn report_metrics(&self) {
        crate::metrics::set_read_cache_entries(self.len());
        self.inner.report_metrics();
    }

    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let i = self.shard_of(id.as_str());
        if self.is_live() {
            let shard = self.shard(i);
            if let Some(entry) = shard.get(id.as_str()).filter(|e| self.fresh(e)) {
                return Ok(Some(entry.record.clone()));
            }
        }
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
        if unchanged {
            let capacity = self.config.max_entries.div_ceil(SHARDS);
            if shard.len() >= capacity && !shard.contains_key(id.as_str()) {
                // Full: drop an arbitrary entry (the map's first) rather than
                // scan the shard under its lock on every miss.
                if let Some(victim) = shard.keys().next().cloned() {
                    shard.remove(&victim);
                }
            }
            shard.insert(id.as_str().to_owned(), Entry { record: record.clone(), cached_at: Instant::now() });
        }
        drop(shard);
        Ok(Some(record))
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let stored = self.inner.compare_and_set(id, expected, record, ttl_ms).await;
        // Whatever happened (even a timeout may have written), the entry is suspect.
        self.invalidate(id.as_str());
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

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.inner.ping().await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    async fn health(&self) -> Vec<TierHealth> {
        self.inner.health().await
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

    // Pages are not cached: each is one bounded round trip to the inner store.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.inner.list(query).await
    }
}

impl ChangeSink for CachedStore {
    fn changed(&self, id: &str, _version: u64) {
        self.invalidate(id);
    }

    fn listening(&self, live: bool) {
        self.reset(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{apply_write, ClientFields, Touched, WritePolicy};
    use crate::store::MemoryStore;

    fn record(version: u64) -> StoredRecord {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let id = ProgressId::parse("a").unwrap();
        let (mut r, mut m) =
            apply_write(&id, None, ClientFields::default(), Touched::default(), Timestamp::now(), &policy);
        (r.version, m.v) = (version, version);
        StoredRecord::encode(&m, &r)
    }

    /// A store whose reads pause, after reading, until the test lets them go.
    struct GatedStore {
        inner: Arc<MemoryStore>,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl ProgressStore for GatedStore {
        fn kind(&self) -> &'static str {
            "gated"
        }
        async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
            let read = self.inner.get(id).await;
            self.gate.acquire().await.unwrap().forget();
            read
        }
        async fn compare_and_set(&self, id: &ProgressId, e: u64, r: &StoredRecord, t: i64) -> Result<bool, StoreError> {
            self.inner.compare_and_set(id, e, r, t).await
        }
        async fn compare_and_delete(&self, id: &ProgressId, e: u64) -> Result<bool, StoreError> {
            self.inner.compare_and_delete(id, e).await
        }
        async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
            self.inner.delete(id).await
        }
    }

    const CONFIG: CacheConfig = CacheConfig { max_age: Duration::from_secs(60), max_entries: 64 };

    #[tokio::test]
    async fn a_read_in_flight_during_a_notice_does_not_cache_the_old_version() {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let gated = Arc::new(GatedStore { inner: memory.clone(), gate: tokio::sync::Semaphore::new(0) });
        let cache = Arc::new(CachedStore::new(gated.clone(), CONFIG));
        cache.reset(true);
        let id = ProgressId::parse("a").unwrap();
        memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();

        let reader = {
            let (cache, id) = (cache.clone(), id.clone());
            tokio::spawn(async move { cache.get(&id).await.unwrap().unwrap().version() })
        };
        for _ in 0..5 {
            tokio::task::yield_now().await; // the reader reads version 1, then waits at the gate
        }
        // Another instance writes version 2; its notice arrives.
        memory.compare_and_set(&id, 1, &record(2), 60_000).await.unwrap();
        cache.invalidate("a");
        gated.gate.add_permits(1);
        assert_eq!(reader.await.unwrap(), 1, "the read in flight returns what it read");
        assert!(cache.is_empty(), "but does not cache it");
        gated.gate.add_permits(1);
        assert_eq!(cache.get(&id).await.unwrap().unwrap().version(), 2);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn serves_from_memory_only_while_live_and_within_capacity() {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let cache = CachedStore::new(memory.clone(), CONFIG);
        let id = ProgressId::parse("a").unwrap();
        memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();
        cache.get(&id).await.unwrap();
        assert!(cache.is_empty(), "not live: nothing cached");
        cache.reset(true);
        cache.get(&id).await.unwrap();
        assert_eq!(cache.len(), 1);
        memory.delete(&id).await.unwrap(); // behind the cache's back
        assert!(cache.get(&id).await.unwrap().is_some(), "served from memory");
        cache.reset(false);
        assert!(cache.get(&id).await.unwrap().is_none(), "off: read through");

        cache.reset(true);
        for n in 0..500 {
            let id = ProgressId::parse(&format!("r{n}")).unwrap();
            memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();
            cache.get(&id).await.unwrap();
        }
        assert!(cache.len() <= CONFIG.max_entries.div_ceil(SHARDS) * SHARDS, "{}", cache.len());
        assert!(cache.len() >= CONFIG.max_entries / 2, "a full shard evicts to make room: {}", cache.len());
    }
}
