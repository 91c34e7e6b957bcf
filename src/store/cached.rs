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

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::listing::{ListPage, ListQuery};
use super::maintenance::{CleanupReport, RecordFilter, StatusCounts, TierHealth};
use super::{ChangeSink, ProgressStore, StoreError};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use async_trait::async_trait;

const SHARDS: usize = 16;

/// Most entries per shard that keep the decoded record a write built beside
/// its bytes (see `StoredRecord::encode_owned`), which spares the next write
/// of the record parsing it: 2048 in all, a few MB at most.
const DECODED_PER_SHARD: usize = 128;

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
    shards: Vec<Mutex<Shard>>,
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
    /// Put there by a write through this instance whose own change notice
    /// (for `record`'s version) has not arrived yet: that one notice does
    /// not drop the entry.
    awaiting_own_notice: bool,
}

/// One shard: cached records, and the writes in flight through this
/// instance for ids of the shard.
#[derive(Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    writes: HashMap<String, WritesInFlight>,
    /// Entries whose record carries its decoded form.
    decoded: usize,
    /// When `drop_stale` last swept the shard.
    swept_at: Option<Instant>,
}

/// The change notices heard for one id while writes of it were in flight.
#[derive(Default)]
struct WritesInFlight {
    /// How many writes of the id are in flight.
    writers: usize,
    /// Notices heard for the id since the first of them began.
    notices: u64,
    /// The version the last of those notices carried (0: deleted).
    last_version: u64,
}

impl Shard {
    fn clear(&mut self) {
        self.entries.clear();
        self.decoded = 0;
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.decoded -= usize::from(entry.record.is_decoded());
        }
    }

    /// Drops the entries older than `max_age` (never served again), at most
    /// once per `max_age`, so that records nobody reads any more do not hold
    /// memory until the shard is full.
    fn drop_stale(&mut self, max_age: Duration) {
        let now = Instant::now();
        if self.swept_at.is_some_and(|t| now.duration_since(t) < max_age) {
            return;
        }
        self.swept_at = Some(now);
        let decoded = &mut self.decoded;
        self.entries.retain(|_, entry| {
            let keep = now.duration_since(entry.cached_at) < max_age;
            *decoded -= usize::from(!keep && entry.record.is_decoded());
            keep
        });
    }

    /// Caches `record` for `id`, making room in a full shard.
    fn insert(&mut self, capacity: usize, id: &str, mut entry: Entry) {
        let replaced = self.entries.get(id).map(|old| old.record.is_decoded());
        if replaced.is_none() && self.entries.len() >= capacity {
            // Full: drop an arbitrary entry (the map's first) rather than
            // scan the shard under its lock on every miss.
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.remove(&victim);
            }
        }
        self.decoded -= usize::from(replaced == Some(true));
        if entry.record.is_decoded() && self.decoded >= DECODED_PER_SHARD {
            entry.record.drop_decoded(); // the bytes (and the compressed bodies) only
        }
        self.decoded += usize::from(entry.record.is_decoded());
        match self.entries.get_mut(id) {
            Some(old) => *old = entry,
            None => {
                self.entries.insert(id.to_owned(), entry);
            }
        }
    }

    /// A change notice for `id` at `version` (0: deleted).
    fn noticed(&mut self, id: &str, version: u64) {
        if let Some(writes) = self.writes.get_mut(id) {
            writes.notices += 1;
            writes.last_version = version;
        }
        match self.entries.get_mut(id) {
            Some(entry) if entry.awaiting_own_notice && version != 0 && entry.record.version() == version => {
                entry.awaiting_own_notice = false;
            }
            Some(_) => self.remove(id),
            None => {}
        }
    }
}

/// A write of one id in flight through the cache. Dropped without
/// [`WriteGuard::finish`] (the request was cancelled), it drops the entry.
struct WriteGuard<'a> {
    cache: &'a CachedStore,
    shard: usize,
    id: &'a str,
    /// `WritesInFlight::notices` when the write began.
    notices_before: u64,
    generation: u64,
    done: bool,
}

