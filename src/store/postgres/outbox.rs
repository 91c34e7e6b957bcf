//! The webhook outbox in PostgreSQL (`progress_webhooks`,
//! `migrations/V7__webhooks.sql`): PostgreSQL alone, and Redis over
//! PostgreSQL, where a delivery outlives a Redis failure and a restart as
//! the record's own terminal write does. A claim takes due rows with
//! `FOR UPDATE SKIP LOCKED`, so instances claiming at once take different ones.

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use crate::metrics::store_op;
use crate::store::StoreError;
use crate::store::outbox::{Delivery, DeliveryState, FAILED_KEPT_MS, Outbox, OutboxSummary};

const COLUMNS: &str = "id, event, record_id, url, operator, body, created_ms, deadline_ms, attempts, next_ms, state, keep_until_ms, last_error";

const ENQUEUE: &str = "INSERT INTO progress_webhooks (id, event, record_id, url, operator, body, created_ms, \
     deadline_ms, attempts, next_ms, state, keep_until_ms, last_error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING";

const SETTLE: &str = "UPDATE progress_webhooks SET attempts = $3, next_ms = $4, state = $5, keep_until_ms = $6, \
     last_error = $7 WHERE id = $1 AND next_ms = $2 AND state = 'pending'";

const SETTLE_DELETE: &str = "DELETE FROM progress_webhooks WHERE id = $1 AND next_ms = $2 AND state = 'pending'";

const RETRY: &str = "UPDATE progress_webhooks SET state = 'pending', next_ms = $2, deadline_ms = $3 \
     WHERE id = $1 AND state <> 'delivered'";

const SUMMARY: &str = "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed'), \
     min(created_ms) FILTER (WHERE state = 'pending') FROM progress_webhooks";

const PRUNE: &str = "DELETE FROM progress_webhooks WHERE (state = 'failed' AND next_ms <= $1) \
     OR (state = 'delivered' AND keep_until_ms <= $2)";

fn from_row(row: &Row) -> Delivery {
    Delivery {
        id: row.get(0),
        event: row.get(1),
        record: row.get(2),
        url: row.get(3),
        operator: row.get(4),
        body: row.get(5),
        created_ms: row.get(6),
        deadline_ms: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).unwrap_or(0),
        next_ms: row.get(9),
        state: DeliveryState::parse(row.get(10)).unwrap_or(DeliveryState::Pending),
        keep_until_ms: row.get(11),
        last_error: row.get(12),
    }
}

fn attempts(d: &Delivery) -> i32 {
    i32::try_from(d.attempts).unwrap_or(i32::MAX)
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn enqueue(&self, d: &Delivery) -> Result<bool, StoreError> {
        let added = self
            .execute_counted(
                store_op!("postgres", "outbox_enqueue"),
                ENQUEUE,
                &[
                    &d.id,
                    &d.event,
                    &d.record,
                    &d.url,
                    &d.operator,
                    &d.body,
                    &d.created_ms,
                    &d.deadline_ms,
                    &attempts(d),
                    &d.next_ms,
                    &d.state.as_str(),
                    &d.keep_until_ms,
                    &d.last_error,
                ],
            )
            .await?;
        Ok(added == 1)
    }

    async fn claim(&self, now_ms: i64, lease_until_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "UPDATE progress_webhooks w SET next_ms = $2 FROM (SELECT id FROM progress_webhooks \
             WHERE state = 'pending' AND next_ms <= $1 ORDER BY next_ms LIMIT $3 FOR UPDATE SKIP LOCKED) due \
             WHERE w.id = due.id RETURNING {}",
            COLUMNS.split(", ").map(|c| format!("w.{c}")).collect::<Vec<_>>().join(", ")
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query_counted(store_op!("postgres", "outbox_claim"), &sql, &[&now_ms, &lease_until_ms, &limit])
            .await?;
        let mut claimed: Vec<Delivery> = rows.iter().map(from_row).collect();
        claimed.sort_by_key(|d| d.created_ms);
        Ok(claimed)
    }

    async fn settle(&self, token: i64, after: &Delivery) -> Result<bool, StoreError> {
        let op = store_op!("postgres", "outbox_settle");
        let changed = if after.state == DeliveryState::Delivered && after.keep_until_ms <= after.next_ms {
            self.execute_counted(op, SETTLE_DELETE, &[&after.id, &token]).await?
        } else {
            let params: [&(dyn ToSql + Sync); 7] = [
                &after.id,
                &token,
                &attempts(after),
                &after.next_ms,
                &after.state.as_str(),
                &after.keep_until_ms,
                &after.last_error,
            ];
            self.execute_counted(op, SETTLE, &params).await?
        };
        Ok(changed == 1)
    }

    async fn list(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM progress_webhooks WHERE state <> 'delivered' \
             ORDER BY state <> 'pending', next_ms LIMIT $1"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query_counted(store_op!("postgres", "outbox_list"), &sql, &[&limit]).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    async fn retry(&self, id: &str, now_ms: i64, deadline_ms: i64) -> Result<bool, StoreError> {
        let changed =
            self.execute_counted(store_op!("postgres", "outbox_retry"), RETRY, &[&id, &now_ms, &deadline_ms]).await?;
        Ok(changed == 1)
    }

    async fn summary(&self) -> Result<OutboxSummary, StoreError> {
        let rows = self.query_counted(store_op!("postgres", "outbox_summary"), SUMMARY, &[]).await?;
        let row = rows.first().ok_or_else(|| StoreError::Unavailable {
            tier: "postgres",
            reason: "no answer to the outbox summary".into(),
        })?;
        let count = |i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(OutboxSummary { pending: count(0), failed: count(1), oldest_pending_ms: row.get(2) })
    }

    async fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let failed_before = now_ms - FAILED_KEPT_MS;
        self.execute_counted(store_op!("postgres", "outbox_prune"), PRUNE, &[&failed_before, &now_ms]).await
    }
}
