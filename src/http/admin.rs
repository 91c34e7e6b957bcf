//! The admin routes (`Access::Admin`): cleanup, bulk delete and stats.
//!
//! The work of cleanup and bulk delete runs to the end even when the
//! request is cut short (see `ProgressService::cleanup`).

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use serde_json::{Map, Value, json};

use super::AppState;
use super::extract::{distinct_params, id_prefix};
use super::health::{Readiness, millis};
use crate::domain::{Status, Timestamp};
use crate::error::Error;
use crate::service::RecordFilter;

/// `POST /admin/cleanup`: purges expired data in every tier now; the counts per tier.
pub async fn cleanup(State(state): State<AppState>) -> Result<Response, Error> {
    let started = Instant::now();
    let report = state.service.cleanup().await?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "postgres_expired_rows": report.postgres_expired_rows,
            "memory_expired": report.memory_expired,
            "redis_orphaned_index_entries": report.redis_orphaned_index_entries,
            "total": report.total(),
            "duration_ms": millis(started.elapsed()),
        }),
    ))
}

/// `DELETE /admin/progress?status=&prefix=&older_than=`: deletes every
/// record matching all the filters given (at least one) from every tier.
pub async fn delete_progress(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(pairs) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let filter = parse_filter(pairs, Timestamp::now())?;
    let deleted = state.service.delete_matching(filter).await?;
    Ok(json_response(StatusCode::OK, json!({ "deleted": deleted })))
}

/// `GET /admin/stats`: records per status, the dependencies as `/readyz`
/// sees them, breaker states and the write-behind backlog.
pub async fn stats(State(state): State<AppState>) -> Result<Response, Error> {
    let service = &state.service;
    let (readiness, counts) = tokio::join!(Readiness::check(service), service.count_by_status());
    let (records, records_error) = match counts {
        Ok(counts) => {
            let by_status: Map<String, Value> =
                Status::ALL.iter().map(|s| (s.as_str().to_owned(), json!(counts.get(*s)))).collect();
            (json!({"source": counts.source, "total": counts.total(), "by_status": by_status}), Value::Null)
        }
        // Stats matter most when something is down: answer with what is known.
        Err(e) => (Value::Null, json!(e.to_string())),
    };
    let write_behind = service.write_behind().map(|b| {
        json!({
            "pending": b.pending,
            "oldest_age_ms": b.oldest_age.map(millis),
        })
    });
    Ok(json_response(
        StatusCode::OK,
        json!({
            "status": readiness.overall.as_str(),
            "records": records,
            "records_error": records_error,
            "dependencies": readiness.dependencies(),
            "breakers": readiness.breakers(),
            "write_behind": write_behind,
        }),
    ))
}

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The bulk-delete filter from the query string. Empty values count as
/// absent; unknown or repeated parameters are refused rather than ignored,
/// so a misspelt filter never widens a delete.
fn parse_filter(pairs: Vec<(String, String)>, now: Timestamp) -> Result<RecordFilter, Error> {
    let mut filter = RecordFilter::default();
    for (name, value) in distinct_params(pairs)? {
        match name.as_str() {
            "status" => {
                filter.status = Some(Status::parse(&value).ok_or_else(|| {
                    Error::InvalidQuery(format!(
                        "status must be one of pending, running, completed, failed, cancelled; got {value:?}"
                    ))
                })?);
            }
            "prefix" => filter.id_prefix = Some(id_prefix(value)?),
            "older_than" => filter.updated_before = Some(parse_older_than(&value, now).map_err(Error::InvalidQuery)?),
            other => {
                return Err(Error::InvalidQuery(format!(
                    "unknown query parameter {other:?}; the filters are status, prefix and older_than"
                )));
            }
        }
    }
    if filter.is_empty() {
        return Err(Error::FilterRequired);
    }
    Ok(filter)
}

/// `older_than`: an RFC 3339 time, or a duration back from `now` written
/// as a whole number and a unit: `s`, `m`, `h` or `d` (`3600s`, `24h`, `7d`).
fn parse_older_than(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    // A `+` of an unencoded offset arrives as a space.
    if let Ok(t) = DateTime::parse_from_rfc3339(&text.replace(' ', "+")) {
        return Ok(Timestamp(t.timestamp_millis()));
    }
    let invalid = || {
        format!(
            "older_than must be an RFC 3339 time such as 2025-01-31T00:00:00Z or a duration such as 3600s, 90m, 24h or 7d; got {text:?}"
        )
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    // At most 9 digits (as `openapi.yaml` says): 999999999d still fits.
    if number.is_empty() || number.len() > 9 {
        return Err(invalid());
    }
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let ms = number.checked_mul(unit_ms).ok_or_else(invalid)?;
    Ok(now.plus_millis(-ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn older_than_takes_a_time_or_a_duration() {
        let now = Timestamp(1_000_000_000);
        assert_eq!(parse_older_than("3600s", now), Ok(Timestamp(1_000_000_000 - 3_600_000)));
        assert_eq!(parse_older_than("2h", now), Ok(Timestamp(1_000_000_000 - 7_200_000)));
        assert_eq!(parse_older_than("1970-01-01T00:00:01Z", now), Ok(Timestamp(1_000)));
        assert_eq!(parse_older_than("1970-01-01T01:00:01 01:00", now), Ok(Timestamp(1_000)));
        for bad in ["", "h", "10", "10w", "-5s", "1.5h", "yesterday", "99999999999999999999s"] {
            assert!(parse_older_than(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_filter_needs_a_known_condition() {
        let now = Timestamp(0);
        assert!(matches!(parse_filter(pairs(&[]), now), Err(Error::FilterRequired)));
        assert!(matches!(parse_filter(pairs(&[("status", "")]), now), Err(Error::FilterRequired)));
        assert!(matches!(parse_filter(pairs(&[("stauts", "failed")]), now), Err(Error::InvalidQuery(_))));
        assert!(matches!(parse_filter(pairs(&[("status", "done")]), now), Err(Error::InvalidQuery(_))));
        assert!(matches!(parse_filter(pairs(&[("prefix", "a/b")]), now), Err(Error::InvalidQuery(_))));
        assert!(matches!(parse_filter(pairs(&[("prefix", "a"), ("prefix", "b")]), now), Err(Error::InvalidQuery(_))));
        let f = parse_filter(pairs(&[("status", "failed"), ("prefix", "job-")]), now).unwrap();
        assert_eq!((f.status, f.id_prefix.as_deref()), (Some(Status::Failed), Some("job-")));
    }
}
