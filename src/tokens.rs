//! Scoped read tokens: HS256 JWTs (RFC 7519) that grant reads of one job id
//! (`sub`) or of every id starting with a prefix (`prefix`) until `exp`;
//! with the claim `"cancel": true`, also cancel requests for those ids
//! (`POST /progress/{id}/cancel`).
//!
//! Minted by `POST /tokens`, by `progressd token`, or by an application's
//! backend with any JWT library, under a key of `PROGRESS_SIGNING_KEYS`
//! (`kid:secret` pairs; the first signs, all verify). Nothing here knows
//! HTTP: the guard in `http::auth` decides what a verified scope may call.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::ProgressId;

/// Lifetime of a token when none is asked for, in seconds.
pub const DEFAULT_TTL_SECONDS: u64 = 900;

/// Seconds of clock skew forgiven on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 5;

/// Most verified tokens remembered; past it, the expired ones are dropped,
/// and if that is not enough, all of them.
const CACHED_TOKENS: usize = 4096;

/// Shortest secret accepted: an HS256 key is at least as long as the
/// hash's output (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a scoped token may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One job id (`sub`).
    Id(ProgressId),
    /// Every id that starts with this text, the text itself included (`prefix`).
    Prefix(String),
}

impl Scope {
    /// Whether `id` is inside the scope.
    pub fn covers(&self, id: &str) -> bool {
        match self {
            Scope::Id(own) => own.as_str() == id,
            Scope::Prefix(prefix) => id.starts_with(prefix.as_str()),
        }
    }

    /// A prefix scope from text that must be the start of a valid id.
    pub fn prefix(text: &str) -> Result<Self, String> {
        ProgressId::parse(text).map_err(|e| format!("the prefix must be the start of a valid id: {}", e.0))?;
        Ok(Scope::Prefix(text.to_owned()))
    }

    /// An id scope from text that must be a valid id.
    pub fn id(text: &str) -> Result<Self, String> {
        ProgressId::parse(text).map(Scope::Id).map_err(|e| e.0)
    }
}

/// What a verified token grants: its scope, and whether it may also ask
/// for the jobs in it to be cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// The ids it reads.
    pub scope: Scope,
    /// The `cancel` claim: it may call `POST /progress/{id}/cancel` for
    /// those ids.
    pub cancel: bool,
}

impl Rights {
    /// Reads of `scope`, nothing more.
    pub fn read(scope: Scope) -> Self {
        Self { scope, cancel: false }
    }
}

/// The claims of a scoped token. Unknown claims (`iat`, `iss`, …) are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// May request cancellation of the ids in scope (a boolean; absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    cancel: bool,
}

/// Why a presented token is refused. The text names no secret and no part
/// of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `exp` has passed.
    Expired,
    /// `nbf` has not come yet.
    NotYetValid,
    /// The header names a `kid` no configured key has.
    UnknownKey,
    /// No configured key made this signature.
    BadSignature,
    /// `alg` is not HS256 (`none` included).
    Algorithm,
    /// Not a JWT, or its claims are not exactly one valid scope and an `exp`.
    Malformed,
}

impl Invalid {
    /// What to tell the client.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Expired => "the token has expired",
            Invalid::NotYetValid => "the token is not valid yet (nbf is in the future)",
            Invalid::UnknownKey => "the token's kid names no signing key of this service",
            Invalid::BadSignature => "the token's signature does not verify",
            Invalid::Algorithm => "the token must be signed with HS256",
            Invalid::Malformed => {
                "the token is not a JWT with exp and exactly one scope claim (sub: a job id, or prefix), \
                 and cancel (when present) a boolean"
            }
        }
    }
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The keys of `PROGRESS_SIGNING_KEYS`. Its `Debug` shows only the key ids.
pub struct SigningKeys {
    keys: Vec<Key>,
    validation: Validation,
    /// Tokens that verified, with their scope and `exp`: a page polls with
    /// the same token again and again, and a remembered token costs a hash
    /// and a lookup instead of base64, JSON and HMAC. Keyed by the whole
    /// token, so only the very token that verified is found; only `exp` is
    /// checked again (an `nbf` it passed stays passed). The keys are fixed
    /// for the life of the process, so a remembered token stays valid.
    verified: DashMap<Box<[u8]>, (Arc<Rights>, u64), foldhash::quality::RandomState>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys").field("kids", &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>()).finish()
    }
}

