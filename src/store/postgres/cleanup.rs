//! Cleanup in PostgreSQL: expired rows (records and tombstones) deleted in
//! short batches, by one instance at a time (a session advisory lock).

use super::PostgresStore;
use super::queries::PURGE_EXPIRED;
use super::session::pg;
use crate::store::bulk::MAINTENANCE_BATCH;
use crate::store::{StoreError, tombstone_ms};

/// Key of the session advisory lock held while cleaning up (`progclup` in ASCII).
const CLEANUP_LOCK: i64 = 0x7072_6f67_636c_7570;

impl PostgresStore {
    /// Deletes expired rows (records and tombstones) in batches of
    /// [`MAINTENANCE_BATCH`], each its own statement, yielding in between;
    /// returns how many. With `exclusive`, first takes a session advisory
    /// lock on the connection that runs the batches (`Ok(None)` when another
    /// instance holds it), released afterwards, or by closing the connection
    /// when a batch fails.
    pub async fn purge_expired(&self, exclusive: bool) -> Result<Option<u64>, StoreError> {
        let db = self.bounded(self.session()).await?;
        if exclusive {
            let locked: bool = self
                .bounded(async {
                    let row = db.query_one("SELECT pg_try_advisory_lock($1)", &[&CLEANUP_LOCK]).await.map_err(pg)?;
                    Ok(row.get(0))
                })
                .await?;
            if !locked {
                db.done();
                return Ok(None);
            }
        }
        let batch = MAINTENANCE_BATCH as i64;
        let mut purged = 0;
        loop {
            let n = self
                .bounded(async {
                    let statement = db.prepare_cached(PURGE_EXPIRED).await.map_err(pg)?;
                    db.execute(&statement, &[&batch, &tombstone_ms(self.tombstone)]).await.map_err(pg)
                })
                .await?;
            purged += n;
            if n < MAINTENANCE_BATCH as u64 {
                break;
            }
            // Let requests waiting for a worker thread run between batches.
            tokio::task::yield_now().await;
        }
        if exclusive {
            self.bounded(async { db.execute("SELECT pg_advisory_unlock($1)", &[&CLEANUP_LOCK]).await.map_err(pg) })
                .await?;
        }
        db.done();
        Ok(Some(purged))
    }
}
