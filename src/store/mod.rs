//! Storage tiers. Each tier implements [`ProgressStore`]; the HTTP layer and
//! the write logic never know which one they talk to.
//!
//! Writes are optimistic: read, build the next version in Rust, then
//! [`ProgressStore::compare_and_set`] stores it only if nobody wrote in
//! between. That keeps every document byte produced by serde_json (exact
//! numbers) while concurrent writers never lose each other's fields.

use async_trait::async_trait;

use crate::domain::{CorruptRecord, ProgressId, StoredRecord};

mod breaker;
mod cached;
mod memory;
mod postgres;
mod redis;
mod tiered;
mod write_behind;

pub use self::breaker::{BreakerState, CircuitBreaker};
pub use self::tiered::{HotTier, TieredConfig, TieredStore};
pub use self::write_behind::{PendingWrite, WriteBehind};
pub use self::cached::{spawn_change_listener, CacheConfig, CachedStore};
pub use self::memory::MemoryStore;
pub use self::postgres::{DurableRow, PostgresStore, PostgresStoreConfig};
pub use self::redis::{RedisStore, RedisStoreConfig};

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

/// One storage tier.
#[async_trait]
pub trait ProgressStore: Send + Sync + 'static {
    /// Short name for logs and health reports (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// The record, or `None` when absent or expired.
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError>;

    /// Stores `record` with a time to live of `ttl_ms` if the stored version is
    /// `expected` (0: no record). `Ok(false)` means another write came first.
    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Removes the record if its version is `expected`; `Ok(false)` when
    /// it is absent or has another version.
    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError>;

    /// Removes the record; `Ok(false)` when there was none.
    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError>;

    /// One cheap round trip to the tier; its latency.
    async fn ping(&self) -> Result<std::time::Duration, StoreError> {
        Ok(std::time::Duration::ZERO)
    }

    /// Called once at shutdown, after the last request: persist what is
    /// still only in memory.
    async fn shutdown(&self) {}
}
