//! In-process tiers for the tiering layer's unit tests: a hot tier and a
//! durable tier over HashMaps, with the compare-and-set, version and
//! tombstone rules of Redis and PostgreSQL (`memory.rs` is the model), and
//! [`Faults`] to make either fail every call, the next N calls or one
//! operation, or hang until its timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::fake_peers::FakePeers;
use super::fake_tombstones::FakeMarkers;

use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::store::bulk::{delete_page, status_of};
use crate::store::{
    BacklogSummary, CleanupReport, DurableMaintenance, DurableRow, DurableTier, Health, HotTier, ListPage, ListQuery,
    Maintenance, ProgressStore, RecordFilter, StatusCounts, StoreError,
};

/// What a fake tier does wrong, and which calls it was asked.
pub(super) struct Faults {
    tier: &'static str,
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    down: bool,
    fail_next: u32,
    failing: Vec<&'static str>,
    hang: Option<Duration>,
    calls: Vec<&'static str>,
}

impl Faults {
    fn new(tier: &'static str) -> Self {
        Self { tier, state: Mutex::new(FaultState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call fails until [`Faults::up`].
    pub(super) fn down(&self) {
        self.lock().down = true;
    }

    /// Back to answering every call (and no longer hanging).
    pub(super) fn up(&self) {
        let mut state = self.lock();
        (state.down, state.fail_next, state.hang) = (false, 0, None);
        state.failing.clear();
    }

    /// The next `n` calls fail.
    pub(super) fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// Every call of `op` fails.
    pub(super) fn fail(&self, op: &'static str) {
        self.lock().failing.push(op);
    }

    /// Every call waits `timeout`, then fails as a tier that does not answer.
    pub(super) fn hang(&self, timeout: Duration) {
        self.lock().hang = Some(timeout);
    }

    /// How many calls of `op` were made.
    pub(super) fn calls(&self, op: &str) -> usize {
        self.lock().calls.iter().filter(|c| **c == op).count()
    }

    /// How many calls were made, of any operation.
    pub(super) fn all_calls(&self) -> usize {
        self.lock().calls.len()
    }

    pub(super) async fn enter(&self, op: &'static str) -> Result<(), StoreError> {
        let (fail, hang) = {
            let mut state = self.lock();
            state.calls.push(op);
            let next = state.fail_next > 0;
            state.fail_next = state.fail_next.saturating_sub(1);
            (state.down || next || state.failing.contains(&op), state.hang)
        };
        if let Some(timeout) = hang {
            tokio::time::sleep(timeout).await;
            return Err(StoreError::Unavailable { tier: self.tier, reason: format!("no answer within {timeout:?}") });
        }
        match fail {
            true => Err(StoreError::Unavailable {
                tier: self.tier,
                reason: format!("{}{op} (injected)", crate::store::health::CANNOT_CONNECT),
            }),
            false => Ok(()),
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().millis()
}

/// The hot tier: records with their expiry, as Redis keeps them.
pub(super) struct FakeHot {
    pub(super) faults: Faults,
    records: Mutex<HashMap<String, (StoredRecord, i64)>>,
    /// Its gone markers (`fake_tombstones.rs`).
    pub(super) markers: FakeMarkers,
}

impl Default for FakeHot {
    fn default() -> Self {
        Self { faults: Faults::new("redis"), records: Mutex::default(), markers: FakeMarkers::default() }
    }
}

impl FakeHot {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (StoredRecord, i64)>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, id: &ProgressId) -> Option<StoredRecord> {
        self.lock().get(id.as_str()).filter(|(_, expires)| *expires > now_ms()).map(|(r, _)| r.clone())
    }

    /// The version held, whatever the faults (0: none).
    pub(super) fn version(&self, id: &ProgressId) -> u64 {
        self.live(id).map_or(0, |r| r.version())
    }

    /// What is left of the record's time to live, in ms.
    pub(super) fn ttl_ms(&self, id: &ProgressId) -> Option<i64> {
        self.lock().get(id.as_str()).map(|(_, expires)| expires - now_ms())
    }

    pub(super) fn put(&self, id: &ProgressId, record: &StoredRecord, ttl_ms: i64) {
        self.lock().insert(id.as_str().to_owned(), (record.clone(), now_ms() + ttl_ms.max(1)));
    }
}

#[async_trait]
impl ProgressStore for FakeHot {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        self.faults.enter("get").await?;
        Ok(self.live(id))
    }

    /// As a read cache in front of Redis answers before it hears that
    /// Redis is down: what it holds, whatever the faults.
    fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        self.live(id)
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.faults.enter("compare_and_set").await?;
        if self.version(id) != expected {
            return Ok(false);
        }
        self.put(id, record, ttl_ms);
        Ok(true)
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        self.faults.enter("compare_and_delete").await?;
        if expected == 0 || self.version(id) != expected {
            return Ok(false);
        }
        self.markers.deleted(id);
        Ok(self.lock().remove(id.as_str()).is_some())
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        self.faults.enter("delete").await?;
        let live = self.live(id).is_some();
        if live {
            self.markers.deleted(id);
        }
        self.lock().remove(id.as_str());
        Ok(live)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.faults.enter("list").await?;
        let now = now_ms();
        let mut items: Vec<(ProgressId, StoredRecord)> = self
            .lock()
            .iter()
            .filter(|(id, (r, expires))| {
                *expires > now && query.matches_id(id) && status_of(r).is_ok_and(|s| query.matches_status(s))
            })
            .filter_map(|(id, (r, _))| Some((ProgressId::parse(id).ok()?, r.clone())))
            .collect();
        items.sort_by(|(a, ra), (b, rb)| (rb.meta().c, b.as_str()).cmp(&(ra.meta().c, a.as_str())));
        items.truncate(query.limit);
        Ok(ListPage { items, next: None })
    }
}

#[async_trait]
impl Health for FakeHot {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.faults.enter("ping").await?;
        Ok(Duration::ZERO)
    }

    fn report_metrics(&self) {}
}

#[async_trait]
impl Maintenance for FakeHot {
    async fn cleanup(&self, _exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        self.faults.enter("cleanup").await?;
        Ok(Some(CleanupReport { redis_orphaned_index_entries: Some(0), ..CleanupReport::default() }))
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let (_, page) = self.scan_page(0, filter.id_prefix.as_deref().unwrap_or("")).await?;
        Ok(delete_page(self, page, filter).await?.len() as u64)
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let (_, page) = self.scan_page(0, "").await?;
        let mut counts = StatusCounts::new("redis");
        for (_, record) in &page {
            counts.add(status_of(record)?, 1);
        }
        Ok(counts)
    }

