use super::*;
use serde_json::{Value, json};

const OLD: &str = "old:0123456789abcdef0123456789abcdef-old";
const NEW: &str = "new:0123456789abcdef0123456789abcdef-new";

fn keys(entries: &[&str]) -> SigningKeys {
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    SigningKeys::new(&entries).unwrap().unwrap()
}

/// base64url without padding, as JWTs use it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with any header and claims, signed HS256 with `secret`.
fn signed(header: &Value, claims: &Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn secret(entry: &str) -> &str {
    entry.split_once(':').unwrap().1
}

fn later() -> u64 {
    now_seconds() + 600
}

#[test]
fn a_minted_token_verifies_to_its_scope() {
    let k = keys(&[NEW, OLD]);
    let (token, exp) = k.mint(&Scope::id("book-42").unwrap(), 900, 1_000).unwrap();
    assert_eq!(exp, 1_900);
    assert!(looks_like_jwt(token.as_bytes()), "{token}");
    // Minted in the past: expired now.
    assert_eq!(k.verify(&token), Err(Invalid::Expired));
    let (token, _) = k.mint(&Scope::prefix("user-7:").unwrap(), 900, now_seconds()).unwrap();
    assert_eq!(k.verify(&token), Ok(Scope::Prefix("user-7:".into())));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("new"), "the first key signs");
}

#[test]
fn rotation_old_keys_verify_while_listed() {
    let by_old = signed(&json!({"kid": "old"}), &json!({"sub": "a", "exp": later()}), secret(OLD));
    assert_eq!(keys(&[NEW, OLD]).verify(&by_old), Ok(Scope::Id(ProgressId::parse("a").unwrap())));
    assert_eq!(keys(&[NEW]).verify(&by_old), Err(Invalid::UnknownKey));
    // Without kid: tried against each key.
    let no_kid = signed(&json!({}), &json!({"sub": "a", "exp": later()}), secret(OLD));
    assert!(keys(&[NEW, OLD]).verify(&no_kid).is_ok());
    assert_eq!(keys(&[NEW]).verify(&no_kid), Err(Invalid::BadSignature));
}

#[test]
fn forged_signatures_and_algorithms_are_refused() {
    let k = keys(&[NEW]);
    let forged =
        signed(&json!({"kid": "new"}), &json!({"sub": "a", "exp": later()}), "another-secret-of-32-bytes-or-more!!");
    assert_eq!(k.verify(&forged), Err(Invalid::BadSignature));
    // A valid token with its payload swapped for a wider scope.
    let good = signed(&json!({"kid": "new"}), &json!({"sub": "a", "exp": later()}), secret(NEW));
    let parts: Vec<&str> = good.split('.').collect();
    let wider = b64url(json!({"prefix": "", "exp": later()}).to_string().as_bytes());
    assert_eq!(k.verify(&format!("{}.{wider}.{}", parts[0], parts[2])), Err(Invalid::BadSignature));
    // alg: none, with and without a signature part.
    let none = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(json!({"sub": "a", "exp": later()}).to_string().as_bytes());
    for token in [format!("{none}.{claims}."), format!("{none}.{claims}.{}", parts[2])] {
        assert!(matches!(k.verify(&token), Err(Invalid::Algorithm | Invalid::Malformed)), "{token}");
    }
    // Another HMAC algorithm under the right secret.
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "a", "exp": later()}),
        &EncodingKey::from_secret(secret(NEW).as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(k.verify(&hs512), Err(Invalid::Algorithm));
}

#[test]
fn time_claims() {
    let k = keys(&[NEW]);
    let now = now_seconds();
    let sign = |claims: Value| signed(&json!({"kid": "new"}), &claims, secret(NEW));
    assert_eq!(k.verify(&sign(json!({"sub": "a", "exp": now - 60}))), Err(Invalid::Expired));
    assert_eq!(k.verify(&sign(json!({"sub": "a"}))), Err(Invalid::Malformed), "exp is required");
    assert_eq!(k.verify(&sign(json!({"sub": "a", "exp": now + 600, "nbf": now + 300}))), Err(Invalid::NotYetValid));
    assert!(k.verify(&sign(json!({"sub": "a", "exp": now + 600, "nbf": now - 1}))).is_ok());
    assert!(k.verify(&sign(json!({"sub": "a", "exp": now + 600, "iat": now, "iss": "app"}))).is_ok());
}

#[test]
fn exactly_one_valid_scope() {
    let k = keys(&[NEW]);
    let sign = |claims: Value| signed(&json!({"kid": "new"}), &claims, secret(NEW));
    let exp = later();
    for claims in [
        json!({"exp": exp}),
        json!({"sub": "a", "prefix": "a", "exp": exp}),
        json!({"sub": "a b", "exp": exp}),
        json!({"sub": "", "exp": exp}),
        json!({"prefix": "", "exp": exp}),
        json!({"prefix": "a/", "exp": exp}),
        json!({"sub": 7, "exp": exp}),
        json!({"sub": "a", "exp": exp, "cancel": "yes"}),
        json!({"sub": "a", "exp": exp, "cancel": 1}),
    ] {
        assert_eq!(k.verify(&sign(claims.clone())), Err(Invalid::Malformed), "{claims}");
    }
    for junk in ["", "a.b.c", "eyJ.eyJ.x", "not a token"] {
        assert!(k.verify(junk).is_err(), "{junk}");
    }
}

