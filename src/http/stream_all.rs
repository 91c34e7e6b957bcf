//! `GET /progress?prefix=&status=` with `Accept: text/event-stream`: every
//! matching record, then every change of one, on one connection.
//!
//! ```text
//! retry: 2000
//! event: progress
//! data: {"id":"job-1","version":3,…}          (the snapshot: no `id:`)
//!
//! event: ready
//! id: 1764999000123
//! data: {"records":1}
//!
//! event: progress
//! id: 1764999001456
//! data: {"id":"job-2","version":1,…}
//!
//! event: deleted
//! id: 1764999001456
//! data: {"id":"job-1"}
//!
//! : heartbeat
//! ```
//!
//! **Event ids are times, not versions.** One stream carries many records,
//! so its `id` is a resume point: milliseconds since the epoch such that
//! every matching record updated at or after it (less [`RESUME_MARGIN_MS`])
//! has been sent, or will be on this stream. It is the start of the
//! stream's subscription once the snapshot is out (`ready`), then the
//! largest `updated_at` sent. Times rather than versions work across
//! instances: every instance can list what was updated since a time, and
//! none has a sequence of its own. A reconnect with `Last-Event-ID` pages
//! through the listing and sends the records updated since that time less
//! the margin (which covers clocks that differ between instances and a
//! notice still on its way), then `ready` and the changes: nothing that
//! still exists is lost; a record deleted meanwhile is simply absent, and a
//! record may arrive twice (its `version` tells). Snapshot events carry no
//! `id`, so a stream cut during its snapshot resumes from the previous
//! point (or starts over).
//!
//! **Bounded work.** The snapshot pages through the listing
//! [`SNAPSHOT_PAGE`] records at a time, sending each page before reading the
//! next, so a prefix with a million records holds one page in memory. Live
//! changes come from [`crate::live::Live::every_change`]: every notice of
//! this instance (local writes and Redis change notices, which carry every
//! id), filtered here by prefix without a read, then one read per change of
//! a matching id, filtered by status. A stream that falls more than
//! [`crate::live::QUEUED_NOTICES`] notices behind, or whose notices stopped
//! flowing for a while, catches up by paging through the listing again from
//! its resume point. What it told the client per id (to drop the duplicate
//! notice of a local write, and to send `removed` once when a record leaves
//! a status filter) is remembered for at most [`MAX_REMEMBERED`] ids, then
//! forgotten at once: at worst an event is sent twice.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::response::sse::Event;
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::AppState;
use super::events::{RECONNECT_AFTER, sse_response};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::error::Error;
use crate::live::Notice;
use crate::service::{ListCursor, ListPage, ListQuery, ProgressService};

/// Records per listing page while a stream sends its snapshot.
pub const SNAPSHOT_PAGE: usize = 100;
/// How far before a `Last-Event-ID` a resumed stream looks.
pub const RESUME_MARGIN_MS: i64 = 5_000;
/// Most ids a stream remembers what it told about.
pub const MAX_REMEMBERED: usize = 100_000;

/// Whether the client asked for the stream: `Accept` names
/// `text/event-stream`, before any `application/json`.
pub fn wants_stream(headers: &HeaderMap) -> bool {
    for value in headers.get_all(header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for media in text.split(',') {
            let media = media.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("text/event-stream") {
                return true;
            }
            if media.eq_ignore_ascii_case("application/json") {
                return false;
            }
        }
    }
    false
}

/// The stream for `query` (already inside a scoped token's prefix). The
/// first page is read before answering, so a store that is down is a 503,
/// not an empty stream.
/// `resume` is the `Last-Event-ID`, already checked.
pub async fn stream(state: &AppState, mut query: ListQuery, resume: Option<u64>) -> Result<Response, Error> {
    let resume = resume.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
    // Subscribed before the first read, so no change after it is missed.
    let (notices, closing) = state.service.live().every_change();
    let started = Timestamp::now().millis();
    query.limit = SNAPSHOT_PAGE;
    query.after = None;
    let first = state.service.list(&query).await?;
    let listing = Listing { since: resume, started, after: None, prefetched: Some(first), count: 0 };
    let all = AllStream {
        service: state.service.clone(),
        query,
        listing: Some(listing),
        catch_up: None,
        pending: VecDeque::new(),
        notices,
        closing,
        mark: resume.unwrap_or(0),
        told: HashMap::new(),
        first: true,
        ready: false,
    };
    Ok(sse_response(events(all), state.heartbeat))
}

/// A pass through the listing: the snapshot, a resume's catch-up, or the
/// catch-up after missed notices.
struct Listing {
    /// Send only records updated since this (less the margin); `None`: all.
    since: Option<i64>,
    /// When it began: its end is a resume point of at least this.
    started: i64,
    after: Option<ListCursor>,
    prefetched: Option<ListPage>,
    count: u64,
}

/// What the client was last told about an id.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Told {
    /// Sent as a `progress` event at this (created, version).
    Listed((i64, u64)),
    /// Outside the status filter at this (created, version): sent `removed`.
    Unlisted((i64, u64)),
    Deleted,
}

struct AllStream {
    service: ProgressService,
    /// The filters; `limit` is the page size.
    query: ListQuery,
    listing: Option<Listing>,
    /// A catch-up to run once nothing else is listing: since this time.
    catch_up: Option<i64>,
    pending: VecDeque<Event>,
    notices: broadcast::Receiver<Notice>,
    closing: watch::Receiver<bool>,
    /// The resume point sent as each event's id.
    mark: i64,
    told: HashMap<Arc<str>, Told>,
    first: bool,
    ready: bool,
}

