//! One shard of the cache: its entries, and what it has heard of the
//! writes through this instance in flight for its ids. Each shard has its
//! own lock, held only for map operations, never across an await.

use std::time::{Duration, Instant};

use crate::domain::StoredRecord;

/// Most entries per shard that keep the decoded record a write built beside
/// its bytes (see `StoredRecord::encode_owned`), which spares the next write
/// of the record parsing it: 2048 in all, a few MB at most.
pub(super) const DECODED_PER_SHARD: usize = 128;

pub(super) struct Entry {
    pub(super) record: StoredRecord,
    pub(super) cached_at: Instant,
    /// Put there by a write through this instance whose own change notice
    /// (for `record`'s version) has not arrived yet: that one notice does
    /// not drop the entry.
    pub(super) awaiting_own_notice: bool,
}

/// A map by id. foldhash instead of the standard SipHash: a cached read
/// hashes its id twice (the shard, then the entry), and SipHash cost about
/// 400 instructions of it (issue 23). Its seed is random per process, so
/// ids that collide cannot be worked out from outside; the entries of a
/// shard are bounded by the cache size anyway.
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// One shard: cached records, and the writes in flight through this
/// instance for ids of the shard.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) entries: HashMap<String, Entry>,
    pub(super) writes: HashMap<String, WritesInFlight>,
    /// Entries whose record carries its decoded form.
    pub(super) decoded: usize,
    /// When `drop_stale` last swept the shard.
    swept_at: Option<Instant>,
}

/// The change notices heard for one id while writes of it were in flight.
#[derive(Default)]
pub(super) struct WritesInFlight {
    /// How many writes of the id are in flight.
    pub(super) writers: usize,
    /// Notices heard for the id since the first of them began.
    pub(super) notices: u64,
    /// The version the last of those notices carried (0: deleted).
    pub(super) last_version: u64,
}

impl Shard {
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.decoded = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.decoded -= usize::from(entry.record.is_decoded());
        }
    }

    /// Drops the entries older than `max_age` (never served again), at most
    /// once per `max_age`, so that records nobody reads any more do not hold
    /// memory until the shard is full.
    pub(super) fn drop_stale(&mut self, max_age: Duration) {
        let now = Instant::now();
        if self.swept_at.is_some_and(|t| now.duration_since(t) < max_age) {
            return;
        }
        self.swept_at = Some(now);
        let decoded = &mut self.decoded;
        self.entries.retain(|_, entry| {
            let keep = now.duration_since(entry.cached_at) < max_age;
            *decoded -= usize::from(!keep && entry.record.is_decoded());
            keep
        });
    }

    /// Caches `record` for `id`, making room in a full shard.
    pub(super) fn insert(&mut self, capacity: usize, id: &str, mut entry: Entry) {
        let replaced = self.entries.get(id).map(|old| old.record.is_decoded());
        if replaced.is_none() && self.entries.len() >= capacity {
            // Full: drop an arbitrary entry (the map's first) rather than
            // scan the shard under its lock on every miss.
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.remove(&victim);
            }
        }
        self.decoded -= usize::from(replaced == Some(true));
        if entry.record.is_decoded() && self.decoded >= DECODED_PER_SHARD {
            entry.record.drop_decoded(); // the bytes (and the compressed bodies) only
        }
        self.decoded += usize::from(entry.record.is_decoded());
        match self.entries.get_mut(id) {
            Some(old) => *old = entry,
            None => {
                self.entries.insert(id.to_owned(), entry);
            }
        }
    }

    /// A change notice for `id` at `version` (0: deleted).
    pub(super) fn noticed(&mut self, id: &str, version: u64) {
        if let Some(writes) = self.writes.get_mut(id) {
            writes.notices += 1;
            writes.last_version = version;
        }
        match self.entries.get_mut(id) {
            Some(entry) if entry.awaiting_own_notice && version != 0 && entry.record.version() == version => {
                entry.awaiting_own_notice = false;
            }
            Some(_) => self.remove(id),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> StoredRecord {
        StoredRecord::sample(version)
    }

    #[test]
    fn a_shard_keeps_a_bounded_number_of_decoded_records() {
        let decoded = || {
            let plain = record(1);
            StoredRecord::encode_owned(plain.meta(), plain.record().unwrap(), 0)
        };
        let entry = |record: StoredRecord| Entry { record, cached_at: Instant::now(), awaiting_own_notice: false };
        let mut shard = Shard::default();
        let count = |shard: &Shard| shard.entries.values().filter(|e| e.record.is_decoded()).count();
        for n in 0..DECODED_PER_SHARD + 10 {
            shard.insert(10_000, &format!("r{n}"), entry(decoded()));
        }
        assert_eq!(shard.len(), DECODED_PER_SHARD + 10);
        assert_eq!(
            (shard.decoded, count(&shard)),
            (DECODED_PER_SHARD, DECODED_PER_SHARD),
            "past the bound, bytes only"
        );
        shard.insert(10_000, "r0", entry(decoded()));
        assert_eq!(shard.decoded, DECODED_PER_SHARD, "replacing a decoded entry with one keeps the count");
        shard.insert(10_000, "r0", entry(record(2)));
        shard.remove("r1");
        assert_eq!((shard.decoded, count(&shard)), (DECODED_PER_SHARD - 2, DECODED_PER_SHARD - 2));
        shard.insert(DECODED_PER_SHARD, "new", entry(decoded()));
        assert_eq!(shard.decoded, count(&shard), "an eviction is counted");
        shard.clear();
        assert_eq!(shard.decoded, 0);
    }
}
