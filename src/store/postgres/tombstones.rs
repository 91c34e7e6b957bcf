//! What PostgreSQL remembers of a record it no longer holds: a tombstone
//! row (`deleted`, with `status` saying deleted or expired and `gone_at`
//! when; `migrations/V6__gone.sql`), or an expired row that cleanup keeps
//! for the tombstone time past its expiry.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::PostgresStore;
use super::queries::GONE;
use super::rows::millis;
use super::session::pg;
use crate::domain::{ProgressId, Timestamp};
use crate::metrics::store_op;
use crate::store::{Gone, GoneKind, StoreError, Tombstones};

impl PostgresStore {
    /// Keeps deleted and expired rows answering 410 for `tombstone` (a day
    /// unless told); cleanup purges rows that long past their expiry.
    pub fn with_tombstone(mut self, tombstone: Duration) -> Self {
        self.tombstone = tombstone;
        self
    }
}

#[async_trait]
impl Tombstones for PostgresStore {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        let row = self
            .bounded_counted(store_op!("postgres", "gone"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(GONE).await.map_err(pg)?;
                let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
                db.done();
                Ok(row.map(|row| (row.get::<_, String>(0), row.get::<_, Option<SystemTime>>(1))))
            })
            .await?;
        let Some((kind, Some(at))) = row else { return Ok(None) };
        let kind = match kind.as_str() {
            "deleted" => GoneKind::Deleted,
            "expired" => GoneKind::Expired,
            _ => return Ok(None),
        };
        let gone = Gone { kind, at: millis(at) };
        Ok(Some(gone).filter(|g| g.kept_at(self.tombstone, Timestamp::now())))
    }
}
