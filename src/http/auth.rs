//! Bearer-token access control for the route classes of [`Access`].
//!
//! Each row of the route table gets this check as a `route_layer` of its
//! own handler, so a route carries its class with it: there is no lookup by
//! path that a new route could miss, and the router's own 404 and 405
//! answers need no token. The check runs before any extractor, so a request
//! without the right token learns nothing about ids or records.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use subtle::{Choice, ConstantTimeEq};

use super::{Access, AppState};
use crate::error::Error;
use crate::settings::Settings;

/// The configured bearer tokens. Its `Debug` shows only how many there are.
pub struct AccessTokens {
    read: Vec<Box<[u8]>>,
    write: Vec<Box<[u8]>>,
    admin: Option<Box<[u8]>>,
}

impl AccessTokens {
    /// Read, write and admin tokens; empty lists (and no admin token) leave
    /// their class open (admin: closed).
    pub fn new(read: &[String], write: &[String], admin: Option<&str>) -> Self {
        let bytes = |t: &str| t.as_bytes().to_vec().into_boxed_slice();
        Self {
            read: read.iter().map(|t| bytes(t)).collect(),
            write: write.iter().map(|t| bytes(t)).collect(),
            admin: admin.map(bytes),
        }
    }

    /// The tokens of `PROGRESS_READ_TOKENS`, `PROGRESS_WRITE_TOKENS` and `PROGRESS_ADMIN_TOKEN`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self::new(&settings.read_tokens, &settings.write_tokens, settings.admin_token.as_deref())
    }

    /// Whether a request with this `Authorization` header may call a route of class `access`.
    pub fn authorize(&self, access: Access, headers: &HeaderMap) -> Result<(), Error> {
        let presented = bearer_token(headers);
        let admin = self.admin.iter();
        let allowed = match access {
            Access::Public => return Ok(()),
            Access::Read if self.read.is_empty() => return Ok(()),
            Access::Write if self.write.is_empty() => return Ok(()),
            Access::Admin if self.admin.is_none() => return Err(Error::AdminDisabled),
            Access::List if self.read.is_empty() && self.admin.is_none() => return Ok(()),
            Access::Read => matches_any(presented.token(), self.read.iter().chain(&self.write).chain(admin)),
            Access::Write => matches_any(presented.token(), self.write.iter().chain(admin)),
            Access::Admin => matches_any(presented.token(), admin),
            Access::List => matches_any(presented.token(), self.read.iter().chain(admin)),
        };
        if allowed { Ok(()) } else { Err(Error::Unauthorized { presented: !matches!(presented, Presented::Nothing) }) }
    }
}

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokens")
            .field("read", &format!("{} token(s)", self.read.len()))
            .field("write", &format!("{} token(s)", self.write.len()))
            .field("admin", &self.admin.as_ref().map(|_| "****"))
            .finish()
    }
}

/// What the `Authorization` header holds.
enum Presented<'a> {
    /// No header.
    Nothing,
    /// A header that is not `Bearer <token>`: presented, never valid.
    Malformed,
    /// The token of `Bearer <token>`.
    Token(&'a [u8]),
}

impl<'a> Presented<'a> {
    fn token(&self) -> Option<&'a [u8]> {
        match self {
            Presented::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Presented::Nothing };
    let bytes = value.as_bytes();
    let Some(space) = bytes.iter().position(|&b| b == b' ') else { return Presented::Malformed };
    let (scheme, rest) = bytes.split_at(space);
    let token = rest.trim_ascii();
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Presented::Malformed;
    }
    Presented::Token(token)
}

/// Whether `presented` equals one of `candidates`. Every candidate is
/// compared, in constant time for its length, with no early exit, so the
/// timing tells nothing about which token (or how much of one) matched;
/// only a token's length can show.
pub(crate) fn matches_any<'a>(presented: Option<&[u8]>, candidates: impl IntoIterator<Item = &'a Box<[u8]>>) -> bool {
    let presented = presented.unwrap_or_default();
    let mut found = Choice::from(0);
    for candidate in candidates {
        found |= presented.ct_eq(&candidate[..]);
    }
    // An empty token is never valid (the settings drop blank ones anyway).
    bool::from(found) && !presented.is_empty()
}

#[derive(Clone)]
struct Guard {
    access: Access,
    tokens: Arc<AccessTokens>,
}

async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match guard.tokens.authorize(guard.access, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            // The token itself is never logged, only the outcome.
            tracing::debug!(access = ?guard.access, code = refusal.code(), "request refused");
            refusal.into_response()
        }
    }
}

