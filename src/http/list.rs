//! `GET /progress?status=&prefix=&limit=&cursor=` (`Access::List`): newest
//! first listing for dashboards, a page at a time (see `ProgressService::list`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};

use super::extract::{distinct_params, id_prefix};
use super::stream_all;
use super::{AppState, ScopedGrant};
use crate::domain::{Status, Timestamp};
use crate::error::Error;
use crate::service::{DEFAULT_LIMIT, ListCursor, ListPage, ListQuery, MAX_LIMIT};
use crate::tokens::Scope;

/// `GET /progress`: `{"items": [record, …], "next_cursor": "…" | null}`,
/// each record exactly as `GET /progress/{id}` renders it.
///
/// With a prefix token, the listing stays inside its prefix: without a
/// `prefix` parameter the token's is used, and one that does not start with
/// the token's is 403 `forbidden_scope`.
pub async fn list(
    State(state): State<AppState>,
    grant: Option<Extension<ScopedGrant>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(pairs) = query.map_err(|e| Error::InvalidQuery(e.body_text()))?;
    let mut query = parse_query(pairs)?;
    if let Some(Extension(ScopedGrant(rights))) = grant {
        scope_listing(&mut query, &rights.scope)?;
    }
    // Checked on the listing too, as openapi.yaml says (a header lookup when absent).
    let resume = super::events::last_event_id(&headers)?;
    if stream_all::wants_stream(&headers) {
        return stream_all::stream(&state, query, resume).await;
    }
    let page = state.service.list(&query).await?;
    Ok(page_response(&page))
}

/// Keeps a listing inside a scoped token's prefix (the guard lets only
/// prefix tokens list).
fn scope_listing(query: &mut ListQuery, scope: &Scope) -> Result<(), Error> {
    let Scope::Prefix(own) = scope else {
        return Err(Error::ForbiddenScope("a token for one id cannot list records".into()));
    };
    match &query.id_prefix {
        None => query.id_prefix = Some(own.clone()),
        Some(asked) if asked.starts_with(own.as_str()) => {}
        Some(_) => {
            return Err(Error::ForbiddenScope(format!("the token lists only ids starting with {own:?}")));
        }
    }
    Ok(())
}

/// The listing query from the query string. Empty values count as absent;
/// unknown or repeated parameters are refused rather than ignored (as on the
/// admin routes), so a misspelt filter never silently widens a listing.
fn parse_query(pairs: Vec<(String, String)>) -> Result<ListQuery, Error> {
    let mut query = ListQuery::default();
    for (name, value) in distinct_params(pairs)? {
        match name.as_str() {
            "status" => query.statuses = parse_statuses(&value)?,
            "prefix" => query.id_prefix = Some(id_prefix(value)?),
            "limit" => query.limit = parse_limit(&value)?,
            "cursor" => {
                query.after = Some(ListCursor::decode(&value).map_err(|e| Error::InvalidQuery(e.to_string()))?);
            }
            other => {
                return Err(Error::InvalidQuery(format!(
                    "unknown query parameter {other:?}; the parameters are status, prefix, limit and cursor"
                )));
            }
        }
    }
    Ok(query)
}

/// One status, or several separated by commas (`pending,running`; spaces
/// around a name are allowed, as `openapi.yaml`'s pattern says).
fn parse_statuses(value: &str) -> Result<Vec<Status>, Error> {
    let mut statuses = Vec::new();
    for name in value.split(',') {
        let status = Status::parse(name.trim_matches(' ')).ok_or_else(|| {
            Error::InvalidQuery(format!(
                "status must be one or more of pending, running, completed, failed, cancelled, separated by commas; got {value:?}"
            ))
        })?;
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    statuses.sort_by_key(|s| Status::ALL.iter().position(|a| a == s));
    Ok(statuses)
}

fn parse_limit(value: &str) -> Result<usize, Error> {
    value.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
        Error::InvalidQuery(format!(
            "limit must be a whole number from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}); got {value:?}"
        ))
    })
}

