//! Storage tiers. Each store implements three small traits: [`ProgressStore`]
//! (the request path), [`Health`] and [`Maintenance`]; the service holds
//! one as `Arc<dyn Store>`, and the HTTP layer and the write logic never
//! know which one they talk to.
//!
//! Writes are optimistic: read, build the next version in Rust, then
//! [`ProgressStore::compare_and_set`] stores it only if nobody wrote in
//! between. That keeps every document byte produced by serde_json (exact
//! numbers) while concurrent writers never lose each other's fields.
//!
//! A fourth, [`Tombstones`], says how a record that is no longer held went
//! (deleted or expired, and when), for 410 Gone.
//!
//! The layout:
//! - One folder or file per backend: [`MemoryStore`] (`memory.rs`, the
//!   embedded default), [`RedisStore`] (`redis/`: keys, codec, Lua
//!   scripts, change-notice subscription) and [`PostgresStore`]
//!   (`postgres/`: connection string and TLS, SQL, fence, schema).
//! - The layers that combine them: [`CachedStore`] (`cached/`, the read
//!   cache in front of Redis kept coherent by its change notices) and
//!   [`TieredStore`] (`tiered/`: Redis over PostgreSQL, with breakers,
//!   write-behind, fence, settle and copy-back).
//! - What every store shares: listing (`listing.rs`), bulk deletes and
//!   counts (`bulk.rs`), health reports (`health.rs`) and the cleanup task
//!   (`cleanup.rs`).

use async_trait::async_trait;

use crate::domain::{CorruptRecord, ProgressId, StoredRecord};

mod bulk;
mod cached;
mod cleanup;
mod health;
mod listing;
mod memory;
mod outbox;
mod postgres;
mod redis;
mod tiered;
mod tombstones;

pub use self::bulk::{MAINTENANCE_BATCH, RecordFilter, StatusCounts};
pub use self::cached::{CacheConfig, CachedStore};
pub use self::cleanup::{CleanupReport, spawn_cleanup};
pub use self::health::{LastError, TierHealth, TierState};
pub use self::listing::{DEFAULT_LIMIT, ListCursor, ListPage, ListQuery, MAX_LIMIT, MalformedCursor, SCAN_BUDGET};
pub use self::memory::MemoryStore;
pub use self::outbox::{Delivery, DeliveryState, FAILED_KEPT_MS, Fallback, MemoryOutbox, Outbox, OutboxSummary};
pub use self::postgres::{DurableRow, MIGRATIONS_PENDING, PgDefaults, PostgresStore, PostgresStoreConfig, pg_connect};
pub use self::redis::{ChangeNotices, ChangeSink, RedisStore, RedisStoreConfig, from_redis};
pub use self::tiered::{
    BacklogSummary, BreakerState, CircuitBreaker, DurableMaintenance, DurableTier, ErrorLog, FlushState,
    HEARTBEAT_EVERY, Hot, HotTier, LIVE_MS, PeerNotice, Peers, PendingWrite, TieredConfig, TieredStore, WriteBehind,
};
pub use self::tombstones::{DEFAULT_TOMBSTONE, Gone, GoneKind, Tombstones, tombstone_ms};

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The tier is down, slow or refused the operation.
    #[error("{tier} is unavailable: {reason}")]
    Unavailable {
        /// Which tier (`redis`, …).
        tier: &'static str,
        /// The cause, for logs (never contains credentials).
        reason: String,
    },
    /// The tier holds bytes that are not a record of ours.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
}

/// Which read of a record a caller wants ([`ProgressStore::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Any the store may serve: from a read cache, when it holds the record.
    Cached,
    /// For a write that builds on the record: a read cache hands over the
    /// decoded record it may keep beside the bytes instead of sharing it,
    /// so that the write takes it without a copy (what the write stores
    /// replaces the entry).
    ToWrite,
    /// The record as the store of record holds it now, past any read
    /// cache: what a write checks before it refuses a request on the
    /// strength of the record's state (a cached version may be a notice
    /// behind).
    Uncached,
}

