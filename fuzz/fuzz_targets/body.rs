#![no_main]
//! Fuzzes what `PUT` and `PATCH /progress/{id}` do with a request body:
//! the typed PUT fast path or the general parse (depth limit included),
//! validation, the merge patch, the derived fields and the stored bytes,
//! through the same `ProgressService::write` the handlers call (over an
//! in-memory store, a fresh one per input).
//!
//! Input: one flag byte, then the PUT body, a NUL byte, the PATCH body (no
//! NUL: both bodies are the rest). A NUL cannot occur in valid JSON, so no
//! body is out of reach. Flags: bits 0–1 pick `PROGRESS_MAX_JSON_DEPTH`
//! (32, 128, 3, 1); bit 2 writes a record with every kind of field first;
//! bit 3 sends `If-Match` with the current version (so finished records can
//! be written again).
//!
//! Besides "no panic", it checks: a refusal is a 4xx code; the typed PUT
//! path reads exactly what the general path reads; an accepted write's
//! stored bytes read back to the very record and its GET body is JSON with
//! `progress` from 0 to 100 and the next version; a PUT keeps `result`,
//! `metadata`, `error`, `stage`, `message` and the counters as sent; a PATCH
//! gives the client fields that validating `merge_patch(record, patch)`
//! gives, and a PATCH accepted twice leaves them as the first time did.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use progressd::domain::{depth, merge_patch, ClientFields, ProgressId, ProgressRecord, StoredRecord, WritePolicy};
use progressd::error::Error;
use progressd::service::{IfMatch, Preconditions, ProgressService, WriteBody};
use progressd::store::MemoryStore;

const MAX_TTL: u64 = 3600;
/// `PROGRESS_MAX_BODY_BYTES`'s default.
const MAX_BODY_BYTES: usize = 65_536;
const DEPTHS: [usize; 4] = [32, 128, 3, 1];
const POLICY: WritePolicy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
const BASELINE: &str = r#"{"status":"running","stage":"A","message":"m","current":1,"total":4,"ttl_seconds":120,
  "children":{"c1":{"title":"one","progress":50,"weight":2},"c2":{"status":"completed"}},
  "result":{"a":[1,{"b":null}]},"error":{"code":7},"metadata":{"k":{"n":9007199254740993}}}"#;
/// The codes a refused body may get; anything else (`internal`) is a bug.
const REFUSALS: [&str; 5] = ["invalid_body", "validation_failed", "not_found", "conflict_terminal", "precondition_failed"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

/// What `http::extract` makes of a body (its functions are private to the
/// crate): the size limit, not empty, well-formed, not nested too deep.
fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, Error> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Error::PayloadTooLarge { limit: MAX_BODY_BYTES });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidBody("empty".into()));
    }
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    let value: Value = parsed.map_err(|e| Error::InvalidBody(e.to_string()))?;
    if depth(&value) > max_depth {
        return Err(Error::InvalidBody("too deep".into()));
    }
    Ok(value)
}

/// What `http::progress::put` hands the service: the typed read when it
/// answers, else the parsed body.
fn put_body(bytes: &[u8], max_depth: usize) -> Result<WriteBody, Error> {
    if bytes.len() > MAX_BODY_BYTES || bytes.iter().all(u8::is_ascii_whitespace) {
        return parse_json(bytes, max_depth).map(WriteBody::Replace);
    }
    let fast = std::str::from_utf8(bytes).ok().and_then(|t| ClientFields::from_body_fast(t, MAX_TTL, max_depth));
    match fast {
        Some(fields) => Ok(WriteBody::Read { fields, text: Bytes::copy_from_slice(bytes) }),
        None => parse_json(bytes, max_depth).map(WriteBody::Replace),
    }
}

struct Session {
    service: ProgressService,
    id: ProgressId,
    version: u64,
    if_match: bool,
}

impl Session {
    fn conditions(&self) -> Preconditions {
        let if_match = (self.if_match && self.version > 0).then(|| IfMatch::Versions(vec![self.version]));
        Preconditions { if_match, if_none_match: None }
    }

    /// Sends one write; the record it stored, or `None` when it was refused.
    fn write(&mut self, body: Result<WriteBody, Error>) -> Option<ProgressRecord> {
        let written = body.and_then(|body| runtime().block_on(self.service.write(&self.id, body, &self.conditions())));
        match written {
            Ok(written) => {
                self.version += 1;
                Some(check_stored(&written.record, self.version))
            }
            Err(e) => {
                assert!(REFUSALS.contains(&e.code()), "refused as {}: {e}", e.code());
                None
            }
        }
    }

