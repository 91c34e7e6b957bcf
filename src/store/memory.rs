//! The embedded hot tier: a map in process memory with the same TTL
//! semantics as Redis. What `cargo run` gives a new user.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::bulk::{RecordFilter, StatusCounts, delete_page, status_of};
use super::health::{LastError, TierHealth, timed};
use super::listing::{ListCursor, ListPage, ListQuery, Verdict, merge_descending, walk};
use super::{
    BacklogSummary, CleanupReport, DEFAULT_TOMBSTONE, Gone, Health, Maintenance, ProgressStore, StoreError, Tombstones,
};
use crate::domain::{ProgressId, Status, StoredRecord, Timestamp};
use crate::metrics::store_op;

/// In-process store. Expired records are invisible at once and swept
/// from memory by a background task, which keeps a tombstone of each
/// (and of each delete) for the tombstone time.
#[derive(Debug)]
pub struct MemoryStore {
    // A std Mutex: the critical sections are a hash lookup (or one bounded
    // page of the listing index) and never await.
    records: Mutex<Records>,
    /// How long a deleted or expired record is remembered.
    tombstone: Duration,
}

/// The records and the listing indexes over them, changed together.
#[derive(Debug, Default)]
struct Records {
    map: HashMap<String, Entry>,
    /// Every held record by `(created ms, id)`: the listing order, reversed.
    index: BTreeSet<ListCursor>,
    /// The same per status, in the order of [`Status::ALL`].
    by_status: [BTreeSet<ListCursor>; 5],
    /// How each record that is no longer held went, and when.
    gone: HashMap<String, Gone>,
}

#[derive(Debug)]
struct Entry {
    record: StoredRecord,
    expires_at: Instant,
    status: Status,
}

fn status_slot(status: Status) -> usize {
    Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status")
}

