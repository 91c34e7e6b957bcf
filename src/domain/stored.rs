//! The stored form of a record: one line of server state, a newline, then
//! the record JSON exactly as GET returns it (less `stalled`).
//!
//! Keeping the response bytes means a GET does no JSON work, and keeping the
//! version first in the header lets a Lua script compare versions with a
//! prefix match instead of decoding the document (Redis's cjson would
//! re-encode numbers with 14 significant digits).

use bytes::{BufMut, Bytes, BytesMut};

use super::derive::RecordMeta;
use super::record::ProgressRecord;

/// A stored record: its header parsed, its body kept as bytes.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    raw: Bytes,
    body_start: usize,
    meta: RecordMeta,
}

/// Stored bytes that are not a record this server wrote.
#[derive(Debug, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
pub struct CorruptRecord(pub String);

impl StoredRecord {
    /// Serializes a record and its server state.
    pub fn encode(meta: &RecordMeta, record: &ProgressRecord) -> Self {
        let mut buf = BytesMut::with_capacity(512).writer();
        serde_json::to_writer(&mut buf, meta).expect("the header always serializes");
        buf.get_mut().put_u8(b'\n');
        let body_start = buf.get_ref().len();
        serde_json::to_writer(&mut buf, record).expect("the record always serializes");
        Self { raw: buf.into_inner().freeze(), body_start, meta: *meta }
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
        Ok(Self { raw, body_start: newline + 1, meta })
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

    /// Parses the body, for a write that builds on it.
    pub fn record(&self) -> Result<ProgressRecord, CorruptRecord> {
        serde_json::from_slice(&self.raw[self.body_start..]).map_err(|e| CorruptRecord(e.to_string()))
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
    fn refuses_foreign_bytes() {
        for raw in [&b"hello"[..], b"{\"v\":1}\nnot json", b"{\"x\":1}\n{}", b""] {
            assert!(StoredRecord::decode(Bytes::copy_from_slice(raw)).is_err());
        }
    }
}