    fn current(&self) -> Option<ProgressRecord> {
        runtime().block_on(self.service.get(&self.id)).unwrap().map(|s| s.record().unwrap())
    }
}

/// An accepted write: the next version, bytes that read back to the
/// record, a GET body that is JSON, a percent in range.
fn check_stored(stored: &StoredRecord, version: u64) -> ProgressRecord {
    assert_eq!(stored.version(), version);
    let record = stored.record().expect("the record travels with its bytes");
    assert_eq!(record.version, version);
    let read_back = StoredRecord::decode(stored.raw().clone()).expect("the header parses");
    assert_eq!(read_back.record().expect("the body parses"), record, "stored bytes read back to the record");
    let shown: Value = serde_json::from_slice(&stored.render(0)).expect("the GET body is JSON");
    assert_eq!(shown["version"].as_u64(), Some(version));
    let percent = record.progress.as_f64().expect("progress is a finite number");
    assert!((0.0..=100.0).contains(&percent), "progress {percent}");
    record
}

/// The client fields of a record other than the derived `progress`.
fn written_fields(r: &ProgressRecord) -> Value {
    let mut doc = r.client_json();
    doc.as_object_mut().unwrap().shift_remove("progress");
    doc
}

fn client_fields_but_progress(f: &ClientFields) -> ClientFields {
    ClientFields { progress: None, ..f.clone() }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (put_bytes, patch_bytes) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, rest),
    };
    let max_depth = DEPTHS[usize::from(flags & 3)];
    let store = Arc::new(MemoryStore::default());
    let mut session = Session {
        service: ProgressService::new(store, POLICY, MAX_TTL),
        id: ProgressId::parse("fuzz").unwrap(),
        version: 0,
        if_match: flags & 8 != 0,
    };
    if flags & 4 != 0 && max_depth >= 4 {
        session.write(put_body(BASELINE.as_bytes(), max_depth)).expect("the baseline is a record");
    }

    // PUT: the typed read agrees with the general one, and what it stores
    // keeps the pass-through fields as sent.
    let general = parse_json(put_bytes, max_depth).ok();
    if let Some(fast) = std::str::from_utf8(put_bytes).ok().and_then(|t| ClientFields::from_body_fast(t, MAX_TTL, max_depth)) {
        let read = general.as_ref().map(|v| ClientFields::from_json(v, MAX_TTL));
        assert_eq!(read.map(|r| r.ok()), Some(Some(fast)), "the typed PUT path read what the general path refuses");
    }
    if let Some(record) = session.write(put_body(put_bytes, max_depth)) {
        let sent = general.expect("an accepted PUT body parses");
        let shown = record.client_json();
        for field in ["result", "error", "metadata", "stage", "message", "current", "total"] {
            let sent = sent.get(field).unwrap_or(&Value::Null);
            assert_eq!(shown.get(field).unwrap_or(&Value::Null), sent, "{field} as sent");
        }
    }

    // PATCH: what validating the merge patch of the record's JSON gives.
    let Some(before) = session.current() else {
        let refused = session.write(parse_json(patch_bytes, max_depth).map(WriteBody::Merge));
        assert!(refused.is_none(), "a PATCH of no record is refused");
        return;
    };
    let patch = parse_json(patch_bytes, max_depth).ok();
    let expected = patch.as_ref().map(|p| {
        ClientFields::from_json(p, MAX_TTL).and_then(|_| {
            let mut doc = before.client_json();
            merge_patch(&mut doc, p);
            ClientFields::from_json(&doc, MAX_TTL)
        })
    });
    let terminal_refusal = before.status.is_terminal() && !session.if_match;
    let Some(once) = session.write(parse_json(patch_bytes, max_depth).map(WriteBody::Merge)) else {
        if !terminal_refusal {
            assert!(!matches!(expected, Some(Ok(_))), "a valid PATCH was refused");
        }
        return;
    };
    let mut expected = expected.expect("an accepted PATCH parses").expect("an accepted PATCH validates");
    expected.ttl_seconds = Some(expected.ttl_seconds.unwrap_or(POLICY.default_ttl_seconds));
    let (_, got) = once.clone().into_parts();
    assert_eq!(client_fields_but_progress(&got), client_fields_but_progress(&expected), "PATCH = merge patch of the JSON");

    // The same PATCH again changes no written field.
    if let Some(twice) = session.write(parse_json(patch_bytes, max_depth).map(WriteBody::Merge)) {
        assert_eq!(written_fields(&twice), written_fields(&once), "a PATCH applied twice");
    }
});