impl Records {
    fn insert(&mut self, id: &str, entry: Entry) {
        self.remove(id);
        self.gone.remove(id);
        let key = ListCursor::of(id, &entry.record);
        self.by_status[status_slot(entry.status)].insert(key.clone());
        self.index.insert(key);
        self.map.insert(id.to_owned(), entry);
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.map.remove(id)?;
        let key = ListCursor::of(id, &entry.record);
        self.index.remove(&key);
        self.by_status[status_slot(entry.status)].remove(&key);
        Some(entry)
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        self.map.get(id)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A store with no sweeper (expired records stay invisible until
/// [`MemoryStore::sweep_expired`]), keeping tombstones for a day.
impl Default for MemoryStore {
    fn default() -> Self {
        Self { records: Mutex::default(), tombstone: DEFAULT_TOMBSTONE }
    }
}

/// The tombstone an expired entry leaves: its expiry as the record says it.
fn expired_tombstone(entry: &Entry) -> Gone {
    Gone::expired(Timestamp(entry.record.meta().x))
}

impl MemoryStore {
    /// An empty store with a sweeper that runs every `sweep_every` for as
    /// long as the store lives, keeping tombstones for a day. Must be
    /// called inside a Tokio runtime.
    pub fn start(sweep_every: Duration) -> Arc<Self> {
        Self::start_with_tombstones(sweep_every, DEFAULT_TOMBSTONE)
    }

    /// [`MemoryStore::start`], keeping deleted and expired records'
    /// tombstones for `tombstone`.
    pub fn start_with_tombstones(sweep_every: Duration, tombstone: Duration) -> Arc<Self> {
        let store = Arc::new(Self { tombstone, ..Self::default() });
        let weak = Arc::downgrade(&store);
        tokio::spawn(sweep(weak, sweep_every));
        store
    }

    /// Drops every expired record, keeping its tombstone, and the
    /// tombstones older than the tombstone time; returns how many records.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut records = self.lock();
        let expired: Vec<String> =
            records.map.iter().filter(|(_, e)| e.expires_at <= now).map(|(id, _)| id.clone()).collect();
        for id in &expired {
            if let Some(entry) = records.remove(id) {
                records.gone.insert(id.clone(), expired_tombstone(&entry));
            }
        }
        let (keep, wall) = (self.tombstone, Timestamp::now());
        records.gone.retain(|_, gone| gone.kept_at(keep, wall) || gone.at > wall);
        expired.len()
    }

    /// Records held, expired or not.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live records whose id passes `keep`, copied out so that the
    /// lock is held only for the copy (the bytes are shared, not cloned).
    fn snapshot(&self, keep: impl Fn(&str) -> bool) -> Vec<(ProgressId, StoredRecord)> {
        let now = Instant::now();
        let records = self.lock();
        records
            .map
            .iter()
            .filter(|(id, e)| e.expires_at > now && keep(id))
            .filter_map(|(id, e)| Some((ProgressId::parse(id).ok()?, e.record.clone())))
            .collect()
    }

    /// The record of `id`, unless absent or expired.
    fn live(&self, id: &ProgressId) -> Option<StoredRecord> {
        let records = self.lock();
        records.get(id.as_str()).filter(|e| e.expires_at > Instant::now()).map(|e| e.record.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        // A panic while holding the lock cannot leave a half-written entry
        // (inserts are single calls), so a poisoned map is still consistent.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn sweep(store: Weak<MemoryStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        store.sweep_expired();
    }
}

#[async_trait]
impl ProgressStore for MemoryStore {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        store_op!("memory", "get").succeeded();
        Ok(self.live(id))
    }

    /// The whole read, when it finds the record (a miss is counted by `get`).
    fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        let record = self.live(id)?;
        store_op!("memory", "get").succeeded();
        Some(record)
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        store_op!("memory", "compare_and_set").succeeded();
        let now = Instant::now();
        let mut records = self.lock();
        let current = records.get(id.as_str()).filter(|e| e.expires_at > now).map_or(0, |e| e.record.version());
        if current != expected {
            return Ok(false);
        }
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
        let expires_at = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(86_400 * 365 * 100));
        let status = status_of(record)?;
        records.insert(id.as_str(), Entry { record: record.clone(), expires_at, status });
        Ok(true)
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        store_op!("memory", "compare_and_delete").succeeded();
        let mut records = self.lock();
        let current = records.get(id.as_str()).filter(|e| e.expires_at > Instant::now());
        if current.is_none_or(|e| e.record.version() != expected) {
            return Ok(false);
        }
        records.remove(id.as_str());
        records.gone.insert(id.as_str().to_owned(), Gone::deleted(Timestamp::now()));
        Ok(true)
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        store_op!("memory", "delete").succeeded();
        let mut records = self.lock();
        let Some(entry) = records.remove(id.as_str()) else { return Ok(false) };
        let live = entry.expires_at > Instant::now();
        // Deleting what had expired already leaves it expired.
        let gone = if live { Gone::deleted(Timestamp::now()) } else { expired_tombstone(&entry) };
        records.gone.insert(id.as_str().to_owned(), gone);
        Ok(live)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        store_op!("memory", "list").succeeded();
        let now = Instant::now();
        let records = self.lock();
        let sources: Vec<&BTreeSet<ListCursor>> = if query.statuses.is_empty() {
            vec![&records.index]
        } else {
            query.statuses.iter().map(|s| &records.by_status[status_slot(*s)]).collect()
        };
        let entries = merge_descending(
            sources
                .into_iter()
                .map(|set| match &query.after {
                    Some(after) => set.range(..after.clone()).rev().cloned(),
                    None => set.range::<ListCursor, _>(..).rev().cloned(),
                })
                .collect(),
        );
        Ok(walk(query, entries, |key| match (records.get(&key.id), ProgressId::parse(&key.id)) {
            (Some(e), Ok(id)) if e.expires_at > now && query.matches_status(e.status) => {
                Verdict::Take(id, e.record.clone())
            }
            _ => Verdict::Skip,
        }))
    }
}

#[async_trait]
impl Tombstones for MemoryStore {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        store_op!("memory", "gone").succeeded();
        let records = self.lock();
        let gone = match records.get(id.as_str()) {
            Some(entry) if entry.expires_at > Instant::now() => None,
            Some(entry) => Some(expired_tombstone(entry)),
            None => records.gone.get(id.as_str()).copied(),
        };
        Ok(gone.filter(|g| g.kept_at(self.tombstone, Timestamp::now())))
    }
}

#[async_trait]
impl Health for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(async {
            drop(self.lock());
            Ok(())
        })
        .await;
        vec![TierHealth::from_probe("memory", probe, latency, &LastError::default())]
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        Ok(Duration::ZERO)
    }

    fn report_metrics(&self) {}
}

