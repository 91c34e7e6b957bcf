//! `GET /access` (public): what the token sent with the request may do.
//!
//! ```text
//! GET /access   Authorization: Bearer eyJ…
//! 200           {"token": "scoped", "reason": null, "read": true, "list": false, "write": false,
//!                "cancel": true, "admin": false, "scope": {"id": "book-42"}}
//! ```
//!
//! For pages that show only the actions their token may take: the
//! dashboard asks it once per token to decide whether to show its Cancel
//! buttons. Never refused (an invalid token is described as such) and
//! counted against no rate limit; it holds no secret (a scope is shown only
//! to whoever holds the token that carries it).

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::auth::Abilities;
use crate::tokens::Scope;

/// The answer of `GET /access` as JSON.
pub fn to_json(abilities: &Abilities) -> Value {
    let scope = match &abilities.scope {
        None => Value::Null,
        Some(Scope::Id(id)) => json!({ "id": id.as_str() }),
        Some(Scope::Prefix(prefix)) => json!({ "prefix": prefix }),
    };
    json!({
        "token": abilities.token.as_str(),
        "reason": abilities.reason,
        "read": abilities.read,
        "list": abilities.list,
        "write": abilities.write,
        "cancel": abilities.cancel,
        "admin": abilities.admin,
        "scope": scope,
    })
}

/// `GET /access`: 200 with what the token may do.
pub async fn access(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let abilities = state.tokens.describe(&headers, query.as_deref());
    let mut response = (StatusCode::OK, to_json(&abilities).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
