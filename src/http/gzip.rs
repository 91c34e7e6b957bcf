//! gzip of record bodies in the handler, with one compressor per thread.
//!
//! The compression layer (`layers::compression`) builds a new deflate
//! compressor for every response it compresses: for a 1 KB record that is
//! most of the work, and browsers (and oha) ask for gzip on every poll. The
//! record routes compress their body here instead, whole, with a compressor
//! that each thread keeps and resets, and send it with a `Content-Length`
//! (the layer's streamed body goes out chunked); the layer leaves a response
//! that already has a `Content-Encoding` alone. Other routes keep the layer.
//!
//! The read cache keeps the result beside the record (see
//! `StoredRecord::packed`), so a record polled many times is compressed once.
//!
//! Measured (this machine, the 818-byte `bench/record.json`): a new
//! default-level gzip encoder per call, as the layer does, 28.6 µs with
//! flate2's default miniz_oxide backend; a kept and reset fast-level one
//! 18.4 µs; the same on the zlib-rs backend (enabled in Cargo.toml, which
//! also serves the layer) 5.9 µs. With oha at 5,000 GET/s of one cached
//! record, the server's CPU per request went from 95 µs (the layer) to
//! 48 µs (`/healthz`: 44 µs).

use std::cell::RefCell;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bodies smaller than this are sent as they are (as the layer does).
pub const GZIP_FROM_BYTES: usize = super::layers::COMPRESS_ABOVE_BYTES as usize;

/// Whether the client takes a gzip body (RFC 9110 §12.5.3): `gzip` or
/// `x-gzip` with a weight above 0, or else `*` with a weight above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptsGzip(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for AcceptsGzip {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(accepts_gzip(&parts.headers)))
    }
}

/// See [`AcceptsGzip`]. An unreadable weight counts as 0 (not acceptable).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let weight = parts
                .find_map(|p| {
                    let (name, value) = p.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("q").then(|| value.trim())
                })
                .map_or(1.0, |q| q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.map_or(weight, |w: f32| w.max(weight)));
            } else if coding == "*" {
                any = Some(weight);
            }
        }
    }
    gzip.or(any).is_some_and(|w| w > 0.0)
}

thread_local! {
    // Raw deflate (the gzip framing is written around it), fastest level:
    // on a 1 KB record it saves within a few percent of the default level.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

/// `body` as a gzip member (RFC 1952), or `None` when it would not be smaller.
pub fn gzip(body: &[u8]) -> Option<Bytes> {
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    out.extend_from_slice(&HEADER);
    let deflated = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        loop {
            let consumed = usize::try_from(c.total_in()).ok()?;
            match c.compress_vec(&body[consumed..], &mut out, FlushCompress::Finish).ok()? {
                Status::StreamEnd => return Some(()),
                // Out of room: give it more and go on.
                Status::Ok | Status::BufError => out.reserve(out.capacity().max(256)),
            }
        }
    });
    deflated?;
    let mut crc = Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    (out.len() < body.len()).then(|| out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Read;

    fn accepts(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        accepts_gzip(&headers)
    }

    #[test]
    fn reads_accept_encoding_as_rfc_9110_says() {
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["gzip, deflate, br, zstd"]));
        assert!(accepts(&["br;q=1.0, GZIP;q=0.5"]));
        assert!(accepts(&["x-gzip"]));
        assert!(accepts(&["*"]));
        assert!(accepts(&["br", "gzip"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["br, deflate"]));
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["gzip;q=0.000"]));
        assert!(!accepts(&["*;q=0"]));
        // gzip named with 0 is refused even when `*` would take it.
        assert!(!accepts(&["gzip;q=0, *"]));
        // An unreadable weight is not a yes.
        assert!(!accepts(&["gzip;q=x"]));
        assert!(!accepts(&["gzip;q=2"]));
        assert!(accepts(&["gzip ; Q=0.1"]));
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("a valid gzip member");
        out
    }

    #[test]
    fn round_trips_through_a_standard_decoder_and_reuses_the_compressor() {
        let record = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/record.json")).unwrap();
        for _ in 0..3 {
            let packed = gzip(&record).expect("a record compresses");
            assert!(packed.len() < record.len() * 2 / 3, "{} of {}", packed.len(), record.len());
            assert_eq!(gunzip(&packed), record);
        }
        // Bodies of every size up to two output reservations, and incompressible ones.
        let mut noise = Vec::new();
        let mut x = 0x9e37_79b9_u32;
        for n in [0usize, 1, 255, 256, 300, 4096, 70_000] {
            while noise.len() < n {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                noise.push(x as u8);
            }
            let repeated: Vec<u8> = record.iter().cycle().take(n).copied().collect();
            if let Some(packed) = gzip(&repeated) {
                assert_eq!(gunzip(&packed), repeated, "{n} bytes of JSON");
            }
            // Random bytes do not shrink: either no gzip, or one that reads back.
            if let Some(packed) = gzip(&noise[..n]) {
                assert_eq!(gunzip(&packed), &noise[..n]);
            }
        }
        assert!(gzip(&noise[..4096]).is_none(), "random bytes do not get smaller");
    }
}
