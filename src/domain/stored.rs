//! The stored form of a record: one line of server state, a newline, then
//! the record JSON exactly as GET returns it (less `stalled`).
//!
//! Keeping the response bytes means a GET does no JSON work, and keeping the
//! version first in the header lets a Lua script compare versions with a
//! prefix match instead of decoding the document (Redis's cjson would
//! re-encode numbers with 14 significant digits).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::derive::RecordMeta;
use super::record::{ProgressRecord, ServerState};

/// A stored record: its header parsed, its body kept as bytes.
///
/// A record a write has just built may also carry the [`ProgressRecord`]
/// it was serialized from (see [`StoredRecord::encode_owned`]), so that the
/// next write of it, when the read cache hands it back, need not parse the
/// body again. That companion is a cache: `clone()` leaves it behind (only
/// [`StoredRecord::clone_decoded`] keeps it), so that whatever holds records
/// for long (the embedded store, the write-behind backlog) holds bytes only.
#[derive(Debug)]
pub struct StoredRecord {
    raw: Bytes,
    body_start: usize,
    meta: RecordMeta,
    decoded: Option<Arc<ProgressRecord>>,
}

impl Clone for StoredRecord {
    fn clone(&self) -> Self {
        Self { raw: self.raw.clone(), body_start: self.body_start, meta: self.meta, decoded: None }
    }
}

/// Stored bytes that are not a record this server wrote.
#[derive(Debug, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
pub struct CorruptRecord(pub String);

impl StoredRecord {
    /// Serializes a record and its server state.
    pub fn encode(meta: &RecordMeta, record: &ProgressRecord) -> Self {
        Self::encode_sized(meta, record, 1024)
    }

