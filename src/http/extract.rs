//! Extractors whose rejections are the app's own [`Error`], so every bad
//! input gets a problem document instead of a bare framework message.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, header, request::Parts};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use super::AppState;
use crate::domain::{ProgressId, depth};
use crate::error::Error;
use crate::service::IfMatch;

/// The `{id}` of the path, validated.
pub struct PathId(pub ProgressId);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Error;

    /// The id read off the path itself, percent-decoded: every route with
    /// an id is `/progress/{id}` or below it, and the routes of
    /// `/progress/{id}` are called ahead of axum's router ([`super::App`]),
    /// which would have collected the path's parameters (issue 23).
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Self::from_path(parts.uri.path())
    }
}

impl PathId {
    /// The id of the `/progress/{id}…` path `path`.
    pub fn from_path(path: &str) -> Result<Self, Error> {
        ProgressId::parse(&path_id(path)?).map(PathId).map_err(|e| Error::InvalidId(e.0))
    }
}

/// The `{id}` of a `/progress/{id}…` path, percent-decoded, not validated:
/// what the handlers parse ([`PathId`]) and the token check compares with a
/// scoped token's ids (`auth.rs`).
pub(super) fn path_id(path: &str) -> Result<std::borrow::Cow<'_, str>, Error> {
    let segment = id_segment(path).ok_or_else(|| Error::Internal("a route with an id has no id in its path".into()))?;
    if !segment.bytes().any(|b| b == b'%') {
        return Ok(std::borrow::Cow::Borrowed(segment)); // nothing to decode, and a `&str` already
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Error::InvalidId("the id cannot be read: it is not UTF-8 once percent-decoded".into()))
}

/// The id segment of a `/progress/{id}…` path as sent (percent-encoded):
/// what axum's `{id}` matches there, the non-empty segment after
/// `/progress/`. `None` for any other path.
pub(super) fn id_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(RECORDS)?;
    // A byte loop: an id is short, and `split_once`'s searcher costs more to start.
    let segment = rest.bytes().position(|b| b == b'/').map_or(rest, |end| &rest[..end]);
    (!segment.is_empty()).then_some(segment)
}

/// Whether `path` is `/progress/{id}` itself, nothing below it.
pub(super) fn is_record_path(path: &str) -> bool {
    id_segment(path).is_some_and(|segment| RECORDS.len() + segment.len() == path.len())
}

/// What every path with an id starts with.
const RECORDS: &str = "/progress/";

/// A JSON body: JSON content type, within the size limit, not empty,
/// well-formed and not nested deeper than allowed.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let bytes = read_json_body(req, state).await?;
        parse_json(&bytes, state.limits.max_json_depth).map(JsonBody)
    }
}

/// A JSON body not parsed yet: JSON content type, within the size limit,
/// not empty. [`parse_json`] parses it as [`JsonBody`] does.
pub struct JsonText(pub Bytes);

impl FromRequest<AppState> for JsonText {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        read_json_body(req, state).await.map(JsonText)
    }
}

/// A JSON body that may be left out: no body (or only whitespace), whatever
/// its Content-Type (`curl -d ''` says form data), is `None`; anything else
/// is read as [`JsonBody`] reads it.
pub struct OptionalJsonBody(pub Option<Value>);

impl FromRequest<AppState> for OptionalJsonBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let json = check_content_type(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        json?;
        parse_json(&bytes, state.limits.max_json_depth).map(|v| Self(Some(v)))
    }
}

async fn read_json_body(req: Request, state: &AppState) -> Result<Bytes, Error> {
    check_content_type(req.headers())?;
    let bytes = read_body(req, state).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidBody("the body is empty; send a JSON object".into()));
    }
    Ok(bytes)
}

/// The body, within the size limit.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, Error> {
    let limit = state.limits.max_body_bytes;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                Error::PayloadTooLarge { limit }
            } else {
                Error::InvalidBody(format!("the body could not be read: {e}"))
            }
        })?
        .to_bytes();
    Ok(bytes)
}

/// Parses a JSON body that is not empty: well-formed, and not nested deeper
/// than `max_depth`.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, Error> {
    // Checked for UTF-8 in one pass when it is (serde_json then need not
    // check each string); otherwise from_slice says where it is not.
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    let value: Value = parsed.map_err(|e| {
        if e.to_string().contains("recursion limit") {
            too_deep(max_depth)
        } else {
            Error::InvalidBody(format!("the body is not valid JSON: {e}"))
        }
    })?;
    if depth(&value) > max_depth {
        return Err(too_deep(max_depth));
    }
    Ok(value)
}

fn too_deep(max_depth: usize) -> Error {
    Error::InvalidBody(format!("the body nests JSON deeper than {max_depth} levels"))
}

/// JSON, `application/merge-patch+json` and any `application/*+json` are
/// accepted; a request with no Content-Type is read as JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "Content-Type {text:?} is not JSON; send Content-Type: application/json"
        )))
    }
}

/// `If-Match` and `If-None-Match`.
pub struct Conditions {
    /// Write precondition.
    pub if_match: Option<IfMatch>,
    /// Read precondition: a match answers 304.
    pub if_none_match: Option<IfMatch>,
}

