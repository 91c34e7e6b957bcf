//! The stored form of a record: one line of server state, a newline, then
//! the record JSON exactly as GET returns it (less `stalled`, and with
//! `eta` null once it has stalled).
//!
//! Keeping the response bytes means a GET does no JSON work, and keeping the
//! version first in the header lets a Lua script compare versions with a
//! prefix match instead of decoding the document (Redis's cjson would
//! re-encode numbers with 14 significant digits).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use super::derive::RecordMeta;
use super::record::{DurableColumns, ProgressRecord, ServerState};

/// A stored record: its header parsed, its body kept as bytes.
///
/// A record a write has just built may also carry the [`ProgressRecord`]
/// it was serialized from (see [`StoredRecord::encode_owned`]), so that the
/// next write of it, when the read cache hands it back, need not parse the
/// body again; and a record the read cache holds (or a write has just
/// built) carries a slot for its compressed response bodies, filled by the
/// first response that needs one and shared by its clones (see
/// [`StoredRecord::packed`]), so that a record polled a thousand times is
/// compressed once. Both companions are caches: `clone()` leaves them
/// behind (only [`StoredRecord::clone_decoded`] keeps them), so that
/// whatever holds records for long (the embedded store, the write-behind
/// backlog) holds bytes only.
#[derive(Debug)]
pub struct StoredRecord {
    raw: Bytes,
    body_start: usize,
    meta: RecordMeta,
    decoded: Option<Arc<ProgressRecord>>,
    packed: Option<Arc<PackedBodies>>,
}

/// The compressed response body, once computed, for each value of
/// `stalled` (index 0: not stalled); `None` inside: it does not compress.
#[derive(Debug, Default)]
struct PackedBodies([OnceLock<Option<Bytes>>; 2]);

impl Clone for StoredRecord {
    fn clone(&self) -> Self {
        Self { raw: self.raw.clone(), body_start: self.body_start, meta: self.meta, decoded: None, packed: None }
    }
}

/// Stored bytes that are not a record this server wrote.
#[derive(Debug, thiserror::Error)]
#[error("stored record is corrupt: {0}")]
pub struct CorruptRecord(pub String);

