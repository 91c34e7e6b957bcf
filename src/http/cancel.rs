//! `POST /progress/{id}/cancel` (`Access::Cancel`): asks the job to stop.
//!
//! ```text
//! POST /progress/book-42/cancel  {"reason": "the user closed the tab"}   (the body is optional)
//! 202  the record, with cancel_requested_at and cancel_reason set
//! ```
//!
//! The worker sees the request in the response to its next write and
//! answers it with `status: cancelled`. A second request changes nothing
//! (the first time and reason stay) and is answered 202 too; a finished
//! record is 409 `conflict_terminal`, an unknown id 404, a deleted or
//! expired one 410.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::AppState;
use super::extract::{OptionalJsonBody, PathId};
use super::gzip::AcceptsGzip;
use super::progress::record_response;
use crate::domain::{MAX_MESSAGE_CHARS, ValidationError};
use crate::error::Error;

/// The members a cancel request's body may have.
const MEMBERS: &[&str] = &["reason"];

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Validation(ValidationError { field: field.into(), message: message.into() })
}

/// The reason of a cancel request's body (none, `{}`, or `{"reason": null}`:
/// no reason); each refusal names its field.
pub fn parse_reason(body: Option<&Value>) -> Result<Option<String>, Error> {
    let Some(body) = body else { return Ok(None) };
    let Some(object) = body.as_object() else {
        return Err(invalid("", "the body must be a JSON object such as {\"reason\": \"the user asked\"}, or empty"));
    };
    if let Some(unknown) = object.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(invalid(unknown, format!("unknown member {unknown:?}; the only member is reason")));
    }
    match object.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(reason)) if reason.chars().count() <= MAX_MESSAGE_CHARS => Ok(Some(reason.clone())),
        Some(Value::String(_)) => {
            Err(invalid("reason", format!("reason must be at most {MAX_MESSAGE_CHARS} characters")))
        }
        Some(_) => Err(invalid("reason", "reason must be a string (or null)")),
    }
}

/// `POST /progress/{id}/cancel`: 202 with the record.
pub async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
    AcceptsGzip(accepts_gzip): AcceptsGzip,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, Error> {
    let reason = parse_reason(body.as_ref())?;
    let requested = state.service.request_cancel(&id, reason.as_deref()).await?;
    Ok(record_response(StatusCode::ACCEPTED, &requested.record, accepts_gzip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(body: Value) -> String {
        match parse_reason(Some(&body)) {
            Err(Error::Validation(v)) => v.field,
            other => panic!("expected a 422 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn the_reason_is_an_optional_bounded_string() {
        assert_eq!(parse_reason(None).unwrap(), None);
        assert_eq!(parse_reason(Some(&json!({}))).unwrap(), None);
        assert_eq!(parse_reason(Some(&json!({"reason": null}))).unwrap(), None);
        assert_eq!(parse_reason(Some(&json!({"reason": "user asked"}))).unwrap().as_deref(), Some("user asked"));
        let longest = "é".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(parse_reason(Some(&json!({ "reason": longest }))).unwrap(), Some(longest), "characters, not bytes");
        assert_eq!(field(json!({"reason": "x".repeat(MAX_MESSAGE_CHARS + 1)})), "reason");
        assert_eq!(field(json!({"reason": 42})), "reason");
        assert_eq!(field(json!({"reason": ["a"]})), "reason");
        assert_eq!(field(json!({"reason": "a", "force": true})), "force");
        assert_eq!(field(json!({"status": "cancelled"})), "status");
        assert_eq!(field(json!("stop")), "");
        assert_eq!(field(json!([])), "");
        assert_eq!(field(json!(null)), "");
    }
}
