//! `POST /tokens` (`Access::Write`): mints a scoped read token; with
//! `"cancel": true`, one that may also request cancellation.
//!
//! ```text
//! POST /tokens  {"id": "book-42", "ttl_seconds": 3600}      (or {"prefix": "user-7:"}, and "cancel": true)
//! 200           {"token": "eyJ…", "expires_at": "2026-01-01T12:00:00Z"}
//! ```

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::extract::JsonBody;
use crate::domain::{Timestamp, ValidationError};
use crate::error::Error;
use crate::tokens::{DEFAULT_TTL_SECONDS, Rights, Scope, now_seconds};

/// A token request: exactly one of `id` and `prefix`, `ttl_seconds` and `cancel`.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// What the token reads, and whether it may request cancellation.
    pub rights: Rights,
    /// How long it lives.
    pub ttl_seconds: u64,
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Validation(ValidationError { field: field.into(), message: message.into() })
}

/// Reads the body of `POST /tokens`; each refusal names its field.
pub fn parse_request(body: &Value, max_ttl_seconds: u64) -> Result<TokenRequest, Error> {
    let Some(object) = body.as_object() else {
        return Err(invalid("", "the body must be a JSON object such as {\"id\": \"book-42\"}"));
    };
    if let Some(unknown) = object.keys().find(|k| !["id", "prefix", "ttl_seconds", "cancel"].contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!("unknown member {unknown:?}; the members are id, prefix, ttl_seconds and cancel"),
        ));
    }
    let cancel = match object.get("cancel") {
        None => false,
        Some(Value::Bool(cancel)) => *cancel,
        Some(_) => return Err(invalid("cancel", "cancel must be true or false")),
    };
    let text = |name: &str| match object.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(name, format!("{name} must be a string"))),
    };
    let scope = match (text("id")?, text("prefix")?) {
        (Some(id), None) => Scope::id(id).map_err(|m| invalid("id", m))?,
        (None, Some(prefix)) => Scope::prefix(prefix).map_err(|m| invalid("prefix", m))?,
        (Some(_), Some(_)) => return Err(invalid("", "give either id or prefix, not both")),
        (None, None) => return Err(invalid("", "give id (one job) or prefix (every job whose id starts with it)")),
    };
    let ttl_seconds = match object.get("ttl_seconds") {
        None => DEFAULT_TTL_SECONDS.min(max_ttl_seconds),
        // A whole number in any JSON spelling (`60`, `60.0`, `6e1`), as JSON
        // Schema's `integer` counts it; never a fraction.
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= max_ttl_seconds as f64).map(|f| f as u64))
            .filter(|n| (1..=max_ttl_seconds).contains(n))
            .ok_or_else(|| {
            invalid(
                "ttl_seconds",
                format!(
                    "ttl_seconds must be a whole number from 1 to {max_ttl_seconds} (PROGRESS_MAX_TOKEN_TTL_SECONDS)"
                ),
            )
        })?,
    };
    Ok(TokenRequest { rights: Rights { scope, cancel }, ttl_seconds })
}

/// `POST /tokens`: 200 with the token and when it expires; 403
/// `signing_disabled` while `PROGRESS_SIGNING_KEYS` is unset.
pub async fn mint(State(state): State<AppState>, JsonBody(body): JsonBody) -> Result<Response, Error> {
    let keys = state.tokens.signing_keys().ok_or(Error::SigningDisabled)?;
    let request = parse_request(&body, state.max_token_ttl_seconds)?;
    let (token, exp) =
        keys.mint_rights(&request.rights, request.ttl_seconds, now_seconds()).map_err(Error::Internal)?;
    let expires_at = Timestamp(i64::try_from(exp).unwrap_or(i64::MAX / 1000).saturating_mul(1000)).to_rfc3339();
    let mut response =
        (StatusCode::OK, json!({ "token": token, "expires_at": expires_at }).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: Value) -> String {
        match parse_request(&body, 3600) {
            Err(Error::Validation(v)) => v.field,
            other => panic!("expected a 422 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn one_scope_and_a_ttl_within_the_maximum() {
        let ok = parse_request(&json!({"id": "book-42"}), 3600).unwrap();
        assert_eq!(ok, TokenRequest { rights: Rights::read(Scope::id("book-42").unwrap()), ttl_seconds: 900 });
        let ok = parse_request(&json!({"prefix": "user-7:", "ttl_seconds": 3600}), 3600).unwrap();
        assert_eq!(ok, TokenRequest { rights: Rights::read(Scope::prefix("user-7:").unwrap()), ttl_seconds: 3600 });
        let ok = parse_request(&json!({"id": "a", "cancel": true}), 3600).unwrap();
        assert_eq!(ok.rights, Rights { scope: Scope::id("a").unwrap(), cancel: true });
        assert!(!parse_request(&json!({"id": "a", "cancel": false}), 3600).unwrap().rights.cancel);
        assert_eq!(field(json!({"id": "a", "cancel": "yes"})), "cancel");
        assert_eq!(field(json!({"id": "a", "cancel": null})), "cancel");
        assert_eq!(field(json!({"id": "a", "cancel": 1})), "cancel");
        assert_eq!(parse_request(&json!({"id": "a"}), 60).unwrap().ttl_seconds, 60, "the default within the max");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": 3601})), "ttl_seconds");
        let spelled: Value = serde_json::from_str(r#"{"id": "a", "ttl_seconds": 60.0}"#).unwrap();
        assert_eq!(parse_request(&spelled, 3600).unwrap().ttl_seconds, 60, "60.0 is a whole number");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": 60.5})), "ttl_seconds");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": 0})), "ttl_seconds");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": -1})), "ttl_seconds");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": "60"})), "ttl_seconds");
        assert_eq!(field(json!({"id": "a b"})), "id");
        assert_eq!(field(json!({"id": 42})), "id");
        assert_eq!(field(json!({"id": null, "prefix": "a"})), "id");
        assert_eq!(field(json!({"id": "a", "ttl_seconds": null})), "ttl_seconds");
        assert_eq!(field(json!({"prefix": ""})), "prefix");
        assert_eq!(field(json!({"id": "a", "prefix": "a"})), "");
        assert_eq!(field(json!({})), "");
        assert_eq!(field(json!([])), "");
        assert_eq!(field(json!({"id": "a", "scope": "all"})), "scope");
    }
}
