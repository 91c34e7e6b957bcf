//! Bearer-token access control for the route classes of [`Access`].
//!
//! Each row of the route table gets this check as a `route_layer` of its
//! own handler, so a route carries its class with it: there is no lookup by
//! path that a new route could miss, and the router's own 404 and 405
//! answers need no token. The check runs before any extractor, so a request
//! without the right token learns nothing about ids or records.
//!
//! Two kinds of token: the static tokens of the settings (compared first,
//! in constant time; the hot path never parses a JWT), and scoped read
//! tokens (`crate::tokens`), checked only when what was presented has the
//! shape of a JWT and signing keys are configured. A scoped token reads
//! (`Access::Read`) only ids in its scope, checked here against the path's
//! `{id}`; lists (`Access::List`) only with a prefix scope, which the
//! listing handler applies from the [`ScopedGrant`] this check leaves in the
//! request's extensions; and calls nothing else (403 `forbidden_scope`).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use subtle::{Choice, ConstantTimeEq};

use super::address::{AddressLimit, TrustedProxies};
use super::rate::ScopedLimiter;
use super::{Access, AppState};
use crate::error::Error;
use crate::settings::Settings;
use crate::tokens::{Scope, SigningKeys, looks_like_jwt};

/// The query parameter that may carry a scoped token (RFC 6750 §2.3).
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// The configured bearer tokens and signing keys. Its `Debug` shows only
/// how many tokens there are and the key ids.
pub struct AccessTokens {
    read: Vec<Box<[u8]>>,
    write: Vec<Box<[u8]>>,
    admin: Option<Box<[u8]>>,
    signing: Option<Arc<SigningKeys>>,
    limiter: ScopedLimiter,
    /// The per-address limit of requests no token vouches for; `None`: off.
    addresses: Option<AddressLimit>,
}

/// What a request may do, as the check decided.
#[derive(Debug)]
pub enum Grant {
    /// Everything its route class allows (a static token, or an open class).
    Full,
    /// A scoped token's reads.
    Scoped(Arc<Scope>),
}

/// The scope of the token a request came with, in its extensions when
/// (and only when) it came with a scoped token.
#[derive(Debug, Clone)]
pub struct ScopedGrant(pub Arc<Scope>);

impl AccessTokens {
    /// Read, write and admin tokens; empty lists (and no admin token) leave
    /// their class open (admin: closed). No signing keys, default rate limit.
    pub fn new(read: &[String], write: &[String], admin: Option<&str>) -> Self {
        let bytes = |t: &str| t.as_bytes().to_vec().into_boxed_slice();
        Self {
            read: read.iter().map(|t| bytes(t)).collect(),
            write: write.iter().map(|t| bytes(t)).collect(),
            admin: admin.map(bytes),
            signing: None,
            limiter: ScopedLimiter::new(NonZeroU32::new(10).expect("10"), NonZeroU32::new(60).expect("60")),
            addresses: None,
        }
    }

    /// These tokens, and scoped tokens verified with `keys`, each limited
    /// to `per_second` reads sustained and `burst` at once.
    pub fn with_signing(mut self, keys: Option<Arc<SigningKeys>>, per_second: u32, burst: u32) -> Self {
        self.signing = keys;
        let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        self.limiter = ScopedLimiter::new(nonzero(per_second), nonzero(burst));
        self
    }

    /// These tokens, and requests that no token vouches for limited to
    /// `per_second` sustained and `burst` at once per client address (0: no
    /// limit), `X-Forwarded-For` believed from `trusted`.
    pub fn with_address_limit(mut self, per_second: u32, burst: u32, trusted: TrustedProxies) -> Self {
        self.addresses = AddressLimit::new(per_second, burst, trusted);
        self
    }

    /// The tokens of `PROGRESS_READ_TOKENS`, `PROGRESS_WRITE_TOKENS` and
    /// `PROGRESS_ADMIN_TOKEN`, the keys of `PROGRESS_SIGNING_KEYS`, and the
    /// limit of `PROGRESS_ADDRESS_RATE_*` and `PROGRESS_TRUSTED_PROXIES`.
    pub fn from_settings(settings: &Settings, keys: Option<Arc<SigningKeys>>) -> Self {
        Self::new(&settings.read_tokens, &settings.write_tokens, settings.admin_token.as_deref())
            .with_signing(keys, settings.scoped_rate_per_second, settings.scoped_rate_burst)
            .with_address_limit(
                settings.address_rate_per_second,
                settings.address_rate_burst,
                TrustedProxies::new(&settings.trusted_proxies),
            )
    }

