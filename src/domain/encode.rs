//! The stored body of a record, written by hand: byte for byte what
//! `serde_json::to_writer(&record)` writes (the derived `Serialize`), in a
//! fraction of the time. A record is serialized on every write; serde's
//! derived code escapes every key and goes through its state machine for
//! every field, which made up most of the cost. Values of any shape
//! (`result`, `error`, `metadata`) are still written by serde_json, and the
//! tests compare the two writers on many records.

use serde_json::{Map, Number, Value};

use super::record::{Children, ProgressRecord, StageSpan, Status};

/// Appends `record` as JSON.
pub fn write_record(out: &mut Vec<u8>, r: &ProgressRecord) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &r.id);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, r.version);
    // `,"status":…` to `,"ttl_seconds":…`, written for each client field
    // from its declaration (record/fields.rs).
    r.write_client_fields(out);
    out.extend_from_slice(b",\"created_at\":");
    r.created_at.write_json(out);
    out.extend_from_slice(b",\"updated_at\":");
    r.updated_at.write_json(out);
    out.extend_from_slice(b",\"started_at\":");
    write_opt(out, r.started_at, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"completed_at\":");
    write_opt(out, r.completed_at, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"cancel_requested_at\":");
    write_opt(out, r.cancel_requested_at, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"cancel_reason\":");
    write_opt(out, r.cancel_reason.as_deref(), write_str);
    out.extend_from_slice(b",\"expires_at\":");
    r.expires_at.write_json(out);
    out.extend_from_slice(b",\"eta\":");
    write_opt(out, r.eta, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"stages\":[");
    for (i, stage) in r.stages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_stage(out, stage);
    }
    out.extend_from_slice(b"]}");
}

/// A value of a client field, written as its `Serialize` writes it: what
/// the record writer needs to write a field from its type alone.
pub(super) trait WriteJson {
    /// Appends the value as JSON.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// `None` is `null`: the record writes every client field. (A child leaves
/// out the fields it has not, as `skip_serializing_if` does: see
/// record/generate.rs.)
impl<T: WriteJson> WriteJson for Option<T> {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl WriteJson for Status {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        out.extend_from_slice(self.as_str().as_bytes());
        out.push(b'"');
    }
}

impl WriteJson for u64 {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        write_u64(out, *self);
    }
}

/// With `arbitrary_precision`, a number is its text, written as it is.
impl WriteJson for Number {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_str().as_bytes());
    }
}

impl WriteJson for String {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

/// Values of any shape are written by serde_json.
impl WriteJson for Value {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("writing to a Vec cannot fail");
    }
}

impl WriteJson for Map<String, Value> {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("writing to a Vec cannot fail");
    }
}

impl WriteJson for Children {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (id, child)) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, id);
            out.push(b':');
            child.write_json(out);
        }
        out.push(b'}');
    }
}

fn write_stage(out: &mut Vec<u8>, s: &StageSpan) {
    out.extend_from_slice(b"{\"name\":");
    write_str(out, &s.name);
    out.extend_from_slice(b",\"started_at\":");
    s.started_at.write_json(out);
    out.extend_from_slice(b",\"finished_at\":");
    write_opt(out, s.finished_at, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"duration_ms\":");
    write_opt(out, s.duration_ms, |out, ms| out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes()));
    out.push(b'}');
}

fn write_opt<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A string as serde_json writes it: as it is unless it holds a quote, a
/// backslash or a control character, which serde_json then escapes.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}
