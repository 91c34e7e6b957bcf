//! Rows and records: what a row holds for an id ([`DurableRow`]), the
//! columns PostgreSQL keeps beside a record's bytes, and times as
//! PostgreSQL takes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::domain::{CorruptRecord, StoredRecord, Timestamp};

/// What PostgreSQL holds for one id.
#[derive(Debug, Clone)]
pub enum DurableRow {
    /// A record.
    Live(StoredRecord),
    /// A tombstone: the incarnation created at `created_at` was deleted.
    Deleted {
        /// `created_at` of the deleted record (or of the delete, when there was no row).
        created_at: Timestamp,
    },
    /// Nothing, or only an expired row.
    Absent,
}

impl DurableRow {
    pub(super) fn from_columns(record: Vec<u8>, deleted: bool, created_at: SystemTime) -> Result<Self, CorruptRecord> {
        if deleted {
            return Ok(Self::Deleted { created_at: millis(created_at) });
        }
        StoredRecord::decode(Bytes::from(record)).map(Self::Live)
    }
}

pub(super) fn millis(t: SystemTime) -> Timestamp {
    Timestamp(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}

/// Milliseconds since the epoch as a time Postgres accepts (years 1 to 9999).
pub(super) fn system_time(ms: i64) -> SystemTime {
    let ms = ms.clamp(-62_135_596_800_000, 253_402_300_799_999);
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// The columns of one row, taken from the stored record.
pub(super) struct Row<'a> {
    pub(super) id: &'a str,
    pub(super) version: i64,
    pub(super) status: &'static str,
    pub(super) created_at: SystemTime,
    pub(super) updated_at: SystemTime,
    pub(super) expires_at: SystemTime,
    pub(super) record: &'a [u8],
}

impl<'a> Row<'a> {
    pub(super) fn of(id: &'a str, stored: &'a StoredRecord) -> Result<Self, CorruptRecord> {
        let record = stored.durable_columns()?;
        let version = i64::try_from(stored.version())
            .map_err(|_| CorruptRecord(format!("version {} does not fit a bigint", stored.version())))?;
        // The header's expiry; a header from before it carried one has the body's.
        let expires_ms = if stored.meta().x > 0 { stored.meta().x } else { record.expires_at.millis() };
        Ok(Self {
            id,
            version,
            status: record.status.as_str(),
            created_at: system_time(record.created_at.millis()),
            updated_at: system_time(record.updated_at.millis()),
            expires_at: system_time(expires_ms),
            record: stored.raw().as_ref(),
        })
    }
}

/// Rows as the column arrays `UNNEST` takes.
pub(super) struct Batch<'a> {
    pub(super) ids: Vec<&'a str>,
    pub(super) versions: Vec<i64>,
    pub(super) statuses: Vec<&'static str>,
    pub(super) created: Vec<SystemTime>,
    pub(super) updated: Vec<SystemTime>,
    pub(super) expires: Vec<SystemTime>,
    pub(super) records: Vec<&'a [u8]>,
}

impl<'a> Batch<'a> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, row: Row<'a>) {
        self.ids.push(row.id);
        self.versions.push(row.version);
        self.statuses.push(row.status);
        self.created.push(row.created_at);
        self.updated.push(row.updated_at);
        self.expires.push(row.expires_at);
        self.records.push(row.record);
    }
}
