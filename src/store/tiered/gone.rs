//! 410 across the tiers: Redis's gone marker first, then PostgreSQL's
//! tombstone or expired row. Asked only after a read found nothing.
//!
//! Like a read that misses, a missing marker in Redis is an answer only
//! together with PostgreSQL's: Redis may have restarted and lost its
//! markers while PostgreSQL keeps the tombstone, so when PostgreSQL cannot
//! be asked the answer is unavailable (503), never 404 (issue 20).

use async_trait::async_trait;

use super::{DurableTier, HotTier, TieredStore, unavailable};
use crate::domain::ProgressId;
use crate::store::{Gone, StoreError, Tombstones};

#[async_trait]
impl<H: HotTier, D: DurableTier> Tombstones for TieredStore<H, D> {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        if let Some(hot) = self.hot_usable() {
            match Self::observe(&self.hot_breaker, hot.store.gone(id).await) {
                Ok(Some(gone)) => return Ok(Some(gone)),
                Ok(None) | Err(StoreError::Unavailable { .. }) => {}
                Err(corrupt) => return Err(corrupt),
            }
        }
        self.first_durable_answer().await;
        if !self.durable_breaker.allows() {
            return Err(unavailable("postgres", "circuit breaker open"));
        }
        Self::observe(&self.durable_breaker, self.durable.gone(id).await)
    }
}
