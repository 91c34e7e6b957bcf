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
//! `{id}`; asks for their cancellation (`Access::Cancel`) only when it
//! carries the `cancel` claim, for the ids in its scope too; lists
//! (`Access::List`) only with a prefix scope, which the listing handler
//! applies from the [`ScopedGrant`] this check leaves in the request's
//! extensions; and calls nothing else (403 `forbidden_scope`).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::Access;
use super::address::{AddressLimit, TrustedProxies};
use super::rate::ScopedLimiter;
use crate::error::Error;
use crate::settings::Settings;
use crate::tokens::{Rights, Scope, SigningKeys, looks_like_jwt};

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
    /// What a scoped token grants: its reads (and, with the claim, cancel requests).
    Scoped(Arc<Rights>),
}

/// What kind of token a request presented (see [`AccessTokens::describe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// None at all.
    None,
    /// A configured read, write or admin token.
    Static,
    /// A scoped token that verified.
    Scoped,
    /// A token that is none of the configured ones (and not a JWT we could check).
    Unknown,
    /// A scoped token that does not verify.
    Invalid,
}

impl TokenKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::None => "none",
            TokenKind::Static => "static",
            TokenKind::Scoped => "scoped",
            TokenKind::Unknown => "unknown",
            TokenKind::Invalid => "invalid",
        }
    }
}

/// What a presented token may do: the answer of `GET /access`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abilities {
    /// What was presented.
    pub token: TokenKind,
    /// Why an invalid scoped token is refused.
    pub reason: Option<&'static str>,
    /// May read (a scoped token: the ids in its scope).
    pub read: bool,
    /// May list (a prefix token: inside its prefix).
    pub list: bool,
    /// May write, delete and mint tokens.
    pub write: bool,
    /// May ask for cancellation (a scoped token: the ids in its scope).
    pub cancel: bool,
    /// May call the admin routes.
    pub admin: bool,
    /// A scoped token's scope.
    pub scope: Option<Scope>,
}

/// The rights of the scoped token a request came with, in its extensions
/// when (and only when) it came with a scoped token.
#[derive(Debug, Clone)]
pub struct ScopedGrant(pub Arc<Rights>);

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
            Access::Write | Access::Cancel => self.write.is_empty(),
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
        let open = self.is_open(access);
        // Nothing presented can change the answer: the headers need no look
        // (a lookup in the map, on every request of a server without tokens).
        if open && self.signing.is_none() {
            return Ok(Grant::Full);
        }
        let presented = match bearer_token(headers) {
            Presented::Nothing => query.map_or(Presented::Nothing, query_token),
            header => header,
        };
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
                    Ok(rights) => self.scoped(access, rights, token),
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

    /// What a request with these headers and this query may do, for
    /// `GET /access`: as [`AccessTokens::authorize`] would decide for each
    /// class, without counting against any rate limit, and never refused.
    pub fn describe(&self, headers: &HeaderMap, query: Option<&str>) -> Abilities {
        let open = Abilities {
            token: TokenKind::None,
            reason: None,
            read: self.is_open(Access::Read),
            list: self.is_open(Access::List),
            write: self.is_open(Access::Write),
            cancel: self.is_open(Access::Cancel),
            admin: false,
            scope: None,
        };
        let presented = match bearer_token(headers) {
            Presented::Nothing => query.map_or(Presented::Nothing, query_token),
            header => header,
        };
        let (token, in_query) = match presented {
            Presented::Nothing => return open,
            Presented::Malformed => return Abilities { token: TokenKind::Unknown, ..open },
            Presented::Token { token, in_query } => (token, in_query),
        };
        if !in_query && self.is_static(token) {
            let may = |access| self.is_open(access) || self.matches_static(access, token);
            return Abilities {
                token: TokenKind::Static,
                read: may(Access::Read),
                list: may(Access::List),
                write: may(Access::Write),
                cancel: may(Access::Cancel),
                admin: self.matches_static(Access::Admin, token),
                ..open
            };
        }
        if let Some(keys) = &self.signing
            && looks_like_jwt(token)
        {
            let text = std::str::from_utf8(token).unwrap_or_default();
            return match keys.verify_cached(text) {
                Ok(rights) => Abilities {
                    token: TokenKind::Scoped,
                    reason: None,
                    read: true,
                    list: matches!(rights.scope, Scope::Prefix(_)),
                    write: false,
                    cancel: rights.cancel,
                    admin: false,
                    scope: Some(rights.scope.clone()),
                },
                Err(invalid) => Abilities { token: TokenKind::Invalid, reason: Some(invalid.reason()), ..open },
            };
        }
        Abilities { token: TokenKind::Unknown, ..open }
    }

    fn matches_static(&self, access: Access, token: &[u8]) -> bool {
        let admin = self.admin.iter();
        match access {
            Access::Public => true,
            Access::Read => matches_any(Some(token), self.read.iter().chain(&self.write).chain(admin)),
            Access::Write | Access::Cancel => matches_any(Some(token), self.write.iter().chain(admin)),
            Access::Admin => matches_any(Some(token), admin),
            Access::List => matches_any(Some(token), self.read.iter().chain(admin)),
        }
    }

    /// What a verified scoped token may do on a route of class `access`.
    fn scoped(&self, access: Access, rights: Arc<Rights>, token: &[u8]) -> Result<Grant, Error> {
        match (access, &rights.scope) {
            (Access::Read, _) | (Access::List, Scope::Prefix(_)) => {}
            (Access::Cancel, _) if rights.cancel => {}
            (Access::Cancel, _) => {
                return Err(Error::ForbiddenScope(
                    "this token only reads; a token that may cancel its jobs carries the claim \"cancel\": true \
                     (POST /tokens with \"cancel\": true)"
                        .into(),
                ));
            }
            (Access::List, Scope::Id(_)) => {
                return Err(Error::ForbiddenScope(
                    "a token for one id cannot list records; a token with a prefix lists inside its prefix".into(),
                ));
            }
            _ => {
                return Err(Error::ForbiddenScope(
                    "a scoped token only reads (GET /progress/{id}, its events, and with a prefix the listing) \
                     and, with the cancel claim, requests cancellation; it cannot write, delete, mint tokens \
                     or call admin routes"
                        .into(),
                ));
            }
        }
        self.limiter.check(token)?;
        Ok(Grant::Scoped(rights))
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
///
/// `constant_time_eq` compares a word (or a vector) at a time behind one
/// optimization barrier; `subtle`'s slices, used before, put a volatile
/// read behind every byte: about 12 instructions a byte of every
/// candidate, 290 a request for two 12-byte tokens (issue 23).
pub(crate) fn matches_any<'a>(presented: Option<&[u8]>, candidates: impl IntoIterator<Item = &'a Box<[u8]>>) -> bool {
    let presented = presented.unwrap_or_default();
    let mut found = false;
    for candidate in candidates {
        // `|`, not `||`: every candidate is compared.
        found |= constant_time_eq::constant_time_eq(presented, candidate);
    }
    // An empty token is never valid (the settings drop blank ones anyway).
    found && !presented.is_empty()
}

