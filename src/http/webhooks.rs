//! The webhook admin routes (`Access::Admin`): `GET /admin/webhooks` lists
//! pending and given-up deliveries, `POST /admin/webhooks/{id}/retry` makes
//! one due now (given-up ones pending again, with a new retry window).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::admin::json_response;
use crate::domain::Timestamp;
use crate::error::Error;
use crate::store::Delivery;

/// Most deliveries one listing shows (default 100).
const MAX_LISTED: usize = 1000;

/// `GET /admin/webhooks?limit=`: pending deliveries (soonest due first),
/// then those given up.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(pairs) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let mut limit = 100;
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                limit = value.parse().ok().filter(|n| (1..=MAX_LISTED).contains(n)).ok_or_else(|| {
                    Error::InvalidQuery(format!("limit must be a whole number from 1 to {MAX_LISTED}; got {value:?}"))
                })?;
            }
            other => {
                return Err(Error::InvalidQuery(format!("unknown query parameter {other:?}; the parameter is limit")));
            }
        }
    }
    let Some(hooks) = state.service.webhooks() else {
        return Ok(json_response(StatusCode::OK, json!({"enabled": false, "deliveries": []})));
    };
    let deliveries = hooks.deliveries(limit).await?;
    let shown: Vec<Value> = deliveries.iter().map(describe).collect();
    Ok(json_response(StatusCode::OK, json!({"enabled": true, "deliveries": shown})))
}

/// `POST /admin/webhooks/{id}/retry`: 202 with the delivery due now; 404
/// when there is no pending or given-up delivery with that id.
pub async fn retry(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Error> {
    let not_found = || Error::NotFound(format!("no pending or failed webhook delivery {id:?}"));
    let Some(hooks) = state.service.webhooks() else { return Err(not_found()) };
    if !hooks.retry(&id).await? {
        return Err(not_found());
    }
    Ok(json_response(StatusCode::ACCEPTED, json!({"id": id, "state": "pending"})))
}

fn describe(d: &Delivery) -> Value {
    let at = |ms: i64| Timestamp(ms).to_rfc3339();
    json!({
        "id": d.id,
        "event": d.event,
        "record_id": d.record,
        "url": crate::secrets::redact_url(&d.url),
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "created_at": at(d.created_ms),
        "next_attempt_at": (d.state == crate::store::DeliveryState::Pending).then(|| at(d.next_ms)),
        "failed_at": (d.state == crate::store::DeliveryState::Failed).then(|| at(d.next_ms)),
        "retry_until": at(d.deadline_ms),
        "last_error": d.last_error,
    })
}
