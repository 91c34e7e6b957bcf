//! The stored body of a record, written by hand: byte for byte what
//! `serde_json::to_writer(&record)` writes (the derived `Serialize`), in a
//! fraction of the time. A record is serialized on every write; serde's
//! derived code escapes every key and goes through its state machine for
//! every field, which made up most of the cost. Values of any shape
//! (`result`, `error`, `metadata`) are still written by serde_json, and the
//! tests compare the two writers on many records.

use serde_json::{Map, Number, Value};

use super::record::{Child, ProgressRecord, StageSpan, Status};

/// Appends `record` as JSON.
pub fn write_record(out: &mut Vec<u8>, r: &ProgressRecord) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &r.id);
    out.extend_from_slice(b",\"version\":");
    write_u64(out, r.version);
    out.extend_from_slice(b",\"status\":");
    write_status(out, r.status);
    out.extend_from_slice(b",\"progress\":");
    write_number(out, &r.progress);
    out.extend_from_slice(b",\"current\":");
    write_opt(out, r.current.as_ref(), write_number);
    out.extend_from_slice(b",\"total\":");
    write_opt(out, r.total.as_ref(), write_number);
    out.extend_from_slice(b",\"stage\":");
    write_opt(out, r.stage.as_deref(), write_str);
    out.extend_from_slice(b",\"message\":");
    write_opt(out, r.message.as_deref(), write_str);
    out.extend_from_slice(b",\"children\":");
    match &r.children {
        Some(children) => {
            out.push(b'{');
            for (i, (id, child)) in children.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, id);
                out.push(b':');
                write_child(out, child);
            }
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"result\":");
    write_opt(out, r.result.as_ref(), write_value);
    out.extend_from_slice(b",\"error\":");
    write_opt(out, r.error.as_ref(), write_value);
    out.extend_from_slice(b",\"metadata\":");
    write_opt(out, r.metadata.as_ref(), write_map);
    out.extend_from_slice(b",\"ttl_seconds\":");
    write_u64(out, r.ttl_seconds);
    out.extend_from_slice(b",\"created_at\":");
    r.created_at.write_json(out);
    out.extend_from_slice(b",\"updated_at\":");
    r.updated_at.write_json(out);
    out.extend_from_slice(b",\"started_at\":");
    write_opt(out, r.started_at, |out, t| t.write_json(out));
    out.extend_from_slice(b",\"completed_at\":");
    write_opt(out, r.completed_at, |out, t| t.write_json(out));
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

/// Fields that are `None` are left out, as `skip_serializing_if` does.
fn write_child(out: &mut Vec<u8>, c: &Child) {
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &[u8]| {
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.extend_from_slice(name);
    };
    if let Some(title) = &c.title {
        key(out, b"\"title\":");
        write_str(out, title);
    }
    if let Some(status) = c.status {
        key(out, b"\"status\":");
        write_status(out, status);
    }
    for (name, number) in
        [(&b"\"progress\":"[..], &c.progress), (b"\"current\":", &c.current), (b"\"total\":", &c.total)]
    {
        if let Some(number) = number {
            key(out, name);
            write_number(out, number);
        }
    }
    if let Some(message) = &c.message {
        key(out, b"\"message\":");
        write_str(out, message);
    }
    if let Some(weight) = &c.weight {
        key(out, b"\"weight\":");
        write_number(out, weight);
    }
    if first {
        out.push(b'{');
    }
    out.push(b'}');
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

fn write_status(out: &mut Vec<u8>, status: Status) {
    out.push(b'"');
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// With `arbitrary_precision`, a number is its text, written as it is.
fn write_number(out: &mut Vec<u8>, n: &Number) {
    out.extend_from_slice(n.as_str().as_bytes());
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

fn write_value(out: &mut Vec<u8>, value: &Value) {
    serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
}

fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    serde_json::to_writer(out, map).expect("writing to a Vec cannot fail");
}