    /// Whether a request that `authorize` answered with `decision` counts
    /// against its client address: every request that no token of ours
    /// vouches for. A valid scoped token has its own limit (a refusal for
    /// its scope or its rate shows it was valid); a static token of any
    /// class, even where the route is open (a backend that sends its write
    /// token with its reads), is the app's own backend and is not limited.
    fn counts_per_address(&self, access: Access, decision: &Result<Grant, Error>, headers: &HeaderMap) -> bool {
        match decision {
            Ok(Grant::Scoped(_)) | Err(Error::ForbiddenScope(_) | Error::RateLimited { .. }) => false,
            // A closed class granted in full: a static token matched.
            Ok(Grant::Full) if !self.is_open(access) => false,
            _ => match bearer_token(headers) {
                Presented::Token { token, .. } => !self.is_static(token),
                _ => true,
            },
        }
    }

    /// Whether `access` needs no token (a public route, or a class with no token configured).
    fn is_open(&self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Read => self.read.is_empty(),
            Access::Write => self.write.is_empty(),
            Access::List => self.read.is_empty() && self.admin.is_none(),
            Access::Admin => false,
        }
    }

    /// Whether `token` is a static token of any class (constant time).
    fn is_static(&self, token: &[u8]) -> bool {
        matches_any(Some(token), self.read.iter().chain(&self.write).chain(&self.admin))
    }

    /// The signing keys, when scoped tokens are on.
    pub fn signing_keys(&self) -> Option<&Arc<SigningKeys>> {
        self.signing.as_ref()
    }

    /// Whether no static token of any class is configured.
    pub fn none_configured(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.admin.is_none()
    }

    /// Whether a request with these headers and this query may call a route
    /// of class `access`, and with what grant. A static token in
    /// `Authorization` is compared first; a scoped token is accepted there
    /// or (when there is no `Authorization`) as `?access_token=`.
    pub fn authorize(&self, access: Access, headers: &HeaderMap, query: Option<&str>) -> Result<Grant, Error> {
        if access == Access::Public {
            return Ok(Grant::Full);
        }
        let presented = match bearer_token(headers) {
            Presented::Nothing => query.map_or(Presented::Nothing, query_token),
            header => header,
        };
        let open = self.is_open(access);
        if let Presented::Token { token, in_query } = presented {
            if !open && !in_query && self.matches_static(access, token) {
                return Ok(Grant::Full);
            }
            if let Some(keys) = &self.signing
                && looks_like_jwt(token)
            {
                // looks_like_jwt: ASCII only.
                let text = std::str::from_utf8(token).unwrap_or_default();
                return match keys.verify_cached(text) {
                    Ok(scope) => self.scoped(access, scope, token),
                    Err(invalid) => Err(Error::Unauthorized { presented: true, reason: Some(invalid.reason()) }),
                };
            }
        }
        if open {
            return Ok(Grant::Full);
        }
        if access == Access::Admin && self.admin.is_none() {
            return Err(Error::AdminDisabled);
        }
        Err(Error::Unauthorized { presented: !matches!(presented, Presented::Nothing), reason: None })
    }

    fn matches_static(&self, access: Access, token: &[u8]) -> bool {
        let admin = self.admin.iter();
        match access {
            Access::Public => true,
            Access::Read => matches_any(Some(token), self.read.iter().chain(&self.write).chain(admin)),
            Access::Write => matches_any(Some(token), self.write.iter().chain(admin)),
            Access::Admin => matches_any(Some(token), admin),
            Access::List => matches_any(Some(token), self.read.iter().chain(admin)),
        }
    }

    /// What a verified scoped token may do on a route of class `access`.
    fn scoped(&self, access: Access, scope: Arc<Scope>, token: &[u8]) -> Result<Grant, Error> {
        match (access, &*scope) {
            (Access::Read, _) | (Access::List, Scope::Prefix(_)) => {}
            (Access::List, Scope::Id(_)) => {
                return Err(Error::ForbiddenScope(
                    "a token for one id cannot list records; a token with a prefix lists inside its prefix".into(),
                ));
            }
            _ => {
                return Err(Error::ForbiddenScope(
                    "a scoped token only reads (GET /progress/{id}, its events, and with a prefix the listing); \
                     it cannot write, delete, mint tokens or call admin routes"
                        .into(),
                ));
            }
        }
        self.limiter.check(token)?;
        Ok(Grant::Scoped(scope))
    }
}

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokens")
            .field("read", &format!("{} token(s)", self.read.len()))
            .field("write", &format!("{} token(s)", self.write.len()))
            .field("admin", &self.admin.as_ref().map(|_| "****"))
            .field("signing", &self.signing)
            .finish()
    }
}

