//! A small Server-Sent Events reader over reqwest, for tests that watch
//! `/progress/{id}/events` the way a browser's `EventSource` would.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;

/// One event as dispatched: its `id`, `event` type and `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl SseEvent {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }

    /// The `id:` as a version.
    pub fn version(&self) -> u64 {
        self.id.as_deref().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("event without a version: {self:?}"))
    }
}

/// An open event stream.
pub struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: String,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
    /// The response's `Content-Type`.
    pub content_type: String,
}

/// What a stream reader saw next.
#[derive(Debug)]
pub enum Next {
    Event(SseEvent),
    /// The server ended the stream.
    End,
    /// Nothing within the time given.
    Silent,
}

impl EventStream {
    /// Opens `url` with `headers`; the status and, for a 200, the stream.
    pub async fn open(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<Self>) {
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        if status != StatusCode::OK {
            return (status, None);
        }
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = Box::pin(response.bytes_stream());
        (status, Some(Self { body, buffer: String::new(), comments: 0, content_type }))
    }

    /// The next event, the end of the stream, or silence for `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.take_event() {
                return Next::Event(event);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Next::Silent,
                Ok(None) | Ok(Some(Err(_))) => return Next::End,
                Ok(Some(Ok(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream")),
            }
        }
    }

    /// The next event, failing the test on silence or the end.
    pub async fn expect_event(&mut self, within: Duration) -> SseEvent {
        match self.next(within).await {
            Next::Event(e) => e,
            other => panic!("expected an event within {within:?}, got {other:?}"),
        }
    }

    /// Parses one complete event (blank-line terminated) out of the buffer,
    /// skipping comment-only blocks.
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = SseEvent { id: None, event: None, data: String::new(), retry: None };
            let mut has_field = false;
            for line in block.lines().filter(|l| !l.is_empty()) {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) =
                    line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                has_field = true;
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "retry" => event.retry = value.parse().ok(),
                    "data" => {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if has_field {
                return Some(event);
            }
        }
    }
}
