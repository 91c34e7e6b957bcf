//! `/progress/{id}`: GET, PUT, PATCH, DELETE.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower::Service;

use super::AppState;
use super::extract::{Conditions, JsonBody, JsonText, PathId, parse_json};
use super::gzip::{AcceptsGzip, GZIP_FROM_BYTES, gzip};
use super::layers::MAX_WAIT_SECONDS;
use crate::domain::{ClientFields, ProgressId, StoredRecord, Timestamp};
use crate::error::Error;
use crate::live::Snapshot;
use crate::service::{Preconditions, WriteBody, Written};

/// `GET /progress/{id}`: the record, or 304 when `If-None-Match` names its
/// version; 410 when it was deleted or expired (within the tombstone time),
/// 404 when there is no such record. With `?wait=N` and `If-None-Match`, a
/// 304 is held for up to `N` seconds: the answer is the record as soon as it
/// moves (or 410 when it is deleted or expires meanwhile), else 304 when
/// the time runs out.
///
/// A service of its own, not an axum handler: a read the store answers
/// from memory (the read cache, the embedded store) is answered in `call`,
/// with no future to build, box and poll, and by reference, with no clone
/// of the service (`super::RecordGet`); the rest (a read that waits for
/// Redis or PostgreSQL, a long-poll) runs [`get`] in a boxed future, as
/// axum runs a handler. About 2,000 of a cached GET's 16,500 instructions
/// (callgrind, issue 23).
#[derive(Clone)]
pub(super) struct GetRecord(pub(super) AppState);

impl GetRecord {
    /// The answer to `request`, without taking its body.
    pub(super) fn answer(&self, request: Request) -> GetFuture {
        let (mut parts, _) = request.into_parts();
        let read = match RecordRead::read(&parts) {
            Ok(read) => read,
            Err(e) => return GetFuture::Ready(Some(e.into_response())),
        };
        if read.wait.is_none()
            && let Some(record) = self.0.service.cached(&read.id)
        {
            // Everything is read off the request's headers by now (the
            // layers before this took theirs): the answer's are written
            // into the same map.
            let headers = std::mem::take(&mut parts.headers);
            return GetFuture::Ready(Some(answer(&record, &read, headers)));
        }
        let state = self.0.clone();
        GetFuture::Waiting(Box::pin(async move { get(&state, read).await.into_response() }))
    }
}

impl Service<Request> for GetRecord {
    type Response = Response;
    type Error = Infallible;
    type Future = GetFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> GetFuture {
        self.answer(request)
    }
}

