//! The fence (`migrations/V4__redis_fence.sql`). While its Redis breaker
//! is open, a Redis-over-PostgreSQL instance writes here, each write in a
//! transaction that holds the fence row shared. The first instance to find
//! Redis answering again raises the fence: that waits for the writes in
//! flight, and every later one is refused, so that no instance writes on
//! PostgreSQL's version once Redis is the store of record again.

use tokio_postgres::types::ToSql;
use tokio_postgres::{SimpleQueryMessage, Statement};

use super::PostgresStore;
use super::queries::{COMPARE_AND_DELETE, CREATE, DELETE, ENTER_FENCE, RAISE_FENCE, REPLACE};
use super::rows::Row;
use super::session::{Session, pg};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics::store_op;
use crate::store::StoreError;

/// Each write takes `fence`: `None` writes as is (PostgreSQL alone, or the
/// durable copy of a write Redis took); `Some(since)` (Redis down for this
/// instance since then) runs it in a transaction that first holds the fence
/// row shared and answers `None`, writing nothing, when an instance has
/// raised the fence at or after `since`.
impl PostgresStore {
    /// Records that Redis answered this instance again at `at`, before it
    /// uses Redis again. Waits for every fenced write in flight (their share
    /// locks), so that each has landed before the copy-back that follows;
    /// every later one is refused.
    pub async fn raise_fence(&self, at: Timestamp) -> Result<(), StoreError> {
        self.bounded_counted(store_op!("postgres", "raise_fence"), async {
            let db = self.session().await?;
            let statement = db.prepare_cached(RAISE_FENCE).await.map_err(pg)?;
            db.execute(&statement, &[&at.millis()]).await.map_err(pg)?;
            db.done();
            Ok(())
        })
        .await
    }

    /// A session for one write and its prepared `sql`. With `fence`, in a
    /// transaction that holds the fence row shared; `None` (rolled back)
    /// when the fence was raised at or after it. A write that fails after
    /// this drops its session, which closes the connection and so ends the
    /// transaction; one that succeeds ends with [`Session::leave_fence`].
    pub(super) async fn fenced_session(
        &self,
        fence: Option<Timestamp>,
        sql: &str,
    ) -> Result<Option<(Session, Statement)>, StoreError> {
        let db = self.session().await?;
        if let Some(since) = fence {
            let raised = db.simple_query(ENTER_FENCE).await.map_err(pg)?.iter().find_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|ms| ms.parse::<i64>().ok()),
                _ => None,
            });
            if raised.is_some_and(|raised| raised >= since.millis()) {
                db.batch_execute("ROLLBACK").await.map_err(pg)?;
                db.done();
                return Ok(None);
            }
        }
        let statement = db.prepare_cached(sql).await.map_err(pg)?;
        Ok(Some((db, statement)))
    }

    /// [`ProgressStore::compare_and_set`](crate::store::ProgressStore::compare_and_set) behind `fence`; `None` when fenced off.
    pub async fn compare_and_set_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        let row = Row::of(id.as_str(), record)?;
        let (sql, expected) = match expected {
            0 => (CREATE, None),
            // A version beyond bigint cannot be stored, so it matches no row.
            v => match i64::try_from(v) {
                Ok(v) => (REPLACE, Some(v)),
                Err(_) => return Ok(Some(false)),
            },
        };
        self.bounded_counted(store_op!("postgres", "compare_and_set"), async {
            let Some((db, statement)) = self.fenced_session(fence, sql).await? else { return Ok(None) };
            // CREATE takes the columns, REPLACE the expected version as well.
            let guard = expected.unwrap_or(0);
            let params: [&(dyn ToSql + Sync); 8] = [
                &row.id,
                &row.version,
                &row.status,
                &row.created_at,
                &row.updated_at,
                &row.expires_at,
                &row.record,
                &guard,
            ];
            let written =
                db.execute(&statement, &params[..if expected.is_some() { 8 } else { 7 }]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            Ok(Some(written == 1))
        })
        .await
    }

    /// [`ProgressStore::compare_and_delete`](crate::store::ProgressStore::compare_and_delete) behind `fence`; `None` when fenced off.
    pub async fn compare_and_delete_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        let Ok(expected) = i64::try_from(expected) else { return Ok(Some(false)) };
        self.bounded_counted(store_op!("postgres", "compare_and_delete"), async {
            let Some((db, statement)) = self.fenced_session(fence, COMPARE_AND_DELETE).await? else { return Ok(None) };
            let deleted = db.execute(&statement, &[&id.as_str(), &expected]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            Ok(Some(deleted == 1))
        })
        .await
    }

    /// [`ProgressStore::delete`](crate::store::ProgressStore::delete) behind `fence`; `None` when fenced off.
    pub async fn delete_fenced(&self, id: &ProgressId, fence: Option<Timestamp>) -> Result<Option<bool>, StoreError> {
        self.bounded_counted(store_op!("postgres", "delete"), async {
            let Some((db, statement)) = self.fenced_session(fence, DELETE).await? else { return Ok(None) };
            let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            // A tombstone for an expired row or for no row at all: nothing was deleted.
            Ok(Some(row.is_some_and(|row| row.get::<_, Option<bool>>(0) == Some(true))))
        })
        .await
    }
}

impl Session {
    /// Commits the transaction of [`PostgresStore::fenced_session`] (with
    /// `fence`), then [`Session::done`].
    pub(super) async fn leave_fence(self, fence: Option<Timestamp>) -> Result<(), StoreError> {
        if fence.is_some() {
            self.batch_execute("COMMIT").await.map_err(pg)?;
        }
        self.done();
        Ok(())
    }
}
