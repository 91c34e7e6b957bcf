//! The webhook outbox in Redis (Redis alone, and Redis over PostgreSQL
//! while PostgreSQL cannot take a delivery). Outside the `progress:` key
//! space, under the key prefix:
//! - `progressd:hook:{id}`: the delivery as JSON (no TTL while pending;
//!   [`FAILED_KEPT_MS`] once given up; until `keep_until_ms` once delivered);
//! - `progressd:hooks:due`: pending ids by due time (a claim moves one to
//!   the end of its lease; that score is the claim's token);
//! - `progressd:hooks:pending`: pending ids by the time they were recorded
//!   (the age of the oldest, for the metrics);
//! - `progressd:hooks:failed`: given-up ids by when they failed.
//!
//! Each operation is one Lua script, so a claim and a settle are atomic.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::RedisStore;
use crate::metrics::store_op;
use crate::store::StoreError;
use crate::store::outbox::{Delivery, DeliveryState, FAILED_KEPT_MS, Outbox, OutboxSummary};

/// KEYS: hook, due, pending. ARGV: json, next_ms, id, created_ms.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
  return 1
end
return 0",
    )
});

/// KEYS: due. ARGV: now, lease until, limit, hook key prefix. The claimed
/// deliveries' JSON; ids whose key is gone are dropped.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local value = redis.call('GET', ARGV[4] .. id)
  if value then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = value
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out",
    )
});

/// KEYS: hook, due, pending, failed. ARGV: id, token, state, json, next_ms,
/// keep ms (PX; 0: remove the key). 1 when the claim held.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == 'pending' then
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(ARGV[6]) > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[6])
else
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == 'failed' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1]) end
return 1",
    )
});

/// KEYS: hook, due, pending, failed. ARGV: id, json, now, created_ms.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1",
    )
});

/// The outbox's keys under one prefix.
struct Keys {
    hook_prefix: String,
    due: String,
    pending: String,
    failed: String,
}

impl RedisStore {
    fn outbox_keys(&self) -> Keys {
        let base = format!("{}progressd:", self.key_prefix);
        Keys {
            hook_prefix: format!("{base}hook:"),
            due: format!("{base}hooks:due"),
            pending: format!("{base}hooks:pending"),
            failed: format!("{base}hooks:failed"),
        }
    }

    /// The deliveries held under `ids`, in that order (missing ones left out).
    async fn deliveries(&self, keys: &Keys, ids: Vec<String>) -> Result<Vec<Delivery>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let hook_keys: Vec<String> = ids.iter().map(|id| format!("{}{id}", keys.hook_prefix)).collect();
        let values: Vec<Option<String>> = self
            .run_counted(store_op!("redis", "outbox_list"), |mut conn| async move {
                redis::cmd("MGET").arg(&hook_keys).query_async(&mut conn).await
            })
            .await?;
        Ok(values.into_iter().flatten().filter_map(|v| decode(&v)).collect())
    }
}

fn encode(delivery: &Delivery) -> String {
    serde_json::to_string(delivery).expect("a delivery always serializes")
}

fn decode(value: &str) -> Option<Delivery> {
    match serde_json::from_str(value) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "a webhook delivery in Redis cannot be read; skipped");
            None
        }
    }
}