impl<'a> WriteGuard<'a> {
    fn begin(cache: &'a CachedStore, id: &'a str) -> Self {
        let i = cache.shard_of(id);
        let generation = cache.generation.load(Ordering::SeqCst);
        let mut shard = cache.shard(i);
        let writes = match shard.writes.get_mut(id) {
            Some(writes) => writes,
            None => shard.writes.entry(id.to_owned()).or_default(),
        };
        writes.writers += 1;
        let notices_before = writes.notices;
        Self { cache, shard: i, id, notices_before, generation, done: false }
    }

    /// Ends the write: `stored` is the record it stored, if it did.
    fn finish(mut self, stored: Option<&StoredRecord>) {
        self.done = true;
        let cache = self.cache;
        let mut shard = cache.shard(self.shard);
        // Reads in flight may hold an older version: they must not cache it.
        cache.epochs[self.shard].fetch_add(1, Ordering::SeqCst);
        let (heard, last_version) = self.leave(&mut shard);
        let keep = stored.and_then(|record| {
            let unchanged = cache.is_live() && cache.generation.load(Ordering::SeqCst) == self.generation;
            // Nothing heard since the write began: its own notice is still to
            // come. One notice for the version written: that was it (or an
            // older incarnation's at the same version, which is then
            // harmless: the real one drops the entry when it comes).
            let awaiting_own_notice = match heard {
                0 => true,
                1 if last_version == record.version() => false,
                _ => return None,
            };
            unchanged.then(|| Entry { record: record.clone_decoded(), cached_at: Instant::now(), awaiting_own_notice })
        });
        match keep {
            Some(entry) => {
                shard.drop_stale(cache.config.max_age);
                shard.insert(cache.capacity(), self.id, entry);
            }
            None => shard.remove(self.id),
        }
    }

    /// Leaves the id's in-flight set: the notices heard since the write
    /// began, and the version of the last one.
    fn leave(&self, shard: &mut Shard) -> (u64, u64) {
        let Some(writes) = shard.writes.get_mut(self.id) else { return (u64::MAX, 0) };
        let heard = (writes.notices - self.notices_before, writes.last_version);
        writes.writers -= 1;
        if writes.writers == 0 {
            shard.writes.remove(self.id);
        }
        heard
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled: the write may or may not have happened.
        let mut shard = self.cache.shard(self.shard);
        self.cache.epochs[self.shard].fetch_add(1, Ordering::SeqCst);
        self.leave(&mut shard);
        shard.remove(self.id);
    }
}

impl CachedStore {
    /// A cache over `inner`, off until [`CachedStore::reset`] says notices flow.
    pub fn new(inner: Arc<dyn ProgressStore>, config: CacheConfig) -> Self {
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
    /// the decoded record goes with it (see [`ProgressStore::get_to_write`]).
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
        self.lookup(id, false).await
    }

    async fn get_to_write(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.lookup(id, true).await
    }

