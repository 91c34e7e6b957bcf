//! The cache's coherence under concurrency: reads and writes in flight
//! while notices arrive, over an embedded store whose operations a test
//! can hold at a gate.

use super::*;
use crate::store::MemoryStore;

fn record(version: u64) -> StoredRecord {
    StoredRecord::sample(version)
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
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.inner.list(query).await
    }
}

crate::store::operations_of_inner!(GatedStore, inner);

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

/// `cached` answers what `get` would serve from memory, and nothing else:
/// no entry, a cache that is off, or an entry a notice dropped are `None`
/// (the caller then asks `get`).
#[tokio::test]
async fn the_answer_without_waiting_is_a_fresh_entry_or_none() {
    let memory = MemoryStore::start(Duration::from_secs(60));
    let cache = CachedStore::new(memory.clone(), CONFIG);
    let id = ProgressId::parse("a").unwrap();
    memory.compare_and_set(&id, 0, &record(1), 60_000).await.unwrap();
    cache.get(&id).await.unwrap();
    assert!(cache.cached(&id).is_none(), "not live: nothing cached");
    cache.reset(true);
    assert!(cache.cached(&id).is_none(), "live, but not read yet: the cache does not read through");
    cache.get(&id).await.unwrap();
    assert_eq!(cache.cached(&id).map(|r| r.version()), Some(1));
    cache.noticed("a", 2);
    assert!(cache.cached(&id).is_none(), "a notice of another version drops the entry");
    cache.get(&id).await.unwrap();
    assert!(cache.cached(&id).is_some());
    cache.reset(false);
    assert!(cache.cached(&id).is_none(), "off");
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
    let mut taken = cache.read(&id, Read::ToWrite).await.unwrap().unwrap();
    assert!(taken.is_decoded(), "handed over with the decoded record");
    assert_eq!(decoded_count(&cache), 0, "the entry keeps its bytes only");
    let again = cache.read(&id, Read::ToWrite).await.unwrap().unwrap();
    assert!(!again.is_decoded(), "a second writer parses the bytes");
    let read = cache.get(&id).await.unwrap().unwrap();
    assert_eq!((read.version(), read.raw()), (1, taken.raw()), "reads are served from the same entry");
    assert_eq!(taken.take_record().unwrap(), again.record().unwrap(), "taken, it is the record the bytes hold");
    assert!(!taken.is_decoded());
}
