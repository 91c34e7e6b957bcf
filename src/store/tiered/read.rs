//! The read path: Redis first (through or past its read cache), then
//! PostgreSQL together with this instance's unflushed writes, and read
//! repair, which puts what PostgreSQL answered back into Redis.

use super::write_behind::PendingWrite;
use super::{DurableTier, HotTier, TieredStore, unavailable};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics;
use crate::store::postgres::DurableRow;
use crate::store::{Read, StoreError};

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    async fn durable_lookup(&self, id: &ProgressId) -> Result<DurableRow, StoreError> {
        self.first_durable_answer().await;
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        Self::observe(&self.durable_breaker, self.durable.lookup(id).await)
    }

    /// A read: Redis first (through or past its read cache, as `how`
    /// says), then PostgreSQL and this instance's unflushed writes.
    pub(super) async fn read_tiers(&self, id: &ProgressId, how: Read) -> Result<Option<StoredRecord>, StoreError> {
        let mut hot_missed = false;
        if let Some(hot) = self.hot_usable() {
            match Self::observe(&self.hot_breaker, hot.store.read(id, how).await) {
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
        // A miss in Redis is an answer only with PostgreSQL's: a record may
        // be in PostgreSQL alone (Redis restarted, or evicted it), so a read
        // that cannot ask PostgreSQL is unavailable, never absent (issue 20).
        // The write path's reads are the exception: a create must still go to
        // Redis while PostgreSQL is down, as a PUT replaces the record anyway.
        let durable = match self.durable_lookup(id).await {
            Ok(found) => found,
            Err(_) if hot_missed && !matches!(how, Read::Cached) => return Ok(None),
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
                && let Err(e) = hot.tier.put_if_newer(id, record, ttl, false).await
            {
                tracing::debug!(error = %e, "could not put a record back into redis");
            }
        }
        Ok(newest)
    }
}
