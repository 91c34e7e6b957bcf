//! Purging expired data: what one cleanup removed, and the background
//! task that runs [`Maintenance::cleanup`](super::Maintenance::cleanup) on an interval. Each tier
//! does its own purge (and takes its own lock, so that one instance at a
//! time does it); this is the timer and the report.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Store;

/// What one cleanup removed, per tier; `None` where the tier is not configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Rows of PostgreSQL past `expires_at`: expired records and tombstones.
    pub postgres_expired_rows: Option<u64>,
    /// Expired entries dropped from process memory.
    pub memory_expired: Option<u64>,
    /// Redis expires keys by itself; what outlives them are their entries
    /// in the listing indexes, removed by cleanup.
    pub redis_orphaned_index_entries: Option<u64>,
}

impl CleanupReport {
    /// Everything removed.
    pub fn total(&self) -> u64 {
        [self.postgres_expired_rows, self.memory_expired, self.redis_orphaned_index_entries].into_iter().flatten().sum()
    }
}

/// Runs [`Maintenance::cleanup`](super::Maintenance::cleanup) every `every` for as long as the store
/// lives, on one instance at a time (the store's own lock decides which).
/// The first run is one interval after start-up. Must be called inside Tokio.
pub fn spawn_cleanup(store: &Arc<dyn Store>, every: Duration) {
    let weak: Weak<dyn Store> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            let outcome = store.cleanup(true).await;
            if let Ok(Some(report)) = &outcome {
                crate::metrics::records_cleaned_up(report.total());
            }
            match outcome {
                Ok(Some(report)) if report.total() > 0 => tracing::info!(
                    postgres_expired_rows = report.postgres_expired_rows,
                    memory_expired = report.memory_expired,
                    "cleanup purged expired data"
                ),
                Ok(Some(_)) => tracing::debug!("cleanup found nothing to purge"),
                Ok(None) => tracing::debug!("cleanup skipped: another instance is running it"),
                Err(e) => tracing::warn!(error = %e, "cleanup failed; retrying at the next interval"),
            }
        }
    });
}