/// The page as JSON, built from the stored bytes of each record (no JSON
/// work per record, as for a single GET).
fn page_response(page: &ListPage) -> Response {
    let now = Timestamp::now().millis();
    let mut body = BytesMut::with_capacity(64 + page.items.iter().map(|(_, r)| r.raw().len() + 24).sum::<usize>());
    body.put_slice(b"{\"items\":[");
    for (i, (_, record)) in page.items.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        for part in record.render_parts(now) {
            body.put_slice(&part);
        }
    }
    body.put_slice(b"],\"next_cursor\":");
    match &page.next {
        // base64url: nothing to escape.
        Some(cursor) => {
            body.put_u8(b'"');
            body.put_slice(cursor.encode().as_bytes());
            body.put_u8(b'"');
        }
        None => body.put_slice(b"null"),
    }
    body.put_u8(b'}');
    let mut response = (StatusCode::OK, body.freeze()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn refused(list: &[(&str, &str)]) -> String {
        match parse_query(pairs(list)) {
            Err(Error::InvalidQuery(detail)) => detail,
            other => panic!("{list:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse_query(pairs(&[])).unwrap(), ListQuery::default());
        assert_eq!(parse_query(pairs(&[("limit", ""), ("status", "")])).unwrap(), ListQuery::default());
        let cursor = ListCursor::new(1_700_000_000_000, "job-7");
        let q = parse_query(pairs(&[
            ("status", "running,pending, running"),
            ("prefix", "job-"),
            ("limit", "500"),
            ("cursor", &cursor.encode()),
        ]))
        .unwrap();
        assert_eq!(q.statuses, vec![Status::Pending, Status::Running]);
        assert_eq!((q.id_prefix.as_deref(), q.limit, q.after), (Some("job-"), 500, Some(cursor)));
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_parameter() {
        for bad in ["0", "501", "-1", "abc", "1.5", "99999999999999999999999"] {
            assert!(refused(&[("limit", bad)]).starts_with("limit "), "{bad}");
        }
        assert!(refused(&[("status", "done")]).starts_with("status "));
        assert!(refused(&[("status", "running,")]).starts_with("status "));
        assert!(refused(&[("prefix", "a/b")]).starts_with("prefix "));
        assert!(refused(&[("cursor", "nope!")]).starts_with("cursor "));
        assert!(refused(&[("limit", "5"), ("limit", "6")]).starts_with("limit is given more than once"));
        assert!(refused(&[("stauts", "failed")]).contains("\"stauts\""));
    }

    #[test]
    fn access_token_is_accepted_and_ignored() {
        let q = parse_query(pairs(&[("access_token", "eyJ.x.y"), ("prefix", "job-")])).unwrap();
        assert_eq!(q.id_prefix.as_deref(), Some("job-"));
    }

    #[test]
    fn a_prefix_token_lists_inside_its_prefix() {
        let scope = Scope::prefix("user-7:").unwrap();
        let mut q = ListQuery::default();
        scope_listing(&mut q, &scope).unwrap();
        assert_eq!(q.id_prefix.as_deref(), Some("user-7:"), "no prefix: the token's");
        let mut q = ListQuery { id_prefix: Some("user-7:book".into()), ..ListQuery::default() };
        scope_listing(&mut q, &scope).unwrap();
        assert_eq!(q.id_prefix.as_deref(), Some("user-7:book"), "narrower: kept");
        for outside in ["user-7", "user-", "user-70:", "other"] {
            let mut q = ListQuery { id_prefix: Some(outside.into()), ..ListQuery::default() };
            assert!(matches!(scope_listing(&mut q, &scope), Err(Error::ForbiddenScope(_))), "{outside}");
        }
        let mut q = ListQuery::default();
        let id = Scope::id("user-7:a").unwrap();
        assert!(matches!(scope_listing(&mut q, &id), Err(Error::ForbiddenScope(_))));
    }
}