/// `handler` behind the token check of `access` (public routes unchanged).
pub(crate) fn guard(
    access: Access,
    tokens: &Arc<AccessTokens>,
    handler: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    if access == Access::Public {
        return handler;
    }
    handler.route_layer(middleware::from_fn_with_state(Guard { access, tokens: tokens.clone() }, check))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tokens(read: &[&str], write: &[&str], admin: Option<&str>) -> AccessTokens {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AccessTokens::new(&own(read), &own(write), admin)
    }

    fn with(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    /// The code of the answer: "ok", or the problem code.
    fn decide(t: &AccessTokens, access: Access, authorization: Option<&str>) -> String {
        match t.authorize(access, &with(authorization)) {
            Ok(()) => "ok".into(),
            Err(Error::Unauthorized { presented: true }) => "unauthorized+invalid_token".into(),
            Err(e) => e.code().into(),
        }
    }

    #[test]
    fn with_no_tokens_everything_but_admin_is_open() {
        let t = tokens(&[], &[], None);
        for access in [Access::Public, Access::Read, Access::Write] {
            assert_eq!(decide(&t, access, None), "ok", "{access:?}");
            assert_eq!(decide(&t, access, Some("Bearer anything")), "ok", "{access:?}");
        }
        assert_eq!(decide(&t, Access::Admin, None), "admin_disabled");
        assert_eq!(decide(&t, Access::Admin, Some("Bearer anything")), "admin_disabled");
    }

    #[test]
    fn the_access_matrix() {
        let t = tokens(&["r1", "r2"], &["w1"], Some("adm"));
        let rows: &[(Access, Option<&str>, &str)] = &[
            (Access::Public, None, "ok"),
            (Access::Public, Some("Bearer nope"), "ok"),
            (Access::Read, None, "unauthorized"),
            (Access::Read, Some("Bearer nope"), "unauthorized+invalid_token"),
            (Access::Read, Some("Bearer r1"), "ok"),
            (Access::Read, Some("Bearer r2"), "ok"),
            (Access::Read, Some("Bearer w1"), "ok"),
            (Access::Read, Some("Bearer adm"), "ok"),
            (Access::Write, None, "unauthorized"),
            (Access::Write, Some("Bearer r1"), "unauthorized+invalid_token"),
            (Access::Write, Some("Bearer w1"), "ok"),
            (Access::Write, Some("Bearer adm"), "ok"),
            (Access::Admin, None, "unauthorized"),
            (Access::Admin, Some("Bearer r1"), "unauthorized+invalid_token"),
            (Access::Admin, Some("Bearer w1"), "unauthorized+invalid_token"),
            (Access::Admin, Some("Bearer adm"), "ok"),
        ];
        for (access, header, expected) in rows {
            assert_eq!(decide(&t, *access, *header), *expected, "{access:?} with {header:?}");
        }
    }

    #[test]
    fn listing_needs_a_read_or_the_admin_token_once_either_is_set() {
        let everything = tokens(&["r1"], &["w1"], Some("adm"));
        let read_only = tokens(&["r1"], &[], None);
        let admin_only = tokens(&[], &["w1"], Some("adm"));
        let rows: &[(&AccessTokens, Option<&str>, &str)] = &[
            (&everything, None, "unauthorized"),
            (&everything, Some("Bearer r1"), "ok"),
            (&everything, Some("Bearer adm"), "ok"),
            (&everything, Some("Bearer w1"), "unauthorized+invalid_token"),
            (&read_only, None, "unauthorized"),
            (&read_only, Some("Bearer r1"), "ok"),
            (&admin_only, None, "unauthorized"),
            (&admin_only, Some("Bearer w1"), "unauthorized+invalid_token"),
            (&admin_only, Some("Bearer adm"), "ok"),
        ];
        for (t, header, expected) in rows {
            assert_eq!(decide(t, Access::List, *header), *expected, "{t:?} with {header:?}");
        }
        // Neither read tokens nor an admin token: open, even with write tokens.
        assert_eq!(decide(&tokens(&[], &["w1"], None), Access::List, None), "ok");
        assert_eq!(decide(&tokens(&[], &[], None), Access::List, None), "ok");
    }

    #[test]
    fn write_tokens_alone_leave_reads_open() {
        let t = tokens(&[], &["w1"], None);
        assert_eq!(decide(&t, Access::Read, None), "ok");
        assert_eq!(decide(&t, Access::Write, None), "unauthorized");
        assert_eq!(decide(&t, Access::Write, Some("Bearer w1")), "ok");
    }

    #[test]
    fn the_header_must_be_a_bearer_token() {
        let t = tokens(&[], &["w1"], None);
        assert_eq!(decide(&t, Access::Write, Some("bearer w1")), "ok", "the scheme is case-insensitive");
        assert_eq!(decide(&t, Access::Write, Some("BEARER   w1 ")), "ok");
        for bad in ["w1", "Basic w1", "Bearer", "Bearer ", "Bearerw1", "Bearer w1x", "Bearer W1"] {
            assert_eq!(decide(&t, Access::Write, Some(bad)), "unauthorized+invalid_token", "{bad:?}");
        }
    }

    #[test]
    fn constant_time_comparison() {
        let candidates: Vec<Box<[u8]>> = vec![b"secret-one".to_vec().into(), b"two".to_vec().into()];
        assert!(matches_any(Some(b"secret-one"), &candidates), "equal");
        assert!(matches_any(Some(b"two"), &candidates), "equal to a later candidate");
        assert!(!matches_any(Some(b"secret-onf"), &candidates), "same length, last byte differs");
        assert!(!matches_any(Some(b"Secret-one"), &candidates), "same length, first byte differs");
        assert!(!matches_any(Some(b"secret-on"), &candidates), "a prefix");
        assert!(!matches_any(Some(b"secret-one-and-more"), &candidates), "longer");
        assert!(!matches_any(Some(b""), &candidates), "empty");
        assert!(!matches_any(None, &candidates), "nothing presented");
        let empty: Vec<Box<[u8]>> = vec![b"".to_vec().into()];
        assert!(!matches_any(Some(b""), &empty), "an empty token never matches");
        assert!(!matches_any(Some(b"x"), &Vec::new()), "no candidates");
    }

    #[test]
    fn debug_hides_the_tokens() {
        let t = tokens(&["read-secret"], &["write-secret"], Some("admin-secret"));
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("1 token(s)"), "{shown}");
    }
}
