//! The webhook outbox: deliveries recorded in a store before the write that
//! causes them is acknowledged, claimed by one instance at a time, retried
//! until delivered or given up.
//!
//! Each backend keeps it where its records live: process memory
//! ([`MemoryOutbox`]), Redis (`redis/outbox.rs`), PostgreSQL
//! (`postgres/outbox.rs`, `migrations/V7__webhooks.sql`); Redis over
//! PostgreSQL records in PostgreSQL and falls back to Redis while
//! PostgreSQL cannot take it ([`Fallback`]). Sending is not the store's
//! business: `src/webhooks/` claims, sends and settles.
//!
//! A claim is a lease: it moves the delivery's due time to the end of the
//! lease and returns that time as the claim's token; settling checks the
//! token, so an instance whose lease ran out (and whose delivery another
//! instance has claimed since) changes nothing.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

mod fallback;
mod memory;

pub use fallback::Fallback;
pub use memory::MemoryOutbox;

/// How long a delivery given up is kept for `GET /admin/webhooks` and a
/// retry by hand, in ms (7 days).
pub const FAILED_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// To be sent (again) at `next_ms`.
    Pending,
    /// Given up; kept for [`FAILED_KEPT_MS`].
    Failed,
    /// Sent, kept until `keep_until_ms` so that the same delivery is not
    /// recorded again (a stall, while the record stays silent).
    Delivered,
}

impl DeliveryState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Failed => "failed",
            DeliveryState::Delivered => "delivered",
        }
    }

    /// The state stored as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "failed" => Some(DeliveryState::Failed),
            "delivered" => Some(DeliveryState::Delivered),
            _ => None,
        }
    }
}

/// One webhook to send: what, where, and how far it has got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    /// The event (`progress.completed`).
    pub event: String,
    /// The record's id.
    pub record: String,
    /// Where it goes.
    pub url: String,
    /// Whether `url` is the operator's `PROGRESS_WEBHOOK_URL` (no allowed-host check).
    #[serde(default)]
    pub operator: bool,
    /// The body sent, fixed when recorded: `{"type", "timestamp", "data"}`.
    pub body: String,
    /// When it was recorded, ms since the epoch.
    pub created_ms: i64,
    /// No attempt starts after this.
    pub deadline_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is due (pending), or when it failed or was delivered.
    pub next_ms: i64,
    /// Where it stands.
    pub state: DeliveryState,
    /// Until when a delivered one is kept (0: not kept).
    #[serde(default)]
    pub keep_until_ms: i64,
    /// Why the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Counts for the metrics, taken at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxSummary {
    /// Deliveries waiting to be sent.
    pub pending: u64,
    /// Deliveries given up and still kept.
    pub failed: u64,
    /// When the oldest pending one was recorded.
    pub oldest_pending_ms: Option<i64>,
}

impl OutboxSummary {
    /// Both summaries together.
    pub fn and(self, other: OutboxSummary) -> Self {
        let oldest = match (self.oldest_pending_ms, other.oldest_pending_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self { pending: self.pending + other.pending, failed: self.failed + other.failed, oldest_pending_ms: oldest }
    }
}

/// The outbox of one store.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Records `delivery` (pending) unless one with its id is already
    /// there, in any state; `Ok(false)` then.
    async fn enqueue(&self, delivery: &Delivery) -> Result<bool, StoreError>;

    /// Claims up to `limit` pending deliveries due at `now_ms`, oldest due
    /// first: each one's `next_ms` becomes `lease_until_ms`, the claim's
    /// token, and no other claim returns it before then.
    async fn claim(&self, now_ms: i64, lease_until_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Stores `after` (the delivery after an attempt: pending again, failed
    /// or delivered) if the claim `token` still holds; a delivered one with
    /// `keep_until_ms` in the past is removed. `Ok(false)`: the lease was
    /// lost, nothing changed.
    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError>;

    /// Pending and failed deliveries, pending first, at most `limit`.
    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Makes a pending or failed delivery due at `now_ms`, pending, with
    /// retries until `deadline_ms`; `Ok(false)` when there is none.
    async fn retry(&self, id: &str, now_ms: i64, deadline_ms: i64) -> Result<bool, StoreError>;

    /// Counts for the metrics.
    async fn summary(&self) -> Result<OutboxSummary, StoreError>;

    /// Removes failed deliveries past [`FAILED_KEPT_MS`] and delivered ones
    /// past their `keep_until_ms`; how many.
    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError>;
}
