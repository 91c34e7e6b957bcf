//! The access classes' decisions, one request at a time (no router).

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
    for access in [Access::Public, Access::Read, Access::Write, Access::Cancel] {
        assert_eq!(decide(&t, access, None), "ok", "{access:?}");
        assert_eq!(decide(&t, access, Some("Bearer anything")), "ok", "{access:?}");
        assert_eq!(decide(&t, access, Some("Basic not-a-bearer")), "ok", "{access:?}: not even looked at");
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
        (Access::Cancel, None, "unauthorized"),
        (Access::Cancel, Some("Bearer r1"), "unauthorized+invalid_token"),
        (Access::Cancel, Some("Bearer w1"), "ok"),
        (Access::Cancel, Some("Bearer adm"), "ok"),
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

fn jwt_cancel(scope: Scope) -> String {
    let keys = SigningKeys::new(&[KEY.to_owned()]).unwrap().unwrap();
    keys.mint_rights(&Rights { scope, cancel: true }, 60, crate::tokens::now_seconds()).unwrap().0
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
        for access in [Access::Write, Access::Admin, Access::Cancel] {
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
    assert_eq!(decide_query(&t, Access::Read, "access_token=r1"), "unauthorized+invalid_token", "static: header only");
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

#[test]
fn a_scoped_token_with_the_cancel_claim_may_cancel_and_still_not_write() {
    for t in [signing(tokens(&["r1"], &["w1"], Some("adm"))), signing(tokens(&[], &[], None))] {
        let id = format!("Bearer {}", jwt_cancel(Scope::id("book-42").unwrap()));
        let prefix = format!("Bearer {}", jwt_cancel(Scope::prefix("user-7:").unwrap()));
        for token in [&id, &prefix] {
            assert_eq!(decide(&t, Access::Cancel, Some(token)), "scoped", "{t:?}");
            assert_eq!(decide(&t, Access::Read, Some(token)), "scoped", "it still reads");
            assert_eq!(decide(&t, Access::Write, Some(token)), "forbidden_scope", "the claim is not a write");
            assert_eq!(decide(&t, Access::Admin, Some(token)), "forbidden_scope");
        }
        // Without the claim: 403, with a detail that says what is missing.
        let plain = format!("Bearer {}", jwt(Scope::id("book-42").unwrap()));
        match t.authorize(Access::Cancel, &with(Some(&plain)), None) {
            Err(Error::ForbiddenScope(detail)) => assert!(detail.contains("\"cancel\": true"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}

/// The guard checks the path's id against the scope for cancel requests
/// as for reads: a token may cancel its own job and nothing else.
#[tokio::test]
async fn a_cancel_request_must_name_an_id_in_the_scope() {
    let cases = [
        (Scope::id("book-42").unwrap(), "/progress/book-42/cancel", true),
        (Scope::id("book-42").unwrap(), "/progress/book-43/cancel", false),
        (Scope::prefix("user-7:").unwrap(), "/progress/user-7:a/cancel", true),
        (Scope::prefix("user-7:").unwrap(), "/progress/user-8:a/cancel", false),
    ];
    for (scope, path, allowed) in cases {
        // The router puts the path's parameters into the request, as the app's does.
        let rights = Arc::new(Rights { scope, cancel: true });
        let router = axum::Router::new().route(
            "/progress/{id}/cancel",
            axum::routing::post(move |req: Request| async move {
                in_scope(Access::Cancel, rights, req).is_ok().to_string()
            }),
        );
        let request = Request::post(path).body(axum::body::Body::empty()).expect("a request");
        let answer = tower::ServiceExt::oneshot(router, request).await.unwrap();
        let body = axum::body::to_bytes(answer.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], allowed.to_string().as_bytes(), "{path}");
    }
}

#[test]
fn describe_says_what_each_token_may_do() {
    let t = signing(tokens(&["r1"], &["w1"], Some("adm")));
    let d = |auth: Option<&str>| t.describe(&with(auth), None);
    let nothing = d(None);
    assert_eq!(nothing.token, TokenKind::None);
    assert!(!nothing.read && !nothing.write && !nothing.cancel && !nothing.admin && !nothing.list);
    let reader = d(Some("Bearer r1"));
    assert_eq!(
        (reader.token, reader.read, reader.list, reader.write, reader.cancel),
        (TokenKind::Static, true, true, false, false)
    );
    let writer = d(Some("Bearer w1"));
    assert_eq!((writer.read, writer.list, writer.write, writer.cancel, writer.admin), (true, false, true, true, false));
    let admin = d(Some("Bearer adm"));
    assert!(admin.read && admin.list && admin.write && admin.cancel && admin.admin);
    assert_eq!(d(Some("Bearer nope")).token, TokenKind::Unknown);
    assert_eq!(d(Some("Basic nope")).token, TokenKind::Unknown);
    let plain = d(Some(&format!("Bearer {}", jwt(Scope::id("a").unwrap()))));
    assert_eq!((plain.token, plain.read, plain.cancel, plain.write), (TokenKind::Scoped, true, false, false));
    assert_eq!(plain.scope, Some(Scope::id("a").unwrap()));
    let canceller =
        t.describe(&HeaderMap::new(), Some(&format!("access_token={}", jwt_cancel(Scope::prefix("u:").unwrap()))));
    assert_eq!((canceller.token, canceller.list, canceller.cancel), (TokenKind::Scoped, true, true));
    let bad = d(Some("Bearer eyJa.eyJb.c"));
    assert_eq!((bad.token, bad.reason.is_some()), (TokenKind::Invalid, true));
    // A static token in the query is not taken (as on every route).
    assert_eq!(t.describe(&HeaderMap::new(), Some("access_token=w1")).token, TokenKind::Unknown);
    // Without tokens, everything but admin is open to anyone.
    let open = tokens(&[], &[], None).describe(&with(None), None);
    assert!(open.read && open.list && open.write && open.cancel && !open.admin);
}
