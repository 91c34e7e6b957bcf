//! The write path: the compare-and-set in Redis while it is usable, then
//! PostgreSQL at once (creates, terminal states) or through the
//! write-behind backlog; while Redis is down, the compare-and-set in
//! PostgreSQL behind the fence, once every instance's backlog has had time
//! to land there (the settle time). Single deletes take the same two ways.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::flush::flush_tick;
use super::write_behind::PendingWrite;
use super::{DurableTier, HotTier, TieredStore, unavailable};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::store::StoreError;

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// A compare-and-set of `expected` (the version of `current`, when the
    /// caller has it): in Redis while it is usable, else in PostgreSQL.
    pub(super) async fn swap(
        &self,
        id: &ProgressId,
        expected: u64,
        current: Option<Option<&StoredRecord>>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            // Until the write is in the backlog or PostgreSQL (`handover.rs`).
            let _gate = self.hot_writes.read().await;
            let written = match current {
                Some(current) => hot.store.compare_and_swap(id, current, record, ttl_ms).await,
                None => hot.store.compare_and_set(id, expected, record, ttl_ms).await,
            };
            let stored = Self::observe(&self.hot_breaker, written)?;
            if stored {
                self.persist(id, record, expected == 0 || record.meta().d).await;
            }
            return Ok(stored);
        }
        self.first_durable_answer().await;
        self.await_hand_over().await;
        let fence = self.durable_fence(true)?;
        // PostgreSQL is the store of record now; first make it as new as
        // what this instance acknowledged from Redis.
        if let Some(PendingWrite::Upsert(mine)) = self.backlog.pending(id) {
            Self::observe(&self.durable_breaker, self.durable.upsert_newer(&[(id.clone(), mine.clone())]).await)?;
            self.backlog.supersede(id, mine.version());
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        let written = self.durable.compare_and_set_fenced(id, expected, record, fence).await;
        Self::observe(&self.durable_breaker, written)?.ok_or_else(|| self.fenced_off())
    }

    /// [`ProgressStore::compare_and_delete`](crate::store::ProgressStore::compare_and_delete) across the tiers.
    pub(super) async fn delete_if_version(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            let _gate = self.hot_writes.read().await;
            let deleted = Self::observe(&self.hot_breaker, hot.store.compare_and_delete(id, expected).await)?;
            if deleted {
                self.delete_durable(id).await;
            }
            return Ok(deleted);
        }
        self.first_durable_answer().await;
        let fence = self.durable_fence(false)?;
        let deleted =
            Self::observe(&self.durable_breaker, self.durable.compare_and_delete_fenced(id, expected, fence).await)?
                .ok_or_else(|| self.fenced_off())?;
        if deleted {
            self.forget_during_outage(id);
        }
        Ok(deleted)
    }

    /// [`ProgressStore::delete`](crate::store::ProgressStore::delete) across the tiers.
    pub(super) async fn delete_everywhere(&self, id: &ProgressId) -> Result<bool, StoreError> {
        if let Some(hot) = self.hot_usable() {
            let _gate = self.hot_writes.read().await;
            // The tombstone first: a reader that misses Redis in between must
            // find the record deleted, not bring it back from a backlog.
            let in_durable = self.delete_durable_now(id).await;
            let in_hot = Self::observe(&self.hot_breaker, hot.store.delete(id).await)?;
            return match in_durable {
                Some(in_durable) => Ok(in_hot || in_durable),
                None if in_hot => {
                    self.backlog.enqueue(id, PendingWrite::Delete);
                    Ok(true)
                }
                // Not in Redis, and PostgreSQL, which may hold it alone,
                // cannot be asked: neither 404 nor a delete (issue 20).
                None => Err(unavailable("postgres", "cannot tell whether postgresql holds the record")),
            };
        }
        self.first_durable_answer().await;
        let fence = self.durable_fence(false)?;
        let unflushed = matches!(self.backlog.pending(id),
            Some(PendingWrite::Upsert(r)) if r.meta().x > Timestamp::now().millis());
        let removed = Self::observe(&self.durable_breaker, self.durable.delete_fenced(id, fence).await)?
            .ok_or_else(|| self.fenced_off())?;
        self.forget_during_outage(id);
        Ok(removed || unflushed)
    }

    /// The fence for a write in PostgreSQL made because Redis is unusable
    /// (see [`PostgresStore::compare_and_set_fenced`]): `None` with
    /// PostgreSQL alone, else since when this instance has been without
    /// Redis. `settle`: refuse the write until other instances' backlogs
    /// have landed: every live instance said so (`handover.rs`), or the
    /// settle time has passed (see [`Self::settle_ms`]). Deletes need not
    /// wait for backlogs (a tombstone outranks every version), but once the
    /// fence has refused this instance in this outage, Redis is back for
    /// others and would not hear of a delete here either: then every write
    /// waits.
    pub(super) fn durable_fence(&self, settle: bool) -> Result<Option<Timestamp>, StoreError> {
        if self.hot.is_none() {
            return match self.durable_breaker.allows() {
                true => Ok(None),
                false => Err(unavailable("postgres", "circuit breaker open")),
            };
        }
        if !self.durable_breaker.allows() {
            return Err(unavailable("redis", "both tiers are down"));
        }
        let (opened, fenced) = (self.hot_breaker.opened_at(), self.fenced_at());
        if fenced <= opened && self.cut_off(opened) {
            return Err(unavailable(
                "redis",
                "redis answers other instances but not this one; writes resume once this instance reaches it",
            ));
        }
        let since = opened.max(fenced);
        let waits = if fenced > opened { true } else { settle && !self.handed_over(opened) };
        if waits && Timestamp::now() < since.plus_millis(self.settle_ms()) {
            return Err(unavailable(
                "redis",
                "redis is down; writes resume on postgresql once every instance's backlog has reached it",
            ));
        }
        Ok(Some(since))
    }

    /// PostgreSQL refused a write behind the fence: another instance found
    /// Redis answering again and is back on it, so this one must not write
    /// past it. Redis may have taken writes since that other instances hold
    /// in their backlogs, so writes here wait as from a new outage, unless
    /// this instance's own probe reaches Redis first.
    pub(super) fn fenced_off(&self) -> StoreError {
        self.fenced_at_ms.fetch_max(Timestamp::now().millis(), Ordering::AcqRel);
        unavailable("redis", "redis is back for other instances; this one returns to it once its own probe reaches it")
    }

    /// Persists an acknowledged hot-tier write: at once when it matters
    /// (create, terminal status) and PostgreSQL is up, else via the backlog.
    /// On a fresh instance, "up" waits for PostgreSQL's first answer: a
    /// create acknowledged while PostgreSQL answers is in it at the response.
    async fn persist(&self, id: &ProgressId, record: &StoredRecord, urgent: bool) {
        if urgent {
            self.first_durable_answer().await;
        }
        if urgent && self.durable_breaker.allows() {
            let written = self.durable.upsert_newer(&[(id.clone(), record.clone())]).await;
            if Self::observe(&self.durable_breaker, written).is_ok() {
                self.backlog.supersede(id, record.version());
                return;
            }
        }
        self.backlog.enqueue(id, PendingWrite::Upsert(record.clone()));
    }

    /// The longest writes wait, after Redis went away, before PostgreSQL
    /// takes them, when an instance has not said that its backlog landed
    /// (`handover.rs`): Redis may have lost updates that other instances
    /// acknowledged and hold in their backlogs, due in PostgreSQL within the
    /// persist interval. A write on PostgreSQL's older version before they
    /// land would fork the record, and whichever version lands last would
    /// undo an acknowledged write. One persist interval, two flush ticks and
    /// a second of slack cover every backlog (an instance that sees Redis
    /// fail flushes all of its backlog at once).
    pub(super) fn settle_ms(&self) -> i64 {
        let interval = self.config.persist_interval;
        let settle = interval + flush_tick(interval) * 2 + Duration::from_secs(1);
        i64::try_from(settle.as_millis()).unwrap_or(i64::MAX)
    }

    /// A record deleted from PostgreSQL while Redis is down: its pending
    /// write is void. (Its tombstone reaches Redis on recovery.)
    pub(super) fn forget_during_outage(&self, id: &ProgressId) {
        self.backlog.supersede(id, u64::MAX);
    }

    /// Removes the PostgreSQL row now, or queues the removal; true when a
    /// row was removed now.
    async fn delete_durable(&self, id: &ProgressId) -> bool {
        let removed = self.delete_durable_now(id).await;
        if removed.is_none() {
            self.backlog.enqueue(id, PendingWrite::Delete);
        }
        removed.unwrap_or(false)
    }

    /// Removes the PostgreSQL row now: whether there was one, or `None` when
    /// PostgreSQL cannot be asked.
    async fn delete_durable_now(&self, id: &ProgressId) -> Option<bool> {
        self.first_durable_answer().await;
        if !self.durable_breaker.allows() {
            return None;
        }
        let removed = Self::observe(&self.durable_breaker, self.delete_unfenced(id).await).ok()?;
        self.backlog.supersede(id, u64::MAX);
        Some(removed)
    }
}