    async fn get_uncached(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.read_through(self.shard_of(id.as_str()), id).await
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
    fn changed(&self, id: &str, version: u64) {
        self.noticed(id, version);
    }

    fn listening(&self, live: bool) {
        self.reset(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Touched, WritePolicy, apply_write};
    use crate::store::MemoryStore;

    fn record(version: u64) -> StoredRecord {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let id = ProgressId::parse("a").unwrap();
        let (mut r, mut m) =
            apply_write(&id, None, ClientFields::default(), Touched::default(), Timestamp::now(), &policy);
        (r.version, m.v) = (version, version);
        StoredRecord::encode(&m, &r)
    }

    /// A store whose reads (and, with `gate_writes`, compare-and-sets)
    /// pause, after doing their work, until the test lets them go.
    struct GatedStore {
        inner: Arc<MemoryStore>,
        gate: tokio::sync::Semaphore,
        gate_writes: bool,
    }

    impl GatedStore {
        fn new(inner: Arc<MemoryStore>, gate_writes: bool) -> Arc<Self> {
            Arc::new(Self { inner, gate: tokio::sync::Semaphore::new(0), gate_writes })
        }
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
            let stored = self.inner.compare_and_set(id, e, r, t).await;
            if self.gate_writes {
                self.gate.acquire().await.unwrap().forget();
            }
            stored
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
        let gated = GatedStore::new(memory.clone(), false);
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

    async fn settle() {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_write_keeps_what_it_stored_until_a_newer_change_is_heard_of() {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let cache = CachedStore::new(memory.clone(), CONFIG);
        cache.reset(true);
        let id = ProgressId::parse("a").unwrap();
        assert!(cache.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap());
        assert_eq!(cache.len(), 1, "the write cached what it stored");
        memory.delete(&id).await.unwrap(); // behind the cache's back
        assert_eq!(cache.get(&id).await.unwrap().unwrap().version(), 1, "served from memory");
        cache.noticed("a", 1);
        assert_eq!(cache.len(), 1, "the write's own notice leaves it");
        cache.noticed("a", 1);
        assert!(cache.is_empty(), "a second notice for that version is another change");

        memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();
        assert!(cache.compare_and_set(&id, 1, &record(2), 60_000).await.unwrap());
        cache.noticed("a", 3); // another instance wrote version 3
        assert!(cache.is_empty(), "a newer version's notice drops it");

        assert!(cache.compare_and_set(&id, 2, &record(3), 60_000).await.unwrap());
        cache.noticed("a", 0);
        assert!(cache.is_empty(), "so does a delete's");

        assert!(!cache.compare_and_set(&id, 7, &record(8), 60_000).await.unwrap());
        assert!(cache.is_empty(), "a refused write caches nothing");
        memory.compare_and_set(&id, 3, &record(4), 60_000).await.unwrap();
        cache.get(&id).await.unwrap();
        assert_eq!(cache.len(), 1);
        assert!(!cache.compare_and_set(&id, 3, &record(4), 60_000).await.unwrap());
        assert!(cache.is_empty(), "and drops the stale entry it was based on");
        assert!(cache.shard(cache.shard_of("a")).writes.is_empty(), "no write is left in flight");
    }

    #[tokio::test]
    async fn a_notice_during_the_write_decides_whether_it_caches() {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let gated = GatedStore::new(memory.clone(), true);
        let cache = Arc::new(CachedStore::new(gated.clone(), CONFIG));
        cache.reset(true);
        let id = ProgressId::parse("a").unwrap();
        let write = |expected: u64, version: u64| {
            let (cache, id) = (cache.clone(), id.clone());
            tokio::spawn(async move { cache.compare_and_set(&id, expected, &record(version), 60_000).await.unwrap() })
        };

        // Its own notice overtakes the answer: cached, and no later notice is its own.
        let writer = write(0, 1);
        settle().await;
        cache.noticed("a", 1);
        gated.gate.add_permits(1);
        assert!(writer.await.unwrap());
        assert_eq!(cache.get(&id).await.unwrap().unwrap().version(), 1);
        cache.noticed("a", 1);
        assert!(cache.is_empty(), "the own notice was already heard");

        // Another instance's newer version is announced before the answer: not cached.
        let writer = write(1, 2);
        settle().await;
        cache.noticed("a", 2);
        cache.noticed("a", 3);
        gated.gate.add_permits(1);
        assert!(writer.await.unwrap());
        assert!(cache.is_empty(), "version 2 was superseded before the write could cache it");

        // Notices for other ids of the shard do not matter; a delete does.
        memory.compare_and_set(&id, 2, &record(3), 60_000).await.unwrap();
        let writer = write(3, 4);
        settle().await;
        cache.noticed("a", 0);
        gated.gate.add_permits(1);
        assert!(writer.await.unwrap());
        assert!(cache.is_empty(), "a delete heard during the write");

        // A cancelled write (its request timed out) drops the entry and leaves nothing behind.
        gated.gate.add_permits(1); // for the read
        assert_eq!(cache.get(&id).await.unwrap().unwrap().version(), 4);
        assert_eq!(cache.len(), 1);
        let writer = write(4, 5);
        settle().await;
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        assert!(cache.is_empty());
        assert!(cache.shard(cache.shard_of("a")).writes.is_empty());
    }

    #[tokio::test]
    async fn a_read_in_flight_during_a_write_does_not_cache_over_it() {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let gated = GatedStore::new(memory.clone(), false);
        let cache = Arc::new(CachedStore::new(gated.clone(), CONFIG));
        cache.reset(true);
        let id = ProgressId::parse("a").unwrap();
        memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();
        let reader = {
            let (cache, id) = (cache.clone(), id.clone());
            tokio::spawn(async move { cache.get(&id).await.unwrap().unwrap().version() })
        };
        settle().await; // the reader has read version 1 and waits
        assert!(cache.compare_and_set(&id, 1, &record(2), 60_000).await.unwrap());
        gated.gate.add_permits(1);
        assert_eq!(reader.await.unwrap(), 1);
        assert_eq!(cache.get(&id).await.unwrap().unwrap().version(), 2, "the write's version stays cached");
    }

    #[test]
    fn a_shard_keeps_a_bounded_number_of_decoded_records() {
        let decoded = || {
            let plain = record(1);
            StoredRecord::encode_owned(plain.meta(), plain.record().unwrap(), 0)
        };
        let entry = |record: StoredRecord| Entry { record, cached_at: Instant::now(), awaiting_own_notice: false };
        let mut shard = Shard::default();
        let count = |shard: &Shard| shard.entries.values().filter(|e| e.record.is_decoded()).count();
        for n in 0..DECODED_PER_SHARD + 10 {
            shard.insert(10_000, &format!("r{n}"), entry(decoded()));
        }
        assert_eq!(shard.len(), DECODED_PER_SHARD + 10);
        assert_eq!(
            (shard.decoded, count(&shard)),
            (DECODED_PER_SHARD, DECODED_PER_SHARD),
            "past the bound, bytes only"
        );
        shard.insert(10_000, "r0", entry(decoded()));
        assert_eq!(shard.decoded, DECODED_PER_SHARD, "replacing a decoded entry with one keeps the count");
        shard.insert(10_000, "r0", entry(record(2)));
        shard.remove("r1");
        assert_eq!((shard.decoded, count(&shard)), (DECODED_PER_SHARD - 2, DECODED_PER_SHARD - 2));
        shard.insert(DECODED_PER_SHARD, "new", entry(decoded()));
        assert_eq!(shard.decoded, count(&shard), "an eviction is counted");
        shard.clear();
        assert_eq!(shard.decoded, 0);
    }

    /// A live cache over an embedded store, after a write of record "a"
    /// that kept its decoded record beside the bytes.
    async fn cache_after_a_write() -> (CachedStore, ProgressId) {
        let memory = MemoryStore::start(Duration::from_secs(60));
        let cache = CachedStore::new(memory.clone(), CONFIG);
        cache.reset(true);
        let id = ProgressId::parse("a").unwrap();
        let plain = record(1);
        let written = StoredRecord::encode_owned(plain.meta(), plain.record().unwrap(), 0);
        assert!(cache.compare_and_swap(&id, None, &written, 60_000).await.unwrap());
        (cache, id)
    }

    #[tokio::test]
    async fn a_write_hands_its_decoded_record_to_the_next_one() {
        let (cache, id) = cache_after_a_write().await;
        assert!(cache.get(&id).await.unwrap().unwrap().is_decoded(), "from the cache, with the decoded record");
        cache.reset(true);
        assert!(!cache.get(&id).await.unwrap().unwrap().is_decoded(), "read from the store: bytes only");
    }

    #[tokio::test]
    async fn a_write_takes_the_decoded_record_out_of_the_cache() {
        let (cache, id) = cache_after_a_write().await;
        let decoded_count = |cache: &CachedStore| cache.shard(cache.shard_of("a")).decoded;
        assert_eq!(decoded_count(&cache), 1);
        let mut taken = cache.get_to_write(&id).await.unwrap().unwrap();
        assert!(taken.is_decoded(), "handed over with the decoded record");
        assert_eq!(decoded_count(&cache), 0, "the entry keeps its bytes only");
        let again = cache.get_to_write(&id).await.unwrap().unwrap();
        assert!(!again.is_decoded(), "a second writer parses the bytes");
        let read = cache.get(&id).await.unwrap().unwrap();
        assert_eq!((read.version(), read.raw()), (1, taken.raw()), "reads are served from the same entry");
        assert_eq!(taken.take_record().unwrap(), again.record().unwrap(), "taken, it is the record the bytes hold");
        assert!(!taken.is_decoded());
    }
}
