//! The gone markers: what Redis remembers of a record it no longer holds.
//!
//! Beside the record key `{prefix}progress:{id}`, every write sets
//! `{prefix}gone:{id}` to `x<ms>` (the record's expiry, in ms since the
//! epoch) with a TTL of the record's plus the tombstone time, so the marker
//! outlives the record by the tombstone time and says when it expired.
//! Every delete script sets it to `d<ms>` (the delete's time) with a TTL of
//! the tombstone time, in the same atomic step as the delete. One key per
//! record, written with the record: no script reads it, and keeping the
//! record key itself past its expiry instead would hold the whole record
//! (about ten times the marker's memory) and make every script and read
//! tell expired from live.

use async_trait::async_trait;
use redis::Cmd;

use super::RedisStore;
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::metrics::store_op;
use crate::store::{Gone, StoreError, Tombstones, tombstone_ms};

impl RedisStore {
    /// The marker of a write (`x` and the expiry) and its TTL in ms: the
    /// last two arguments of every script that stores a record.
    pub(super) fn expiry_marker(&self, cmd: &mut Cmd, record: &StoredRecord, ttl_ms: i64) {
        let ttl_ms = ttl_ms.max(1);
        let expires = match record.meta().x {
            0 => Timestamp::now().millis().saturating_add(ttl_ms),
            x => x,
        };
        let mut digits = itoa::Buffer::new();
        let mut value = Vec::with_capacity(21);
        value.push(b'x');
        value.extend_from_slice(digits.format(expires).as_bytes());
        cmd.arg(value).arg(ttl_ms.saturating_add(tombstone_ms(self.tombstone)));
    }

    /// The marker of a delete (`d` and now) and its TTL in ms (0: remove
    /// the marker, tombstones are not kept): the last two arguments of the
    /// delete scripts.
    pub(super) fn delete_marker(&self, cmd: &mut Cmd) {
        cmd.arg(format!("d{}", Timestamp::now().millis())).arg(tombstone_ms(self.tombstone));
    }
}

/// A marker's value as a tombstone: `None` for a record that should still
/// be there (its expiry is ahead: Redis lost it, or someone deleted the key
/// by hand) or for a value that is not a marker.
fn read_marker(value: &[u8], now: Timestamp) -> Option<Gone> {
    let (kind, digits) = value.split_first()?;
    let at = Timestamp(std::str::from_utf8(digits).ok()?.parse().ok()?);
    match kind {
        b'd' => Some(Gone::deleted(at)),
        b'x' if at <= now => Some(Gone::expired(at)),
        _ => None,
    }
}

#[async_trait]
impl Tombstones for RedisStore {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        let marker = self.gone_key(id);
        let value: Option<Vec<u8>> = self
            .run_counted(store_op!("redis", "gone"), |mut conn| async move {
                redis::cmd("GET").arg(&marker).query_async(&mut conn).await
            })
            .await?;
        let now = Timestamp::now();
        Ok(value.and_then(|v| read_marker(&v, now)).filter(|g| g.kept_at(self.tombstone, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_as_deleted_or_expired_and_anything_else_as_nothing() {
        let now = Timestamp(5_000);
        assert_eq!(read_marker(b"d4000", now), Some(Gone::deleted(Timestamp(4_000))));
        assert_eq!(read_marker(b"x4000", now), Some(Gone::expired(Timestamp(4_000))));
        assert_eq!(read_marker(b"x6000", now), None, "not expired yet: the record was lost, not gone");
        for junk in [&b""[..], b"d", b"dx", b"q4000", b"x-"] {
            assert_eq!(read_marker(junk, now), None, "{junk:?}");
        }
    }
}
