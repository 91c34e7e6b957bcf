//! `GET /progress/{id}/events`: the record as Server-Sent Events.
//!
//! ```text
//! retry: 2000
//! id: 7
//! event: progress
//! data: {"id":"job-1","status":"running",…}
//!
//! : heartbeat
//!
//! event: gone
//! data: {"id":"job-1","reason":"deleted","at":"2026-12-06T10:00:00.000Z"}
//! ```
//!
//! The first event is the record as it is now, unless `Last-Event-ID`
//! names that very version (a reconnect that saw it already); then one
//! event per change. Each event carries the whole record, so a client that
//! reconnects never misses the newest state: versions overwritten in between
//! exist nowhere any more. After a terminal status the stream ends; a
//! reconnect that has seen the terminal version gets 204, which tells
//! `EventSource` to stop reconnecting. When the record is deleted or
//! expires, the stream sends `gone` (with `reason`, `deleted` or
//! `expired`, and `at`, while the store keeps its tombstone) and ends; a
//! reconnect then gets 410 (or 404 once the tombstone is gone).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};

use super::AppState;
use super::extract::PathId;
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::error::Error;
use crate::live::{Snapshot, Watch};
use crate::service::ProgressService;

/// How long `EventSource` waits before reconnecting after a dropped stream.
pub(super) const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// `GET /progress/{id}/events`.
pub async fn events(State(state): State<AppState>, PathId(id): PathId, headers: HeaderMap) -> Result<Response, Error> {
    let last_seen = last_event_id(&headers)?;
    // Subscribed before the read, so a change just after it is not missed.
    let watch = state.service.live().watch(&id);
    let record = state.service.read(&id).await?;
    let seen_current = last_seen == Some(record.version());
    if seen_current && record.meta().d {
        // Finished, and the client has the last event: nothing will follow.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let first = (!seen_current).then(|| record.clone());
    let stream = updates(StreamState {
        service: state.service.clone(),
        id,
        watch,
        seen: record.recency(),
        expires_ms: record.meta().x,
        step: first.map_or(Step::Wait, Step::Send),
        first: true,
    });
    Ok(sse_response(stream, state.heartbeat))
}

/// An event stream with its heartbeat comments, unbuffered by proxies.
pub(super) fn sse_response<S>(stream: S, heartbeat: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat")).into_response();
    // nginx and some platform proxies buffer responses unless told not to.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `Last-Event-ID`: a version this client has seen, 1 to 19 digits (every
/// version fits); empty counts as absent. Anything else (also spaces or
/// bytes that are not ASCII) is a 400, as `openapi.yaml` says.
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let bad =
        |text: &str| Error::InvalidHeader(format!("Last-Event-ID must be a version this service sent, not {text:?}"));
    let text = value.to_str().map_err(|_| bad(&String::from_utf8_lossy(value.as_bytes())))?;
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(text));
    }
    text.parse::<u64>().map(Some).map_err(|_| bad(text))
}

enum Step {
    /// Send this record next (the first event, or the reconnect's catch-up).
    Send(StoredRecord),
    /// Wait for the record to move from what was last sent.
    Wait,
    Done,
}

struct StreamState {
    service: ProgressService,
    id: ProgressId,
    watch: Watch,
    /// The last record sent (or the one the client had), and its expiry.
    seen: (i64, u64),
    expires_ms: i64,
    step: Step,
    first: bool,
}

fn updates(state: StreamState) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(state, |mut s| async move {
        loop {
            match std::mem::replace(&mut s.step, Step::Done) {
                Step::Done => return None,
                Step::Send(record) => {
                    let mut event = progress_event(&record);
                    if std::mem::take(&mut s.first) {
                        event = event.retry(RECONNECT_AFTER);
                    }
                    (s.seen, s.expires_ms) = (record.recency(), record.meta().x);
                    s.step = if record.meta().d { Step::Done } else { Step::Wait };
                    return Some((Ok(event), s));
                }
                Step::Wait => match s.watch.changed_or_expired(Some(s.seen), s.expires_ms).await {
                    Some(Snapshot::Present(record)) => s.step = Step::Send(record),
                    Some(Snapshot::Absent) => {
                        let event = gone_event(&s.id, &s.service.absent(&s.id).await);
                        return Some((Ok(event), s));
                    }
                    // Shutting down: end the stream; the client reconnects elsewhere.
                    Some(Snapshot::Unknown) | None => return None,
                },
            }
        }
    })
}

/// The last event of a stream whose record went: `gone`, saying how and
/// when while the store keeps its tombstone (`why` is what a GET would
/// answer now: 410, or 404 once the tombstone is gone).
fn gone_event(id: &ProgressId, why: &Error) -> Event {
    let data = match why {
        Error::Gone { gone, .. } => serde_json::json!({
            "id": id.as_str(),
            "reason": gone.kind.as_str(),
            "at": gone.at.to_rfc3339(),
        }),
        _ => serde_json::json!({ "id": id.as_str() }),
    };
    Event::default().event("gone").data(data.to_string())
}

fn progress_event(record: &StoredRecord) -> Event {
    let body = record.render(Timestamp::now().millis());
    let mut version = itoa::Buffer::new();
    Event::default()
        .id(version.format(record.version()))
        .event("progress")
        // serde_json writes no raw newline, so the record is one `data:` line.
        .data(String::from_utf8_lossy(&body))
}
