//! What the tiering layer (`store::tiered`) calls on Redis past
//! [`ProgressStore`](crate::store::ProgressStore): the writes that bring
//! records back from PostgreSQL without ever moving a version back (read
//! repair, copy-back after an outage), and the walk over keys that bulk
//! deletes judge record by record.

use super::RedisStore;
use super::codec::{from_redis, with_redis_value};
use super::keys::{change_notice, expiry_score, glob_escape};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics::store_op;
use crate::store::StoreError;
use crate::store::bulk::{MAINTENANCE_BATCH, status_of};

/// Copy-back: writes that never move a version back.
impl RedisStore {
    /// Stores `record` unless Redis already holds its version or a newer
    /// one: how records written to PostgreSQL while Redis was away, or
    /// read back from it, return to Redis without ever moving a version back.
    ///
    /// `same_too`: replace the same version as well. The copy-back does:
    /// a Redis that was paused may run a write that timed out (and was
    /// refused) when it resumes, on the version PostgreSQL has since given
    /// to an acknowledged write; PostgreSQL's is the one to keep.
    pub async fn put_if_newer(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        ttl_ms: i64,
        same_too: bool,
    ) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel) = (&self.scripts.put_if_newer, &self.changes_channel);
        let notice = change_notice(record.version(), id);
        let status = status_of(record)?.as_str();
        let expires = expiry_score(record, ttl_ms);
        let (indexes, marker) = (&self.index_keys, self.gone_key(id));
        let mut cmd = script.call(&indexes.with_record_and_marker(&key, &marker));
        cmd.arg(record.version());
        with_redis_value(record, |value| cmd.arg(value))
            .arg(ttl_ms.max(1))
            .arg(channel)
            .arg(notice)
            .arg(record.meta().c)
            .arg(id.as_str())
            .arg(status)
            .arg(expires);
        self.expiry_marker(&mut cmd, record, ttl_ms);
        cmd.arg(if same_too { "1" } else { "0" });
        let outcome: i64 = self.eval_counted(store_op!("redis", "put_if_newer"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    /// Deletes the record if Redis holds the incarnation created at
    /// `created_at` or an older one, never a record created after it: how a
    /// delete PostgreSQL took while Redis was away reaches Redis.
    pub async fn delete_incarnation(&self, id: &ProgressId, created_at: Timestamp) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.scripts.delete_incarnation, &self.changes_channel, change_notice(0, id));
        // The marker goes too: Redis does not know when PostgreSQL took the
        // delete, so the tiered store asks PostgreSQL (`Tombstones::gone`).
        let marker = self.gone_key(id);
        let mut cmd = script.call(&self.index_keys.with_record_and_marker(&key, &marker));
        cmd.arg(created_at.millis()).arg(channel).arg(notice).arg(id.as_str());
        let outcome: i64 = self.eval_counted(store_op!("redis", "delete_incarnation"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }
}

/// Scans by key pattern (SCAN, never KEYS).
impl RedisStore {
    /// One SCAN step over the records whose id starts with `id_prefix`,
    /// from `cursor` (0 to begin): the next cursor (0 at the end) and the
    /// records found, read with one MGET. Keys that are not records of ours
    /// are skipped.
    pub async fn scan_page(
        &self,
        cursor: u64,
        id_prefix: &str,
    ) -> Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError> {
        let record_key_start = format!("{}progress:", self.key_prefix);
        let pattern = format!("{}{id_prefix}*", glob_escape(&record_key_start));
        let (next, keys): (u64, Vec<String>) = self
            .run(|mut conn| async move {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(MAINTENANCE_BATCH)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let ids: Vec<(String, Option<ProgressId>)> = keys
            .into_iter()
            .map(|key| {
                let id = key.strip_prefix(&record_key_start).and_then(|id| ProgressId::parse(id).ok());
                (key, id)
            })
            .collect();
        let keys: Vec<&str> = ids.iter().filter(|(_, id)| id.is_some()).map(|(key, _)| key.as_str()).collect();
        if keys.is_empty() {
            return Ok((next, Vec::new()));
        }
        let values: Vec<Option<Vec<u8>>> =
            self.run(|mut conn| async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await }).await?;
        let records = ids
            .into_iter()
            .filter_map(|(_, id)| id)
            .zip(values)
            .filter_map(|(id, value)| match from_redis(value?) {
                Ok(stored) => Some((id, stored)),
                Err(e) => {
                    tracing::debug!(id = %id, error = %e, "scan skips a key that is not a record");
                    None
                }
            })
            .collect();
        Ok((next, records))
    }

    /// Which of `ids` Redis holds.
    pub async fn exists_many(&self, ids: &[ProgressId]) -> Result<Vec<bool>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EXISTS").arg(self.key(id));
        }
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }
}

impl crate::store::HotTier for RedisStore {
    fn put_if_newer(
        &self,
        id: &ProgressId,
        record: &StoredRecord,
        ttl_ms: i64,
        same_too: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        RedisStore::put_if_newer(self, id, record, ttl_ms, same_too)
    }

    fn delete_incarnation(
        &self,
        id: &ProgressId,
        created_at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        RedisStore::delete_incarnation(self, id, created_at)
    }

    fn scan_page(
        &self,
        cursor: u64,
        id_prefix: &str,
    ) -> impl Future<Output = Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError>> + Send {
        RedisStore::scan_page(self, cursor, id_prefix)
    }

    fn exists_many(&self, ids: &[ProgressId]) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        RedisStore::exists_many(self, ids)
    }
}
