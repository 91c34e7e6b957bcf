//! Recovery: the background probes that half-open a tier's breaker once
//! it answers again. PostgreSQL's probe first applies the migrations (retried
//! until they succeed). Redis's probe first copies back what PostgreSQL
//! took during the outage and raises the fence, so that no read returns a
//! version older than one acknowledged meanwhile.

use super::breaker::BreakerState;
use super::{DurableTier, Hot, HotTier, TieredStore};
use crate::domain::Timestamp;
use crate::metrics::store_op;
use crate::store::StoreError;
use crate::store::postgres::DurableRow;

/// Records copied back per query while repairing Redis after an outage.
const REPAIR_PAGE: i64 = 1000;

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// Copies what PostgreSQL took since `since` into Redis: records (never
    /// over a newer one) and deletes (never of a record created after the
    /// delete). Returns the time the copy started, for a second pass.
    async fn copy_back_since(&self, hot: &Hot<H>, since: Timestamp) -> Result<Timestamp, StoreError> {
        let started = Timestamp::now();
        let mut from = since;
        loop {
            let page = self.durable.updated_since(from, REPAIR_PAGE).await?;
            for (id, row, _) in &page {
                match row {
                    DurableRow::Live(record) => {
                        let ttl = record.meta().x - Timestamp::now().millis();
                        if ttl > 0 {
                            hot.tier.put_if_newer(id, record, ttl, true).await?;
                        }
                    }
                    DurableRow::Deleted { created_at } => {
                        hot.tier.delete_incarnation(id, *created_at).await?;
                    }
                    DurableRow::Absent => {}
                }
            }
            match page.last() {
                Some((_, _, updated)) if page.len() as i64 == REPAIR_PAGE && *updated > from => from = *updated,
                _ => return Ok(started),
            }
        }
    }

    /// After Redis answers a probe: copy back what PostgreSQL took during
    /// the outage (while writes go on there), raise the fence, which waits
    /// for every instance's writes in PostgreSQL in flight and refuses all
    /// later ones, copy back what came in meanwhile, then let requests use
    /// Redis again. Without the fence, an instance whose probe has not yet
    /// reached Redis would go on writing in PostgreSQL on a version older
    /// than the one this instance writes in Redis, and one of the two
    /// acknowledged writes would be lost (the chaos run caught that).
    async fn recover_hot(&self, hot: &Hot<H>) -> Result<(), StoreError> {
        // A second of slack for clocks of other instances.
        let outage_began = self.hot_breaker.opened_at().plus_millis(-1000);
        let first_pass = self.copy_back_since(hot, outage_began).await?;
        Self::observe(&self.durable_breaker, self.durable.raise_fence(Timestamp::now()).await)?;
        self.copy_back_since(hot, first_pass.plus_millis(-1000)).await?;
        self.hot_breaker.half_open();
        Ok(())
    }
}

/// Redis's probe: while its breaker is open, pings it every probe interval
/// and, once it answers, recovers it ([`TieredStore::recover_hot`]).
pub(super) async fn probe_hot<H: HotTier, D: DurableTier>(store: std::sync::Weak<TieredStore<H, D>>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        let every = s.hot_breaker.probe_every();
        if s.hot_breaker.state() == BreakerState::Open {
            let hot = s.hot.as_ref().expect("probe_hot runs only with a hot tier");
            if hot.store.ping().await.is_ok() {
                match s.recover_hot(hot).await {
                    Ok(()) => tracing::info!("redis is back; records written during the outage were copied back"),
                    Err(e) => tracing::warn!(error = %e, "redis answers but copying records back failed; retrying"),
                }
            }
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}

/// PostgreSQL's probe: while its breaker is open (from start-up until the
/// migrations have run), migrates or pings it every probe interval and
/// half-opens the breaker once it answers. The end of its first attempt,
/// either way, releases the requests that wait for PostgreSQL's first
/// answer ([`TieredStore::first_durable_answer`]).
pub(super) async fn probe_durable<H: HotTier, D: DurableTier>(store: std::sync::Weak<TieredStore<H, D>>) {
    let mut migrated = false;
    loop {
        let Some(s) = store.upgrade() else { return };
        let every = s.durable_breaker.probe_every();
        if s.durable_breaker.state() == BreakerState::Open {
            let ready = if migrated {
                s.durable.ping().await.map(|_| ())
            } else {
                store_op!("postgres", "migrate").observe(s.durable.migrate()).await
            };
            match ready {
                Ok(()) => {
                    if !migrated {
                        tracing::info!("postgres migrations applied");
                    }
                    migrated = true;
                    s.durable_breaker.half_open();
                }
                Err(e) if !migrated => {
                    let error = e.to_string();
                    // Failing to connect is the tier watcher's to report (`app`).
                    if error.contains(crate::store::health::CANNOT_CONNECT) || error.contains("no answer within") {
                        tracing::debug!(error, "postgres is not reachable yet; migrations will retry");
                    } else if s.durable_errors.should_log(&error) {
                        tracing::warn!(error, "postgres answers but the migrations failed; retrying");
                    }
                }
                Err(_) => {}
            }
            // PostgreSQL is now known, up or down: requests stop waiting for
            // this first answer and follow the breaker.
            s.durable_tried.send_replace(true);
        }
        drop(s);
        tokio::time::sleep(every).await;
    }
}
