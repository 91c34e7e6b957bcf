//! Newest-first listing (`GET /progress`): the query, the page, the cursor,
//! and the walk every store shares.
//!
//! Records are listed by `(created_at DESC, id DESC)`: creation order, which
//! a later write never changes, so a record updated while a client pages
//! through neither moves nor shows up twice. Ids order bytewise (as Rust,
//! Redis's lex ranges and PostgreSQL's `COLLATE "C"` all do), so a cursor
//! from one tier continues on another.
//!
//! A page examines at most [`SCAN_BUDGET`] index entries after its cursor:
//! entries filtered out by `prefix`, and entries of records that expired or
//! were deleted but are still indexed, count against it. When the budget
//! runs out the page may be short (even empty) but still carries a
//! `next_cursor`, so the work per page never grows with the number of
//! records. Only `next_cursor: null` means the end.

use std::fmt;

use crate::domain::{ProgressId, Status, StoredRecord};

/// `limit` when the client sends none.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 500;
/// Most index entries one page examines (more than [`MAX_LIMIT`], so that a
/// page without a prefix is full unless many indexed records have expired).
pub const SCAN_BUDGET: usize = 1000;

/// What a client asked to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only these statuses (sorted, no duplicates); empty: any.
    pub statuses: Vec<Status>,
    /// Only ids starting with this (already checked against the id alphabet).
    pub id_prefix: Option<String>,
    /// Most records on the page (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Continue after this position; `None`: from the newest record.
    pub after: Option<ListCursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self { statuses: Vec::new(), id_prefix: None, limit: DEFAULT_LIMIT, after: None }
    }
}

impl ListQuery {
    /// Whether the id alone already rules a record out.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id_prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }

    /// Whether a record with this status is listed.
    pub fn matches_status(&self, status: Status) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    /// The budget of index entries for this page: never less than a full
    /// page plus the one entry that tells whether there is more.
    pub fn budget(&self) -> usize {
        SCAN_BUDGET.max(self.limit + 1)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// The records and their ids, newest first.
    pub items: Vec<(ProgressId, StoredRecord)>,
    /// Where the next page starts; `None` when there is nothing after this page.
    pub next: Option<ListCursor>,
}

/// A position in the listing order: the last entry a page examined.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListCursor {
    /// `created_at` of that record, in milliseconds since the epoch.
    pub created_ms: i64,
    /// Its id.
    pub id: String,
}

/// A cursor that was not produced by this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedCursor;

impl fmt::Display for MalformedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cursor is not a next_cursor this server returned")
    }
}

impl ListCursor {
    /// The cursor of the record `id` created at `created_ms`.
    pub fn new(created_ms: i64, id: &str) -> Self {
        Self { created_ms: created_ms.max(0), id: id.to_owned() }
    }

    /// The cursor of a stored record.
    pub fn of(id: &str, stored: &StoredRecord) -> Self {
        Self::new(stored.meta().c, id)
    }

    /// The opaque text clients send back: base64url (no padding) of
    /// `1:<created ms>:<id>`.
    pub fn encode(&self) -> String {
        base64url_encode(format!("1:{}:{}", self.created_ms, self.id).as_bytes())
    }

    /// Parses what [`ListCursor::encode`] produced.
    pub fn decode(text: &str) -> Result<Self, MalformedCursor> {
        let bytes = base64url_decode(text).ok_or(MalformedCursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| MalformedCursor)?;
        let rest = text.strip_prefix("1:").ok_or(MalformedCursor)?;
        let (created, id) = rest.split_once(':').ok_or(MalformedCursor)?;
        if created.is_empty() || created.len() > 15 || !created.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MalformedCursor);
        }
        let created_ms: i64 = created.parse().map_err(|_| MalformedCursor)?;
        ProgressId::parse(id).map_err(|_| MalformedCursor)?;
        Ok(Self { created_ms, id: id.to_owned() })
    }

    /// The member of the Redis lex indexes for this position:
    /// `<created ms, 15 digits>:<id>`, so that lex order is listing order.
    pub fn index_member(&self) -> String {
        index_member(self.created_ms, &self.id)
    }

    /// The inverse of [`ListCursor::index_member`].
    pub fn from_index_member(member: &str) -> Option<Self> {
        let (created, id) = (member.get(..15)?, member.get(16..)?);
        if member.as_bytes().get(15) != Some(&b':') {
            return None;
        }
        Some(Self { created_ms: created.parse().ok()?, id: id.to_owned() })
    }
}

/// `<created ms, 15 digits>:<id>`: members of the Redis listing indexes.
pub fn index_member(created_ms: i64, id: &str) -> String {
    padded_member(created_ms.clamp(0, 999_999_999_999_999), id)
}

/// `<created ms, zero-padded to 15 characters>:<id>`, as
/// `format!("{created_ms:015}:{id}")` and the scripts' `%015d` give it,
/// without the formatting machinery: every write builds one. A negative
/// time (never written) takes that way.
pub(crate) fn padded_member(created_ms: i64, id: &str) -> String {
    match u64::try_from(created_ms) {
        Ok(created) => number_colon(created, 15, id),
        Err(_) => format!("{created_ms:015}:{id}"),
    }
}