    fn write_behind(&self) -> Option<BacklogSummary> {
        None
    }

    async fn shutdown(&self) {}
}

impl HotTier for FakeHot {
    async fn put_if_newer(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        ttl_ms: i64,
        same_too: bool,
    ) -> Result<bool, StoreError> {
        self.faults.enter("put_if_newer").await?;
        let newer = |held: &StoredRecord| match same_too {
            true => held.recency() > record.recency(),
            false => held.recency() >= record.recency(),
        };
        if self.live(id).is_some_and(|held| newer(&held)) {
            return Ok(false);
        }
        self.put(id, record, ttl_ms);
        Ok(true)
    }

    async fn delete_incarnation(&self, id: &ProgressId, created_at: Timestamp) -> Result<bool, StoreError> {
        self.faults.enter("delete_incarnation").await?;
        if self.live(id).is_some_and(|held| held.meta().c <= created_at.millis()) {
            return Ok(self.lock().remove(id.as_str()).is_some());
        }
        Ok(false)
    }

    async fn scan_page(
        &self,
        _cursor: u64,
        id_prefix: &str,
    ) -> Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError> {
        self.faults.enter("scan_page").await?;
        let now = now_ms();
        let page = self
            .lock()
            .iter()
            .filter(|(id, (_, expires))| *expires > now && id.starts_with(id_prefix))
            .filter_map(|(id, (r, _))| Some((ProgressId::parse(id).ok()?, r.clone())))
            .collect();
        Ok((0, page))
    }

    async fn exists_many(&self, ids: &[ProgressId]) -> Result<Vec<bool>, StoreError> {
        self.faults.enter("exists_many").await?;
        Ok(ids.iter().map(|id| self.live(id).is_some()).collect())
    }
}

/// One row as PostgreSQL keeps it: a record, or a tombstone (`record:
/// None`, version `u64::MAX`), with its times in ms.
#[derive(Clone)]
pub(super) struct Row {
    pub(super) record: Option<StoredRecord>,
    version: u64,
    created: i64,
    pub(super) updated: i64,
    pub(super) expires: i64,
}

impl Row {
    fn of(record: &StoredRecord) -> Self {
        let meta = record.meta();
        Self { record: Some(record.clone()), version: meta.v, created: meta.c, updated: now_ms(), expires: meta.x }
    }

    fn live(&self) -> Option<&StoredRecord> {
        self.record.as_ref().filter(|_| self.expires > now_ms())
    }