#[test]
fn the_cancel_claim_is_minted_and_verified() {
    let k = keys(&[NEW]);
    let now = now_seconds();
    let rights = Rights { scope: Scope::id("book-42").unwrap(), cancel: true };
    let (token, _) = k.mint_rights(&rights, 60, now).unwrap();
    assert_eq!(k.verify_rights(&token), Ok(rights.clone()));
    assert_eq!(*k.verify_cached(&token).unwrap(), rights);
    // A plain read token carries no claim; a claim of false is none.
    let (plain, _) = k.mint(&Scope::prefix("user-7:").unwrap(), 60, now).unwrap();
    assert_eq!(k.verify_rights(&plain), Ok(Rights::read(Scope::prefix("user-7:").unwrap())));
    let sign = |claims: Value| signed(&json!({"kid": "new"}), &claims, secret(NEW));
    let declined = sign(json!({"sub": "a", "exp": now + 60, "cancel": false}));
    assert_eq!(k.verify_rights(&declined), Ok(Rights::read(Scope::id("a").unwrap())));
    // From an app's backend, any JWT library.
    let granted = sign(json!({"prefix": "user-7:", "exp": now + 60, "cancel": true}));
    assert_eq!(k.verify_rights(&granted).map(|r| r.cancel), Ok(true));
}

#[test]
fn scopes_cover_ids() {
    let id = Scope::id("book-4").unwrap();
    assert!(id.covers("book-4"));
    assert!(!id.covers("book-42") && !id.covers("book-") && !id.covers("book-4 "));
    let prefix = Scope::prefix("user-7:").unwrap();
    assert!(prefix.covers("user-7:") && prefix.covers("user-7:job-1"));
    assert!(!prefix.covers("user-7") && !prefix.covers("user-70:job") && !prefix.covers("user-"));
}

#[test]
fn entries_are_checked() {
    let long = "x".repeat(MIN_SECRET_BYTES);
    assert!(SigningKeys::new(&[]).unwrap().is_none());
    for bad in [
        vec!["nokid".to_owned()],
        vec![format!(":{long}")],
        vec!["k:short".into()],
        vec![format!("k:{long}"), format!("k:{long}")],
    ] {
        let e = SigningKeys::new(&bad).unwrap_err();
        assert!(!e.contains(&long), "the reason names no secret: {e}");
    }
    // A secret may itself hold a colon.
    let k = SigningKeys::new(&[format!("k:{long}:more")]).unwrap().unwrap();
    assert!(format!("{k:?}").contains("\"k\"") && !format!("{k:?}").contains(&long));
}

#[test]
fn the_jwt_shape() {
    assert!(looks_like_jwt(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig-_"));
    for not in [&b"read-token"[..], b"eyJ.only-one", b"eyJ.a.b.c", b"eyJ a.b.c", b"xeyJ.a.b"] {
        assert!(!looks_like_jwt(not), "{:?}", String::from_utf8_lossy(not));
    }
}

#[test]
fn the_command_line() {
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parse_command(&args(&["--id", "book-42", "--ttl", "3600"]), 7200),
        Ok((Rights::read(Scope::id("book-42").unwrap()), 3600))
    );
    assert_eq!(
        parse_command(&args(&["--prefix=user-7:"]), 7200),
        Ok((Rights::read(Scope::prefix("user-7:").unwrap()), 900))
    );
    assert_eq!(parse_command(&args(&["--id", "a"]), 60), Ok((Rights::read(Scope::id("a").unwrap()), 60)));
    assert_eq!(
        parse_command(&args(&["--cancel", "--id", "a"]), 60),
        Ok((Rights { scope: Scope::id("a").unwrap(), cancel: true }, 60))
    );
    for bad in [
        &["--id"][..],
        &[],
        &["--id", "a", "--prefix", "b"],
        &["--id", "a b"],
        &["--id", "a", "--ttl", "7201"],
        &["--id", "a", "--ttl", "0"],
        &["--id", "a", "--ttl", "soon"],
        &["--sub", "a"],
        &["--id", "a", "--cancel=true"],
    ] {
        assert!(parse_command(&args(bad), 7200).is_err(), "{bad:?}");
    }
}

#[test]
fn verified_tokens_are_remembered_until_they_expire() {
    let k = keys(&[NEW]);
    let now = now_seconds();
    let sign = |claims: Value| signed(&json!({"kid": "new"}), &claims, secret(NEW));
    let token = sign(json!({"sub": "a", "exp": now + 600}));
    assert_eq!(k.verify_cached(&token).unwrap().scope, Scope::id("a").unwrap());
    assert_eq!(k.verify_cached(&token).unwrap().scope, Scope::id("a").unwrap(), "from the cache");
    assert_eq!(k.remembered(), 1);
    // Refusals are not remembered; a token one byte off is not the remembered one.
    let mut tampered = token.clone();
    tampered.push('x');
    assert!(k.verify_cached(&tampered).is_err());
    assert_eq!(k.remembered(), 1);
    // A remembered token that has expired since is refused and forgotten.
    let short = sign(json!({"sub": "a", "exp": now}));
    assert!(k.verify_cached(&short).is_ok(), "within the leeway");
    k.verified.alter(short.as_bytes(), |_, (scope, _)| (scope, now - LEEWAY_SECONDS - 1));
    assert_eq!(k.verify_cached(&short), Err(Invalid::Expired));
    assert_eq!(k.remembered(), 1);
    // Bounded.
    for n in 0..(CACHED_TOKENS + 10) {
        k.verify_cached(&sign(json!({"sub": format!("id-{n}"), "exp": now + 600}))).unwrap();
    }
    assert!(k.remembered() <= CACHED_TOKENS, "{}", k.remembered());
}
