//! What the tiering layer needs of each tier, beyond the request path:
//! [`HotTier`] (Redis) and [`DurableTier`] with [`DurableMaintenance`]
//! (PostgreSQL). `RedisStore` and `PostgresStore` implement them by
//! delegating to their own methods (`redis/tiering.rs`,
//! `postgres/tiering.rs`); the unit tests (`tests/`) implement them over
//! HashMaps with injectable failures.
//!
//! The methods return `impl Future + Send` rather than going through
//! `async_trait`: [`TieredStore`](super::TieredStore) is generic over the
//! tiers, so these calls are static and their futures are not boxed — no
//! allocation and no dynamic dispatch beyond what the concrete calls cost.

use std::future::Future;
use std::sync::Arc;

use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::store::{
    CachedStore, DurableRow, Health, ListPage, ListQuery, RecordFilter, StatusCounts, Store, StoreError, Tombstones,
};

/// The hot tier (Redis): a whole [`Store`], and the calls that copy records
/// in from PostgreSQL and walk what it holds.
pub trait HotTier: Store {
    /// Stores `record` unless the tier holds a newer version of it (or a
    /// newer incarnation of the id), or, unless `same_too`, the same
    /// version; true when it was stored.
    fn put_if_newer(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        ttl_ms: i64,
        same_too: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the record if it was created at or before `created_at` (a
    /// delete never removes a later incarnation); true when it did.
    fn delete_incarnation(
        &self,
        id: &ProgressId,
        created_at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One page of the records whose id starts with `id_prefix`, from
    /// `cursor` (0: the start); the next cursor is 0 at the end.
    fn scan_page(
        &self,
        cursor: u64,
        id_prefix: &str,
    ) -> impl Future<Output = Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError>> + Send;

    /// For each id, whether the tier holds a record for it.
    fn exists_many(&self, ids: &[ProgressId]) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
}

/// The durable tier (PostgreSQL) on the request path and in recovery:
/// what a read falls back to, the write-behind flush, the fenced writes
/// made while the hot tier is down, the copy-back and the migrations.
pub trait DurableTier: Health + DurableMaintenance + Peers + Tombstones {
    /// What the tier holds for `id`: a record, a tombstone or nothing.
    fn lookup(&self, id: &ProgressId) -> impl Future<Output = Result<DurableRow, StoreError>> + Send;

    /// Writes each record unless a newer version (or a tombstone of its
    /// incarnation) is there; how many were written.
    fn upsert_newer(
        &self,
        records: &[(ProgressId, StoredRecord)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Up to `limit` rows changed at or after `since`, oldest first, each
    /// with the time it changed (the copy-back after a hot-tier outage).
    fn updated_since(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(ProgressId, DurableRow, Timestamp)>, StoreError>> + Send;

    /// [`ProgressStore::compare_and_set`](crate::store::ProgressStore::compare_and_set) behind
    /// `fence` (`None`: unfenced); `Ok(None)` when the fence refused it.
    fn compare_and_set_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send;

    /// A compare-and-delete behind `fence`; `Ok(None)` when fenced off.
    fn compare_and_delete_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send;

    /// A delete (a tombstone) behind `fence`; `Ok(None)` when fenced off.
    fn delete_fenced(
        &self,
        id: &ProgressId,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send;

    /// Records that the hot tier answers again at `at`: fenced writes
    /// made since before then are refused from now on.
    fn raise_fence(&self, at: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Brings the schema up to date (retried until it succeeds).
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What instances tell each other through the durable tier when Redis
/// fails (`tiered/handover.rs`): each keeps a heartbeat row, and a request
/// to flush, sent to all, is answered by each live instance once what it
/// acknowledged from Redis before the request is in PostgreSQL. Times are
/// the durable tier's own clock, so instances' clocks need not agree.
pub trait Peers: Send + Sync + 'static {
    /// Says that instance `me` is alive (adding its row if need be).
    fn heartbeat(&self, me: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Asks every instance to flush its backlog now, as of `at` (`None`:
    /// now); returns the request's time.
    fn request_flush(&self, at: Option<Timestamp>) -> impl Future<Output = Result<Timestamp, StoreError>> + Send;

    /// Says that `me` has flushed everything it acknowledged before the
    /// request of `at`, and whether Redis answers it (`redis_up`), and tells
    /// the instances that wait.
    fn confirm_flush(
        &self,
        me: &str,
        at: Timestamp,
        redis_up: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where the live instances (a heartbeat within `live_ms`) stand on
    /// the request of `at`.
    fn flush_state(&self, at: Timestamp, live_ms: i64) -> impl Future<Output = Result<FlushState, StoreError>> + Send;

    /// Removes `me` (it shut down with its backlog flushed).
    fn leave(&self, me: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The requests and confirmations of every instance (this one's
    /// included) as they arrive.
    fn peer_notices(&self) -> tokio::sync::broadcast::Receiver<PeerNotice>;
}

/// The answers to a flush request (see [`Peers::flush_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushState {
    /// Some live instance has not answered yet.
    Waiting,
    /// Every live instance has flushed, and Redis answers none of them.
    Flushed,
    /// An instance that answered still reaches Redis: the asking one is cut
    /// off from a Redis the others use, and must not write elsewhere.
    RedisUpElsewhere,
}

/// What one instance told the others (see [`Peers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerNotice {
    /// Flush now: Redis failed for an instance at this time.
    FlushRequested(Timestamp),
    /// An instance confirmed a flush: whoever waits checks again.
    Flushed,
    /// The channel was lost and is back: notices may have been missed.
    Resumed,
}

/// The durable tier's maintenance: expiry, the tombstones of bulk deletes,
/// listing and counts when the hot tier cannot answer them.
pub trait DurableMaintenance: Send + Sync + 'static {
    /// Purges expired rows; `Ok(None)` with `exclusive` when another
    /// instance holds the cleanup lock.
    fn purge_expired(&self, exclusive: bool) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Tombstones live rows matching `filter`, behind `fence`: the ids, and
    /// whether the fence stopped it part way.
    fn tombstone_matching(
        &self,
        filter: &RecordFilter,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<(Vec<ProgressId>, bool), StoreError>> + Send;

    /// Live rows matching `filter` with ids after `after`, in id order, with
    /// their versions.
    fn matching_page(
        &self,
        filter: &RecordFilter,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(ProgressId, i64)>, StoreError>> + Send;

    /// Tombstones each row still at the given version; the ids tombstoned.
    fn tombstone_versions(
        &self,
        rows: &[(ProgressId, i64)],
    ) -> impl Future<Output = Result<Vec<ProgressId>, StoreError>> + Send;

    /// Tombstones the ids whatever their versions.
    fn tombstone_ids(&self, ids: &[ProgressId]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One page of live rows (see [`ProgressStore::list`](crate::store::ProgressStore::list)).
    fn list_page(&self, query: &ListQuery) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    /// Live rows per status.
    fn count_statuses(&self) -> impl Future<Output = Result<StatusCounts, StoreError>> + Send;
}

/// The hot tier as the tiered store holds it.
pub struct Hot<H> {
    /// What requests use: the tier itself, or the read cache in front of it.
    pub store: Arc<dyn Store>,
    /// The tier itself, for copying records back after an outage.
    pub tier: Arc<H>,
    /// The read cache in front of it, if on: emptied after a bulk delete.
    pub cache: Option<Arc<CachedStore>>,
}
