//! How a record is held in Redis: the header line as it is (the scripts
//! read the version, creation time and status from it), then, for a body
//! of [`COMPRESS_FROM`] bytes or more, a `~` and the body as an LZ4 block
//! with its length in front (a plain JSON body starts with `{`, so both
//! forms read back). A typical record (5 children, 5 stages, 1.5 KB of
//! JSON) takes about half the memory, and half the bytes on the wire.
//!
//! Separate from the store because it is pure: bytes in, bytes out, tested
//! without a server.

use bytes::Bytes;

use crate::domain::{CorruptRecord, StoredRecord};

/// The first byte of a compressed body in Redis (a JSON body starts with `{`).
const COMPRESSED: u8 = b'~';

/// Bodies shorter than this are stored as they are.
const COMPRESS_FROM: usize = 256;

/// Largest body a compressed value may claim to hold (far above any
/// accepted request body): a corrupt length is refused, not allocated.
const MAX_BODY: usize = 64 << 20;

/// Hands `f` what Redis stores for `record`: the header line, then the
/// body as an LZ4 block after [`COMPRESSED`] when that is shorter, else as
/// it is. Compressed into a buffer kept per thread (with the compressor's
/// table), so that a write neither allocates nor zeroes one: `f` copies
/// the bytes into the command anyway.
pub(super) fn with_redis_value<R>(record: &StoredRecord, f: impl FnOnce(&[u8]) -> R) -> R {
    /// Buffers up to this size are kept for the next write on the thread.
    const KEPT: usize = 64 << 10;
    let raw = record.raw();
    let header = record.header();
    let body = &raw[header.len()..];
    if body.len() < COMPRESS_FROM {
        return f(raw);
    }
    let start = header.len() + 1 + 4;
    let size = start + lz4_flex::block::get_maximum_output_size(body.len());
    thread_local! {
        static SCRATCH: std::cell::RefCell<(lz4_flex::block::CompressTable, Vec<u8>)> = Default::default();
    }
    SCRATCH.with(|scratch| {
        let (table, kept) = &mut *scratch.borrow_mut();
        let mut one_off = Vec::new();
        let out = if size <= KEPT { kept } else { &mut one_off };
        if out.len() < size {
            out.resize(size, 0);
        }
        out[..header.len()].copy_from_slice(header);
        out[header.len()] = COMPRESSED;
        out[header.len() + 1..start].copy_from_slice(&(body.len() as u32).to_le_bytes());
        match lz4_flex::block::compress_into_with_table(body, &mut out[start..size], table) {
            Ok(n) if start + n < raw.len() => f(&out[..start + n]),
            _ => f(raw),
        }
    })
}