#[async_trait]
impl Maintenance for MemoryStore {
    async fn cleanup(&self, _exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        // Each instance has its own memory: no lock to take.
        let swept = self.sweep_expired() as u64;
        Ok(Some(CleanupReport { memory_expired: Some(swept), ..CleanupReport::default() }))
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let candidates = self.snapshot(|id| filter.matches_id(id));
        Ok(delete_page(self, candidates, filter).await?.len() as u64)
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let mut counts = StatusCounts::new("memory");
        for (_, stored) in self.snapshot(|_| true) {
            counts.add(status_of(&stored)?, 1);
        }
        Ok(counts)
    }

    // Nothing is pending: every write is the record itself.
    fn write_behind(&self) -> Option<BacklogSummary> {
        None
    }

    // Memory dies with the process; there is nothing to persist.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Timestamp, Touched, WritePolicy, apply_write};

    fn record(version_after: u64) -> StoredRecord {
        let policy = WritePolicy { default_ttl_seconds: 10, heartbeat_ms: 1000 };
        let id = ProgressId::parse("a").unwrap();
        let (mut r, mut m) = apply_write(&id, None, ClientFields::default(), Touched::default(), Timestamp(0), &policy);
        r.version = version_after;
        m.v = version_after;
        StoredRecord::encode(&m, &r)
    }

    #[tokio::test(start_paused = true)]
    async fn honours_ttl_and_sweeps() {
        let store = MemoryStore::start(Duration::from_secs(1));
        let id = ProgressId::parse("a").unwrap();
        assert!(store.compare_and_set(&id, 0, &record(1), 2_000).await.unwrap());
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(store.get(&id).await.unwrap().unwrap().version(), 1);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(store.get(&id).await.unwrap().is_none());
        // An expired record counts as absent for a create.
        assert!(store.compare_and_set(&id, 0, &record(1), 1_000).await.unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        tokio::task::yield_now().await;
        assert_eq!(store.len(), 0, "the sweeper removed the expired record");
    }

    #[tokio::test]
    async fn compare_and_set_refuses_a_stale_version() {
        let store = MemoryStore::start(Duration::from_secs(60));
        let id = ProgressId::parse("a").unwrap();
        assert!(store.compare_and_set(&id, 0, &record(1), 10_000).await.unwrap());
        assert!(!store.compare_and_set(&id, 0, &record(1), 10_000).await.unwrap());
        assert!(store.compare_and_set(&id, 1, &record(2), 10_000).await.unwrap());
        assert!(store.delete(&id).await.unwrap());
        assert!(!store.delete(&id).await.unwrap());
    }

    #[tokio::test]
    async fn deleted_and_expired_records_leave_tombstones_for_the_tombstone_time() {
        use crate::store::{GoneKind, Tombstones};
        let store = MemoryStore::start_with_tombstones(Duration::from_secs(3600), Duration::from_millis(300));
        let (id, short) = (ProgressId::parse("a").unwrap(), ProgressId::parse("b").unwrap());
        assert!(store.compare_and_set(&id, 0, &record(1), 10_000).await.unwrap());
        let mut expiring = record(1);
        let mut meta = *expiring.meta();
        meta.x = Timestamp::now().millis() + 50;
        expiring = StoredRecord::encode(&meta, &expiring.record().unwrap());
        assert!(store.compare_and_set(&short, 0, &expiring, 50).await.unwrap());
        assert_eq!(store.gone(&id).await.unwrap(), None, "live: not gone");
        assert!(store.delete(&id).await.unwrap());
        assert_eq!(store.gone(&id).await.unwrap().map(|g| g.kind), Some(GoneKind::Deleted));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.gone(&short).await.unwrap(), Some(Gone::expired(Timestamp(meta.x))));
        // Swept: the expired record's tombstone stays.
        assert_eq!(store.sweep_expired(), 1);
        assert_eq!(store.gone(&short).await.unwrap(), Some(Gone::expired(Timestamp(meta.x))));
        assert_eq!(store.gone(&ProgressId::parse("never").unwrap()).await.unwrap(), None);
        // A new incarnation is not gone; after the tombstone time, nothing is.
        assert!(store.compare_and_set(&id, 0, &record(1), 10_000).await.unwrap());
        assert_eq!(store.gone(&id).await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(store.gone(&short).await.unwrap(), None);
        store.sweep_expired();
        assert!(store.lock().gone.is_empty(), "purged by the sweep");
    }
}