impl StoredRecord {
    /// For unit tests: a fresh record of id `a` (TTL 60 s) at `version`.
    #[cfg(test)]
    pub(crate) fn sample(version: u64) -> Self {
        use super::{ClientFields, ProgressId, Timestamp, Touched, WritePolicy, apply_write};
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let id = ProgressId::parse("a").expect("a valid id");
        let (mut r, mut m) =
            apply_write(&id, None, ClientFields::default(), Touched::default(), Timestamp::now(), &policy);
        (r.version, m.v) = (version, version);
        Self::encode(&m, &r)
    }

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
        Self { raw: Bytes::from(buf), body_start, meta: *meta, decoded: None, packed: None }
    }

    /// [`StoredRecord::encode`], keeping `record` beside the bytes (the
    /// body parses back to exactly it). `size_hint`: about how long the
    /// stored form will be (the previous version's length), so that the
    /// buffer is allocated once.
    pub fn encode_owned(meta: &RecordMeta, record: ProgressRecord, size_hint: usize) -> Self {
        let mut stored = Self::encode_sized(meta, &record, size_hint.max(256));
        stored.decoded = Some(Arc::new(record));
        stored.packed = Some(Arc::default());
        stored
    }

    /// A clone that keeps the decoded record and the compressed bodies
    /// (shared with this one), if this one has them.
    pub fn clone_decoded(&self) -> Self {
        Self { decoded: self.decoded.clone(), packed: self.packed.clone(), ..self.clone() }
    }

    /// [`StoredRecord::clone_decoded`], but the decoded record moves to the
    /// clone: this one keeps its bytes and shares its compressed bodies.
    pub fn hand_over_decoded(&mut self) -> Self {
        Self { decoded: self.decoded.take(), packed: self.packed.clone(), ..self.clone() }
    }

    /// This record with a slot for its compressed bodies (see
    /// [`StoredRecord::packed`]), if it has none: for the read cache.
    pub fn with_packed_bodies(mut self) -> Self {
        self.packed.get_or_insert_with(Arc::default);
        self
    }

    /// Leaves the decoded record behind, keeping the compressed bodies.
    pub fn drop_decoded(&mut self) {
        self.decoded = None;
    }

    /// Whether the decoded record travels with the bytes.
    pub fn is_decoded(&self) -> bool {
        self.decoded.is_some()
    }

    /// The status, when the decoded record travels with the bytes.
    pub fn decoded_status(&self) -> Option<super::record::Status> {
        self.decoded.as_ref().map(|r| r.status)
    }

    /// Where the header line of stored bytes ends: its newline, within the
    /// first 256 bytes.
    pub fn header_end(raw: &[u8]) -> Option<usize> {
        raw.iter().take(256).position(|b| *b == b'\n')
    }

    /// Parses the header of stored bytes; the body is checked only when read.
    pub fn decode(raw: Bytes) -> Result<Self, CorruptRecord> {
        let newline = Self::header_end(&raw).ok_or_else(|| CorruptRecord("no header line".into()))?;
        Self::decode_split(raw, newline)
    }

    /// [`StoredRecord::decode`] of bytes whose header ends at `newline`
    /// (from [`StoredRecord::header_end`]).
    pub fn decode_split(raw: Bytes, newline: usize) -> Result<Self, CorruptRecord> {
        let meta: RecordMeta = serde_json::from_slice(&raw[..newline]).map_err(|e| CorruptRecord(e.to_string()))?;
        if raw.len() < newline + 3 || raw.last() != Some(&b'}') {
            return Err(CorruptRecord("the body is not a JSON object".into()));
        }
        Ok(Self { raw, body_start: newline + 1, meta, decoded: None, packed: None })
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
        self.decoded_or_parsed(ProgressRecord::clone)
    }

    /// [`StoredRecord::record`], taking the decoded record when it travels
    /// with the bytes: copied only if a clone still shares it.
    pub fn take_record(&mut self) -> Result<ProgressRecord, CorruptRecord> {
        match self.decoded.take() {
            Some(record) => Ok(Arc::try_unwrap(record).unwrap_or_else(|shared| (*shared).clone())),
            None => self.parse_body(),
        }
    }

    /// Parses only what the server keeps up (a PUT replaces the rest): the
    /// client fields are skipped over, not built.
    pub fn server_state(&self) -> Result<ServerState, CorruptRecord> {
        self.decoded_or_parsed(ProgressRecord::server_state)
    }

    /// The columns PostgreSQL keeps beside the bytes; the rest of the body
    /// is skipped over, not built (a flush reads hundreds of records at once).
    pub fn durable_columns(&self) -> Result<DurableColumns, CorruptRecord> {
        self.decoded_or_parsed(ProgressRecord::durable_columns)
    }

    /// `part` of the decoded record when it travels with the bytes, else
    /// the same read from the body (serde skips the fields `T` lacks).
    fn decoded_or_parsed<T: serde::de::DeserializeOwned>(
        &self,
        part: impl FnOnce(&ProgressRecord) -> T,
    ) -> Result<T, CorruptRecord> {
        match &self.decoded {
            Some(record) => Ok(part(record)),
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
        self.render_stalled(self.stalled_at(now_ms))
    }

    fn stalled_at(&self, now_ms: i64) -> bool {
        self.meta.s != 0 && now_ms > self.meta.s
    }

    fn render_stalled(&self, stalled: bool) -> Bytes {
        let [body, end] = self.parts_stalled(stalled);
        let mut out = BytesMut::with_capacity(body.len() + end.len());
        out.put_slice(&body);
        out.put_slice(&end);
        out.freeze()
    }

    /// [`StoredRecord::render`] in two pieces, for a response that sends
    /// them one after the other: the stored JSON but its closing brace
    /// (these bytes, shared, not copied), then `stalled` and the brace.
    pub fn render_parts(&self, now_ms: i64) -> [Bytes; 2] {
        self.parts_stalled(self.stalled_at(now_ms))
    }

    fn parts_stalled(&self, stalled: bool) -> [Bytes; 2] {
        let end: &'static [u8] = if stalled { b",\"stalled\":true}" } else { b",\"stalled\":false}" };
        let body = &self.raw[self.body_start..self.raw.len() - 1];
        // A stalled job's estimate is stale: no `eta` (a copy, on this path only).
        if let Some(eta) = stalled.then(|| eta_value(body)).flatten() {
            let mut out = BytesMut::with_capacity(body.len());
            out.put_slice(&body[..eta.start]);
            out.put_slice(b"null");
            out.put_slice(&body[eta.end..]);
            return [out.freeze(), Bytes::from_static(end)];
        }
        [self.raw.slice(self.body_start..self.raw.len() - 1), Bytes::from_static(end)]
    }

    /// The response body at time `now_ms` run through `pack` (a
    /// compressor; `None`: not smaller). A record with a slot for
    /// compressed bodies runs it once per value of `stalled` and keeps the
    /// answer for its clones; any other runs it every time.
    pub fn packed(&self, now_ms: i64, pack: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        let stalled = self.stalled_at(now_ms);
        match &self.packed {
            Some(bodies) => bodies.0[usize::from(stalled)].get_or_init(|| pack(&self.render_stalled(stalled))).clone(),
            None => pack(&self.render_stalled(stalled)),
        }
    }
}

