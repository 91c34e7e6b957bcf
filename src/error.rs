//! The one error type of the request path. Handlers and the service return
//! it; `http::problem` turns it into `application/problem+json` with a
//! stable `code`. Store errors convert into it: their cause is logged, the
//! client sees only the outer message.

use crate::domain::{Status, ValidationError};
use crate::store::{Gone, StoreError};

/// Everything a request can fail with. Each variant has one stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path's id breaks the id rules (400 `invalid_id`).
    #[error("{0}")]
    InvalidId(String),
    /// Not JSON, empty, or nested too deep (400 `invalid_body`).
    #[error("{0}")]
    InvalidBody(String),
    /// A conditional header that cannot be parsed (400 `invalid_header`).
    #[error("{0}")]
    InvalidHeader(String),
    /// A query parameter that is unknown, repeated or cannot be parsed (400 `invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// A bulk delete without any filter (400 `filter_required`).
    #[error("a bulk delete needs at least one filter: status, prefix or older_than")]
    FilterRequired,
    /// Content-Type is not JSON (415 `unsupported_media_type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over the limit (413 `payload_too_large`).
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// JSON that breaks a record rule (422 `validation_failed`).
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// No bearer token, or one that is not valid for the route (401 `unauthorized`).
    #[error("{}", unauthorized_detail(.presented, .reason))]
    Unauthorized {
        /// Whether the request carried a token at all.
        presented: bool,
        /// Why a scoped token was refused (expired, bad signature…), when it was one.
        reason: Option<&'static str>,
    },
    /// An admin route while `PROGRESS_ADMIN_TOKEN` is unset (403 `admin_disabled`).
    #[error("admin routes are disabled: PROGRESS_ADMIN_TOKEN is unset")]
    AdminDisabled,
    /// A scoped token used outside its scope: another id, a listing outside
    /// its prefix, or a route it never grants (403 `forbidden_scope`).
    #[error("{0}")]
    ForbiddenScope(String),
    /// A scoped token, or a client address without a token, over its rate
    /// limit (429 `rate_limited`).
    #[error("{} is over its rate limit; retry in {retry_after} s", by.subject())]
    RateLimited {
        /// Seconds until the next request is accepted (`Retry-After`).
        retry_after: u64,
        /// Which limit.
        by: Limited,
    },
    /// `POST /tokens` while `PROGRESS_SIGNING_KEYS` is unset (403 `signing_disabled`,
    /// as `admin_disabled` is for the admin routes).
    #[error("scoped tokens are disabled: PROGRESS_SIGNING_KEYS is not set")]
    SigningDisabled,
    /// No such record or route (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The record existed and was deleted or expired, within the tombstone
    /// time (410 `gone`).
    #[error("progress record '{id}' was {} at {}", .gone.kind.as_str(), .gone.at.to_rfc3339())]
    Gone {
        /// The record's id.
        id: String,
        /// How it went, and when.
        gone: Gone,
    },
    /// The route exists but not for this method (405 `method_not_allowed`).
    #[error("this route does not support {0}")]
    MethodNotAllowed(String),
    /// A write to a finished record without `If-Match`, or a cancel request
    /// for one (409 `conflict_terminal`).
    #[error(
        "the record is {status} (version {version}), which is final; a PUT or PATCH that means to write it again sends If-Match: \"{version}\""
    )]
    ConflictTerminal {
        /// Its terminal status.
        status: Status,
        /// Its current version.
        version: u64,
    },
    /// `If-Match` names another version (412 `precondition_failed`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// Too many writers raced for one record (503 `write_contention`).
    #[error("too many concurrent writes to this record; retry")]
    WriteContention,
    /// The request took longer than `PROGRESS_REQUEST_TIMEOUT_SECONDS` (503 `request_timeout`).
    #[error("the request did not finish within {seconds} s; a write may or may not have been applied")]
    RequestTimeout {
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// No tier can serve the request (503 `storage_unavailable`).
    #[error("storage is unavailable; retry shortly")]
    StorageUnavailable(#[source] StoreError),
    /// A bug or corrupt data; details only in the log (500 `internal`).
    #[error("internal error")]
    Internal(String),
}

/// The detail of a 401: never says which tokens exist.
fn unauthorized_detail(presented: &bool, reason: &Option<&'static str>) -> &'static str {
    if let Some(reason) = reason {
        reason
    } else if *presented {
        "the bearer token is not valid for this route"
    } else {
        "this route needs a bearer token: send Authorization: Bearer <token>"
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => Error::StorageUnavailable(e),
            StoreError::Corrupt(c) => Error::Internal(c.to_string()),
        }
    }
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The scoped token's (`PROGRESS_SCOPED_RATE_*`).
    Token,
    /// The client address's (`PROGRESS_ADDRESS_RATE_*`), for requests without a token.
    Address,
}

impl Limited {
    fn subject(self) -> &'static str {
        match self {
            Limited::Token => "this token",
            Limited::Address => "your address",
        }
    }
}

impl Error {
    /// The stable machine code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidId(_) => "invalid_id",
            Error::InvalidBody(_) => "invalid_body",
            Error::InvalidHeader(_) => "invalid_header",
            Error::InvalidQuery(_) => "invalid_query",
            Error::FilterRequired => "filter_required",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::Validation(_) => "validation_failed",
            Error::Unauthorized { .. } => "unauthorized",
            Error::AdminDisabled => "admin_disabled",
            Error::ForbiddenScope(_) => "forbidden_scope",
            Error::RateLimited { .. } => "rate_limited",
            Error::SigningDisabled => "signing_disabled",
            Error::NotFound(_) => "not_found",
            Error::Gone { .. } => "gone",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::ConflictTerminal { .. } => "conflict_terminal",
            Error::PreconditionFailed(_) => "precondition_failed",
            Error::WriteContention => "write_contention",
            Error::RequestTimeout { .. } => "request_timeout",
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::Internal(_) => "internal",
        }
    }
}
