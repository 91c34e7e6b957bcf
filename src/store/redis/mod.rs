//! The Redis hot tier, through deadpool-redis.
//!
//! Each record is one key holding the stored form of [`StoredRecord`]
//! (compressed: see `codec`), with a TTL refreshed on every write. Writes,
//! deletes and the listing indexes beside the records change together in
//! one Lua script each (`scripts`), which also announces the change on a
//! channel that every instance hears (`changes`). The files:
//!
//! - `mod.rs`: the store, its settings, and [`ProgressStore`] for Redis.
//! - `connection.rs`: the shared multiplexed connections and timeouts.
//! - `keys.rs`: the key layout, listing indexes included.
//! - `codec.rs`: a record's bytes in Redis (LZ4 for larger bodies).
//! - `scripts.rs` and `scripts/*.lua`: the Lua scripts and how they are sent.
//! - `cleanup.rs`: pruning the listing indexes, under a cleanup lock.
//! - `tiering.rs`: what the tiering layer calls past [`ProgressStore`].
//! - `changes.rs`: the subscription to change notices.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::{Manager, Pool, Runtime, Timeouts};
use redis::AsyncConnectionConfig;

use self::codec::with_redis_value;
use self::connection::Slot;
use self::keys::{IndexKeys, change_notice, expiry_score, expiry_to_set, index_member};
use self::scripts::Scripts;
use super::bulk::{RecordFilter, StatusCounts, delete_page, status_of};
use super::health::{LastError, TierHealth, timed};
use super::listing::{ListCursor, ListPage, ListQuery};
use super::{BacklogSummary, CleanupReport, Health, Maintenance, ProgressStore, StoreError};
use crate::domain::{CorruptRecord, ProgressId, StoredRecord};
use crate::metrics::store_op;

mod changes;
mod cleanup;
mod codec;
mod connection;
mod keys;
mod outbox;
mod scripts;
mod tiering;
mod tombstones;

pub use self::changes::{ChangeNotices, ChangeSink};
pub use self::codec::from_redis;

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
    /// The Lua scripts, built once for this store's change channel.
    scripts: Scripts,
    changes_channel: String,
    /// The listing indexes: the index, the expiry set, the status sets.
    index_keys: IndexKeys,
    /// The most recent failure, for `/readyz`.
    last_error: LastError,
    /// Whether the connection is `rediss://`.
    tls: bool,
    /// How long a deleted or expired record's gone marker is kept.
    tombstone: Duration,
}

impl RedisStore {
    /// Builds the pool. Connects lazily: a Redis that is down now is not an
    /// error until a request needs it.
    pub fn new(config: RedisStoreConfig) -> Result<Self, String> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| e.to_string())?;
        Self::with_client(config, &client)
    }

    /// [`RedisStore::new`] with the connection `client` describes (its URL
    /// and TLS roots; `config.url` is then only for scrubbing messages).
    pub fn with_client(config: RedisStoreConfig, client: &redis::Client) -> Result<Self, String> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.timeout))
            // No per-command timer inside redis-rs: `run` bounds each operation with one.
            .set_response_timeout(None);
        let manager =
            Manager::new_with_config(client.get_connection_info().clone(), connection).map_err(|e| e.to_string())?;
        let timeouts =
            Timeouts { wait: Some(config.timeout), create: Some(config.timeout), recycle: Some(config.timeout) };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(config.shared_connections))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let changes_channel = format!("{}progress:changes", config.key_prefix);
        let slots = (0..config.shared_connections.max(1)).map(|_| Slot::empty()).collect();
        Ok(Self {
            pool,
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            slots,
            next_slot: AtomicUsize::new(0),
            scripts: Scripts::new(&changes_channel),
            changes_channel,
            index_keys: IndexKeys::new(&config.key_prefix),
            last_error: LastError::for_url(&config.url),
            tls: matches!(client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { .. }),
            tombstone: crate::store::DEFAULT_TOMBSTONE,
        })
    }

    /// Keeps deleted and expired records' gone markers for `tombstone`
    /// (a day unless told).
    pub fn with_tombstone(mut self, tombstone: Duration) -> Self {
        self.tombstone = tombstone;
        self
    }

    /// The channel on which every change is announced as `{version}:{id}`
    /// (version 0 for a delete).
    pub fn changes_channel(&self) -> &str {
        &self.changes_channel
    }

    /// Maps a script's 1 / 0 / -1 to stored / refused / not ours.
    fn script_outcome(&self, id: &ProgressId, outcome: i64) -> Result<bool, StoreError> {
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            _ => {
                Err(CorruptRecord(format!("key {} holds something that is not a progress record", self.key(id))).into())
            }
        }
    }
}

