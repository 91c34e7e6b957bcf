//! Redis over PostgreSQL: deliveries are recorded in PostgreSQL, which
//! keeps them through a Redis failure and a restart; while PostgreSQL
//! cannot take one, in Redis (which then holds the record's write too).
//! Both are claimed from; a delivery is settled where it is held.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;

use super::{Delivery, Outbox, OutboxSummary};
use crate::domain::Timestamp;
use crate::store::StoreError;

/// After the first outbox fails, how long it is skipped, in ms.
const SKIP_AFTER_FAILURE_MS: i64 = 2_000;

/// The `first` outbox, else the `second`.
pub struct Fallback {
    first: Arc<dyn Outbox>,
    second: Arc<dyn Outbox>,
    first_skipped_until: AtomicI64,
}

impl Fallback {
    /// Records in `first` while it answers, else in `second`.
    pub fn new(first: Arc<dyn Outbox>, second: Arc<dyn Outbox>) -> Self {
        Self { first, second, first_skipped_until: AtomicI64::new(0) }
    }

    fn first_usable(&self) -> bool {
        self.first_skipped_until.load(Ordering::Relaxed) <= Timestamp::now().millis()
    }

    fn first_failed(&self) {
        self.first_skipped_until.store(Timestamp::now().millis() + SKIP_AFTER_FAILURE_MS, Ordering::Relaxed);
    }

    /// `op` on both; what answered, or the first's error when neither did.
    async fn both<T, F, Fut>(&self, op: F) -> Result<(Option<T>, Option<T>), StoreError>
    where
        F: Fn(Arc<dyn Outbox>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let (a, b) = tokio::join!(op(self.first.clone()), op(self.second.clone()));
        match (a, b) {
            (Err(e), Err(_)) => Err(e),
            (a, b) => Ok((a.ok(), b.ok())),
        }
    }
}

#[async_trait]
impl Outbox for Fallback {
    async fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        if self.first_usable() {
            match self.first.enqueue(delivery).await {
                Ok(recorded) => return Ok(recorded),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot record a webhook in PostgreSQL; recording it in Redis");
                    self.first_failed();
                }
            }
        }
        self.second.enqueue(delivery).await
    }

    async fn claim(&self, now_ms: i64, lease_until_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let (a, b) = self.both(|o| async move { o.claim(now_ms, lease_until_ms, limit).await }).await?;
        Ok(a.into_iter().chain(b).flatten().collect())
    }

    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError> {
        match self.first.settle(token, after).await {
            Ok(true) => Ok(true),
            first => match (first, self.second.settle(token, after).await) {
                (_, Ok(true)) => Ok(true),
                (Err(e), Err(_)) => Err(e),
                _ => Ok(false),
            },
        }
    }

    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let (a, b) = self.both(|o| async move { o.list(limit).await }).await?;
        let mut all: Vec<Delivery> = a.into_iter().chain(b).flatten().collect();
        all.sort_by_key(|d| (d.state != super::DeliveryState::Pending, d.next_ms));
        all.truncate(limit);
        Ok(all)
    }

    async fn retry(&self, id: &str, now_ms: i64, deadline_ms: i64) -> Result<bool, StoreError> {
        let (a, b) = self.both(|o| async move { o.retry(id, now_ms, deadline_ms).await }).await?;
        Ok(a.unwrap_or(false) || b.unwrap_or(false))
    }

    async fn summary(&self) -> Result<OutboxSummary, StoreError> {
        let (a, b) = self.both(|o| async move { o.summary().await }).await?;
        Ok(a.unwrap_or_default().and(b.unwrap_or_default()))
    }

    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let (a, b) = self.both(|o| async move { o.prune(now_ms).await }).await?;
        Ok(a.unwrap_or(0) + b.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::{DeliveryState, MemoryOutbox};

    /// An outbox that is down.
    struct Down;

    #[async_trait]
    impl Outbox for Down {
        async fn enqueue(&self, _: &Delivery) -> Result<bool, StoreError> {
            Err(down())
        }
        async fn claim(&self, _: i64, _: i64, _: usize) -> Result<Vec<Delivery>, StoreError> {
            Err(down())
        }
        async fn settle(&self, _: i64, _: &Delivery) -> Result<bool, StoreError> {
            Err(down())
        }
        async fn list(&self, _: usize) -> Result<Vec<Delivery>, StoreError> {
            Err(down())
        }
        async fn retry(&self, _: &str, _: i64, _: i64) -> Result<bool, StoreError> {
            Err(down())
        }
        async fn summary(&self) -> Result<OutboxSummary, StoreError> {
            Err(down())
        }
        async fn prune(&self, _: i64) -> Result<u64, StoreError> {
            Err(down())
        }
    }

    fn down() -> StoreError {
        StoreError::Unavailable { tier: "postgres", reason: "down".into() }
    }

    fn delivery(id: &str) -> Delivery {
        Delivery {
            id: id.into(),
            event: "progress.failed".into(),
            record: "r".into(),
            url: "http://127.0.0.1:9/".into(),
            operator: true,
            body: "{}".into(),
            created_ms: 0,
            deadline_ms: i64::MAX,
            attempts: 0,
            next_ms: 0,
            state: DeliveryState::Pending,
            keep_until_ms: 0,
            last_error: None,
        }
    }

    #[tokio::test]
    async fn records_in_the_first_while_it_answers_else_in_the_second_and_claims_from_both() {
        let (pg, redis) = (Arc::new(MemoryOutbox::default()), Arc::new(MemoryOutbox::default()));
        let both = Fallback::new(pg.clone(), redis.clone());
        assert!(both.enqueue(&delivery("a")).await.unwrap());
        assert_eq!((pg.summary().await.unwrap().pending, redis.summary().await.unwrap().pending), (1, 0));
        redis.enqueue(&delivery("b")).await.unwrap();
        let claimed = both.claim(10, 100, 10).await.unwrap();
        assert_eq!(claimed.len(), 2, "from both");
        for d in claimed {
            let mut after = d.clone();
            (after.state, after.next_ms) = (DeliveryState::Delivered, 11);
            assert!(both.settle(100, &after).await.unwrap(), "settled where it is held: {}", d.id);
        }
        assert_eq!(both.summary().await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_first_outbox_that_is_down_is_skipped_for_a_while() {
        let redis = Arc::new(MemoryOutbox::default());
        let both = Fallback::new(Arc::new(Down), redis.clone());
        assert!(both.enqueue(&delivery("a")).await.unwrap());
        assert!(!both.first_usable(), "skipped after a failure");
        assert!(both.enqueue(&delivery("b")).await.unwrap());
        assert_eq!(redis.summary().await.unwrap().pending, 2);
        assert_eq!(both.claim(1, 5, 10).await.unwrap().len(), 2, "the second answers alone");
        assert_eq!(both.list(10).await.unwrap().len(), 2);
        let lone = Fallback::new(Arc::new(Down), Arc::new(Down));
        assert!(lone.enqueue(&delivery("c")).await.is_err(), "neither can record it");
        assert!(lone.claim(1, 5, 10).await.is_err());
    }
}