/// Splits `kid:secret` entries; the reason names the entry by its position only.
pub fn parse_entries(entries: &[String]) -> Result<Vec<(&str, &str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(entries.len());
    for (n, entry) in entries.iter().enumerate() {
        let position = n + 1;
        let Some((kid, secret)) = entry.split_once(':') else {
            return Err(format!("entry {position} is not kid:secret"));
        };
        let kid = kid.trim();
        if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("entry {position}: the kid must be letters, digits, '.', '_' or '-'"));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "entry {position} (kid {kid}): the secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)"
            ));
        }
        if out.iter().any(|(k, _)| *k == kid) {
            return Err(format!("kid {kid} is given twice"));
        }
        out.push((kid, secret));
    }
    Ok(out)
}

impl SigningKeys {
    /// The keys of `kid:secret` entries, or `None` when there are none.
    pub fn new(entries: &[String]) -> Result<Option<Self>, String> {
        let parsed = parse_entries(entries)?;
        if parsed.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(parsed.len());
        for (kid, secret) in parsed {
            let encoding = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("kid {kid}: {e}"))?;
            let decoding = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("kid {kid}: {e}"))?;
            keys.push(Key { kid: kid.to_owned(), encoding, decoding });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Ok(Some(Self { keys, validation, verified: DashMap::default() }))
    }

    /// A read token for `scope` that expires `ttl_seconds` after `now`
    /// (seconds since the epoch), signed with the first key; and its `exp`.
    pub fn mint(&self, scope: &Scope, ttl_seconds: u64, now: u64) -> Result<(String, u64), String> {
        self.mint_rights(&Rights::read(scope.clone()), ttl_seconds, now)
    }

    /// [`SigningKeys::mint`] for `rights`: with `cancel`, the token carries
    /// the claim `"cancel": true`.
    pub fn mint_rights(&self, rights: &Rights, ttl_seconds: u64, now: u64) -> Result<(String, u64), String> {
        let first = &self.keys[0];
        let exp = now.saturating_add(ttl_seconds);
        let (sub, prefix) = match &rights.scope {
            Scope::Id(id) => (Some(id.as_str().to_owned()), None),
            Scope::Prefix(p) => (None, Some(p.clone())),
        };
        let claims = Claims { sub, prefix, exp, nbf: None, iat: Some(now), cancel: rights.cancel };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(first.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &first.encoding).map_err(|e| e.to_string())?;
        Ok((token, exp))
    }

    /// The scope of a valid token: HS256 under the key its `kid` names (or,
    /// without `kid`, any configured key), `exp` not passed, `nbf` (when
    /// present) reached, and exactly one valid scope claim.
    pub fn verify(&self, token: &str) -> Result<Scope, Invalid> {
        self.verify_rights(token).map(|rights| rights.scope)
    }

    /// [`SigningKeys::verify`], with the `cancel` claim.
    pub fn verify_rights(&self, token: &str) -> Result<Rights, Invalid> {
        self.verify_uncached(token).map(|(rights, _)| rights)
    }

    /// [`SigningKeys::verify`], answered from the tokens that verified before
    /// when `token` is one of them (and has not expired since).
    pub fn verify_cached(&self, token: &str) -> Result<Arc<Rights>, Invalid> {
        let now = now_seconds();
        if let Some(entry) = self.verified.get(token.as_bytes()) {
            let (scope, exp) = entry.value();
            if *exp >= now.saturating_sub(LEEWAY_SECONDS) {
                return Ok(scope.clone());
            }
            drop(entry);
            self.verified.remove(token.as_bytes());
            return Err(Invalid::Expired);
        }
        let (scope, exp) = self.verify_uncached(token)?;
        let scope = Arc::new(scope);
        if self.verified.len() >= CACHED_TOKENS {
            self.verified.retain(|_, (_, exp)| *exp >= now.saturating_sub(LEEWAY_SECONDS));
            if self.verified.len() >= CACHED_TOKENS {
                self.verified.clear();
            }
        }
        self.verified.insert(token.as_bytes().into(), (scope.clone(), exp));
        Ok(scope)
    }

    /// Tokens remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.verified.len()
    }

    fn verify_uncached(&self, token: &str) -> Result<(Rights, u64), Invalid> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| classify(&e))?;
        if header.alg != Algorithm::HS256 {
            return Err(Invalid::Algorithm);
        }
        let claims = match header.kid.as_deref() {
            Some(kid) => {
                let key = self.keys.iter().find(|k| k.kid == kid).ok_or(Invalid::UnknownKey)?;
                self.decode(token, key)?
            }
            None => {
                let mut last = Invalid::BadSignature;
                let found = self.keys.iter().find_map(|key| match self.decode(token, key) {
                    Ok(claims) => Some(claims),
                    Err(e) => {
                        last = e;
                        None
                    }
                });
                found.ok_or(last)?
            }
        };
        let scope = match (claims.sub, claims.prefix) {
            (Some(sub), None) => Scope::id(&sub).map_err(|_| Invalid::Malformed)?,
            (None, Some(prefix)) => Scope::prefix(&prefix).map_err(|_| Invalid::Malformed)?,
            _ => return Err(Invalid::Malformed),
        };
        Ok((Rights { scope, cancel: claims.cancel }, claims.exp))
    }

    fn decode(&self, token: &str, key: &Key) -> Result<Claims, Invalid> {
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| classify(&e))
    }
}