/// What the request presents.
enum Presented<'a> {
    /// No `Authorization` header and no `access_token`.
    Nothing,
    /// A header that is not `Bearer <token>`: presented, never valid.
    Malformed,
    /// The token of `Bearer <token>`, or of `?access_token=`.
    Token {
        /// The token's bytes.
        token: &'a [u8],
        /// From the query: only a scoped token is accepted there.
        in_query: bool,
    },
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
    Presented::Token { token, in_query: false }
}

/// `?access_token=<token>` (empty counts as absent). A JWT needs no
/// percent-encoding, so the value is taken as it is; one that was encoded
/// is not a JWT and is refused as such.
fn query_token(query: &str) -> Presented<'_> {
    let value = query.split('&').find_map(|pair| pair.strip_prefix(ACCESS_TOKEN_PARAM)?.strip_prefix('='));
    match value {
        Some(token) if !token.is_empty() => Presented::Token { token: token.as_bytes(), in_query: true },
        _ => Presented::Nothing,
    }
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
    let tokens = &guard.tokens;
    let decision = tokens.authorize(guard.access, request.headers(), request.uri().query());
    if let Some(addresses) = &tokens.addresses
        && tokens.counts_per_address(guard.access, &decision, request.headers())
        && let Err(limited) = addresses.check(&request)
    {
        tracing::debug!(access = ?guard.access, "request refused: its client address is over the rate limit");
        return limited.into_response();
    }
    let refusal = match decision {
        Ok(Grant::Full) => return next.run(request).await,
        Ok(Grant::Scoped(scope)) => match in_scope(guard.access, scope, request).await {
            Ok(request) => return next.run(request).await,
            Err(refusal) => refusal,
        },
        Err(refusal) => refusal,
    };
    // The token itself is never logged, only the outcome.
    tracing::debug!(access = ?guard.access, code = refusal.code(), "request refused");
    refusal.into_response()
}