#[async_trait]
impl ProgressStore for RedisStore {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let key = self.key(id);
        let raw: Option<Vec<u8>> = self
            .run_counted(store_op!("redis", "get"), |mut conn| async move {
                redis::cmd("GET").arg(&key).query_async(&mut conn).await
            })
            .await?;
        raw.map(|bytes| from_redis(bytes).map_err(StoreError::from)).transpose()
    }

    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.scripts.compare_and_set;
        let channel = &self.changes_channel;
        let notice = change_notice(record.version(), id);
        let status = status_of(record)?.as_str();
        let expires = expiry_score(record, ttl_ms);
        let (indexes, marker) = (&self.index_keys, self.gone_key(id));
        let mut cmd = script.call(&indexes.with_record_and_marker(&key, &marker));
        cmd.arg(expected);
        with_redis_value(record, |value| cmd.arg(value))
            .arg(ttl_ms.max(1))
            .arg(channel)
            .arg(notice)
            .arg(id.as_str())
            .arg(record.meta().c)
            .arg(status)
            .arg(expires);
        self.expiry_marker(&mut cmd, record, ttl_ms);
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_set"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn compare_and_swap(
        &self,
        id: &ProgressId,
        current: Option<&StoredRecord>,
        record: &StoredRecord,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let created = record.meta().c;
        // A header from before records carried their creation time, or a
        // write that starts a new incarnation over an old one: the general
        // script, which works the index changes out from what Redis holds.
        if created == 0 || current.is_some_and(|c| c.meta().c != created) {
            return self.compare_and_set(id, current.map_or(0, StoredRecord::version), record, ttl_ms).await;
        }
        let key = self.key(id);
        let status = status_of(record)?;
        let old_status = match current {
            Some(current) => status_of(current)?,
            None => status,
        };
        let expected: &[u8] = current.map_or(&[], StoredRecord::header);
        let notice = change_notice(record.version(), id);
        let expires = expiry_to_set(current, record, ttl_ms);
        let marker = self.gone_key(id);
        let (script, cmd) = if !expected.is_empty() && old_status == status && expires == 0 {
            let script = &self.scripts.swap_in_place;
            let mut cmd = script.call(&[&key, &marker]);
            cmd.arg(expected).arg(expected.len() - 1);
            with_redis_value(record, |value| cmd.arg(value)).arg(ttl_ms.max(1)).arg(notice);
            self.expiry_marker(&mut cmd, record, ttl_ms);
            (script, cmd)
        } else {
            let (script, indexes) = (&self.scripts.swap, &self.index_keys);
            let mut cmd = script.call(&[
                &key,
                &indexes.all,
                &indexes.expiry,
                indexes.of(old_status),
                indexes.of(status),
                &marker,
            ]);
            cmd.arg(expected);
            with_redis_value(record, |value| cmd.arg(value))
                .arg(ttl_ms.max(1))
                .arg(notice)
                .arg(index_member(created, id))
                .arg(expires)
                .arg(expected.len().saturating_sub(1));
            self.expiry_marker(&mut cmd, record, ttl_ms);
            (script, cmd)
        };
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_set"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        let key = self.key(id);
        let script = &self.scripts.compare_and_delete;
        let (channel, notice) = (&self.changes_channel, change_notice(0, id));
        let marker = self.gone_key(id);
        let mut cmd = script.call(&self.index_keys.with_record_and_marker(&key, &marker));
        cmd.arg(expected).arg(channel).arg(notice).arg(id.as_str());
        self.delete_marker(&mut cmd);
        let outcome: i64 = self.eval_counted(store_op!("redis", "compare_and_delete"), script, &cmd).await?;
        self.script_outcome(id, outcome)
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        let key = self.key(id);
        let (script, channel, notice) = (&self.scripts.delete, &self.changes_channel, change_notice(0, id));
        let marker = self.gone_key(id);
        let mut cmd = script.call(&self.index_keys.with_record_and_marker(&key, &marker));
        cmd.arg(channel).arg(notice).arg(id.as_str());
        self.delete_marker(&mut cmd);
        let removed: i64 = self.eval_counted(store_op!("redis", "delete"), script, &cmd).await?;
        Ok(removed > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let start = query.after.as_ref().map_or_else(|| "+".to_owned(), |c| format!("({}", c.index_member()));
        let sources: Vec<&str> = if query.statuses.is_empty() {
            vec![&self.index_keys.all]
        } else {
            query.statuses.iter().map(|s| self.index_keys.of(*s)).collect()
        };
        let prefix = query.id_prefix.as_deref().unwrap_or("");
        let record_keys = self.record_key_prefix();
        let (script, limit, budget) = (&self.scripts.list, query.limit, query.budget());
        let mut cmd = script.call(&sources);
        cmd.arg(start).arg(limit).arg(budget).arg(prefix).arg(record_keys);
        let reply: Vec<Vec<u8>> = self.eval_counted(store_op!("redis", "list"), script, &cmd).await?;
        let mut reply = reply.into_iter();
        let next = reply.next().filter(|m| !m.is_empty());
        let mut page = ListPage {
            items: Vec::with_capacity(reply.len() / 2),
            next: next.and_then(|m| ListCursor::from_index_member(std::str::from_utf8(&m).ok()?)),
        };
        while let (Some(member), Some(value)) = (reply.next(), reply.next()) {
            let member = String::from_utf8_lossy(&member);
            let listed = ListCursor::from_index_member(&member)
                .and_then(|c| ProgressId::parse(&c.id).ok())
                .ok_or_else(|| CorruptRecord(format!("index member {member:?} is not <created>:<id>")))
                .and_then(|id| Ok((id, from_redis(value)?)));
            let (id, stored) = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(member = %member, error = %e, "listing skips a key that is not a record");
                    continue;
                }
            };
            // The status sets follow every write; this only guards against
            // entries left by writers that did not keep them.
            if query.statuses.is_empty() || status_of(&stored).is_ok_and(|s| query.matches_status(s)) {
                page.items.push((id, stored));
            }
        }
        Ok(page)
    }
}

#[async_trait]
impl Health for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn report_metrics(&self) {
        let pool = self.pool.status();
        crate::metrics::set_pool("redis", pool.size, pool.available, pool.max_size, pool.waiting);
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let _: String = self
            .run_counted(store_op!("redis", "ping"), |mut conn| async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await?;
        Ok(started.elapsed())
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(self.ping()).await;
        vec![TierHealth::from_probe("redis", probe, latency, &self.last_error)]
    }
}

#[async_trait]
impl Maintenance for RedisStore {
    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        self.clean_up(exclusive).await
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

    fn write_behind(&self) -> Option<BacklogSummary> {
        None
    }

    // Every write is in Redis before it is acknowledged.
    async fn shutdown(&self) {}
}
