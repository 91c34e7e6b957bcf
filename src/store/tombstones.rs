//! Gone is not unknown: what a store remembers of a record it no longer
//! holds. A record that was deleted, or expired, leaves a *tombstone* for
//! `PROGRESS_TOMBSTONE_SECONDS`, which tells a reader that the id existed
//! and when it went (410), where an id that never existed is 404.
//!
//! The read path does not pay for it: [`ProgressStore::get`] stays as it
//! was, and only a read that found nothing asks [`Tombstones::gone`].
//!
//! [`ProgressStore::get`]: super::ProgressStore::get

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::domain::{ProgressId, Timestamp};

/// How long a tombstone is kept when nothing else is said (24 h).
pub const DEFAULT_TOMBSTONE: Duration = Duration::from_secs(86_400);

/// How a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneKind {
    /// A `DELETE` (or a bulk delete) removed it.
    Deleted,
    /// Its time to live ran out.
    Expired,
}

impl GoneKind {
    /// `deleted` or `expired`, as the API says it.
    pub fn as_str(self) -> &'static str {
        match self {
            GoneKind::Deleted => "deleted",
            GoneKind::Expired => "expired",
        }
    }
}

/// A record that existed and is gone: how, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// Deleted or expired.
    pub kind: GoneKind,
    /// When it was deleted, or when it expired.
    pub at: Timestamp,
}

impl Gone {
    /// A delete at `at`.
    pub fn deleted(at: Timestamp) -> Self {
        Self { kind: GoneKind::Deleted, at }
    }

    /// An expiry at `at`.
    pub fn expired(at: Timestamp) -> Self {
        Self { kind: GoneKind::Expired, at }
    }

    /// Whether the tombstone, kept `keep` after [`Gone::at`], still stands at `now`.
    pub fn kept_at(&self, keep: Duration, now: Timestamp) -> bool {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        self.at.millis().saturating_add(keep_ms) > now.millis() && self.at.millis() <= now.millis()
    }
}

/// What a store remembers of the records it no longer holds. Every store
/// implements it; asked only after a read found nothing.
#[async_trait]
pub trait Tombstones: Send + Sync + 'static {
    /// How the record `id` went, if it existed and its tombstone is still
    /// kept; `None` for an id the store knows nothing of (never existed,
    /// or gone longer ago than the tombstone is kept), or one it holds.
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError>;
}

/// A tombstone length as whole milliseconds (what Redis's `PX` and SQL take).
pub fn tombstone_ms(keep: Duration) -> i64 {
    i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_stands_from_its_time_for_as_long_as_it_is_kept() {
        let gone = Gone::deleted(Timestamp(10_000));
        let keep = Duration::from_secs(5);
        assert!(!gone.kept_at(keep, Timestamp(9_999)), "not yet gone");
        assert!(gone.kept_at(keep, Timestamp(10_000)));
        assert!(gone.kept_at(keep, Timestamp(14_999)));
        assert!(!gone.kept_at(keep, Timestamp(15_000)));
        assert!(!gone.kept_at(Duration::ZERO, Timestamp(10_000)), "a tombstone kept 0 s never stands");
    }
}
