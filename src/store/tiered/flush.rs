//! The write-behind flusher: due backlog entries go to PostgreSQL in
//! batches on a fixed tick, so that every update is there within the
//! persist interval; everything at once while Redis is down, before a
//! count, and at shutdown.

use std::time::Duration;

use super::breaker::BreakerState;
use super::write_behind::PendingWrite;
use super::{DurableTier, HotTier, TieredStore, unavailable};
use crate::domain::{ProgressId, StoredRecord};
use crate::store::StoreError;

/// Most records written to PostgreSQL in one statement.
const FLUSH_BATCH: usize = 500;

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// Writes due backlog entries to PostgreSQL; returns how many were settled.
    pub(super) async fn flush(&self, everything: bool) -> Result<usize, StoreError> {
        let horizon = flush_horizon(self.config.persist_interval);
        let mut settled = 0;
        loop {
            if !self.durable_breaker.allows() {
                return Err(unavailable("postgres", "circuit breaker open"));
            }
            let batch = self.backlog.due(horizon, self.config.persist_interval, everything, FLUSH_BATCH);
            if batch.is_empty() {
                return Ok(settled);
            }
            let upserts: Vec<(ProgressId, StoredRecord)> = batch
                .iter()
                .filter_map(|d| match &d.write {
                    PendingWrite::Upsert(r) => Some((d.id.clone(), r.clone())),
                    PendingWrite::Delete => None,
                })
                .collect();
            let started = std::time::Instant::now();
            let written = async {
                if !upserts.is_empty() {
                    Self::observe(&self.durable_breaker, self.durable.upsert_newer(&upserts).await.map(|_| ()))?;
                }
                for due in batch.iter().filter(|d| matches!(d.write, PendingWrite::Delete)) {
                    Self::observe(&self.durable_breaker, self.delete_unfenced(&due.id).await)?;
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = written {
                self.backlog.release(&batch);
                return Err(e);
            }
            self.backlog.settle(&batch);
            tracing::debug!(
                rows = batch.len(),
                took_us = started.elapsed().as_micros() as u64,
                "write-behind batch flushed"
            );
            settled += batch.len();
            if batch.len() < FLUSH_BATCH {
                return Ok(settled);
            }
        }
    }

    /// [`Maintenance::shutdown`](crate::store::Maintenance::shutdown): flushes the backlog, retrying until
    /// PostgreSQL takes it or the shutdown flush time is up.
    pub(super) async fn flush_at_shutdown(&self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_flush;
        loop {
            if self.backlog.is_empty() {
                tracing::info!("write-behind backlog flushed");
                if self.hot.is_some() {
                    // Nothing left that another instance should wait for.
                    let _ = self.durable.leave(&self.instance).await;
                }
                return;
            }
            if self.durable_breaker.state() == BreakerState::Open {
                // Shutting down: try PostgreSQL now rather than wait for the probe.
                self.durable_breaker.half_open();
            }
            match self.flush(true).await {
                Ok(n) => tracing::info!(records = n, "flushed the write-behind backlog"),
                Err(e) => tracing::warn!(error = %e, "flushing the backlog failed; retrying"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(pending = self.backlog.len(), "giving up on the backlog: PostgreSQL did not take it");
                return;
            }
            if !self.backlog.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The flusher wakes this often, at a fixed rate.
pub(super) fn flush_tick(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Entries whose deadline falls within this horizon are flushed now: one
/// tick, plus half a tick of slack for a slow flush or a late wake-up, so
/// none waits longer than the persist interval.
fn flush_horizon(interval: Duration) -> Duration {
    flush_tick(interval) * 3 / 2
}

/// The flusher: every tick while the store lives, writes the due backlog
/// entries to PostgreSQL.
pub(super) async fn flush_periodically<H: HotTier, D: DurableTier>(store: std::sync::Weak<TieredStore<H, D>>) {
    let Some(tick) = store.upgrade().map(|s| flush_tick(s.config.persist_interval)) else { return };
    // Fixed rate: the time a flush takes does not push the next one back.
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(s) = store.upgrade() else { return };
        // While Redis is down, PostgreSQL is the store of record: flush everything.
        let everything = s.hot.is_some() && !s.hot_breaker.allows();
        if !s.backlog.is_empty()
            && s.durable_breaker.allows()
            && let Err(e) = s.flush(everything).await
        {
            tracing::debug!(error = %e, "flush failed; the backlog is kept");
        }
        drop(s);
    }
}