    /// [`StoredRecord::encode`] into a buffer of `capacity` bytes to begin with.
    fn encode_sized(meta: &RecordMeta, record: &ProgressRecord, capacity: usize) -> Self {
        // A Vec writer: serde_json writes many small pieces, and a Vec takes
        // each with less bookkeeping than a BytesMut.
        let mut buf = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut buf, meta).expect("the header always serializes");
        buf.push(b'\n');
        let body_start = buf.len();
        super::encode::write_record(&mut buf, record);
        Self { raw: Bytes::from(buf), body_start, meta: *meta, decoded: None }
    }

    /// [`StoredRecord::encode`], keeping `record` beside the bytes (the
    /// body parses back to exactly it). `size_hint`: about how long the
    /// stored form will be (the previous version's length), so that the
    /// buffer is allocated once.
    pub fn encode_owned(meta: &RecordMeta, record: ProgressRecord, size_hint: usize) -> Self {
        let mut stored = Self::encode_sized(meta, &record, size_hint.max(256));
        stored.decoded = Some(Arc::new(record));
        stored
    }

    /// A clone that keeps the decoded record, if this one has it.
    pub fn clone_decoded(&self) -> Self {
        Self { decoded: self.decoded.clone(), ..self.clone() }
    }

    /// Whether the decoded record travels with the bytes.
    pub fn is_decoded(&self) -> bool {
        self.decoded.is_some()
    }

    /// The status, when the decoded record travels with the bytes.
    pub fn decoded_status(&self) -> Option<super::record::Status> {
        self.decoded.as_ref().map(|r| r.status)
    }

    /// Parses the header of stored bytes; the body is checked only when read.
    pub fn decode(raw: Bytes) -> Result<Self, CorruptRecord> {
        let newline = raw
            .iter()
            .take(256)
            .position(|b| *b == b'\n')
            .ok_or_else(|| CorruptRecord("no header line".into()))?;
        let meta: RecordMeta =
            serde_json::from_slice(&raw[..newline]).map_err(|e| CorruptRecord(e.to_string()))?;
        if raw.len() < newline + 3 || raw.last() != Some(&b'}') {
            return Err(CorruptRecord("the body is not a JSON object".into()));
        }
        Ok(Self { raw, body_start: newline + 1, meta, decoded: None })
    }

    /// The record's version.
    pub fn version(&self) -> u64 {
        self.meta.v
    }

    /// Which is newer across incarnations: a later `created_at` wins, then
    /// the higher version.
    pub fn recency(&self) -> (i64, u64) {
        (self.meta.c, self.meta.v)
    }

    /// Server state kept beside the record.
    pub fn meta(&self) -> &RecordMeta {
        &self.meta
    }

    /// The whole stored value (header and body).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The header line and its newline, as stored: which write produced
    /// these bytes (version, times, and the creation time of the incarnation).
    pub fn header(&self) -> &[u8] {
        &self.raw[..self.body_start]
    }

    /// Parses the body, for a write that builds on it (a copy of the
    /// decoded record when it travels with the bytes).
    pub fn record(&self) -> Result<ProgressRecord, CorruptRecord> {
        match &self.decoded {
            Some(record) => Ok(ProgressRecord::clone(record)),
            None => self.parse_body(),
        }
    }

    /// Parses only what the server keeps up (a PUT replaces the rest): the
    /// client fields are skipped over, not built.
    pub fn server_state(&self) -> Result<ServerState, CorruptRecord> {
        match &self.decoded {
            Some(record) => Ok(record.server_state()),
            None => self.parse_body(),
        }
    }

    fn parse_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, CorruptRecord> {
        // The body is checked to be UTF-8 in one pass, so that serde_json
        // need not check each string it reads on its own (from_slice does).
        let body = std::str::from_utf8(&self.raw[self.body_start..]).map_err(|e| CorruptRecord(e.to_string()))?;
        serde_json::from_str(body).map_err(|e| CorruptRecord(e.to_string()))
    }

    /// The response body at time `now_ms`: the stored JSON plus `stalled`.
    pub fn render(&self, now_ms: i64) -> Bytes {
        let body = &self.raw[self.body_start..self.raw.len() - 1];
        let stalled: &[u8] = if self.meta.s != 0 && now_ms > self.meta.s {
            b",\"stalled\":true}"
        } else {
            b",\"stalled\":false}"
        };
        let mut out = BytesMut::with_capacity(body.len() + stalled.len());
        out.put_slice(body);
        out.put_slice(stalled);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{apply_write, ClientFields, ProgressId, Timestamp, Touched, WritePolicy};
    use serde_json::{json, Value};

    fn sample() -> StoredRecord {
        let f = ClientFields::from_json(
            &json!({"status": "running", "metadata": {"big": 9007199254740993u64, "f": 0.1}}),
            100,
        )
        .unwrap();
        let policy = WritePolicy { default_ttl_seconds: 10, heartbeat_ms: 1_000 };
        let (r, m) = apply_write(&ProgressId::parse("a").unwrap(), None, f, Touched::default(), Timestamp(5_000), &policy);
        StoredRecord::encode(&m, &r)
    }

    #[test]
    fn decodes_what_it_encodes() {
        let s = sample();
        assert!(s.raw().starts_with(b"{\"v\":1,"));
        let back = StoredRecord::decode(s.raw().clone()).unwrap();
        assert_eq!(back.version(), 1);
        assert_eq!(back.record().unwrap(), s.record().unwrap());
    }

    #[test]
    fn renders_stalled_from_the_time_of_the_read() {
        let s = sample();
        let fresh: Value = serde_json::from_slice(&s.render(5_500)).unwrap();
        assert_eq!(fresh["stalled"], json!(false));
        let stale: Value = serde_json::from_slice(&s.render(6_001)).unwrap();
        assert_eq!(stale["stalled"], json!(true));
        assert_eq!(stale["metadata"]["big"].to_string(), "9007199254740993");
        assert_eq!(stale["metadata"]["f"].to_string(), "0.1");
    }

    #[test]
    fn the_decoded_record_is_what_the_bytes_parse_to_and_clones_leave_it() {
        let plain = sample();
        let record = plain.record().unwrap();
        let owned = StoredRecord::encode_owned(plain.meta(), record.clone(), 0);
        assert_eq!(owned.raw(), plain.raw());
        assert!(owned.is_decoded() && owned.clone_decoded().is_decoded());
        assert!(!owned.clone().is_decoded(), "a plain clone holds bytes only");
        assert_eq!(owned.record().unwrap(), record);
        assert_eq!(owned.clone().record().unwrap(), record, "parsed from the bytes");
        assert_eq!(owned.server_state().unwrap(), owned.clone().server_state().unwrap());
    }

    #[test]
    fn refuses_foreign_bytes() {
        for raw in [&b"hello"[..], b"{\"v\":1}\nnot json", b"{\"x\":1}\n{}", b""] {
            assert!(StoredRecord::decode(Bytes::copy_from_slice(raw)).is_err());
        }
    }
}