/// A read of the path's `{id}` needs the id in the scope; the scope goes
/// into the request's extensions for the handlers (the listing applies it).
async fn in_scope(access: Access, scope: Arc<Scope>, request: Request) -> Result<Request, Error> {
    let (mut parts, body) = request.into_parts();
    if access == Access::Read {
        let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
        let id = params.as_ref().and_then(|p| p.iter().find(|(name, _)| *name == "id").map(|(_, v)| v));
        if !id.is_some_and(|id| scope.covers(id)) {
            return Err(Error::ForbiddenScope("the token does not grant this id".into()));
        }
    }
    parts.extensions.insert(ScopedGrant(scope));
    Ok(Request::from_parts(parts, body))
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
    use crate::tokens::Scope;
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
        match t.authorize(access, &with(authorization), None) {
            Ok(Grant::Full) => "ok".into(),
            Ok(Grant::Scoped(_)) => "scoped".into(),
            Err(Error::Unauthorized { presented: true, .. }) => "unauthorized+invalid_token".into(),
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

    const KEY: &str = "k1:0123456789abcdef0123456789abcdef";

    fn signing(t: AccessTokens) -> AccessTokens {
        let keys = SigningKeys::new(&[KEY.to_owned()]).unwrap().map(Arc::new);
        t.with_signing(keys, 10, 3)
    }

    fn jwt(scope: Scope) -> String {
        let keys = SigningKeys::new(&[KEY.to_owned()]).unwrap().unwrap();
        keys.mint(&scope, 60, crate::tokens::now_seconds()).unwrap().0
    }

    fn decide_query(t: &AccessTokens, access: Access, query: &str) -> String {
        match t.authorize(access, &HeaderMap::new(), Some(query)) {
            Ok(Grant::Full) => "ok".into(),
            Ok(Grant::Scoped(_)) => "scoped".into(),
            Err(Error::Unauthorized { presented: true, .. }) => "unauthorized+invalid_token".into(),
            Err(e) => e.code().into(),
        }
    }

    #[test]
    fn a_scoped_token_reads_and_lists_only() {
        for t in [signing(tokens(&["r1"], &["w1"], Some("adm"))), signing(tokens(&[], &[], None))] {
            let id = format!("Bearer {}", jwt(Scope::id("book-42").unwrap()));
            let prefix = format!("Bearer {}", jwt(Scope::prefix("user-7:").unwrap()));
            assert_eq!(decide(&t, Access::Read, Some(&id)), "scoped", "{t:?}");
            assert_eq!(decide(&t, Access::List, Some(&id)), "forbidden_scope", "one id does not list");
            assert_eq!(decide(&t, Access::List, Some(&prefix)), "scoped");
            for access in [Access::Write, Access::Admin] {
                assert_eq!(decide(&t, access, Some(&id)), "forbidden_scope", "{access:?}");
                assert_eq!(decide(&t, access, Some(&prefix)), "forbidden_scope", "{access:?}");
            }
            assert_eq!(decide(&t, Access::Public, Some(&id)), "ok");
        }
    }

    #[test]
    fn static_tokens_are_compared_first_and_never_parsed() {
        let t = signing(tokens(&["r1"], &["w1"], Some("adm")));
        assert_eq!(decide(&t, Access::Read, Some("Bearer r1")), "ok");
        assert_eq!(decide(&t, Access::Read, Some("Bearer eyJnot.a.jwt")), "unauthorized+invalid_token");
        // Without signing keys, a JWT is just a wrong token.
        let plain = tokens(&["r1"], &[], None);
        let id = format!("Bearer {}", jwt(Scope::id("a").unwrap()));
        assert_eq!(decide(&plain, Access::Read, Some(&id)), "unauthorized+invalid_token");
    }

    #[test]
    fn a_scoped_token_in_the_query() {
        let t = signing(tokens(&["r1"], &[], None));
        let token = jwt(Scope::id("a").unwrap());
        assert_eq!(decide_query(&t, Access::Read, &format!("wait=5&access_token={token}")), "scoped");
        assert_eq!(
            decide_query(&t, Access::Read, "access_token=r1"),
            "unauthorized+invalid_token",
            "static: header only"
        );
        assert_eq!(decide_query(&t, Access::Read, "access_token="), "unauthorized");
        assert_eq!(decide_query(&t, Access::Read, "xaccess_token=r1&access_tokens=r1"), "unauthorized");
        // The header wins over the query.
        let headers = with(Some("Bearer r1"));
        assert!(matches!(t.authorize(Access::Read, &headers, Some("access_token=junk")), Ok(Grant::Full)));
    }

    #[test]
    fn scoped_reads_are_rate_limited_per_token() {
        let t = signing(tokens(&[], &[], None));
        let a = format!("Bearer {}", jwt(Scope::id("a").unwrap()));
        let b = format!("Bearer {}", jwt(Scope::id("b").unwrap()));
        for _ in 0..3 {
            assert_eq!(decide(&t, Access::Read, Some(&a)), "scoped");
        }
        assert_eq!(decide(&t, Access::Read, Some(&a)), "rate_limited");
        assert_eq!(decide(&t, Access::Read, Some(&b)), "scoped");
        assert_eq!(decide(&t, Access::Read, None), "ok", "requests without a scoped token are not limited");
    }

    #[test]
    fn an_invalid_scoped_token_is_401_with_its_reason_even_on_open_routes() {
        let t = signing(tokens(&[], &[], None));
        let keys = SigningKeys::new(&[KEY.to_owned()]).unwrap().unwrap();
        let (expired, _) = keys.mint(&Scope::id("a").unwrap(), 1, 1_000).unwrap();
        match t.authorize(Access::Read, &with(Some(&format!("Bearer {expired}"))), None) {
            Err(Error::Unauthorized { presented: true, reason: Some(reason) }) => assert!(reason.contains("expired")),
            other => panic!("{other:?}"),
        }
    }
}