    fn tombstone(&mut self) {
        let now = now_ms();
        (self.record, self.version, self.updated) = (None, u64::MAX, now);
        self.expires = self.expires.max(now + 86_400_000);
    }
}

/// The durable tier: rows (records and tombstones) and the fence.
pub(super) struct FakeDurable {
    pub(super) faults: Faults,
    rows: Mutex<HashMap<String, Row>>,
    fence_ms: Mutex<i64>,
    /// The instances' heartbeats and flush requests (`fake_peers.rs`).
    pub(super) peers: FakePeers,
}

impl Default for FakeDurable {
    fn default() -> Self {
        let (rows, fence_ms) = (Mutex::default(), Mutex::new(0));
        Self { faults: Faults::new("postgres"), rows, fence_ms, peers: FakePeers::default() }
    }
}

impl FakeDurable {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The row for `id`, whatever the faults.
    pub(super) fn row(&self, id: &ProgressId) -> DurableRow {
        match self.lock().get(id.as_str()) {
            Some(row) if row.expires <= now_ms() => DurableRow::Absent,
            Some(Row { record: Some(record), .. }) => DurableRow::Live(record.clone()),
            Some(row) => DurableRow::Deleted { created_at: Timestamp(row.created) },
            None => DurableRow::Absent,
        }
    }

    /// The live version held (0: none).
    pub(super) fn version(&self, id: &ProgressId) -> u64 {
        match self.row(id) {
            DurableRow::Live(record) => record.version(),
            _ => 0,
        }
    }

    /// When the fence was last raised (ms; 0: never).
    pub(super) fn fence(&self) -> i64 {
        *self.fence_ms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `fence` keeps a write made since then out.
    fn fenced_off(&self, fence: Option<Timestamp>) -> bool {
        fence.is_some_and(|since| self.fence() >= since.millis())
    }

    fn live_matching<'a>(rows: &'a HashMap<String, Row>, filter: &RecordFilter) -> Vec<(&'a String, &'a Row)> {
        let now = now_ms();
        rows.iter()
            .filter(|(id, row)| row.expires > now && filter.matches_id(id))
            .filter(|(id, row)| {
                let (Some(record), Ok(id)) = (&row.record, ProgressId::parse(id)) else { return false };
                filter.matches(&id, record).unwrap_or(false)
            })
            .collect()
    }
}

#[async_trait]
impl Health for FakeDurable {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        self.faults.enter("ping").await?;
        Ok(Duration::ZERO)
    }

    fn report_metrics(&self) {}
}

impl DurableTier for FakeDurable {
    async fn lookup(&self, id: &ProgressId) -> Result<DurableRow, StoreError> {
        self.faults.enter("lookup").await?;
        Ok(self.row(id))
    }

    async fn upsert_newer(&self, records: &[(ProgressId, StoredRecord)]) -> Result<u64, StoreError> {
        self.faults.enter("upsert_newer").await?;
        let (mut rows, mut written) = (self.lock(), 0);
        for (id, record) in records {
            let newer = rows.get(id.as_str()).is_none_or(|row| {
                (row.created, row.version) < (record.meta().c, record.version()) || row.expires <= now_ms()
            });
            if newer {
                rows.insert(id.as_str().to_owned(), Row::of(record));
                written += 1;
            }
        }
        Ok(written)
    }

    async fn updated_since(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> Result<Vec<(ProgressId, DurableRow, Timestamp)>, StoreError> {
        self.faults.enter("updated_since").await?;
        let now = now_ms();
        let rows = self.lock();
        let mut changed: Vec<(i64, &String, &Row)> = rows
            .iter()
            .filter(|(_, row)| row.updated >= since.millis() && row.expires > now)
            .map(|(id, row)| (row.updated, id, row))
            .collect();
        changed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Ok(changed
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .filter_map(|(updated, id, row)| {
                let state = match &row.record {
                    Some(record) => DurableRow::Live(record.clone()),
                    None => DurableRow::Deleted { created_at: Timestamp(row.created) },
                };
                Some((ProgressId::parse(id).ok()?, state, Timestamp(updated)))
            })
            .collect())
    }

    async fn compare_and_set_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        self.faults.enter("compare_and_set").await?;
        if self.fenced_off(fence) {
            return Ok(None);
        }
        let mut rows = self.lock();
        let held = rows.get(id.as_str()).and_then(|row| row.live().map(StoredRecord::version));
        let writable = match (expected, held) {
            (0, None) => true,
            (0, Some(_)) => false,
            (expected, held) => held == Some(expected),
        };
        if writable {
            rows.insert(id.as_str().to_owned(), Row::of(record));
        }
        Ok(Some(writable))
    }