/// `<number, zero-padded to at least width digits>:<id>`: what the listing
/// indexes and the change notices (width 0) are made of.
pub(crate) fn number_colon(number: u64, width: usize, id: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(number);
    let mut out = String::with_capacity(width.max(digits.len()) + 1 + id.len());
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
    out.push(':');
    out.push_str(id);
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 4 == 1 || text.len() > 1024 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let len = chunk.len() - 1;
        for i in 0..len {
            out.push((n >> (16 - 8 * i)) as u8);
        }
        // Bits past the last byte must be zero: one text per cursor.
        if n & ((1 << (24 - 8 * len)) - 1) != 0 {
            return None;
        }
    }
    Some(out)
}

/// What [`walk`] does with one index entry, as the store judges it.
pub enum Verdict {
    /// List this record.
    Take(ProgressId, StoredRecord),
    /// Not listed (expired, deleted, another incarnation, filtered out).
    Skip,
}

/// Pages through index entries given newest first (`(created_ms, id)`
/// descending, all after the query's cursor): examines at most the query's
/// budget, keeps what `judge` takes, stops at `limit` records. The
/// cursor of the next page is the last entry examined, when anything
/// follows it.
pub fn walk(
    query: &ListQuery,
    entries: impl Iterator<Item = ListCursor>,
    mut judge: impl FnMut(&ListCursor) -> Verdict,
) -> ListPage {
    let budget = query.budget();
    let mut entries = entries.peekable();
    let (mut page, mut examined, mut last) = (ListPage::default(), 0, None);
    while let Some(entry) = entries.peek() {
        if page.items.len() >= query.limit || examined >= budget {
            page.next = last;
            return page;
        }
        examined += 1;
        if query.matches_id(&entry.id)
            && let Verdict::Take(id, record) = judge(entry)
        {
            page.items.push((id, record));
        }
        last = entries.next();
    }
    page
}

/// Merges iterators that each yield entries in descending order into one
/// descending sequence (a k-way merge; duplicates are yielded once).
pub fn merge_descending<I>(sources: Vec<I>) -> impl Iterator<Item = ListCursor>
where
    I: Iterator<Item = ListCursor>,
{
    let mut sources: Vec<std::iter::Peekable<I>> = sources.into_iter().map(Iterator::peekable).collect();
    std::iter::from_fn(move || {
        let best = sources.iter_mut().filter_map(|s| s.peek().cloned()).max()?;
        for source in &mut sources {
            if source.peek() == Some(&best) {
                source.next();
            }
        }
        Some(best)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        for (ms, id) in [(0, "a"), (1_763_764_830_123, "book-42:ch.1_x"), (5, &"z".repeat(128)[..])] {
            let c = ListCursor::new(ms, id);
            let text = c.encode();
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
            assert_eq!(ListCursor::decode(&text), Ok(c.clone()));
            assert_eq!(ListCursor::from_index_member(&c.index_member()), Some(c));
        }
        let bad = [
            "",
            "!",
            "abc",
            "a",
            "MToxOmE=", // padding is not part of the alphabet
            &base64url_encode(b"2:1:a"),
            &base64url_encode(b"1:x:a"),
            &base64url_encode(b"1:1:a/b"),
            &base64url_encode(b"1::a"),
            &base64url_encode(b"1:-1:a"),
            &base64url_encode(b"1:1:"),
            &base64url_encode(b"1:1234567890123456:a"),
            &base64url_encode(&[0xff, 0xfe]),
        ];
        for text in bad {
            assert_eq!(ListCursor::decode(text), Err(MalformedCursor), "{text:?}");
        }
        // Non-zero trailing bits are a different text for the same bytes: refused.
        let good = base64url_encode(b"1:1:a"); // 7 characters: 2 bits past the last byte
        assert!(ListCursor::decode(&good).is_ok());
        let mut tweaked = good.clone().into_bytes();
        let last = tweaked.last_mut().unwrap();
        *last = ALPHABET[ALPHABET.iter().position(|a| a == last).unwrap() + 1];
        assert!(ListCursor::decode(std::str::from_utf8(&tweaked).unwrap()).is_err());
    }

    #[test]
    fn base64url_matches_the_rfc_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), coded);
            if !coded.is_empty() {
                assert_eq!(base64url_decode(coded).unwrap(), plain.as_bytes());
            }
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn index_members_sort_like_the_listing() {
        let mut keys = [(2, "b"), (10, "a"), (2, "ab"), (2, "a-"), (2, "a"), (1, "zz")];
        let mut members: Vec<String> = keys.iter().map(|(c, id)| index_member(*c, id)).collect();
        keys.sort();
        members.sort();
        let back: Vec<(i64, String)> =
            members.iter().map(|m| ListCursor::from_index_member(m).map(|c| (c.created_ms, c.id)).unwrap()).collect();
        assert_eq!(back, keys.iter().map(|(c, id)| (*c, id.to_string())).collect::<Vec<_>>());
    }

    #[test]
    fn merges_descending_sources() {
        let c = |ms, id: &str| ListCursor::new(ms, id);
        let a = vec![c(9, "a"), c(5, "b"), c(1, "a")];
        let b = vec![c(9, "b"), c(5, "b"), c(2, "x")];
        let merged: Vec<ListCursor> = merge_descending(vec![a.into_iter(), b.into_iter()]).collect();
        assert_eq!(merged, vec![c(9, "b"), c(9, "a"), c(5, "b"), c(2, "x"), c(1, "a")]);
    }
}
