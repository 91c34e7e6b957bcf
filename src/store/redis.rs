//! The Redis hot tier, through deadpool-redis.
//!
//! Record `id` lives at `{prefix}progress:{id}` as the stored form of
//! [`StoredRecord`], with a TTL refreshed on every write.
//!
//! deadpool-redis PINGs a connection on every checkout, which costs one
//! extra round trip per request. A multiplexed connection serves any number
//! of concurrent requests, so the store checks out a few connections once,
//! holds them, and hands out clones. A connection that fails is dropped
//! (back to the pool, whose recycle check discards it) and the next request
//! checks out a fresh one: redis-rs's multiplexed connection does not
//! reconnect by itself, the pool does it for us.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};
use deadpool_redis::{Manager, Pool, Runtime, Timeouts};

use super::maintenance::{
    delete_page, glob_escape, status_of, timed, CleanupReport, LastError, RecordFilter, StatusCounts, TierHealth,
    MAINTENANCE_BATCH,
};
use super::{ProgressStore, StoreError};
use crate::metrics::{store_op, StoreOp};
use crate::domain::{CorruptRecord, ProgressId, StoredRecord, Timestamp};

/// Reads the stored version into `current` (0: absent) and the creation
/// time into `created` from the header prefix alone, never decoding the document; returns -1 from the script
/// when the key holds something that is not ours.
const READ_VERSION: &str = r#"
local head = redis.call('GETRANGE', KEYS[1], 0, 127)
local current = 0
local created = 0
if head ~= '' then
  current = tonumber(string.match(head, '^{"v":(%d+)'))
  if current == nil then return -1 end
  created = tonumber(string.match(head, '"c":(%d+)')) or 0
end
"#;

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms when the stored version equals
/// `ARGV[1]` (0: absent), and announces `ARGV[5]` on channel `ARGV[4]`.
/// 1 when stored, 0 on a version mismatch.
const COMPARE_AND_SET: &str = r#"
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Deletes the key when the stored version equals `ARGV[1]` and announces
/// `ARGV[3]` on channel `ARGV[2]`. 1 when deleted, 0 on a mismatch or when absent.
const COMPARE_AND_DELETE: &str = r#"
if current == 0 or current ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Stores `ARGV[2]` with TTL `ARGV[3]` ms unless Redis already holds
/// version `ARGV[1]` of the incarnation created at `ARGV[6]`, or something
/// newer (a later incarnation, or a higher version of the same one);
/// announces `ARGV[5]` on channel `ARGV[4]`. 1 when stored, 0 otherwise.
const PUT_IF_NEWER: &str = r#"
local c, v = tonumber(ARGV[6]), tonumber(ARGV[1])
if current ~= 0 and (created > c or (created == c and current >= v)) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// Deletes the key when it holds the incarnation created at `ARGV[1]` or an
/// older one, and announces `ARGV[3]` on channel `ARGV[2]`. 1 when deleted.
const DELETE_INCARNATION: &str = r#"
if current == 0 or created > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// Deletes the key whatever its version and announces `ARGV[2]` on channel
/// `ARGV[1]`. The number of keys deleted.
const DELETE: &str = r#"
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return removed
"#;

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `redis://…` URL (may hold a password: never log it).
    pub url: String,
    /// Prepended to every key.
    pub key_prefix: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Multiplexed connections held and shared by all requests.
    pub shared_connections: usize,
    /// Bound on connecting, on waiting for the pool and on every operation.
    pub timeout: Duration,
}

/// Redis tier.
pub struct RedisStore {
    pool: Pool,
    key_prefix: String,
    timeout: Duration,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    compare_and_set: Script,
    compare_and_delete: Script,
    delete: Script,
    put_if_newer: Script,
    delete_incarnation: Script,
    changes_channel: String,
    /// The most recent failure, for `/readyz`.
    last_error: LastError,
}

/// One held connection, refreshed by one task at a time.
struct Slot {
    held: ArcSwapOption<Held>,
    refreshing: tokio::sync::Mutex<()>,
}

struct Held {
    conn: MultiplexedConnection,
    // Keeps the connection checked out of the pool while requests share it.
    _object: deadpool_redis::Connection,
}

