//! What operations over many records share (the admin bulk delete and
//! counts by status): the filter a bulk delete matches records against,
//! the batch size, and the page-wise delete every store uses. Also the
//! quick read of a stored record's status that filters, listing and the
//! Redis indexes rely on.

use super::{ProgressStore, StoreError};
use crate::domain::{CorruptRecord, ProgressId, Status, StoredRecord, Timestamp};

/// Records handled per statement or per round trip by cleanup and bulk deletes.
pub const MAINTENANCE_BATCH: usize = 1000;

/// Which records a bulk delete removes: all the given conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// The record has this status.
    pub status: Option<Status>,
    /// The record's id starts with this (already checked against the id alphabet).
    pub id_prefix: Option<String>,
    /// The record's last write (`updated_at`) is before this time.
    pub updated_before: Option<Timestamp>,
}

impl RecordFilter {
    /// Whether no condition is set (such a filter would match everything).
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.id_prefix.is_none() && self.updated_before.is_none()
    }

    /// Whether the id alone already rules the record out.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id_prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }

    /// Whether the record `id` as stored matches every condition.
    pub fn matches(&self, id: &ProgressId, stored: &StoredRecord) -> Result<bool, CorruptRecord> {
        if !self.matches_id(id.as_str()) {
            return Ok(false);
        }
        if let Some(status) = self.status
            && status_of(stored)? != status
        {
            return Ok(false);
        }
        if let Some(before) = self.updated_before
            && stored.record()?.updated_at >= before
        {
            return Ok(false);
        }
        Ok(true)
    }
}

/// The status of a stored record without parsing the whole document: the
/// body starts `{"id":"…","version":N,"status":"…"` (ids hold no quotes).
/// Anything else falls back to a full parse.
pub(crate) fn status_of(stored: &StoredRecord) -> Result<Status, CorruptRecord> {
    const KEY: &[u8] = b",\"status\":\"";
    if let Some(status) = stored.decoded_status().or(stored.meta().t) {
        return Ok(status);
    }
    let raw = stored.raw();
    let head = &raw[..raw.len().min(400)];
    let quick = head
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| &head[at + KEY.len()..])
        .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]))
        .and_then(|name| std::str::from_utf8(name).ok())
        .and_then(Status::parse);
    match quick {
        Some(status) => Ok(status),
        None => Ok(stored.record()?.status),
    }
}

/// Live records per status, and which tier counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    /// `postgres`, `redis` or `memory`.
    pub source: &'static str,
    /// Counts in the order of [`Status::ALL`].
    pub counts: [u64; 5],
}

impl StatusCounts {
    /// No records, counted by `source`.
    pub fn new(source: &'static str) -> Self {
        Self { source, counts: [0; 5] }
    }

    /// Counts one record.
    pub fn add(&mut self, status: Status, n: u64) {
        let i = Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status");
        self.counts[i] += n;
    }

    /// The count for `status`.
    pub fn get(&self, status: Status) -> u64 {
        self.counts[Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status")]
    }

    /// All records.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Deletes the records of `page` that match `filter` through `store`, each
/// only at the version that was read, so that a write landing in between
/// wins over the delete. Returns the ids deleted.
pub(crate) async fn delete_page(
    store: &dyn ProgressStore,
    page: Vec<(ProgressId, StoredRecord)>,
    filter: &RecordFilter,
) -> Result<Vec<ProgressId>, StoreError> {
    let mut deleted = Vec::new();
    for (id, stored) in page {
        let matches = match filter.matches(&id, &stored) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "bulk delete skips a record that does not parse");
                false
            }
        };
        if matches && store.compare_and_delete(&id, stored.version()).await? {
            deleted.push(id);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Timestamp, Touched, WritePolicy, apply_write};
    use serde_json::json;

    fn stored(id: &str, body: serde_json::Value, at: i64) -> (ProgressId, StoredRecord) {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let id = ProgressId::parse(id).unwrap();
        let fields = ClientFields::from_json(&body, 600).unwrap();
        let (r, m) = apply_write(&id, None, fields, Touched::default(), Timestamp(at), &policy);
        (id, StoredRecord::encode(&m, &r))
    }

    #[test]
    fn reads_the_status_from_the_head_of_the_document() {
        for status in Status::ALL {
            let (_, s) = stored("a-b.c:d_e", json!({"status": status.as_str(), "metadata": {"status": "x"}}), 1);
            assert_eq!(status_of(&s).unwrap(), status);
        }
    }

    #[test]
    fn a_filter_needs_every_condition() {
        let (id, s) = stored("job-1", json!({"status": "failed"}), 1_000);
        let f = |status, prefix: Option<&str>, before| RecordFilter {
            status,
            id_prefix: prefix.map(str::to_owned),
            updated_before: before,
        };
        assert!(f(None, None, None).is_empty());
        assert!(f(Some(Status::Failed), None, None).matches(&id, &s).unwrap());
        assert!(!f(Some(Status::Running), None, None).matches(&id, &s).unwrap());
        assert!(f(Some(Status::Failed), Some("job-"), Some(Timestamp(1_001))).matches(&id, &s).unwrap());
        assert!(!f(Some(Status::Failed), Some("job-"), Some(Timestamp(1_000))).matches(&id, &s).unwrap());
        assert!(!f(None, Some("jobs"), None).matches(&id, &s).unwrap());
    }
}