#[async_trait]
impl Outbox for RedisStore {
    async fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let keys = self.outbox_keys();
        let hook = format!("{}{}", keys.hook_prefix, delivery.id);
        let json = encode(delivery);
        let added: i64 = self
            .run_counted(store_op!("redis", "outbox_enqueue"), |mut conn| async move {
                ENQUEUE
                    .key(&hook)
                    .key(&keys.due)
                    .key(&keys.pending)
                    .arg(&json)
                    .arg(delivery.next_ms)
                    .arg(&delivery.id)
                    .arg(delivery.created_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(added == 1)
    }

    async fn claim(&self, now_ms: i64, lease_until_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let keys = self.outbox_keys();
        let values: Vec<String> = self
            .run_counted(store_op!("redis", "outbox_claim"), |mut conn| async move {
                CLAIM
                    .key(&keys.due)
                    .arg(now_ms)
                    .arg(lease_until_ms)
                    .arg(limit)
                    .arg(&keys.hook_prefix)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(values
            .iter()
            .filter_map(|v| decode(v))
            .map(|mut d| {
                d.next_ms = lease_until_ms;
                d
            })
            .collect())
    }

    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError> {
        let keys = self.outbox_keys();
        let hook = format!("{}{}", keys.hook_prefix, after.id);
        let keep_ms = match after.state {
            DeliveryState::Pending => 0,
            DeliveryState::Failed => FAILED_KEPT_MS,
            DeliveryState::Delivered => (after.keep_until_ms - after.next_ms).max(0),
        };
        let json = encode(after);
        let held: i64 = self
            .run_counted(store_op!("redis", "outbox_settle"), |mut conn| async move {
                SETTLE
                    .key(&hook)
                    .key(&keys.due)
                    .key(&keys.pending)
                    .key(&keys.failed)
                    .arg(&after.id)
                    .arg(token)
                    .arg(after.state.as_str())
                    .arg(&json)
                    .arg(after.next_ms)
                    .arg(keep_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(held == 1)
    }

    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let keys = self.outbox_keys();
        let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
        let (due, failed): (Vec<String>, Vec<String>) = self
            .run_counted(store_op!("redis", "outbox_list"), |mut conn| {
                let (due, failed) = (keys.due.clone(), keys.failed.clone());
                async move {
                    redis::pipe()
                        .cmd("ZRANGE")
                        .arg(due)
                        .arg(0)
                        .arg(stop)
                        .cmd("ZRANGE")
                        .arg(failed)
                        .arg(0)
                        .arg(stop)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut all = self.deliveries(&keys, due).await?;
        all.extend(self.deliveries(&keys, failed).await?);
        all.truncate(limit);
        Ok(all)
    }

    async fn retry(&self, id: &str, now_ms: i64, deadline_ms: i64) -> Result<bool, StoreError> {
        let keys = self.outbox_keys();
        let Some(mut delivery) = self.deliveries(&keys, vec![id.to_owned()]).await?.pop() else {
            return Ok(false);
        };
        if delivery.state == DeliveryState::Delivered {
            return Ok(false);
        }
        (delivery.state, delivery.next_ms, delivery.deadline_ms) = (DeliveryState::Pending, now_ms, deadline_ms);
        let hook = format!("{}{id}", keys.hook_prefix);
        let json = encode(&delivery);
        let done: i64 = self
            .run_counted(store_op!("redis", "outbox_retry"), |mut conn| async move {
                RETRY
                    .key(&hook)
                    .key(&keys.due)
                    .key(&keys.pending)
                    .key(&keys.failed)
                    .arg(id)
                    .arg(&json)
                    .arg(now_ms)
                    .arg(delivery.created_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    async fn summary(&self) -> Result<OutboxSummary, StoreError> {
        let keys = self.outbox_keys();
        let (pending, failed, oldest): (u64, u64, Vec<(String, i64)>) = self
            .run_counted(store_op!("redis", "outbox_summary"), |mut conn| async move {
                redis::pipe()
                    .cmd("ZCARD")
                    .arg(&keys.pending)
                    .cmd("ZCARD")
                    .arg(&keys.failed)
                    .cmd("ZRANGE")
                    .arg(&keys.pending)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(OutboxSummary { pending, failed, oldest_pending_ms: oldest.first().map(|(_, at)| *at) })
    }

    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        // Delivered and failed keys expire by themselves; what outlives a
        // failed one is its entry in the failed set.
        let keys = self.outbox_keys();
        self.run_counted(store_op!("redis", "outbox_prune"), |mut conn| async move {
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(&keys.failed)
                .arg("-inf")
                .arg(now_ms - FAILED_KEPT_MS)
                .query_async(&mut conn)
                .await
        })
        .await
    }
}