impl RedisStore {
    /// Builds the pool. Connects lazily: a Redis that is down now is not an
    /// error until a request needs it.
    pub fn new(config: RedisStoreConfig) -> Result<Self, String> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            // No per-command timer inside redis-rs: `run` bounds each operation with one.
            .set_response_timeout(None);
        let manager = Manager::new_with_config(config.url.as_str(), connection).map_err(|e| e.to_string())?;
        let timeouts = Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(config.shared_connections))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let slots = (0..config.shared_connections.max(1))
            .map(|_| Slot { held: ArcSwapOption::empty(), refreshing: tokio::sync::Mutex::new(()) })
            .collect();
        Ok(Self {
            pool,
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            slots,
            next_slot: AtomicUsize::new(0),
            compare_and_set: Script::new(&format!("{READ_VERSION}{COMPARE_AND_SET}")),
            compare_and_delete: Script::new(&format!("{READ_VERSION}{COMPARE_AND_DELETE}")),
            delete: Script::new(DELETE),
            put_if_newer: Script::new(&format!("{READ_VERSION}{PUT_IF_NEWER}")),
            delete_incarnation: Script::new(&format!("{READ_VERSION}{DELETE_INCARNATION}")),
            changes_channel: format!("{}progress:changes", config.key_prefix),
            last_error: LastError::for_url(&config.url),
        })
    }

    /// The channel on which every change is announced as `{version}:{id}`
    /// (version 0 for a delete).
    pub fn changes_channel(&self) -> &str {
        &self.changes_channel
    }

    fn key(&self, id: &ProgressId) -> String {
        format!("{}progress:{}", self.key_prefix, id.as_str())
    }

    /// A shared connection, checking one out of the pool if the slot is empty.
    async fn connection(&self) -> Result<(&Slot, Arc<Held>), StoreError> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(held) = slot.held.load_full() {
            return Ok((slot, held));
        }
        let _refreshing = slot.refreshing.lock().await;
        if let Some(held) = slot.held.load_full() {
            return Ok((slot, held));
        }
        let object = self.pool.get().await.map_err(|e| unavailable(e.to_string()))?;
        let held = Arc::new(Held { conn: (*object).clone(), _object: object });
        slot.held.store(Some(held.clone()));
        Ok((slot, held))
    }

    /// Runs one operation on a shared connection within the timeout. A
    /// connection that errs or times out is given up so the next request
    /// gets a fresh one.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let (slot, held) = self.connection().await?;
            match op(held.conn.clone()).await {
                Ok(value) => Ok(value),
                Err(e) => {
                    if is_connection_failure(&e) {
                        slot.held.compare_and_swap(&Some(held), None);
                    }
                    Err(unavailable(e.to_string()))
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // The server stopped answering; start over on fresh connections.
                for slot in &self.slots {
                    slot.held.store(None);
                }
                Err(unavailable(format!("no answer within {:?}", self.timeout)))
            }
        };
        self.last_error.observe(result)
    }
}

impl RedisStore {
    /// Stores `record` unless Redis already holds its version or a newer
    /// one: how records written to PostgreSQL while Redis was away, or
    /// read back from it, return to Redis without ever moving a version back.
    pub async fn put_if_newer(&self, id: &ProgressId, record: &StoredRecord, ttl_ms: i64) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel) = (&self.put_if_newer, &self.changes_channel);
        let notice = format!("{}:{}", record.version(), id.as_str());
        let value = record.raw().as_ref();
        let outcome: i64 = self
            .run_counted(store_op!("redis", "put_if_newer"), |mut conn| async move {
                script
                    .key(&key)
                    .arg(record.version())
                    .arg(value)
                    .arg(ttl_ms.max(1))
                    .arg(channel)
                    .arg(notice)
                    .arg(record.meta().c)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        self.script_outcome(id, outcome)
    }

    /// Deletes the record if Redis holds the incarnation created at
    /// `created_at` or an older one, never a record created after it: how a
    /// delete PostgreSQL took while Redis was away reaches Redis.
    pub async fn delete_incarnation(&self, id: &ProgressId, created_at: Timestamp) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.delete_incarnation, &self.changes_channel, format!("0:{}", id.as_str()));
        let outcome: i64 = self
            .run_counted(store_op!("redis", "delete_incarnation"), |mut conn| async move {
                script.key(&key).arg(created_at.millis()).arg(channel).arg(notice).invoke_async(&mut conn).await
            })
            .await?;
        self.script_outcome(id, outcome)
    }

    /// Maps a script's 1 / 0 / -1 to stored / refused / not ours.
    fn script_outcome(&self, id: &ProgressId, outcome: i64) -> Result<bool, StoreError> {
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(CorruptRecord(format!("key {} holds something that is not a progress record", self.key(id))).into()),
        }
    }
}