/// The token check of one access class in front of a route's handler
/// ([`guard`]). A tower layer of its own rather than
/// `middleware::from_fn_with_state`, which clones and boxes the inner
/// service and boxes the future of every request (issue 23).
#[derive(Clone)]
pub(crate) struct GuardLayer {
    access: Access,
    tokens: Arc<AccessTokens>,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, access: self.access, tokens: self.tokens.clone() }
    }
}

/// The service of [`GuardLayer`].
#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    access: Access,
    tokens: Arc<AccessTokens>,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = &mut self.inner;
        guarded(self.access, &self.tokens, request, |request| inner.call(request))
    }
}

impl GuardLayer {
    /// What [`Guard`] does with `request`, handing it to `inner` (the inner
    /// service's `call`) when granted: by reference, as `EdgeLayer::start`.
    pub(crate) fn start<F>(&self, request: Request, inner: impl FnOnce(Request) -> F) -> GuardFuture<F> {
        guarded(self.access, &self.tokens, request, inner)
    }
}

fn guarded<F>(
    access: Access,
    tokens: &AccessTokens,
    request: Request,
    inner: impl FnOnce(Request) -> F,
) -> GuardFuture<F> {
    match check(access, tokens, request) {
        Checked::Granted(request) => GuardFuture::Granted { inner: inner(request) },
        Checked::Refused(refusal) => GuardFuture::Refused { response: Some(refusal) },
    }
}

pin_project! {
    /// The response future of [`Guard`].
    #[project = GuardFutureProj]
    pub(crate) enum GuardFuture<F> {
        /// The request went on to the handler.
        Granted { #[pin] inner: F },
        /// The request was refused; the answer, until polled.
        Refused { response: Option<Response> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardFutureProj::Granted { inner } => inner.poll(cx),
            GuardFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("a refused request's future is polled once")))
            }
        }
    }
}

/// What [`check`] decided.
enum Checked {
    /// The request may go on (a scoped token's rights in its extensions).
    Granted(Request),
    /// The answer to send instead.
    Refused(Response),
}

/// Whether a request may call a route of class `access`.
fn check(access: Access, tokens: &AccessTokens, request: Request) -> Checked {
    let decision = tokens.authorize(access, request.headers(), request.uri().query());
    if let Some(addresses) = &tokens.addresses
        && tokens.counts_per_address(access, &decision, request.headers())
        && let Err(limited) = addresses.check(&request)
    {
        tracing::debug!(?access, "request refused: its client address is over the rate limit");
        return Checked::Refused(limited.into_response());
    }
    let refusal = match decision {
        Ok(Grant::Full) => return Checked::Granted(request),
        Ok(Grant::Scoped(scope)) => match in_scope(access, scope, request) {
            Ok(request) => return Checked::Granted(request),
            Err(refusal) => refusal,
        },
        Err(refusal) => refusal,
    };
    // The token itself is never logged, only the outcome.
    tracing::debug!(?access, code = refusal.code(), "request refused");
    Checked::Refused(refusal.into_response())
}

/// A read or a cancel request of the path's `{id}` needs the id in the
/// scope; the rights go into the request's extensions for the handlers
/// (the listing applies the scope).
fn in_scope(access: Access, rights: Arc<Rights>, request: Request) -> Result<Request, Error> {
    let (mut parts, body) = request.into_parts();
    if matches!(access, Access::Read | Access::Cancel) {
        // The id as the handler reads it (`GET /progress/{id}` is not routed by axum).
        let id = super::extract::path_id(parts.uri.path()).ok();
        if !id.is_some_and(|id| rights.scope.covers(&id)) {
            return Err(Error::ForbiddenScope("the token does not grant this id".into()));
        }
    }
    parts.extensions.insert(ScopedGrant(rights));
    Ok(Request::from_parts(parts, body))
}

/// The token check of `access`; none for public routes.
pub(crate) fn guard(access: Access, tokens: &Arc<AccessTokens>) -> Option<GuardLayer> {
    (access != Access::Public).then(|| GuardLayer { access, tokens: tokens.clone() })
}

#[cfg(test)]
mod tests;
