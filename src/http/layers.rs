//! Request ids, the compression layer, the request timeout's settings and
//! `?wait=`: the parts of the edge (`edge.rs`, which calls them in order)
//! and of a route's own layers that are neither CORS (`cors.rs`) nor the
//! request span (`trace.rs`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};

use crate::settings::Settings;

/// The request-id header: taken from the request when present, else a new
/// UUID ([`read_edge_headers`]).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// New request ids ([`read_edge_headers`]): UUIDs in RFC 9562's version 8 (vendor-specific) layout,
/// a random per-process prefix and a counter. The first 64 bits (less the
/// version nibble: 60 random bits) are drawn once per process from the
/// standard library's OS-seeded `RandomState`; the last 64 are the variant
/// bits and a process-wide 62-bit counter (taken by each thread in blocks:
/// [`next_request_number`]). Unique within a process by the counter,
/// across processes by the prefix, and no `getrandom` system call per
/// request, which `MakeRequestUuid` (a random v4 UUID) made (issue 23).
/// The prefix: `xxxxxxxx-xxxx-8xxx-`, lowercase hex.
fn request_id_prefix() -> &'static [u8; 19] {
    static PREFIX: OnceLock<[u8; 19]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        let random = hasher.finish();
        let high = (random & !0xf000) | 0x8000; // version 8
        let mut prefix = [b'-'; 19];
        hex_into(&mut prefix[0..8], high >> 32);
        hex_into(&mut prefix[9..13], (high >> 16) & 0xffff);
        hex_into(&mut prefix[14..18], high & 0xffff);
        prefix
    })
}

/// Writes the low `out.len()` hex digits of `value` into `out`.
fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The request id of the `n`th request: the prefix, the variant and `n`.
fn request_id(n: u64) -> [u8; 36] {
    let low = (n & (u64::MAX >> 2)) | (0b10 << 62); // RFC 9562 variant
    let mut id = [b'-'; 36];
    id[..19].copy_from_slice(request_id_prefix());
    hex_into(&mut id[19..23], low >> 48);
    hex_into(&mut id[24..36], low & 0xffff_ffff_ffff);
    id
}

/// A new request id, [`request_id`] of the next number.
fn new_request_id() -> HeaderValue {
    let id = request_id(next_request_number());
    HeaderValue::from_bytes(&id).expect("hex digits and dashes are a header value")
}

/// Request numbers handed to a thread at a time ([`next_request_number`]).
const NUMBERS_PER_THREAD: u64 = 1024;

/// The next request number of this thread: each thread takes a block of
/// [`NUMBERS_PER_THREAD`] from the process-wide counter and counts through
/// it. Unique in the process as the counter alone was, but the counter's
/// cache line is written once per block, not moved between the cores on
/// every request (issue 23).
fn next_request_number() -> u64 {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// The next number of this thread's block, and the end of the block.
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(NUMBERS_PER_THREAD, Ordering::Relaxed);
            end = next + NUMBERS_PER_THREAD;
        }
        block.set((next + 1, end));
        next
    })
}

/// What the edge reads of a request's headers, in one pass over them:
/// it marks `Authorization` sensitive, so that no `Debug` of the headers
/// shows a token; it hands the first `Origin` to `origin` (CORS); and it
/// returns the request id: the request's own `X-Request-Id`, else a new
/// one ([`new_request_id`]), with what `origin` made, if there was one.
///
/// The id goes to the response and to the request's span
/// (`trace::request_context`), not onto the request: that would cost its
/// header map an insert, and often a resize (issue 23). One pass over the
/// few headers a request has replaced a lookup by name for each of the
/// three (a hash and a probe each): about 70 instructions of a `/healthz`,
/// 230 with a token and an `Origin` (issue 23, eleventh round).
pub(crate) fn read_edge_headers<T>(
    request: &mut Request,
    mut origin: impl FnMut(&HeaderValue) -> T,
) -> (HeaderValue, Option<T>) {
    let mut id = None;
    let mut from_origin = None;
    for (name, value) in request.headers_mut().iter_mut() {
        if name == http::header::AUTHORIZATION {
            value.set_sensitive(true);
        } else if name == http::header::ORIGIN {
            if from_origin.is_none() {
                from_origin = Some(origin(value));
            }
        } else if name == REQUEST_ID && id.is_none() {
            id = Some(copy_of(value));
        }
    }
    (id.unwrap_or_else(new_request_id), from_origin)
}

/// A copy of the request's id: the request's value is a slice of hyper's
/// read buffer, and a response holding it kept that buffer shared when the
/// connection read the next request, so hyper copied the buffer into a new
/// one (issue 23: about 300 instructions more than this copy, see `cors`).
fn copy_of(id: &HeaderValue) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(id.as_bytes())).unwrap_or_else(|_| id.clone())
}

/// Puts the request id on `response`, unless the response has one.
pub(crate) fn set_request_id(response: &mut Response, id: HeaderValue) {
    if let http::header::Entry::Vacant(entry) = response.headers_mut().entry(REQUEST_ID) {
        entry.insert(id);
    }
}

/// Longest `?wait=` a long-poll may ask for; the timeout grows by it.
pub(crate) const MAX_WAIT_SECONDS: u64 = 60;

/// Responses smaller than this are sent as they are: gzip would save
/// little and cost a buffer. A record is well above it.
pub(crate) const COMPRESS_ABOVE_BYTES: u64 = 256;

/// What the outer layers are configured with.
#[derive(Debug, Clone)]
pub struct LayerSettings {
    /// Origins browsers may call from (`*`: any); empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Longest a request may take before a 503 `request_timeout`.
    pub request_timeout: Duration,
}