/// What every store does on the request path: read, compare-and-set or
/// swap, delete, and list. Every tier and every layer implements it; the
/// service calls it once per request through `dyn Store`.
#[async_trait]
pub trait ProgressStore: Send + Sync + 'static {
    /// The record, or `None` when absent or expired.
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError>;

    /// The record if the store can answer from memory without waiting (a
    /// read cache's fresh entry, the embedded store's map), as `get` would;
    /// `None` says only "ask `get`". The service asks this first: a cached
    /// `GET` then builds and polls no store future at all (a boxed one per
    /// layer, about 500 instructions with Redis over PostgreSQL, issue 23).
    fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        let _ = id;
        None
    }

    /// The record as `how` asks for it; [`ProgressStore::get`] is
    /// `Read::Cached`. Only a store with a read cache tells the three apart.
    async fn read(&self, id: &ProgressId, how: Read) -> Result<Option<StoredRecord>, StoreError> {
        let _ = how;
        self.get(id).await
    }

    /// Stores `record` with a time to live of `ttl_ms` if the stored version is
    /// `expected` (0: no record). `Ok(false)` means another write came first.
    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Stores `record` if the store still holds `current`, the version the
    /// write was built on (`None`: no record). The default compares versions
    /// ([`ProgressStore::compare_and_set`]); a store may compare more (Redis
    /// compares the whole stored header, which also tells two incarnations
    /// of an id apart) and use what it knows of `current` to do less work.
    async fn compare_and_swap(
        &self,
        id: &ProgressId,
        current: Option<&StoredRecord>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.compare_and_set(id, current.map_or(0, StoredRecord::version), record, ttl_ms).await
    }

    /// Removes the record if its version is `expected`; `Ok(false)` when
    /// it is absent or has another version.
    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError>;

    /// Removes the record; `Ok(false)` when there was none.
    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError>;

    /// One page of live records, newest first (`created_at`, then id, both
    /// descending), filtered and continued as `query` says (see `listing`).
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;
}

/// What a tier says about itself: its name, a probe, a health report and
/// its gauges. Every store and every tier of [`TieredStore`] implements it.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    /// Short name for logs and health reports (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// One cheap round trip to the tier; its latency.
    async fn ping(&self) -> Result<std::time::Duration, StoreError>;

    /// Probes every tier behind this store, concurrently and each within its
    /// own timeout (for `/readyz`). By default, [`Health::ping`] once.
    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = health::timed(self.ping()).await;
        vec![TierHealth::from_probe(self.kind(), probe, latency, &LastError::default())]
    }

    /// Sets the gauges that describe this store's state (breakers, backlog,
    /// pools; see `crate::metrics`). Called on every scrape of `/metrics`.
    fn report_metrics(&self);
}

/// The operations beside the request path: cleanup, bulk deletes, counts,
/// the write-behind backlog and the last act at shutdown. Every store says
/// what each does (nothing is "not supported" at run time).
#[async_trait]
pub trait Maintenance: Send + Sync + 'static {
    /// Purges expired data from every tier. With `exclusive`, only when no
    /// other instance is cleaning up (`Ok(None)` when one is).
    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError>;

    /// Deletes every live record matching `filter` from every tier; how many.
    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError>;

    /// Live records per status.
    async fn count_by_status(&self) -> Result<StatusCounts, StoreError>;

    /// The write-behind backlog; `None` for stores that have none.
    fn write_behind(&self) -> Option<BacklogSummary>;

    /// Called once at shutdown, after the last request: persist what is
    /// still only in memory.
    async fn shutdown(&self);
}

/// A whole store as the service holds it (`Arc<dyn Store>`): the request
/// path, what it remembers of records that are gone, its health and its
/// maintenance. Implemented for every type that implements the four.
pub trait Store: ProgressStore + Tombstones + Health + Maintenance {}

impl<T: ProgressStore + Tombstones + Health + Maintenance> Store for T {}

/// For test stores that wrap another (`$inner`) on the request path:
/// [`Tombstones`], [`Health`] and [`Maintenance`] as the wrapped store
/// answers them.
#[cfg(test)]
macro_rules! operations_of_inner {
    ($store:ty, $inner:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::Tombstones for $store {
            async fn gone(
                &self,
                id: &$crate::domain::ProgressId,
            ) -> Result<Option<$crate::store::Gone>, $crate::store::StoreError> {
                self.$inner.gone(id).await
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Health for $store {
            fn kind(&self) -> &'static str {
                self.$inner.kind()
            }
            async fn ping(&self) -> Result<std::time::Duration, $crate::store::StoreError> {
                self.$inner.ping().await
            }
            fn report_metrics(&self) {}
        }

        #[async_trait::async_trait]
        impl $crate::store::Maintenance for $store {
            async fn cleanup(
                &self,
                exclusive: bool,
            ) -> Result<Option<$crate::store::CleanupReport>, $crate::store::StoreError> {
                self.$inner.cleanup(exclusive).await
            }
            async fn delete_matching(
                &self,
                filter: &$crate::store::RecordFilter,
            ) -> Result<u64, $crate::store::StoreError> {
                self.$inner.delete_matching(filter).await
            }
            async fn count_by_status(&self) -> Result<$crate::store::StatusCounts, $crate::store::StoreError> {
                self.$inner.count_by_status().await
            }
            fn write_behind(&self) -> Option<$crate::store::BacklogSummary> {
                None
            }
            async fn shutdown(&self) {}
        }
    };
}
#[cfg(test)]
pub(crate) use operations_of_inner;
