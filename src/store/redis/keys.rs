//! Where everything lives in Redis, under the configured key prefix.
//!
//! Record `id` lives at `{prefix}progress:{id}` (see `codec` for the
//! value), with a TTL refreshed on every write. Every change is announced
//! on `{prefix}progress:changes` as `{version}:{id}` (version 0: deleted).
//!
//! Listing indexes, kept by the write and delete scripts in the same atomic
//! step as the record (outside the `progress:` key space, so that no record
//! id can collide with them):
//! - `{prefix}progressd:index`: every record; a sorted set whose members all
//!   have score 0 and read `<created ms, 15 digits>:<id>`, so that its lex
//!   order is the listing order and `ZREVRANGEBYLEX` resumes exactly after a
//!   cursor, ties on `created_at` included.
//! - `{prefix}progressd:index:{status}`: the same, per status.
//! - `{prefix}progressd:expiry`: the same members scored by `expires_at` ms.
//!   Keys expire by themselves; cleanup walks this set up to now and removes
//!   the members whose key is gone (or holds another incarnation) from all
//!   the indexes. Listing skips such members until then.
//!
//! The expiry set's scores are lower bounds (cleanup rescores a member
//! whose record lives on), so a write that moves the expiry later leaves
//! it alone: an update costs no index work at all; a create costs three
//! `ZADD`s (index, status set, expiry set), a status change a `ZREM` and a
//! `ZADD`, a write that shortens the TTL a `ZADD` on the expiry set.
//!
//! Beside each record, its *gone marker* `{prefix}gone:{id}`: `x<ms>` (the
//! record's expiry) written with every write, with a TTL of the record's
//! plus the tombstone time, and `d<ms>` (the delete's time) written by the
//! delete scripts with a TTL of the tombstone time; what answers 410 Gone
//! once the record key is gone (`tombstones.rs`).
//!
//! Also outside the record key space: `{prefix}progressd:cleanup-lock` and
//! `{prefix}progressd:index-backfilled`.

use super::RedisStore;
use crate::domain::{ProgressId, Status, StoredRecord, Timestamp};
use crate::store::listing;

/// The keys of the listing indexes (see the module documentation).
#[derive(Debug, Clone)]
pub(super) struct IndexKeys {
    /// `{prefix}progressd:index`
    pub(super) all: String,
    /// `{prefix}progressd:expiry`
    pub(super) expiry: String,
    /// `{prefix}progressd:index:{status}`, in the order of [`Status::ALL`].
    by_status: [String; 5],
    /// Set once records written before the indexes existed are indexed.
    pub(super) backfilled: String,
}

impl IndexKeys {
    pub(super) fn new(key_prefix: &str) -> Self {
        Self {
            all: format!("{key_prefix}progressd:index"),
            expiry: format!("{key_prefix}progressd:expiry"),
            by_status: Status::ALL.map(|s| format!("{key_prefix}progressd:index:{}", s.as_str())),
            backfilled: format!("{key_prefix}progressd:index-backfilled"),
        }
    }

    /// The index, the expiry set and the status sets: a script's `KEYS`
    /// from `IX` = 1.
    pub(super) fn all_keys(&self) -> [&str; 7] {
        let s = &self.by_status;
        [&self.all, &self.expiry, &s[0], &s[1], &s[2], &s[3], &s[4]]
    }

    /// `record_key`, then [`IndexKeys::all_keys`]: a record script's `KEYS`
    /// (`IX` = 2).
    pub(super) fn with_record<'a>(&'a self, record_key: &'a str) -> [&'a str; 8] {
        let [all, expiry, s0, s1, s2, s3, s4] = self.all_keys();
        [record_key, all, expiry, s0, s1, s2, s3, s4]
    }

    /// [`IndexKeys::with_record`], then the record's gone marker: the
    /// `KEYS` of a record script that also keeps the marker (`KEYS[9]`).
    pub(super) fn with_record_and_marker<'a>(&'a self, record_key: &'a str, marker: &'a str) -> [&'a str; 9] {
        let [record, all, expiry, s0, s1, s2, s3, s4] = self.with_record(record_key);
        [record, all, expiry, s0, s1, s2, s3, s4, marker]
    }

    /// The set to walk for one status.
    pub(super) fn of(&self, status: Status) -> &str {
        &self.by_status[Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status")]
    }
}

impl RedisStore {
    pub(super) fn key(&self, id: &ProgressId) -> String {
        format!("{}progress:{}", self.key_prefix, id.as_str())
    }

    /// The record's gone marker, `{prefix}gone:{id}` (see `tombstones.rs`).
    pub(super) fn gone_key(&self, id: &ProgressId) -> String {
        format!("{}gone:{}", self.key_prefix, id.as_str())
    }

    /// The record key prefix the scripts add ids to.
    pub(super) fn record_key_prefix(&self) -> String {
        format!("{}progress:", self.key_prefix)
    }

    /// Outside the `progress:` key space, so no record id can collide with it.
    pub(super) fn cleanup_lock_key(&self) -> String {
        format!("{}progressd:cleanup-lock", self.key_prefix)
    }
}

/// A record's member in the listing indexes: `<created ms, 15 digits>:<id>`
/// (what the scripts' `member_of` builds).
pub(super) fn index_member(created_ms: i64, id: &ProgressId) -> String {
    listing::padded_member(created_ms, id.as_str())
}

/// The change notice of a write: `{version}:{id}` (`0:{id}` for a delete).
pub(super) fn change_notice(version: u64, id: &ProgressId) -> String {
    listing::number_colon(version, 0, id.as_str())
}

/// The score of a record in the expiry set: its `expires_at` in ms, or for
/// a header from before it carried one, now plus the TTL.
pub(super) fn expiry_score(record: &StoredRecord, ttl_ms: i64) -> i64 {
    match record.meta().x {
        x if x > 0 => x,
        _ => Timestamp::now().millis().saturating_add(ttl_ms.max(1)),
    }
}

/// The expiry set's score for a write that replaces `current`, or 0 to
/// leave the member's score alone. The score only has to be a lower bound
/// of when the key expires: cleanup examines the member at that time and,
/// finding the record alive (its TTL was extended since), rescores it by
/// its TTL. So a write that moves the expiry later (almost every write)
/// skips the `ZADD`; a create or a write that moves it earlier sets it.
pub(super) fn expiry_to_set(current: Option<&StoredRecord>, record: &StoredRecord, ttl_ms: i64) -> i64 {
    match current.map(|c| c.meta().x) {
        Some(was) if was > 0 && record.meta().x >= was => 0,
        _ => expiry_score(record, ttl_ms),
    }
}

/// `*`, `?`, `[`, `]` and `\` escaped for a Redis `MATCH` pattern.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_members_and_notices_are_what_format_gives() {
        let id = ProgressId::parse("a.b:c-1").unwrap();
        for created in
            [0, 7, 1_700_000_000_000, 999_999_999_999_999, 1_000_000_000_000_000, i64::MAX, -1, -42, i64::MIN]
        {
            assert_eq!(index_member(created, &id), format!("{created:015}:a.b:c-1"), "{created}");
        }
        for version in [0, 1, 10, 9_007_199_254_740_993, u64::MAX] {
            assert_eq!(change_notice(version, &id), format!("{version}:a.b:c-1"));
        }
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
