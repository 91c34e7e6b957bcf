//! The outbox in process memory, for the embedded store: kept as long as
//! the records are (until the process exits).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Delivery, DeliveryState, FAILED_KEPT_MS, Outbox, OutboxSummary};
use crate::store::StoreError;

/// Deliveries by id, under one lock (a handful at a time; never on a
/// request's path except to record one).
#[derive(Default)]
pub struct MemoryOutbox {
    deliveries: Mutex<HashMap<String, Delivery>>,
}

impl MemoryOutbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Delivery>> {
        self.deliveries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError> {
        let mut all = self.lock();
        if all.contains_key(&delivery.id) {
            return Ok(false);
        }
        all.insert(delivery.id.clone(), delivery.clone());
        Ok(true)
    }

    async fn claim(&self, now_ms: i64, lease_until_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut all = self.lock();
        let mut due: Vec<&mut Delivery> =
            all.values_mut().filter(|d| d.state == DeliveryState::Pending && d.next_ms <= now_ms).collect();
        due.sort_by_key(|d| d.next_ms);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|d| {
                d.next_ms = lease_until_ms;
                d.clone()
            })
            .collect())
    }

    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError> {
        let mut all = self.lock();
        let Some(held) = all.get_mut(&after.id) else { return Ok(false) };
        if held.state != DeliveryState::Pending || held.next_ms != token {
            return Ok(false);
        }
        if after.state == DeliveryState::Delivered && after.keep_until_ms <= after.next_ms {
            all.remove(&after.id);
        } else {
            *held = after.clone();
        }
        Ok(true)
    }

    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let all = self.lock();
        let mut shown: Vec<Delivery> = all.values().filter(|d| d.state != DeliveryState::Delivered).cloned().collect();
        shown.sort_by_key(|d| (d.state != DeliveryState::Pending, d.next_ms));
        shown.truncate(limit);
        Ok(shown)
    }

    async fn retry(&self, id: &str, now_ms: i64, deadline_ms: i64) -> Result<bool, StoreError> {
        let mut all = self.lock();
        match all.get_mut(id).filter(|d| d.state != DeliveryState::Delivered) {
            Some(d) => {
                (d.state, d.next_ms, d.deadline_ms) = (DeliveryState::Pending, now_ms, deadline_ms);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn summary(&self) -> Result<OutboxSummary, StoreError> {
        let all = self.lock();
        let mut summary = OutboxSummary::default();
        for d in all.values() {
            match d.state {
                DeliveryState::Pending => {
                    summary.pending += 1;
                    summary.oldest_pending_ms =
                        Some(summary.oldest_pending_ms.map_or(d.created_ms, |o| o.min(d.created_ms)));
                }
                DeliveryState::Failed => summary.failed += 1,
                DeliveryState::Delivered => {}
            }
        }
        Ok(summary)
    }

    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut all = self.lock();
        let before = all.len();
        all.retain(|_, d| match d.state {
            DeliveryState::Pending => true,
            DeliveryState::Failed => d.next_ms + FAILED_KEPT_MS > now_ms,
            DeliveryState::Delivered => d.keep_until_ms > now_ms,
        });
        Ok((before - all.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn delivery(id: &str, next_ms: i64) -> Delivery {
        Delivery {
            id: id.into(),
            event: "progress.completed".into(),
            record: "job".into(),
            url: "http://127.0.0.1:9/".into(),
            operator: true,
            body: "{}".into(),
            created_ms: next_ms,
            deadline_ms: next_ms + 1000,
            attempts: 0,
            next_ms,
            state: DeliveryState::Pending,
            keep_until_ms: 0,
            last_error: None,
        }
    }

    #[tokio::test]
    async fn a_claim_is_a_lease_and_only_its_holder_settles() {
        let outbox = MemoryOutbox::default();
        assert!(outbox.enqueue(&delivery("a", 100)).await.unwrap());
        assert!(!outbox.enqueue(&delivery("a", 50)).await.unwrap(), "recorded once");
        assert!(outbox.enqueue(&delivery("b", 300)).await.unwrap());
        assert!(outbox.claim(99, 1_000, 10).await.unwrap().is_empty(), "nothing due yet");
        let claimed = outbox.claim(200, 1_000, 10).await.unwrap();
        assert_eq!(claimed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(outbox.claim(500, 1_100, 10).await.unwrap().iter().all(|d| d.id == "b"), "a is leased");
        // The lease ran out and another claim took it: the first holder's settle changes nothing.
        let again = outbox.claim(1_000, 2_000, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        let mut after = claimed[0].clone();
        (after.state, after.attempts, after.next_ms) = (DeliveryState::Delivered, 1, 1_001);
        assert!(!outbox.settle(1_000, &after).await.unwrap());
        assert!(outbox.settle(2_000, &after).await.unwrap());
        assert_eq!(outbox.list(10).await.unwrap().len(), 1, "a is gone, b is pending");
    }

    #[tokio::test]
    async fn failed_deliveries_are_listed_retried_and_pruned() {
        let outbox = MemoryOutbox::default();
        outbox.enqueue(&delivery("a", 0)).await.unwrap();
        outbox.enqueue(&delivery("b", 0)).await.unwrap();
        let claimed = outbox.claim(10, 20, 1).await.unwrap();
        let mut failed = claimed[0].clone();
        (failed.state, failed.next_ms, failed.last_error) = (DeliveryState::Failed, 15, Some("404".into()));
        assert!(outbox.settle(20, &failed).await.unwrap());
        let summary = outbox.summary().await.unwrap();
        assert_eq!((summary.pending, summary.failed, summary.oldest_pending_ms), (1, 1, Some(0)));
        let listed = outbox.list(10).await.unwrap();
        assert_eq!(listed.iter().map(|d| d.state).collect::<Vec<_>>(), [DeliveryState::Pending, DeliveryState::Failed]);
        assert!(outbox.retry(&failed.id, 30, 99).await.unwrap());
        assert!(!outbox.retry("nope", 30, 99).await.unwrap());
        assert_eq!(outbox.claim(30, 40, 10).await.unwrap().len(), 2, "both due again");
        // A delivered one kept until 50 blocks a second recording until then.
        let mut kept = delivery("k", 0);
        outbox.enqueue(&kept).await.unwrap();
        outbox.claim(41, 45, 10).await.unwrap();
        (kept.state, kept.next_ms, kept.keep_until_ms) = (DeliveryState::Delivered, 42, 50);
        assert!(outbox.settle(45, &kept).await.unwrap());
        assert!(!outbox.enqueue(&delivery("k", 0)).await.unwrap());
        assert_eq!(outbox.prune(49).await.unwrap(), 0);
        assert_eq!(outbox.prune(50).await.unwrap(), 1);
        assert!(outbox.enqueue(&delivery("k", 0)).await.unwrap());
    }
}
