//! `Error` → `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Error;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl Error {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidId(_)
            | Error::InvalidBody(_)
            | Error::InvalidHeader(_)
            | Error::InvalidQuery(_)
            | Error::FilterRequired => StatusCode::BAD_REQUEST,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::AdminDisabled | Error::ForbiddenScope(_) | Error::SigningDisabled => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Gone { .. } => StatusCode::GONE,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::ConflictTerminal { .. } => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::WriteContention | Error::RequestTimeout { .. } | Error::StorageUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Error::InvalidId(_) => "Invalid id",
            Error::InvalidBody(_) => "Invalid request body",
            Error::InvalidHeader(_) => "Invalid header",
            Error::InvalidQuery(_) => "Invalid query",
            Error::FilterRequired => "Filter required",
            Error::Unauthorized { .. } => "Unauthorized",
            Error::AdminDisabled => "Admin routes disabled",
            Error::ForbiddenScope(_) => "Outside the token's scope",
            Error::RateLimited { .. } => "Rate limited",
            Error::SigningDisabled => "Scoped tokens disabled",
            Error::RequestTimeout { .. } => "Request timeout",
            Error::UnsupportedMediaType(_) => "Unsupported media type",
            Error::PayloadTooLarge { .. } => "Payload too large",
            Error::Validation(_) => "Validation failed",
            Error::NotFound(_) => "Not found",
            Error::Gone { .. } => "Gone",
            Error::MethodNotAllowed(_) => "Method not allowed",
            Error::ConflictTerminal { .. } => "Record is finished",
            Error::PreconditionFailed(_) => "Precondition failed",
            Error::WriteContention => "Write contention",
            Error::StorageUnavailable(_) => "Storage unavailable",
            Error::Internal(_) => "Internal error",
        }
    }

    /// The problem document.
    pub fn problem(&self) -> Value {
        let code = self.code();
        let mut body = json!({
            "type": format!("urn:progressd:problem:{code}"),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.to_string(),
            "code": code,
        });
        match self {
            Error::Validation(v) => body["field"] = json!(v.field),
            Error::ConflictTerminal { version, .. } => body["current_version"] = json!(version),
            Error::PayloadTooLarge { limit } => body["limit"] = json!(limit),
            Error::Gone { gone, .. } => {
                body["reason"] = json!(gone.kind.as_str());
                body["gone_at"] = json!(gone.at.to_rfc3339());
            }
            _ => {}
        }
        body
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Error::Internal(cause) => tracing::error!(cause = %cause, "internal error"),
            Error::StorageUnavailable(cause) => tracing::warn!(cause = %cause, "storage unavailable"),
            _ => {}
        }
        let mut response = (self.status(), self.problem().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Error::RateLimited { retry_after, .. } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if let Error::Unauthorized { presented, .. } = self {
            // RFC 6750 §3: the challenge, and why a presented token failed.
            let challenge = if presented {
                r#"Bearer realm="progressd", error="invalid_token""#
            } else {
                r#"Bearer realm="progressd""#
            };
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