impl Conditions {
    /// Whether `If-None-Match` names `record`'s version (a GET answers 304).
    pub fn unchanged(&self, record: &crate::domain::StoredRecord) -> bool {
        self.if_none_match.as_ref().is_some_and(|c| c.matches(Some(record.version())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Conditions {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Self::from_headers(&parts.headers)
    }
}

impl Conditions {
    /// The conditions `headers` set.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, Error> {
        Ok(Self {
            if_match: entity_tags(headers, header::IF_MATCH, false)?,
            if_none_match: entity_tags(headers, header::IF_NONE_MATCH, true)?,
        })
    }
}

/// Parses a list of entity tags (RFC 9110 §13.1.1–2: `*` alone, or a list
/// of `"<etagc>*"` or `W/"<etagc>*"`, empty list elements ignored, at least
/// one tag; a quoted tag may hold a comma). Our tags are versions: `"7"` (a
/// bare `7` is accepted for curl users). Weak tags match only where weak
/// comparison is allowed (`If-None-Match`); tags that are not versions never
/// match. Anything else (an empty value, `*` inside a list, a space or `"`
/// inside a tag) is a 400, as `openapi.yaml`'s `EntityTags` pattern says.
fn entity_tags(headers: &HeaderMap, name: HeaderName, weak_allowed: bool) -> Result<Option<IfMatch>, Error> {
    let mut versions = Vec::new();
    let mut any = false;
    let mut lines = 0;
    for value in headers.get_all(&name) {
        lines += 1;
        let bad = || Error::InvalidHeader(format!("{name} must be * or a list of entity tags such as \"3\""));
        let text = value.to_str().map_err(|_| bad())?;
        if text.trim_matches([' ', '\t']) == "*" {
            any = true;
            continue;
        }
        let tags = entity_tag_list(text).ok_or_else(bad)?;
        for (weak, tag) in tags {
            if let Ok(v) = tag.parse::<u64>()
                && (!weak || weak_allowed)
            {
                versions.push(v);
            }
        }
    }
    match (any, lines) {
        (true, 1) => Ok(Some(IfMatch::Any)),
        (true, _) => Err(Error::InvalidHeader(format!("{name}: * must stand alone, not in a list of entity tags"))),
        (false, 0) => Ok(None),
        (false, _) => Ok(Some(IfMatch::Versions(versions))),
    }
}

/// `#entity-tag` (or bare versions): each tag as (weak, opaque-tag without
/// its quotes); `None` unless it is such a list with at least one tag.
fn entity_tag_list(text: &str) -> Option<Vec<(bool, &str)>> {
    let bytes = text.as_bytes();
    let ows = |mut i: usize| {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        i
    };
    let mut tags = Vec::new();
    let mut i = 0;
    loop {
        i = ows(i);
        if i == bytes.len() {
            break;
        }
        if bytes[i] == b',' {
            i += 1; // an empty list element
            continue;
        }
        let weak = text[i..].starts_with("W/");
        if weak {
            i += 2;
        }
        let tag = if bytes.get(i) == Some(&b'"') {
            // etagc: %x21 / %x23-7E (obs-text never gets past to_str).
            let len = bytes[i + 1..].iter().position(|&b| b == b'"')?;
            let inner = &text[i + 1..i + 1 + len];
            if !inner.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
                return None;
            }
            i += len + 2;
            inner
        } else {
            let len = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if weak || len == 0 {
                return None;
            }
            i += len;
            &text[i - len..i]
        };
        tags.push((weak, tag));
        i = ows(i);
        if i == bytes.len() {
            break;
        }
        if bytes[i] != b',' {
            return None;
        }
        i += 1;
    }
    (!tags.is_empty()).then_some(tags)
}

/// Query parameters with each name at most once (400 `invalid_query`
/// otherwise); empty values count as absent and are dropped, and so is
/// `access_token` (the token check has read it; it is never echoed).
pub(super) fn distinct_params(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut params = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name == super::ACCESS_TOKEN_PARAM {
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(Error::InvalidQuery(format!("{name} is given more than once")));
        }
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    Ok(params)
}

/// A `prefix` parameter: the start of a valid id.
pub(super) fn id_prefix(value: String) -> Result<String, Error> {
    ProgressId::parse(&value)
        .map_err(|e| Error::InvalidQuery(format!("prefix must be the start of a valid id: {}", e.0)))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::{entity_tag_list, id_segment, is_record_path};

    #[test]
    fn the_id_is_the_segment_after_progress_as_axum_matches_it() {
        assert_eq!(id_segment("/progress/job-1"), Some("job-1"));
        assert_eq!(id_segment("/progress/job-1/events"), Some("job-1"));
        assert_eq!(id_segment("/progress/a%2Fb/cancel"), Some("a%2Fb"));
        assert_eq!(id_segment("/progress/job-1/"), Some("job-1"));
        for none in ["/progress/", "/progress//events", "/progress", "/progressx/a", "/admin/progress/a", "/"] {
            assert_eq!(id_segment(none), None, "{none}");
        }
        assert!(is_record_path("/progress/job-1"));
        assert!(is_record_path("/progress/%FF"));
        for below in ["/progress/job-1/", "/progress/job-1/events", "/progress/", "/progress", "/healthz"] {
            assert!(!is_record_path(below), "{below}");
        }
    }

    #[test]
    fn entity_tag_lists_follow_rfc_9110() {
        assert_eq!(entity_tag_list(r#""7""#), Some(vec![(false, "7")]));
        assert_eq!(
            entity_tag_list(r#" , "7" ,, W/"8",9 , "a,b""#),
            Some(vec![(false, "7"), (true, "8"), (false, "9"), (false, "a,b")])
        );
        assert_eq!(entity_tag_list("\t\"\"\t"), Some(vec![(false, "")]));
        for bad in [
            "",
            " ",
            ",",
            " , ,",
            "abc",
            "\"1",
            "W/abc",
            "W/7",
            "W/ \"7\"",
            "\"a b\"",
            "\"1\"\"2\"",
            "7\"8\"",
            "\"1\", *",
            "1 2",
        ] {
            assert_eq!(entity_tag_list(bad), None, "{bad:?}");
        }
    }
}