/// The future of [`GetRecord`]'s answer.
pub(super) enum GetFuture {
    /// Answered in `call`; taken when polled.
    Ready(Option<Response>),
    /// A read that waits for a store, or a long-poll.
    Waiting(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for GetFuture {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            GetFuture::Ready(response) => Poll::Ready(Ok(response.take().expect("an answer is polled once"))),
            GetFuture::Waiting(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// What [`GetRecord`] does with a read that waits.
async fn get(state: &AppState, read: RecordRead) -> Result<Response, Error> {
    let record = match read.wait {
        Some(seconds) => changed_within(state, &read.id, &read.conditions, seconds).await?,
        None => state.service.read(&read.id).await?,
    };
    Ok(answer(&record, &read, HeaderMap::new()))
}

/// The record, or 304 when `If-None-Match` names its version; its headers
/// written into `headers` (emptied first: a map that is done with, whose
/// room is reused; see [`record_response_in`]).
fn answer(record: &StoredRecord, read: &RecordRead, headers: HeaderMap) -> Response {
    if read.conditions.unchanged(record) {
        let mut response = response_in(headers, StatusCode::NOT_MODIFIED, Body::empty());
        set_validators(&mut response, record);
        return response;
    }
    record_response_in(headers, StatusCode::OK, record, read.accepts_gzip)
}

/// The record once it no longer matches `If-None-Match`, or as it is when
/// `seconds` have passed (or the service shuts down) without that.
async fn changed_within(
    state: &AppState,
    id: &ProgressId,
    conditions: &Conditions,
    seconds: u64,
) -> Result<StoredRecord, Error> {
    // Subscribed before the read, so a change just after it is not missed.
    let mut watch = state.service.live().watch(id);
    let mut record = state.service.read(id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while conditions.unchanged(&record) {
        let seen = Some(record.recency());
        match tokio::time::timeout_at(deadline, watch.changed_or_expired(seen, record.meta().x)).await {
            Ok(Some(Snapshot::Present(next))) => record = next,
            Ok(Some(Snapshot::Absent)) => return Err(state.service.absent(id).await),
            // Timed out, or the service is shutting down: nothing moved.
            Ok(Some(Snapshot::Unknown) | None) | Err(_) => break,
        }
    }
    Ok(record)
}

/// What `GET /progress/{id}` reads off the request: the id, the
/// conditions, whether the client takes gzip and `?wait=`, read (and
/// refused) in that order.
struct RecordRead {
    id: ProgressId,
    conditions: Conditions,
    accepts_gzip: bool,
    /// `?wait=N`, when `If-None-Match` gives it something to wait for.
    wait: Option<u64>,
}

impl RecordRead {
    fn read(parts: &Parts) -> Result<Self, Error> {
        let PathId(id) = PathId::from_path(parts.uri.path())?;
        let conditions = Conditions::from_headers(&parts.headers)?;
        let accepts_gzip = super::gzip::accepts_gzip(&parts.headers);
        let wait = wait_seconds(parts.uri.query())?.filter(|_| conditions.if_none_match.is_some());
        Ok(Self { id, conditions, accepts_gzip, wait })
    }
}

/// `?wait=N`: whole seconds from 0 to 60; other query parameters are
/// ignored (cache busters like `?_=123` are common in browsers).
fn wait_seconds(query: Option<&str>) -> Result<Option<u64>, Error> {
    let mut wait = None;
    for (name, value) in form_urlencoded_pairs(query.unwrap_or("")) {
        if name != "wait" {
            continue;
        }
        if wait.is_some() {
            return Err(Error::InvalidQuery("wait is given more than once".into()));
        }
        let seconds = value.parse::<u64>().ok().filter(|s| *s <= MAX_WAIT_SECONDS).ok_or_else(|| {
            Error::InvalidQuery(format!(
                "wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}, not {value:?}"
            ))
        })?;
        wait = Some(seconds);
    }
    Ok(wait.filter(|s| *s > 0))
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `PUT /progress/{id}`: create (201) or replace (200) the client fields.
pub async fn put(
    State(state): State<AppState>,
    PathId(id): PathId,
    conditions: Conditions,
    AcceptsGzip(accepts_gzip): AcceptsGzip,
    JsonText(text): JsonText,
) -> Result<Response, Error> {
    // Most bodies are read straight into the record's fields; any other
    // (malformed, wrong types, too deep…) takes the general path, which
    // words the error exactly as for every other JSON body.
    let max_depth = state.limits.max_json_depth;
    let fields = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| ClientFields::from_body_fast(t, state.service.max_ttl_seconds(), max_depth));
    let body = match fields {
        Some(fields) => WriteBody::Read { fields, text },
        None => WriteBody::Replace(parse_json(&text, max_depth)?),
    };
    let Written { record, created } = state.service.write(&id, body, &conditions.into()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = record_response(status, &record, accepts_gzip);
    if created && let Ok(location) = HeaderValue::from_str(&format!("/progress/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `PATCH /progress/{id}`: RFC 7386 merge patch of the client fields; 404
/// when there is no record, 410 when it was deleted or expired.
pub async fn patch(
    State(state): State<AppState>,
    PathId(id): PathId,
    conditions: Conditions,
    AcceptsGzip(accepts_gzip): AcceptsGzip,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Written { record, .. } = state.service.write(&id, WriteBody::Merge(body), &conditions.into()).await?;
    Ok(record_response(StatusCode::OK, &record, accepts_gzip))
}

/// `DELETE /progress/{id}`: 204, or 404 when there is no record, 410 when
/// it was deleted or expired already (within the tombstone time: the
/// delete changes nothing, and the tombstone keeps its time); 412 when
/// `If-Match` names another version.
pub async fn delete(
    State(state): State<AppState>,
    PathId(id): PathId,
    conditions: Conditions,
) -> Result<StatusCode, Error> {
    if state.service.delete(&id, conditions.if_match.as_ref()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(state.service.absent(&id).await)
    }
}

/// The record as a JSON response with its validators; gzipped here when
/// the client takes it (see `super::gzip`), so the compression layer
/// leaves it alone.
pub(super) fn record_response(status: StatusCode, record: &StoredRecord, accepts_gzip: bool) -> Response {
    record_response_in(HeaderMap::new(), status, record, accepts_gzip)
}

/// [`record_response`], its headers written into `headers` (see
/// [`response_in`]): the cached GET passes its request's. A new map was
/// room for twelve headers allocated on every GET (and the request's map
/// freed): 120 to 380 instructions, with the build (issue 23).
fn record_response_in(headers: HeaderMap, status: StatusCode, record: &StoredRecord, accepts_gzip: bool) -> Response {
    let now = Timestamp::now().millis();
    let packed = accepts_gzip
        .then(|| record.packed(now, |body| (body.len() >= GZIP_FROM_BYTES).then(|| gzip(body)).flatten()))
        .flatten();
    let gzipped = packed.is_some();
    // Both bodies know their exact length, and no layer of these routes
    // wraps them in one that hides it: `Content-Length` is left to hyper,
    // which writes the number straight into the head (a header in the map
    // cost an allocation, a hash and hyper's check of its value: about 400
    // instructions, issue 23). Through axum's router (`HEAD`), its route
    // sets the header from the same length before it drops the body.
    let body = match packed {
        Some(gzipped) => Body::from(gzipped),
        None => Body::new(Pieces(record.render_parts(now).map(Some))),
    };
    let mut response = response_in(headers, status, body);
    let headers = response.headers_mut();
    // Room for these, the request id and CORS's three at once: the map
    // would otherwise grow (and rehash) past six.
    headers.reserve(12);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if gzipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    set_validators(&mut response, record);
    response
}

/// A response of `status` and `body` whose headers go into `headers`,
/// emptied first: the map of a request whose headers have all been read
/// (the layers before a handler took theirs). hyper keeps each response's
/// map, emptied, to parse the connection's next request into; so one map,
/// with the room it grew to, serves every request and answer of a
/// connection, where a new one for each answer was an allocation (and the
/// request's map freed).
fn response_in(mut headers: HeaderMap, status: StatusCode, body: Body) -> Response {
    headers.clear();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A body sent as the pieces it is in, one data frame each, without
/// joining them: hyper queues both and writes them with the head in one
/// `writev`. A record's JSON is the stored bytes and the `stalled` member
/// (see `StoredRecord::render_parts`), so a response copies nothing.
struct Pieces([Option<Bytes>; 2]);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.iter_mut().find_map(Option::take).map(|piece| Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().flatten().map(|p| p.len() as u64).sum())
    }
}

/// `ETag` is the version; `no-cache` makes browsers revalidate on every poll.
/// `Vary`, since the body depends on `Accept-Encoding`: on a 304 too (RFC
/// 9110 §15.4.5), and the layer adds it only to what it compresses itself.
fn set_validators(response: &mut Response, record: &StoredRecord) {
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Built by hand: `format!` and `HeaderValue::from_str` cost two
    // allocations and the formatting machinery on every response.
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(record.version());
    let mut tag = Vec::with_capacity(digits.len() + 2);
    tag.push(b'"');
    tag.extend_from_slice(digits.as_bytes());
    tag.push(b'"');
    let tag = HeaderValue::from_maybe_shared(bytes::Bytes::from(tag)).expect("digits and quotes are a valid header");
    headers.insert(header::ETAG, tag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

impl From<Conditions> for Preconditions {
    fn from(c: Conditions) -> Self {
        Preconditions { if_match: c.if_match, if_none_match: c.if_none_match }
    }
}