fn classify(e: &jsonwebtoken::errors::Error) -> Invalid {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => Invalid::Expired,
        ErrorKind::ImmatureSignature => Invalid::NotYetValid,
        ErrorKind::InvalidSignature => Invalid::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Invalid::Algorithm,
        _ => Invalid::Malformed,
    }
}

/// Whether `token` has the shape of a JWT (`eyJ…` in three base64url parts),
/// so that a static token is never parsed as one.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.starts_with(b"eyJ")
        && token.iter().filter(|&&b| b == b'.').count() == 2
        && token.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `progressd token` arguments: `--id ID` or `--prefix PREFIX`, `--ttl
/// SECONDS` (default 900, at most `max_ttl_seconds`), and `--cancel` (the
/// token may also request cancellation). `--name=value` works too.
pub fn parse_command(args: &[String], max_ttl_seconds: u64) -> Result<(Rights, u64), String> {
    let mut scope = None;
    let mut ttl = None;
    let mut cancel = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next().cloned()).ok_or(format!("{name} needs a value"));
        match name {
            "--id" | "--prefix" if scope.is_some() => return Err("give one of --id and --prefix, once".into()),
            "--id" => scope = Some(Scope::id(&value()?).map_err(|e| format!("--id: {e}"))?),
            "--prefix" => scope = Some(Scope::prefix(&value()?).map_err(|e| format!("--prefix: {e}"))?),
            "--cancel" if inline.is_none() => cancel = true,
            "--cancel" => return Err("--cancel takes no value".into()),
            "--ttl" => {
                let text = value()?;
                let seconds = text.parse::<u64>().ok().filter(|n| (1..=max_ttl_seconds).contains(n));
                ttl = Some(seconds.ok_or(format!(
                    "--ttl must be a whole number of seconds from 1 to {max_ttl_seconds} (PROGRESS_MAX_TOKEN_TTL_SECONDS), not {text:?}"
                ))?);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: progressd token (--id ID | --prefix PREFIX) [--ttl SECONDS] [--cancel]"
                ));
            }
        }
    }
    let scope = scope.ok_or("give --id ID (one job) or --prefix PREFIX (every job whose id starts with it)")?;
    Ok((Rights { scope, cancel }, ttl.unwrap_or(DEFAULT_TTL_SECONDS.min(max_ttl_seconds))))
}

/// Seconds since the epoch now.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