/// Where the top-level `eta` of a stored body is, when it is not null.
///
/// `encode.rs` writes `…,"eta":<null or a time>,"stages":[…]}` last, and
/// nothing after `eta` has a member of that name (stages are name, times and
/// duration), while `"eta":` cannot occur inside a JSON string (its quotes
/// would be escaped): so the last `,"eta":` in the body is the record's.
/// `None` for a body laid out otherwise, which is then served as it is.
fn eta_value(body: &[u8]) -> Option<std::ops::Range<usize>> {
    const KEY: &[u8] = b",\"eta\":";
    const NEXT: &[u8] = b",\"stages\":[";
    let start = body.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let len = body[start..].windows(NEXT.len()).position(|w| w == NEXT)?;
    let value = &body[start..start + len];
    let quoted = value.len() > 2 && value[0] == b'"' && value[len - 1] == b'"';
    (quoted && !value[1..len - 1].contains(&b'"')).then_some(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, ProgressId, Status, Timestamp, Touched, WritePolicy, apply_write, next_record};
    use serde_json::{Value, json};

    fn sample() -> StoredRecord {
        let f = ClientFields::from_json(
            &json!({"status": "running", "metadata": {"big": 9007199254740993u64, "f": 0.1}}),
            100,
        )
        .unwrap();
        let policy = WritePolicy { default_ttl_seconds: 10, heartbeat_ms: 1_000 };
        let (r, m) =
            apply_write(&ProgressId::parse("a").unwrap(), None, f, Touched::default(), Timestamp(5_000), &policy);
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
    fn compressed_bodies_are_made_once_per_stalled_state_and_shared_only_by_cache_clones() {
        use std::cell::Cell;
        let calls = Cell::new(0);
        let pack = |body: &[u8]| {
            calls.set(calls.get() + 1);
            Some(Bytes::copy_from_slice(&body[body.len() - 16..]))
        };
        // 6,000 is the sample's stall deadline.
        let cached = sample().with_packed_bodies();
        assert_eq!(cached.packed(5_500, pack).unwrap(), &b"\"stalled\":false}"[..]);
        assert_eq!(cached.packed(5_900, pack).unwrap(), &b"\"stalled\":false}"[..]);
        assert_eq!(calls.get(), 1, "the second read reuses the first one's");
        assert_eq!(cached.packed(6_001, pack).unwrap(), &b",\"stalled\":true}"[..]);
        assert_eq!(calls.get(), 2, "stalled has its own body");
        // What the cache hands out shares them; a plain clone (what stores
        // and the backlog keep) and a record never given a slot do not carry them.
        let served = cached.clone_decoded();
        assert!(served.packed(5_000, |_| panic!("already made")).is_some());
        assert!(served.packed(7_000, |_| panic!("already made")).is_some());
        cached.clone().packed(5_000, pack);
        sample().packed(5_000, pack);
        sample().packed(5_000, pack);
        assert_eq!(calls.get(), 5);
        // A body that does not shrink is remembered as such.
        let none = sample().with_packed_bodies();
        assert!(none.packed(5_000, |_| None).is_none());
        assert!(none.packed(5_000, |_| panic!("already tried")).is_none());
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
        for now in [5_500, 6_001] {
            let [body, end] = s.render_parts(now);
            assert_eq!([&body[..], &end[..]].concat(), s.render(now), "the pieces are the whole body");
            assert_eq!(body.as_ptr(), s.raw()[s.header().len()..].as_ptr(), "shared with the stored bytes, not copied");
        }
    }

    /// A running record with an `eta` (written at 5 s and 10 s, stalled
    /// after 11 s), a metadata member of the same name, and stages.
    fn with_eta() -> StoredRecord {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1_000 };
        let id = ProgressId::parse("a").unwrap();
        let body = json!({"status": "running", "progress": 10, "stage": "eta", "metadata": {"eta": "soon"}});
        let f = ClientFields::from_json(&body, 100).unwrap();
        let (r, m) = apply_write(&id, None, f, Touched::default(), Timestamp(5_000), &policy);
        let f =
            ClientFields::from_json(&json!({"status": "running", "progress": 20, "stage": "\"eta\":"}), 100).unwrap();
        let prev = Some((r.server_state(), m));
        let (r, m) = next_record(&id, prev, f, Touched::default(), Timestamp(10_000), &policy);
        assert!(r.eta.is_some(), "two samples make an estimate");
        StoredRecord::encode(&m, &r)
    }

    #[test]
    fn a_stalled_record_renders_no_eta() {
        let s = with_eta();
        let running: Value = serde_json::from_slice(&s.render(10_500)).unwrap();
        assert_eq!((running["stalled"].as_bool(), running["eta"].is_string()), (Some(false), true), "{running}");
        let stalled: Value = serde_json::from_slice(&s.render(11_001)).unwrap();
        assert_eq!((stalled["stalled"].as_bool(), stalled["eta"].is_null()), (Some(true), true), "{stalled}");
        // Only the record's own member: the rest is as stored.
        let mut expected = running.clone();
        expected["eta"] = Value::Null;
        expected["stalled"] = json!(true);
        assert_eq!(stalled, expected);
        let [body, end] = s.render_parts(11_001);
        assert_eq!([&body[..], &end[..]].concat(), s.render(11_001));
        let packed = s.clone().with_packed_bodies();
        assert_eq!(packed.packed(11_001, |b| Some(Bytes::copy_from_slice(b))).unwrap(), s.render(11_001));
        assert_eq!(packed.packed(10_500, |b| Some(Bytes::copy_from_slice(b))).unwrap(), s.render(10_500));
    }

    #[test]
    fn the_eta_member_is_found_only_where_the_encoder_puts_it() {
        assert_eq!(eta_value(br#"{"id":"a","eta":"2026-01-01T00:00:00.000Z","stages":[]"#), Some(16..42));
        for body in [
            &br#"{"id":"a","eta":null,"stages":[]"#[..],
            br#"{"id":"a","metadata":{"eta":"x"},"stages":[]"#,
            br#"{"id":"a","eta":"x""#,
            br#"{"id":"a","eta":"a","b":"c","stages":[]"#,
            b"",
        ] {
            assert_eq!(eta_value(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn the_decoded_record_is_what_the_bytes_parse_to_and_clones_leave_it() {
        let plain = sample();
        let record = plain.record().unwrap();
        let owned = StoredRecord::encode_owned(plain.meta(), record.clone(), 0);
        assert_eq!(owned.raw(), plain.raw());
        assert!(owned.is_decoded() && owned.clone_decoded().is_decoded());
        assert!(!owned.clone().is_decoded(), "a plain clone holds bytes only");
        // The columns skimmed from the bytes are those of the whole record.
        assert_eq!(plain.durable_columns().unwrap(), record.durable_columns());
        assert_eq!(owned.durable_columns().unwrap(), record.durable_columns());
        assert_eq!(owned.record().unwrap(), record);
        assert_eq!(owned.clone().record().unwrap(), record, "parsed from the bytes");
        assert_eq!(owned.server_state().unwrap(), owned.clone().server_state().unwrap());
    }

    #[test]
    fn durable_columns_are_skimmed_from_the_bytes() {
        let first = sample();
        let f =
            ClientFields::from_json(&json!({"status": "completed", "children": {"a": {"progress": 1}}}), 100).unwrap();
        let policy = WritePolicy { default_ttl_seconds: 10, heartbeat_ms: 1_000 };
        let prev = (first.server_state().unwrap(), *first.meta());
        let (r, m) =
            next_record(&ProgressId::parse("a").unwrap(), Some(prev), f, Touched::default(), Timestamp(7_500), &policy);
        let later = StoredRecord::decode(StoredRecord::encode(&m, &r).raw().clone()).unwrap();
        assert!(!later.is_decoded());
        let columns = later.durable_columns().unwrap();
        assert_eq!(columns.status, Status::Completed);
        assert_eq!(columns.created_at, Timestamp(5_000));
        assert_eq!(columns.updated_at, Timestamp(7_500));
        assert_eq!(columns.expires_at, r.expires_at);
        assert_eq!(columns, r.durable_columns());
    }

    #[test]
    fn records_stored_before_the_cancel_fields_read_them_as_null() {
        let current = sample();
        let text = String::from_utf8(current.raw().to_vec()).unwrap();
        let old = text.replace(",\"cancel_requested_at\":null,\"cancel_reason\":null", "");
        assert_ne!(old, text, "the fields are in every stored record");
        let stored = StoredRecord::decode(Bytes::from(old)).unwrap();
        let record = stored.record().unwrap();
        assert_eq!((record.cancel_requested_at, record.cancel_reason.as_deref()), (None, None));
        let state = stored.server_state().unwrap();
        assert_eq!((state.cancel_requested_at, state.cancel_reason.as_deref()), (None, None));
        assert_eq!(record, current.record().unwrap(), "and nothing else changes");
    }

    #[test]
    fn refuses_foreign_bytes() {
        for raw in [&b"hello"[..], b"{\"v\":1}\nnot json", b"{\"x\":1}\n{}", b""] {
            assert!(StoredRecord::decode(Bytes::copy_from_slice(raw)).is_err());
        }
    }
}