    async fn compare_and_delete_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        self.faults.enter("compare_and_delete").await?;
        if self.fenced_off(fence) {
            return Ok(None);
        }
        let mut rows = self.lock();
        match rows.get_mut(id.as_str()) {
            Some(row) if row.live().is_some_and(|r| r.version() == expected) => {
                row.tombstone();
                Ok(Some(true))
            }
            _ => Ok(Some(false)),
        }
    }

    async fn delete_fenced(&self, id: &ProgressId, fence: Option<Timestamp>) -> Result<Option<bool>, StoreError> {
        self.faults.enter("delete").await?;
        if self.fenced_off(fence) {
            return Ok(None);
        }
        let mut rows = self.lock();
        let now = now_ms();
        let row = rows.entry(id.as_str().to_owned()).or_insert(Row {
            record: None,
            version: u64::MAX,
            created: now,
            updated: now,
            expires: now + 86_400_000,
        });
        let live = row.live().is_some();
        row.tombstone();
        Ok(Some(live))
    }

    async fn raise_fence(&self, at: Timestamp) -> Result<(), StoreError> {
        self.faults.enter("raise_fence").await?;
        let mut fence = self.fence_ms.lock().unwrap_or_else(|p| p.into_inner());
        *fence = (*fence).max(at.millis());
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.faults.enter("migrate").await
    }
}

impl DurableMaintenance for FakeDurable {
    async fn purge_expired(&self, _exclusive: bool) -> Result<Option<u64>, StoreError> {
        self.faults.enter("purge_expired").await?;
        let (mut rows, now) = (self.lock(), now_ms());
        let before = rows.len();
        rows.retain(|_, row| row.expires > now);
        Ok(Some((before - rows.len()) as u64))
    }

    async fn tombstone_matching(
        &self,
        filter: &RecordFilter,
        fence: Option<Timestamp>,
    ) -> Result<(Vec<ProgressId>, bool), StoreError> {
        self.faults.enter("tombstone_matching").await?;
        if self.fenced_off(fence) {
            return Ok((Vec::new(), true));
        }
        let mut rows = self.lock();
        let ids: Vec<String> = Self::live_matching(&rows, filter).into_iter().map(|(id, _)| id.clone()).collect();
        for id in &ids {
            if let Some(row) = rows.get_mut(id) {
                row.tombstone();
            }
        }
        Ok((ids.iter().filter_map(|id| ProgressId::parse(id).ok()).collect(), false))
    }

    async fn matching_page(
        &self,
        filter: &RecordFilter,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(ProgressId, i64)>, StoreError> {
        self.faults.enter("matching_page").await?;
        let rows = self.lock();
        let mut page: Vec<(ProgressId, i64)> = Self::live_matching(&rows, filter)
            .into_iter()
            .filter(|(id, _)| id.as_str() > after)
            .filter_map(|(id, row)| Some((ProgressId::parse(id).ok()?, i64::try_from(row.version).ok()?)))
            .collect();
        page.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        page.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(page)
    }

    async fn tombstone_versions(&self, stale: &[(ProgressId, i64)]) -> Result<Vec<ProgressId>, StoreError> {
        self.faults.enter("tombstone_versions").await?;
        let mut rows = self.lock();
        let mut gone = Vec::new();
        for (id, version) in stale {
            if let Some(row) = rows.get_mut(id.as_str())
                && row.live().is_some()
                && i64::try_from(row.version).ok() == Some(*version)
            {
                row.tombstone();
                gone.push(id.clone());
            }
        }
        Ok(gone)
    }

    async fn tombstone_ids(&self, ids: &[ProgressId]) -> Result<(), StoreError> {
        self.faults.enter("tombstone_ids").await?;
        let mut rows = self.lock();
        for id in ids {
            if let Some(row) = rows.get_mut(id.as_str()) {
                row.tombstone();
            }
        }
        Ok(())
    }

    async fn list_page(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.faults.enter("list_page").await?;
        let rows = self.lock();
        let mut items: Vec<(ProgressId, StoredRecord)> = rows
            .iter()
            .filter(|(id, _)| query.matches_id(id))
            .filter_map(|(id, row)| Some((ProgressId::parse(id).ok()?, row.live()?.clone())))
            .filter(|(_, r)| status_of(r).is_ok_and(|s| query.matches_status(s)))
            .collect();
        items.sort_by(|(a, ra), (b, rb)| (rb.meta().c, b.as_str()).cmp(&(ra.meta().c, a.as_str())));
        items.truncate(query.limit);
        Ok(ListPage { items, next: None })
    }

    async fn count_statuses(&self) -> Result<StatusCounts, StoreError> {
        self.faults.enter("count_statuses").await?;
        let mut counts = StatusCounts::new("postgres");
        for row in self.lock().values() {
            if let Some(record) = row.live() {
                counts.add(status_of(record)?, 1);
            }
        }
        Ok(counts)
    }
}