/// Maintenance: scans by key pattern (SCAN, never KEYS) and the cleanup lock.
impl RedisStore {
    /// One SCAN step over the records whose id starts with `id_prefix`,
    /// from `cursor` (0 to begin): the next cursor (0 at the end) and the
    /// records found, read with one MGET. Keys that are not records of ours
    /// are skipped.
    pub async fn scan_page(&self, cursor: u64, id_prefix: &str) -> Result<(u64, Vec<(ProgressId, StoredRecord)>), StoreError> {
        let record_key_start = format!("{}progress:", self.key_prefix);
        let pattern = format!("{}{id_prefix}*", glob_escape(&record_key_start));
        let (next, keys): (u64, Vec<String>) = self
            .run(|mut conn| async move {
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(MAINTENANCE_BATCH).query_async(&mut conn).await
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
        let values: Vec<Option<Vec<u8>>> = self
            .run(|mut conn| async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await })
            .await?;
        let records = ids
            .into_iter()
            .filter_map(|(_, id)| id)
            .zip(values)
            .filter_map(|(id, value)| match StoredRecord::decode(Bytes::from(value?)) {
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

    /// Takes the cleanup lock (`SET NX PX`) for `hold`; `None` when another
    /// instance holds it, else the token that releases it.
    async fn lock_cleanup(&self, hold: Duration) -> Result<Option<String>, StoreError> {
        let key = self.cleanup_lock_key();
        let token = format!("{}-{}", std::process::id(), Timestamp::now().millis());
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .run(|mut conn| {
                let (key, token) = (key.clone(), token.clone());
                async move { redis::cmd("SET").arg(key).arg(token).arg("NX").arg("PX").arg(millis).query_async(&mut conn).await }
            })
            .await?;
        Ok(set.map(|_| token))
    }

    /// Releases the cleanup lock if `token` still holds it.
    async fn unlock_cleanup(&self, token: &str) -> Result<(), StoreError> {
        let key = self.cleanup_lock_key();
        let script = Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0");
        let _: i64 = self.run(|mut conn| async move { script.key(key).arg(token).invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    /// Outside the `progress:` key space, so no record id can collide with it.
    fn cleanup_lock_key(&self) -> String {
        format!("{}progressd:cleanup-lock", self.key_prefix)
    }
}

/// Longest the Redis cleanup lock is held if its holder dies before releasing it.
const CLEANUP_LOCK_HOLD: Duration = Duration::from_secs(60);

impl RedisStore {
    /// [`RedisStore::run`], counted as one `op` in the store metrics.
    async fn run_counted<T, F, Fut>(&self, op: &StoreOp, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        op.observe(self.run(f)).await
    }
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable { tier: "redis", reason }
}

fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error()
}

#[async_trait]
impl ProgressStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn report_metrics(&self) {
        let pool = self.pool.status();
        crate::metrics::set_pool("redis", pool.size, pool.available, pool.max_size, pool.waiting);
    }

    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let key = self.key(id);
        let raw: Option<Vec<u8>> = self
            .run_counted(store_op!("redis", "get"), |mut conn| async move {
                redis::cmd("GET").arg(&key).query_async(&mut conn).await
            })
            .await?;
        raw.map(|bytes| StoredRecord::decode(Bytes::from(bytes)).map_err(StoreError::from))
            .transpose()
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.compare_and_set;
        let value = record.raw().as_ref();
        let channel = &self.changes_channel;
        let notice = format!("{}:{}", record.version(), id.as_str());
        let outcome: i64 = self
            .run_counted(store_op!("redis", "compare_and_set"), |mut conn| async move {
                script
                    .key(&key)
                    .arg(expected)
                    .arg(value)
                    .arg(ttl_ms.max(1))
                    .arg(channel)
                    .arg(notice)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        self.script_outcome(id, outcome)
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.compare_and_delete;
        let (channel, notice) = (&self.changes_channel, format!("0:{}", id.as_str()));
        let outcome: i64 = self
            .run_counted(store_op!("redis", "compare_and_delete"), |mut conn| async move {
                script.key(&key).arg(expected).arg(channel).arg(notice).invoke_async(&mut conn).await
            })
            .await?;
        self.script_outcome(id, outcome)
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let _: String = self
            .run_counted(store_op!("redis", "ping"), |mut conn| async move { redis::cmd("PING").query_async(&mut conn).await })
            .await?;
        Ok(started.elapsed())
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.delete, &self.changes_channel, format!("0:{}", id.as_str()));
        let removed: i64 = self
            .run_counted(store_op!("redis", "delete"), |mut conn| async move {
                script.key(&key).arg(channel).arg(notice).invoke_async(&mut conn).await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(self.ping()).await;
        vec![TierHealth::from_probe("redis", probe, latency, &self.last_error)]
    }

    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        let token = if exclusive {
            match self.lock_cleanup(CLEANUP_LOCK_HOLD).await? {
                Some(token) => Some(token),
                None => return Ok(None),
            }
        } else {
            None
        };
        // Keys expire by themselves (every write sets a TTL), and there is no
        // secondary index whose entries could outlive their keys: nothing to purge.
        let report = CleanupReport { redis_orphaned_index_entries: Some(0), ..CleanupReport::default() };
        if let Some(token) = token {
            self.unlock_cleanup(&token).await?;
        }
        Ok(Some(report))
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        let prefix = filter.id_prefix.as_deref().unwrap_or("");
        let (mut cursor, mut deleted) = (0, 0);
        loop {
            let (next, page) = self.scan_page(cursor, prefix).await?;
            deleted += delete_page(self, page, filter).await?.len() as u64;
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
            tokio::task::yield_now().await;
        }
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let (mut cursor, mut counts) = (0, StatusCounts::new("redis"));
        loop {
            let (next, page) = self.scan_page(cursor, "").await?;
            for (_, stored) in &page {
                counts.add(status_of(stored)?, 1);
            }
            if next == 0 {
                return Ok(counts);
            }
            cursor = next;
        }
    }
}
