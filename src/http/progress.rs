//! `/progress/{id}`: GET, PUT, PATCH, DELETE.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::extract::{Conditions, JsonBody, PathId};
use super::AppState;
use crate::domain::{StoredRecord, Timestamp};
use crate::error::Error;
use crate::service::{Preconditions, WriteBody, Written};

/// `GET /progress/{id}`: the record, or 304 when `If-None-Match` names its version.
pub async fn get(State(state): State<AppState>, PathId(id): PathId, conditions: Conditions) -> Result<Response, Error> {
    let record = state
        .service
        .get(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no progress record {id}")))?;
    if conditions.if_none_match.is_some_and(|c| c.matches(Some(record.version()))) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set_validators(&mut response, &record);
        return Ok(response);
    }
    Ok(record_response(StatusCode::OK, &record))
}

/// `PUT /progress/{id}`: create (201) or replace (200) the client fields.
pub async fn put(
    State(state): State<AppState>,
    PathId(id): PathId,
    conditions: Conditions,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Written { record, created } =
        state.service.write(&id, WriteBody::Replace(body), &conditions.into()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = record_response(status, &record);
    if created {
        if let Ok(location) = HeaderValue::from_str(&format!("/progress/{id}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(response)
}

/// `PATCH /progress/{id}`: RFC 7386 merge patch of the client fields.
pub async fn patch(
    State(state): State<AppState>,
    PathId(id): PathId,
    conditions: Conditions,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Written { record, .. } = state.service.write(&id, WriteBody::Merge(body), &conditions.into()).await?;
    Ok(record_response(StatusCode::OK, &record))
}

/// `DELETE /progress/{id}`: 204, or 404 when there is no record; 412 when
/// `If-Match` names another version.
pub async fn delete(State(state): State<AppState>, PathId(id): PathId, conditions: Conditions) -> Result<StatusCode, Error> {
    if state.service.delete(&id, conditions.if_match.as_ref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound(format!("no progress record {id}")))
    }
}

/// The record as a JSON response with its validators.
fn record_response(status: StatusCode, record: &StoredRecord) -> Response {
    let body = record.render(Timestamp::now().millis());
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set_validators(&mut response, record);
    response
}

/// `ETag` is the version; `no-cache` makes browsers revalidate on every poll.
fn set_validators(response: &mut Response, record: &StoredRecord) {
    let headers = response.headers_mut();
    let mut etag = itoa::Buffer::new();
    let tag = format!("\"{}\"", etag.format(record.version()));
    headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("digits and quotes are a valid header"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

impl From<Conditions> for Preconditions {
    fn from(c: Conditions) -> Self {
        Preconditions { if_match: c.if_match, if_none_match: c.if_none_match }
    }
}
