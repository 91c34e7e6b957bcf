//! What the tiering layer (`store::tiered`) calls on PostgreSQL past
//! [`ProgressStore`](crate::store::ProgressStore), besides the fenced
//! writes (`fence.rs`): the write-behind flush, the row for an id whatever
//! its state (the read fallback), and the rows changed since a time (the
//! copy-back into Redis after an outage).

use std::collections::HashMap;
use std::time::SystemTime;

use super::PostgresStore;
use super::queries::{LOOKUP, UPDATED_SINCE, UPSERT_NEWER};
use super::rows::{Batch, DurableRow, Row, millis, system_time};
use super::session::pg;
use crate::domain::{CorruptRecord, ProgressId, StoredRecord, Timestamp};
use crate::metrics::store_op;
use crate::store::{ListPage, ListQuery, RecordFilter, StatusCounts, StoreError};

impl PostgresStore {
    /// Version-guarded batch upsert in one statement: each record is written
    /// only if its id is absent or expired, or stored with a lower version.
    /// A record the guard skips is a stale write, not an error. Returns how
    /// many rows were written.
    ///
    /// When the batch holds an id more than once, its highest version is the
    /// one sent. A record whose body does not parse is left out (and logged)
    /// rather than failing the batch, so one bad record cannot stop every
    /// flush after it.
    pub async fn upsert_newer(&self, records: &[(ProgressId, StoredRecord)]) -> Result<u64, StoreError> {
        // ON CONFLICT cannot touch one row twice in a statement: one per id.
        let mut newest: HashMap<&str, &StoredRecord> = HashMap::with_capacity(records.len());
        for (id, stored) in records {
            newest
                .entry(id.as_str())
                .and_modify(|kept| {
                    if stored.version() > kept.version() {
                        *kept = stored;
                    }
                })
                .or_insert(stored);
        }
        let mut batch = Batch::with_capacity(newest.len());
        for (id, stored) in newest {
            match Row::of(id, stored) {
                Ok(row) => batch.push(row),
                Err(e) => tracing::error!(id, error = %e, "not persisted: the record does not parse"),
            }
        }
        if batch.ids.is_empty() {
            return Ok(0);
        }
        self.bounded_counted(store_op!("postgres", "upsert_newer"), async {
            let db = self.session().await?;
            let statement = db.prepare_cached(UPSERT_NEWER).await.map_err(pg)?;
            let written = db
                .execute(
                    &statement,
                    &[
                        &batch.ids,
                        &batch.versions,
                        &batch.statuses,
                        &batch.created,
                        &batch.updated,
                        &batch.expires,
                        &batch.records,
                    ],
                )
                .await
                .map_err(pg)?;
            db.done();
            Ok(written)
        })
        .await
    }

    /// Unexpired rows (records and tombstones) with `updated_at >= since`,
    /// oldest first, at most `limit`, with the time of the last one.
    pub async fn updated_since(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> Result<Vec<(ProgressId, DurableRow, Timestamp)>, StoreError> {
        let since = system_time(since.millis());
        let rows = self
            .bounded_counted(store_op!("postgres", "updated_since"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(UPDATED_SINCE).await.map_err(pg)?;
                let rows = db.query(&statement, &[&since, &limit.max(0)]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                let id: &str = row.get(0);
                let id = ProgressId::parse(id)
                    .map_err(|e| CorruptRecord(format!("row id {id:?} is not a valid id: {}", e.0)))?;
                let updated: SystemTime = row.get(4);
                Ok((id, DurableRow::from_columns(row.get(1), row.get(2), row.get(3))?, millis(updated)))
            })
            .collect()
    }

    /// The row for `id` as it stands: a live record, a tombstone, or nothing
    /// (absent or expired).
    pub async fn lookup(&self, id: &ProgressId) -> Result<DurableRow, StoreError> {
        let row = self
            .bounded_counted(store_op!("postgres", "lookup"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(LOOKUP).await.map_err(pg)?;
                let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
                db.done();
                Ok(row)
            })
            .await?;
        match row {
            None => Ok(DurableRow::Absent),
            Some(row) => Ok(DurableRow::from_columns(row.get(0), row.get(1), row.get(2))?),
        }
    }
}

impl crate::store::DurableTier for PostgresStore {
    fn lookup(&self, id: &ProgressId) -> impl Future<Output = Result<DurableRow, StoreError>> + Send {
        PostgresStore::lookup(self, id)
    }

    fn upsert_newer(
        &self,
        records: &[(ProgressId, StoredRecord)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        PostgresStore::upsert_newer(self, records)
    }

    fn updated_since(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(ProgressId, DurableRow, Timestamp)>, StoreError>> + Send {
        PostgresStore::updated_since(self, since, limit)
    }

    fn compare_and_set_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send {
        PostgresStore::compare_and_set_fenced(self, id, expected, record, fence)
    }

    fn compare_and_delete_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send {
        PostgresStore::compare_and_delete_fenced(self, id, expected, fence)
    }

    fn delete_fenced(
        &self,
        id: &ProgressId,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<bool>, StoreError>> + Send {
        PostgresStore::delete_fenced(self, id, fence)
    }

    fn raise_fence(&self, at: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send {
        PostgresStore::raise_fence(self, at)
    }

    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        PostgresStore::migrate(self)
    }
}

impl crate::store::DurableMaintenance for PostgresStore {
    fn purge_expired(&self, exclusive: bool) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        PostgresStore::purge_expired(self, exclusive)
    }

    fn tombstone_matching(
        &self,
        filter: &RecordFilter,
        fence: Option<Timestamp>,
    ) -> impl Future<Output = Result<(Vec<ProgressId>, bool), StoreError>> + Send {
        PostgresStore::tombstone_matching(self, filter, fence)
    }

    fn matching_page(
        &self,
        filter: &RecordFilter,
        after: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(ProgressId, i64)>, StoreError>> + Send {
        PostgresStore::matching_page(self, filter, after, limit)
    }

    fn tombstone_versions(
        &self,
        rows: &[(ProgressId, i64)],
    ) -> impl Future<Output = Result<Vec<ProgressId>, StoreError>> + Send {
        PostgresStore::tombstone_versions(self, rows)
    }

    fn tombstone_ids(&self, ids: &[ProgressId]) -> impl Future<Output = Result<(), StoreError>> + Send {
        PostgresStore::tombstone_ids(self, ids)
    }

    fn list_page(&self, query: &ListQuery) -> impl Future<Output = Result<ListPage, StoreError>> + Send {
        PostgresStore::list_page(self, query)
    }

    fn count_statuses(&self) -> impl Future<Output = Result<StatusCounts, StoreError>> + Send {
        PostgresStore::count_statuses(self)
    }
}