fn events(all: AllStream) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(all, |mut s| async move {
        loop {
            if *s.closing.borrow() {
                // Shutting down: end the stream; the client reconnects elsewhere.
                return None;
            }
            if let Some(mut event) = s.pending.pop_front() {
                if std::mem::take(&mut s.first) {
                    event = event.retry(RECONNECT_AFTER);
                }
                return Some((Ok(event), s));
            }
            if let Some(listing) = s.listing.take() {
                if let Err(e) = s.next_page(listing).await {
                    // The client reconnects with its last resume point.
                    tracing::warn!(error = %e, "a multi-record stream cannot list; ending it");
                    return None;
                }
                continue;
            }
            if let Some(since) = s.catch_up.take() {
                let started = Timestamp::now().millis();
                s.listing = Some(Listing { since: Some(since), started, after: None, prefetched: None, count: 0 });
                continue;
            }
            tokio::select! {
                notice = s.notices.recv() => match notice {
                    Ok(Notice::Changed(id, version)) => s.changed(id, version).await,
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => s.catch_up = Some(s.mark),
                    Err(RecvError::Closed) => return None,
                },
                _ = s.closing.changed() => return None,
            }
        }
    })
}

impl AllStream {
    /// Queues the events of the listing's next page.
    async fn next_page(&mut self, mut listing: Listing) -> Result<(), Error> {
        let page = match listing.prefetched.take() {
            Some(page) => page,
            None => {
                let mut query = self.query.clone();
                query.after = listing.after.clone();
                self.service.list(&query).await?
            }
        };
        for (id, record) in page.items {
            let Ok(columns) = record.durable_columns() else { continue };
            let since = listing.since.map(|t| t.saturating_sub(RESUME_MARGIN_MS));
            if since.is_some_and(|t| columns.updated_at.millis() < t) {
                continue;
            }
            let key: Arc<str> = Arc::from(id.as_str());
            if let Some(Told::Listed(told)) = self.told.get(&key)
                && *told >= record.recency()
            {
                continue; // a catch-up over what a live event already sent
            }
            self.remember(key, Told::Listed(record.recency()));
            self.pending.push_back(progress_event(&record, None));
            listing.count += 1;
        }
        match page.next {
            Some(cursor) => {
                listing.after = Some(cursor);
                self.listing = Some(listing);
            }
            None => {
                self.mark = self.mark.max(listing.started);
                if !std::mem::replace(&mut self.ready, true) {
                    let data = format!("{{\"records\":{}}}", listing.count);
                    self.pending.push_back(Event::default().event("ready").id(self.mark.to_string()).data(data));
                }
            }
        }
        Ok(())
    }

    /// A notice: `id` changed to `version` (0: deleted).
    async fn changed(&mut self, id: Arc<str>, version: u64) {
        if !self.query.matches_id(&id) {
            return;
        }
        let told = self.told.get(&id).copied();
        if version == 0 {
            return self.gone(id, told);
        }
        if let Some(Told::Listed((_, v)) | Told::Unlisted((_, v))) = told
            && v == version
        {
            return; // the same change heard twice
        }
        let Ok(pid) = ProgressId::parse(&id) else { return };
        let record = match self.service.get(&pid).await {
            Ok(Some(record)) => record,
            Ok(None) => return self.gone(id, told),
            Err(e) => {
                tracing::warn!(%pid, error = %e, "a multi-record stream cannot read a changed record; catching up later");
                self.catch_up = Some(self.mark);
                return;
            }
        };
        let recency = record.recency();
        if let Some(Told::Listed(r) | Told::Unlisted(r)) = told
            && r >= recency
        {
            return;
        }
        let Ok(columns) = record.durable_columns() else { return };
        if self.query.matches_status(columns.status) {
            self.mark = self.mark.max(columns.updated_at.millis());
            self.remember(id, Told::Listed(recency));
            self.pending.push_back(progress_event(&record, Some(self.mark)));
        } else {
            self.remember(id.clone(), Told::Unlisted(recency));
            if matches!(told, Some(Told::Unlisted(_) | Told::Deleted)) {
                return; // the client does not hold it
            }
            let data = serde_json::json!({ "id": &*id, "status": columns.status }).to_string();
            self.pending.push_back(Event::default().event("removed").id(self.mark.to_string()).data(data));
        }
    }

    /// `id` was deleted (or expired).
    fn gone(&mut self, id: Arc<str>, told: Option<Told>) {
        self.remember(id.clone(), Told::Deleted);
        if matches!(told, Some(Told::Unlisted(_) | Told::Deleted)) {
            return;
        }
        let data = serde_json::json!({ "id": &*id }).to_string();
        self.pending.push_back(Event::default().event("deleted").id(self.mark.to_string()).data(data));
    }

    fn remember(&mut self, id: Arc<str>, told: Told) {
        if self.told.len() >= MAX_REMEMBERED && !self.told.contains_key(&id) {
            self.told.clear();
        }
        self.told.insert(id, told);
    }
}

/// A `progress` event: the record as `GET` renders it, with the resume
/// point as `id` (none during a listing).
fn progress_event(record: &StoredRecord, mark: Option<i64>) -> Event {
    let body = record.render(Timestamp::now().millis());
    // serde_json writes no raw newline, so the record is one `data:` line.
    let event = Event::default().event("progress").data(String::from_utf8_lossy(&body));
    match mark {
        Some(mark) => event.id(mark.to_string()),
        None => event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        wants_stream(&headers)
    }

    #[test]
    fn only_an_accept_that_prefers_the_stream_gets_it() {
        assert!(!wants_stream(&HeaderMap::new()));
        assert!(accept("text/event-stream"));
        assert!(accept("Text/Event-Stream; q=1"));
        assert!(accept("text/event-stream, application/json"));
        assert!(!accept("application/json, text/event-stream"));
        assert!(!accept("*/*"));
        assert!(!accept("application/json"));
    }
}
