//! Bulk deletes in PostgreSQL: live rows matching a filter turned into
//! tombstones in batches (behind the fence when Redis is down), or only
//! those still at the version another tier judged, or by id.

use std::time::SystemTime;

use super::PostgresStore;
use super::queries::{LIVE_MATCHING, TOMBSTONE_SET};
use super::rows::system_time;
use super::session::pg;
use crate::domain::{ProgressId, Status, Timestamp};
use crate::store::StoreError;
use crate::store::bulk::{MAINTENANCE_BATCH, RecordFilter};

impl PostgresStore {
    /// Turns every live row matching `filter` into a tombstone, in batches,
    /// each behind `fence` (see [`Self::compare_and_set_fenced`]); returns
    /// the ids, and whether the fence stopped it before the end (the
    /// batches before that are tombstoned). For when PostgreSQL is the
    /// store of record.
    pub async fn tombstone_matching(
        &self,
        filter: &RecordFilter,
        fence: Option<Timestamp>,
    ) -> Result<(Vec<ProgressId>, bool), StoreError> {
        let query = format!(
            "WITH batch AS (SELECT id FROM progress WHERE {LIVE_MATCHING} LIMIT $4 FOR UPDATE)
             UPDATE progress SET {TOMBSTONE_SET} FROM batch WHERE progress.id = batch.id RETURNING progress.id"
        );
        let (status, prefix, before) = filter_params(filter);
        let batch = MAINTENANCE_BATCH as i64;
        let mut deleted = Vec::new();
        loop {
            let rows = self
                .bounded(async {
                    let Some((db, statement)) = self.fenced_session(fence, &query).await? else { return Ok(None) };
                    let rows = db.query(&statement, &[&status, &prefix, &before, &batch]).await.map_err(pg)?;
                    db.leave_fence(fence).await?;
                    Ok(Some(rows))
                })
                .await?;
            let Some(rows) = rows else { return Ok((deleted, true)) };
            let n = rows.len();
            deleted.extend(parse_ids(rows));
            if n < MAINTENANCE_BATCH {
                return Ok((deleted, false));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Up to `limit` live rows matching `filter` with an id after `after`,
    /// in id order: `(id, version)`.
    pub async fn matching_page(
        &self,
        filter: &RecordFilter,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(ProgressId, i64)>, StoreError> {
        let query = format!("SELECT id, version FROM progress WHERE {LIVE_MATCHING} AND id > $5 ORDER BY id LIMIT $4");
        let (status, prefix, before) = filter_params(filter);
        let rows = self
            .bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                let rows = db.query(&statement, &[&status, &prefix, &before, &limit, &after]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| Some((ProgressId::parse(row.get::<_, &str>(0)).ok()?, row.get::<_, i64>(1))))
            .collect())
    }

    /// Tombstones the rows among `rows` that are still live at the version
    /// given; returns the ids tombstoned.
    pub async fn tombstone_versions(&self, rows: &[(ProgressId, i64)]) -> Result<Vec<ProgressId>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let query = format!(
            "UPDATE progress SET {TOMBSTONE_SET}
             FROM UNNEST($1::text[], $2::bigint[]) AS t(id, version)
             WHERE progress.id = t.id AND progress.version = t.version
               AND NOT progress.deleted AND progress.expires_at > now()
             RETURNING progress.id"
        );
        let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|(_, v)| *v).collect();
        let rows = self
            .bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                let rows = db.query(&statement, &[&ids, &versions]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        Ok(parse_ids(rows))
    }

    /// Leaves a tombstone for each of `ids`, like [`ProgressStore::delete`](crate::store::ProgressStore::delete)
    /// for many records at once (in batches).
    pub async fn tombstone_ids(&self, ids: &[ProgressId]) -> Result<(), StoreError> {
        let query = format!(
            "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record, deleted)
             SELECT id, 9223372036854775807, 'deleted', now(), now(), now() + interval '1 day', ''::bytea, true
             FROM UNNEST($1::text[]) AS t(id) ORDER BY 1
             ON CONFLICT (id) DO UPDATE SET {TOMBSTONE_SET}
             WHERE NOT progress.deleted"
        );
        let mut unique: Vec<&str> = ids.iter().map(ProgressId::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        for chunk in unique.chunks(MAINTENANCE_BATCH) {
            self.bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                db.execute(&statement, &[&chunk]).await.map_err(pg)?;
                db.done();
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// A filter as the parameters `$1`–`$3` of [`LIVE_MATCHING`].
fn filter_params(filter: &RecordFilter) -> (Option<&'static str>, Option<&str>, Option<SystemTime>) {
    (
        filter.status.map(Status::as_str),
        filter.id_prefix.as_deref(),
        filter.updated_before.map(|t| system_time(t.millis())),
    )
}

fn parse_ids(rows: Vec<tokio_postgres::Row>) -> Vec<ProgressId> {
    rows.iter().filter_map(|row| ProgressId::parse(row.get::<_, &str>(0)).ok()).collect()
}
