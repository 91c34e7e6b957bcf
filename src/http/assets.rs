//! Static browser assets embedded in the binary: `/client.js` (the drop-in
//! watch script) and `/dashboard` with its script and style sheet. They hold
//! no data, so they are public; the dashboard asks for a token and sends it
//! on its own API calls.
//!
//! Each answer carries a strong validator (a hash of the file, fixed at
//! compile time), so revalidating costs a 304. The compression layer gzips
//! them like any other response of 256 bytes or more.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file and how it is served.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
    etag: u64,
}

/// 64-bit FNV-1a of the file, at compile time: the `ETag` changes exactly when the file does.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($file:literal, $content_type:expr, $cache_control:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file));
        Asset { body: BODY, content_type: $content_type, cache_control: $cache_control, etag: fnv1a(BODY) }
    }};
}

const JAVASCRIPT: &str = "application/javascript; charset=utf-8";

/// Pages embed it from other origins; five minutes of caching spares them a
/// request per page view and still spreads a new version within minutes.
const CLIENT_JS: Asset = asset!("client.js", JAVASCRIPT, "public, max-age=300");
/// The dashboard's files are revalidated on every load (a 304 when unchanged),
/// so the page, its script and its style sheet never come from different builds.
const DASHBOARD_HTML: Asset = asset!("dashboard.html", "text/html; charset=utf-8", "no-cache");
const DASHBOARD_JS: Asset = asset!("dashboard.js", JAVASCRIPT, "no-cache");
const DASHBOARD_CANCEL_JS: Asset = asset!("dashboard-cancel.js", JAVASCRIPT, "no-cache");
const DASHBOARD_CSS: Asset = asset!("dashboard.css", "text/css; charset=utf-8", "no-cache");

/// The dashboard runs only its own files and talks only to its own origin:
/// no inline script or style, no framing, no form posts elsewhere.
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /client.js`: `progressd.watch(id, onUpdate, options)` for browsers.
pub async fn client_js(headers: HeaderMap) -> Response {
    let mut response = serve(&CLIENT_JS, &headers);
    // Pages of any origin may embed it, also those that isolate themselves (COEP).
    response
        .headers_mut()
        .insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin"));
    response
}

/// `GET /dashboard`: the page; its data comes from the API with the token the user gives it.
pub async fn dashboard(headers: HeaderMap) -> Response {
    let mut response = serve(&DASHBOARD_HTML, &headers);
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DASHBOARD_CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /dashboard/app.js`: the dashboard's script.
pub async fn dashboard_js(headers: HeaderMap) -> Response {
    serve(&DASHBOARD_JS, &headers)
}

/// `GET /dashboard/cancel.js`: the dashboard's Cancel buttons.
pub async fn dashboard_cancel_js(headers: HeaderMap) -> Response {
    serve(&DASHBOARD_CANCEL_JS, &headers)
}

/// `GET /dashboard/app.css`: the dashboard's style sheet.
pub async fn dashboard_css(headers: HeaderMap) -> Response {
    serve(&DASHBOARD_CSS, &headers)
}

/// The file, or a 304 when `If-None-Match` names its tag.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let tag = format!("\"{:016x}\"", asset.etag);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    h.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex digits and quotes are a valid header"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_between_files_and_are_stable() {
        assert_ne!(CLIENT_JS.etag, DASHBOARD_JS.etag);
        assert_ne!(DASHBOARD_JS.etag, DASHBOARD_CANCEL_JS.etag);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn if_none_match_gives_304_with_the_validators() {
        let tag = format!("\"{:016x}\"", CLIENT_JS.etag);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&format!("\"other\", W/{tag}")).unwrap());
        let response = serve(&CLIENT_JS, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], tag.as_str());
        let response = serve(&CLIENT_JS, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], JAVASCRIPT);
    }
}