impl LayerSettings {
    /// `PROGRESS_CORS_ORIGINS` and `PROGRESS_REQUEST_TIMEOUT_SECONDS`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            cors_origins: settings.cors_origins.clone(),
            request_timeout: Duration::from_secs(settings.request_timeout_seconds),
        }
    }
}

/// gzip for responses of 256 bytes and more, never for event streams
/// (each event must reach the browser when it is written, not when a
/// compression block fills).
pub(crate) fn compression() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new().gzip(true).compress_when(SizeAbove::new(COMPRESS_ABOVE_BYTES).and(NotForContentType::SSE))
}

/// The `wait` query parameter, capped at [`MAX_WAIT_SECONDS`]; 0 when absent or unreadable.
pub(crate) fn long_poll_seconds(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |w| w.min(MAX_WAIT_SECONDS))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::super::edge::tests::edge;
    use super::*;
    use axum::body::Body;
    use tower::{Layer, ServiceExt};

    #[test]
    fn a_clients_request_id_is_kept_as_a_copy_not_the_requests_bytes() {
        // The request's header points into hyper's read buffer: a response
        // holding it keeps that buffer shared while the next request is read.
        let mut request = Request::builder().uri("/").header(&REQUEST_ID, "client-42").body(Body::empty()).unwrap();
        let (id, _) = read_edge_headers(&mut request, |_| ());
        assert_eq!(id, "client-42");
        assert_ne!(id.as_bytes().as_ptr(), request.headers()[&REQUEST_ID].as_bytes().as_ptr());
    }

    /// The one pass finds what three lookups by name found: the first of
    /// each header (wherever it stands among the others, whatever its
    /// spelling's case), and every `Authorization` marked sensitive.
    #[test]
    fn one_pass_over_the_headers_finds_the_id_the_origin_and_the_tokens() {
        let mut request = Request::builder()
            .uri("/")
            .header("Host", "example")
            .header("Authorization", "Bearer one")
            .header("X-Request-Id", "first")
            .header("Origin", "https://a.example")
            .header("accept", "*/*")
            .header("x-request-id", "second")
            .header("origin", "https://b.example")
            .header("authorization", "Bearer two")
            .body(Body::empty())
            .unwrap();
        let mut origins = Vec::new();
        let (id, made) = read_edge_headers(&mut request, |origin| {
            origins.push(origin.clone());
            origin.len()
        });
        assert_eq!(id, "first");
        assert_eq!(origins, ["https://a.example"], "the first origin, once");
        assert_eq!(made, Some("https://a.example".len()));
        let tokens = request.headers().get_all(http::header::AUTHORIZATION);
        assert_eq!(tokens.iter().count(), 2);
        assert!(tokens.iter().all(HeaderValue::is_sensitive), "every token is kept out of logs");
        let debug = format!("{:?}", request.headers());
        assert!(!debug.contains("Bearer"), "{debug}");

        let mut bare = Request::builder().uri("/").header("host", "example").body(Body::empty()).unwrap();
        let (id, made) = read_edge_headers(&mut bare, |_| unreachable!("there is no origin"));
        assert_eq!(made, None::<()>);
        assert_eq!(id.len(), 36, "a new id: {id:?}");
    }

    #[test]
    fn request_ids_are_version_8_uuids_that_differ() {
        let (a, b) = (request_id(0), request_id(1));
        let (a, b) = (std::str::from_utf8(&a).unwrap(), std::str::from_utf8(&b).unwrap());
        assert_ne!(a, b);
        assert_eq!(a[..19], b[..19], "one prefix per process");
        assert_eq!(a.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{a}");
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert_eq!(&a[19..], "8000-000000000000");
        assert_eq!(std::str::from_utf8(&request_id(u64::MAX >> 2)).unwrap()[19..], *"bfff-ffffffffffff");
        assert_eq!(request_id(1 << 62), request_id(0), "the counter has 62 bits");
    }

    #[test]
    fn request_numbers_drawn_on_many_threads_are_unique() {
        let per_thread = 3 * NUMBERS_PER_THREAD as usize + 7;
        let drawn: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(move || (0..per_thread).map(|_| next_request_number()).collect::<Vec<_>>()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for numbers in &drawn {
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "a thread's numbers rise");
        }
        let mut all: Vec<u64> = drawn.into_iter().flatten().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no number is drawn twice");
    }

    /// The request id the handler saw (if any) and the response's, at `level`.
    async fn request_ids_at(level: &str) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(std::io::sink)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen_inside = seen.clone();
        let inner = tower::service_fn(move |request: Request| {
            let authorization = request.headers().get(axum::http::header::AUTHORIZATION).unwrap();
            assert!(authorization.is_sensitive());
            assert_eq!(format!("{authorization:?}"), "Sensitive", "no Debug shows the token");
            *seen_inside.lock().unwrap() = request.headers().get(&REQUEST_ID).cloned();
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let request = Request::get("/").header("authorization", "Bearer secret").body(Body::empty()).unwrap();
        let response = edge(Duration::from_secs(60)).layer(inner).oneshot(request).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, response.headers().get(&REQUEST_ID).cloned())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_id_is_on_the_response_only_with_request_spans_or_without() {
        for level in ["info", "warn"] {
            let (seen, sent) = request_ids_at(level).await;
            assert_eq!(seen, None, "{level}");
            assert!(sent.is_some_and(|id| id.len() == 36), "a UUID at {level}");
        }
    }

    #[test]
    fn wait_is_read_and_capped() {
        assert_eq!(long_poll_seconds(None), 0);
        assert_eq!(long_poll_seconds(Some("a=1&wait=30")), 30);
        assert_eq!(long_poll_seconds(Some("wait=3600")), MAX_WAIT_SECONDS);
        assert_eq!(long_poll_seconds(Some("wait=soon")), 0);
        assert_eq!(long_poll_seconds(Some("nowait=5")), 0);
    }
}