/// A record as Redis holds it (see the module documentation), compressed
/// or not: for tools and tests that read the keys themselves.
pub fn from_redis(value: Vec<u8>) -> Result<StoredRecord, CorruptRecord> {
    let Some(newline) = StoredRecord::header_end(&value) else {
        return StoredRecord::decode(Bytes::from(value)); // and its error
    };
    if value.get(newline + 1) != Some(&COMPRESSED) {
        return StoredRecord::decode_split(Bytes::from(value), newline);
    }
    let corrupt = |e: lz4_flex::block::DecompressError| CorruptRecord(format!("compressed body: {e}"));
    let (size, block) = lz4_flex::block::uncompressed_size(&value[newline + 2..]).map_err(corrupt)?;
    if size > MAX_BODY {
        return Err(CorruptRecord(format!("compressed body claims {size} bytes")));
    }
    let mut raw = Vec::with_capacity(newline + 1 + size);
    raw.extend_from_slice(&value[..=newline]);
    raw.resize(newline + 1 + size, 0);
    let n = lz4_flex::block::decompress_into(block, &mut raw[newline + 1..]).map_err(corrupt)?;
    if n != size {
        return Err(CorruptRecord(format!("compressed body holds {n} bytes, not {size}")));
    }
    StoredRecord::decode_split(Bytes::from(raw), newline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, ProgressId, Timestamp, Touched, WritePolicy, next_record};

    fn record(body: serde_json::Value) -> StoredRecord {
        let id = ProgressId::parse("job").unwrap();
        let fields = ClientFields::from_json(&body, 3600).unwrap();
        let touched = Touched::replace(&fields);
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let (record, meta) = next_record(&id, None, fields, touched, Timestamp(1_700_000_000_000), &policy);
        StoredRecord::encode(&meta, &record)
    }

    fn large() -> StoredRecord {
        let children: serde_json::Map<_, _> = (0..5)
            .map(|i| {
                (
                    format!("child-{i}"),
                    serde_json::json!({"title": format!("Step {i}"), "status": "running", "current": i, "total": 10}),
                )
            })
            .collect();
        record(serde_json::json!({"status": "running", "message": "x".repeat(200), "children": children}))
    }

    #[test]
    fn a_large_body_is_stored_compressed_and_reads_back_byte_for_byte() {
        let stored = large();
        let value = with_redis_value(&stored, <[u8]>::to_vec);
        assert!(value.len() < stored.raw().len(), "{} !< {}", value.len(), stored.raw().len());
        assert!(value.starts_with(stored.header()), "the header line stays readable by the scripts");
        assert_eq!(value[stored.header().len()], COMPRESSED);
        assert!(
            std::str::from_utf8(stored.header()).unwrap().contains(r#""t":"running""#),
            "the header carries the status"
        );
        let back = from_redis(value).unwrap();
        assert_eq!(back.raw(), stored.raw());
        assert_eq!(back.meta(), stored.meta());
    }

    #[test]
    fn records_of_any_size_one_after_another_read_back() {
        // Past 64 KB the compression buffer is not the thread's kept one;
        // a small record after a large one reuses a longer buffer.
        for len in [400, 150_000, 3_000, 90_000, 300, 200_000] {
            let text: String = (0..len).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
            let stored = record(serde_json::json!({"status": "running", "result": {"text": text}}));
            let value = with_redis_value(&stored, <[u8]>::to_vec);
            assert_eq!(value[stored.header().len()], COMPRESSED, "{len}");
            assert_eq!(from_redis(value).unwrap().raw(), stored.raw(), "{len}");
        }
    }

    #[test]
    fn a_small_body_and_a_plain_value_are_stored_and_read_as_they_are() {
        let stored = StoredRecord::decode(Bytes::from_static(b"{\"v\":1,\"s\":0}\n{\"id\":\"a\"}")).unwrap();
        assert_eq!(with_redis_value(&stored, <[u8]>::to_vec), stored.raw().as_ref());
        // A large record stored plain (before compression) still reads.
        let plain = large();
        assert_eq!(from_redis(plain.raw().to_vec()).unwrap().raw(), plain.raw());
    }

    #[test]
    fn a_corrupt_compressed_value_is_refused_not_trusted() {
        let stored = large();
        let value = with_redis_value(&stored, <[u8]>::to_vec);
        let at = stored.header().len() + 1;
        // Truncated block.
        assert!(from_redis(value[..value.len() - 10].to_vec()).is_err());
        // A length far beyond any body: refused before allocating it.
        let mut huge = value.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = from_redis(huge).unwrap_err();
        assert!(err.0.contains("claims"), "{err}");
        // A wrong length: the block holds another size.
        let mut wrong = value.clone();
        let size = u32::from_le_bytes(wrong[at..at + 4].try_into().unwrap());
        wrong[at..at + 4].copy_from_slice(&(size + 7).to_le_bytes());
        assert!(from_redis(wrong).is_err());
        // Garbage after the marker, and no length at all.
        let mut garbage = stored.header().to_vec();
        garbage.extend_from_slice(b"~\x05\x00\x00\x00\xff\xff\xff");
        assert!(from_redis(garbage).is_err());
        let mut bare = stored.header().to_vec();
        bare.push(COMPRESSED);
        assert!(from_redis(bare).is_err());
    }
}
