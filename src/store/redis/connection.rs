//! The connections every operation runs on: a few multiplexed
//! connections checked out of the pool once and shared by all requests,
//! each operation bounded by the timeout, and what a failure does to them.
//!
//! deadpool-redis PINGs a connection on every checkout, which costs one
//! extra round trip per request. A multiplexed connection serves any number
//! of concurrent requests, so the store checks out a few connections once,
//! holds them, and hands out clones. A connection that fails is dropped
//! (back to the pool, whose recycle check discards it) and the next request
//! checks out a fresh one: redis-rs's multiplexed connection does not
//! reconnect by itself, the pool does it for us.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, RedisError};

use super::RedisStore;
use super::scripts::Lua;
use crate::metrics::StoreOp;
use crate::store::StoreError;

/// One held connection, refreshed by one task at a time.
pub(super) struct Slot {
    held: ArcSwapOption<Held>,
    refreshing: tokio::sync::Mutex<()>,
}

pub(super) struct Held {
    conn: MultiplexedConnection,
    // Keeps the connection checked out of the pool while requests share it.
    _object: deadpool_redis::Connection,
}

impl Slot {
    pub(super) fn empty() -> Self {
        Self { held: ArcSwapOption::empty(), refreshing: tokio::sync::Mutex::new(()) }
    }
}

impl RedisStore {
    /// What went wrong connecting, said plainly, with a guess at the cause
    /// when TLS is on one side only.
    fn connect_error(&self, error: &str) -> String {
        let error = crate::store::health::connect_failure(error);
        let lower = error.to_ascii_lowercase();
        if self.tls && lower.contains("timed out") {
            format!(
                "{error} (no answer to the TLS handshake: if the server does not speak TLS on this port, use redis://)"
            )
        } else if !self.tls && (lower.contains("reset by peer") || lower.contains("broken pipe")) {
            format!("{error} (the server closed a plain-text connection at once: if it expects TLS, use rediss://)")
        } else {
            error
        }
    }

    /// A shared connection, checking one out of the pool if the slot is empty.
    async fn connection(&self) -> Result<(&Slot, Arc<Held>), StoreError> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(held) = slot.held.load_full() {
            return Ok((slot, held));
        }
        // Boxed: the pool's checkout future is large, and every operation's
        // future would otherwise carry (and copy) it although it is rarely used.
        Box::pin(self.check_out(slot)).await.map(|held| (slot, held))
    }

    /// Fills an empty slot with a connection from the pool.
    async fn check_out(&self, slot: &Slot) -> Result<Arc<Held>, StoreError> {
        let _refreshing = slot.refreshing.lock().await;
        if let Some(held) = slot.held.load_full() {
            return Ok(held);
        }
        let object = self.pool.get().await.map_err(|e| unavailable(self.connect_error(&e.to_string())))?;
        let held = Arc::new(Held { conn: (*object).clone(), _object: object });
        slot.held.store(Some(held.clone()));
        Ok(held)
    }

    /// Runs one operation on a shared connection within the timeout. A
    /// connection that errs or times out is given up so the next request
    /// gets a fresh one.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
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

    /// [`RedisStore::run`], counted as one `op` in the store metrics.
    pub(super) async fn run_counted<T, F, Fut>(&self, op: &StoreOp, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        op.observe(self.run(f)).await
    }

    /// Runs `script` with `cmd` (from [`Lua::call`]).
    pub(super) async fn eval<T: FromRedisValue>(&self, script: &Lua, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|mut conn| async move { script.invoke(cmd, &mut conn).await }).await
    }

    /// [`RedisStore::eval`], counted as one `op` in the store metrics.
    pub(super) async fn eval_counted<T: FromRedisValue>(
        &self,
        op: &StoreOp,
        script: &Lua,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        op.observe(self.eval(script, cmd)).await
    }
}

/// Redis failed; a reason that names a misconfiguration gets a hint.
fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable { tier: "redis", reason: crate::tls::with_hint(crate::tls::Store::Redis, reason) }
}

fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}
