//! Cleanup in Redis: keys expire by themselves (every write sets a TTL);
//! what outlives them is their entries in the listing indexes, which
//! cleanup prunes (and, once per key prefix, backfills for records written
//! before the indexes existed), under a lock so that one instance at a
//! time does it.

use std::time::Duration;

use super::RedisStore;
use super::keys::glob_escape;
use super::scripts::Scripts;
use crate::domain::{ProgressId, Timestamp};
use crate::metrics::store_op;
use crate::store::bulk::MAINTENANCE_BATCH;
use crate::store::{CleanupReport, StoreError};

/// Longest the Redis cleanup lock is held if its holder dies before releasing it.
const CLEANUP_LOCK_HOLD: Duration = Duration::from_secs(60);

impl RedisStore {
    /// [`Maintenance::cleanup`](crate::store::Maintenance::cleanup) for Redis.
    pub(super) async fn clean_up(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        let token = if exclusive {
            match self.lock_cleanup(CLEANUP_LOCK_HOLD).await? {
                Some(token) => Some(token),
                None => return Ok(None),
            }
        } else {
            None
        };
        // Keys expire by themselves (every write sets a TTL); what outlives
        // them is their entries in the listing indexes.
        let pruned = async {
            self.backfill_index().await?;
            self.prune_index().await
        }
        .await;
        if let Some(token) = token {
            self.unlock_cleanup(&token).await?;
        }
        Ok(Some(CleanupReport { redis_orphaned_index_entries: Some(pruned?), ..CleanupReport::default() }))
    }

    /// Takes the cleanup lock (`SET NX PX`) for `hold`; `None` when another
    /// instance holds it, else the token that releases it.
    async fn lock_cleanup(&self, hold: Duration) -> Result<Option<String>, StoreError> {
        let key = self.cleanup_lock_key();
        let token = format!("{}-{}", std::process::id(), Timestamp::now().millis());
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .run(|mut conn| {
                let (key, token) = (key.clone(), token.clone());
                async move {
                    redis::cmd("SET").arg(key).arg(token).arg("NX").arg("PX").arg(millis).query_async(&mut conn).await
                }
            })
            .await?;
        Ok(set.map(|_| token))
    }

    /// Releases the cleanup lock if `token` still holds it.
    async fn unlock_cleanup(&self, token: &str) -> Result<(), StoreError> {
        let key = self.cleanup_lock_key();
        let script = Scripts::unlock_cleanup();
        let mut cmd = script.call(&[&key]);
        cmd.arg(token);
        let _: i64 = self.eval(&script, &cmd).await?;
        Ok(())
    }
}

/// The listing indexes' upkeep (the cleanup side; writes keep them in step).
impl RedisStore {
    /// Removes index entries of records that expired (or were replaced by
    /// another incarnation), in batches of [`MAINTENANCE_BATCH`]; how many.
    async fn prune_index(&self) -> Result<u64, StoreError> {
        let (script, record_keys) = (&self.scripts.prune_index, self.record_key_prefix());
        let mut pruned = 0;
        loop {
            let now = Timestamp::now().millis();
            let mut cmd = script.call(&self.index_keys.all_keys());
            cmd.arg(now).arg(MAINTENANCE_BATCH).arg(&record_keys);
            let (n, examined): (u64, usize) =
                self.eval_counted(store_op!("redis", "prune_index"), script, &cmd).await?;
            pruned += n;
            if examined < MAINTENANCE_BATCH {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Once per key prefix: indexes the records written before the listing
    /// indexes existed (found with SCAN), then sets a marker key.
    async fn backfill_index(&self) -> Result<(), StoreError> {
        let marker = self.index_keys.backfilled.clone();
        let done: bool = self
            .run(|mut conn| {
                let marker = marker.clone();
                async move { redis::cmd("EXISTS").arg(marker).query_async(&mut conn).await }
            })
            .await?;
        if done {
            return Ok(());
        }
        let record_keys = self.record_key_prefix();
        let pattern = format!("{}*", glob_escape(&record_keys));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(|mut conn| {
                    let pattern = pattern.clone();
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(MAINTENANCE_BATCH)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            let ids: Vec<&str> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(&record_keys))
                .filter(|id| ProgressId::parse(id).is_ok())
                .collect();
            if !ids.is_empty() {
                let script = &self.scripts.backfill_index;
                let mut cmd = script.call(&self.index_keys.all_keys());
                cmd.arg(&record_keys).arg(&ids);
                let _: u64 = self.eval(script, &cmd).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
        self.run(|mut conn| async move { redis::cmd("SET").arg(marker).arg(1).query_async::<()>(&mut conn).await })
            .await
    }
}
