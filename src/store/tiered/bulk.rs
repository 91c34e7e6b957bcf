//! What spans every record across both tiers: bulk deletes (Redis judges
//! what it holds, PostgreSQL what only it holds), cleanup, listing (Redis,
//! else PostgreSQL corrected by this instance's unflushed writes) and
//! counts by status.

use super::write_behind::PendingWrite;
use super::{DurableTier, Hot, HotTier, TieredStore, unavailable};
use crate::domain::{ProgressId, Timestamp};
use crate::store::bulk::{MAINTENANCE_BATCH, delete_page, status_of};
use crate::store::{CleanupReport, ListPage, ListQuery, RecordFilter, StatusCounts, StoreError};

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// [`Maintenance::cleanup`](crate::store::Maintenance::cleanup) across the tiers.
    pub(super) async fn cleanup_across_tiers(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        // PostgreSQL's advisory lock decides which instance cleans up.
        let Some(rows) = self.durable.purge_expired(exclusive).await? else { return Ok(None) };
        let mut report = CleanupReport { postgres_expired_rows: Some(rows), ..CleanupReport::default() };
        if let Some(hot) = &self.hot {
            let redis = hot.tier.cleanup(false).await?.unwrap_or_default();
            report.redis_orphaned_index_entries = redis.redis_orphaned_index_entries;
        }
        Ok(Some(report))
    }

    /// [`Maintenance::delete_matching`](crate::store::Maintenance::delete_matching) across the tiers.
    pub(super) async fn delete_matching_across_tiers(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let Some(hot) = self.hot_usable() else { return self.delete_matching_durable(filter).await };
        // Redis decides for every record it holds, judged by its current
        // version (PostgreSQL may be a persist interval behind): each match is
        // compare-and-deleted at the version read, then tombstoned in PostgreSQL.
        let prefix = filter.id_prefix.as_deref().unwrap_or("");
        let (mut cursor, mut deleted) = (0, 0);
        loop {
            let (next, page) = Self::observe(&self.hot_breaker, hot.tier.scan_page(cursor, prefix).await)?;
            let ids = Self::observe(&self.hot_breaker, delete_page(hot.store.as_ref(), page, filter).await)?;
            deleted += ids.len() as u64;
            self.delete_durable_many(&ids).await;
            if next == 0 {
                break;
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
        // Then what only PostgreSQL holds (Redis lost it): read repair would bring it back.
        self.first_durable_answer().await;
        if self.durable_breaker.allows() {
            deleted += self.delete_durable_only(hot, filter).await?;
        }
        // The Redis deletes evicted their own entries; a record Redis lost
        // may still be cached here, and must not be served after this answer.
        if let Some(cache) = &hot.cache {
            cache.forget_all();
        }
        Ok(deleted)
    }

    /// [`ProgressStore::list`](crate::store::ProgressStore::list) across the tiers.
    pub(super) async fn list_across_tiers(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        if let Some(hot) = self.hot_usable() {
            match Self::observe(&self.hot_breaker, hot.store.list(query).await) {
                Ok(page) => return Ok(page),
                Err(StoreError::Unavailable { .. }) => {}
                Err(corrupt) => return Err(corrupt),
            }
        }
        self.first_durable_answer().await;
        if !self.durable_breaker.allows() {
            let tier = if self.hot.is_some() { "redis" } else { "postgres" };
            return Err(unavailable(
                tier,
                if self.hot.is_some() { "both tiers are down" } else { "circuit breaker open" },
            ));
        }
        let mut page = Self::observe(&self.durable_breaker, self.durable.list_page(query).await)?;
        // PostgreSQL may be behind this instance's own acknowledged writes.
        let now = Timestamp::now().millis();
        page.items.retain_mut(|(id, theirs)| match self.backlog.pending(id) {
            Some(PendingWrite::Delete) => false,
            Some(PendingWrite::Upsert(mine)) if mine.recency() > theirs.recency() => {
                // Same incarnation (same place in the order), still live and still matching.
                let keep = mine.meta().c == theirs.meta().c
                    && mine.meta().x > now
                    && status_of(&mine).is_ok_and(|s| query.matches_status(s));
                if keep {
                    *theirs = mine;
                }
                keep
            }
            _ => true,
        });
        Ok(page)
    }

    /// [`Maintenance::count_by_status`](crate::store::Maintenance::count_by_status) across the tiers.
    pub(super) async fn count_across_tiers(&self) -> Result<StatusCounts, StoreError> {
        self.first_durable_answer().await;
        if self.durable_breaker.allows() {
            // This instance's unflushed updates first, so that they count.
            if let Err(e) = self.flush(true).await {
                tracing::debug!(error = %e, "flush before counting failed");
            }
            match self.durable.count_statuses().await {
                Ok(counts) => return Ok(counts),
                Err(e) if self.hot_usable().is_none() => return Err(e),
                Err(e) => tracing::debug!(error = %e, "counting in postgres failed; counting in redis"),
            }
        }
        match self.hot_usable() {
            Some(hot) => hot.store.count_by_status().await,
            None => Err(unavailable("postgres", "circuit breaker open")),
        }
    }
}

/// Bulk deletes beyond what Redis holds.
impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// PostgreSQL is the store of record (Redis is down or not configured):
    /// tombstone its matching rows, after flushing what this instance
    /// acknowledged and PostgreSQL has not seen. The tombstones reach Redis
    /// with the copy-back when it returns. Behind the fence, like a single
    /// delete: once another instance is back on Redis, this one deletes
    /// nothing more here (the batches before are copied back by that
    /// instance's second pass).
    async fn delete_matching_durable(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        self.first_durable_answer().await;
        let fence = self.durable_fence(false)?;
        if !self.backlog.is_empty() {
            self.flush(true).await?;
        }
        let (ids, fenced) = Self::observe(&self.durable_breaker, self.durable.tombstone_matching(filter, fence).await)?;
        for id in &ids {
            self.forget_during_outage(id);
        }
        match fenced {
            true => Err(self.fenced_off()),
            false => Ok(ids.len() as u64),
        }
    }

    /// Tombstones records just deleted from Redis, or queues the tombstones
    /// while PostgreSQL is down.
    async fn delete_durable_many(&self, ids: &[ProgressId]) {
        if ids.is_empty() {
            return;
        }
        if self.durable_breaker.allows()
            && Self::observe(&self.durable_breaker, self.durable.tombstone_ids(ids).await).is_ok()
        {
            for id in ids {
                self.backlog.supersede(id, u64::MAX);
            }
            return;
        }
        for id in ids {
            self.backlog.enqueue(id, PendingWrite::Delete);
        }
    }

    /// Tombstones the live PostgreSQL rows matching `filter` that Redis does
    /// not hold (the Redis pass judged the others by their current version),
    /// judging by this instance's unflushed write where it has one.
    async fn delete_durable_only(&self, hot: &Hot<H>, filter: &RecordFilter) -> Result<u64, StoreError> {
        let (mut after, mut deleted) = (String::new(), 0);
        loop {
            let page = Self::observe(
                &self.durable_breaker,
                self.durable.matching_page(filter, &after, MAINTENANCE_BATCH as i64).await,
            )?;
            let Some((last, _)) = page.last() else { return Ok(deleted) };
            after = last.as_str().to_owned();
            let ids: Vec<ProgressId> = page.iter().map(|(id, _)| id.clone()).collect();
            let held = Self::observe(&self.hot_breaker, hot.tier.exists_many(&ids).await)?;
            let mut stale = Vec::new();
            for ((id, version), in_redis) in page.iter().zip(held) {
                // The row matched; this instance's unflushed write, if any, is newer.
                let matches = match self.backlog.pending(id) {
                    _ if in_redis => continue,
                    None => true,
                    Some(PendingWrite::Delete) => continue,
                    Some(PendingWrite::Upsert(mine)) => filter.matches(id, &mine)?,
                };
                if matches {
                    stale.push((id.clone(), *version));
                }
            }
            let gone = Self::observe(&self.durable_breaker, self.durable.tombstone_versions(&stale).await)?;
            for id in &gone {
                self.backlog.supersede(id, u64::MAX);
            }
            deleted += gone.len() as u64;
            if page.len() < MAINTENANCE_BATCH {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}
