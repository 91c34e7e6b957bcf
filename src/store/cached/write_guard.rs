//! A write through the cache: while it is in flight, the notices heard
//! for its id are counted, so that when it ends the cache knows whether
//! the version it stored may be kept (only its own notice was heard, or
//! none yet) or must be dropped (anything newer was announced).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::CachedStore;
use super::shard::{Entry, Shard};
use crate::domain::StoredRecord;

/// A write of one id in flight through the cache. Dropped without
/// [`WriteGuard::finish`] (the request was cancelled), it drops the entry.
pub(super) struct WriteGuard<'a> {
    cache: &'a CachedStore,
    shard: usize,
    id: &'a str,
    /// `WritesInFlight::notices` when the write began.
    notices_before: u64,
    generation: u64,
    done: bool,
}

impl<'a> WriteGuard<'a> {
    pub(super) fn begin(cache: &'a CachedStore, id: &'a str) -> Self {
        let i = cache.shard_of(id);
        let generation = cache.generation.load(Ordering::SeqCst);
        let mut shard = cache.shard(i);
        let writes = match shard.writes.get_mut(id) {
            Some(writes) => writes,
            None => shard.writes.entry(id.to_owned()).or_default(),
        };
        writes.writers += 1;
        let notices_before = writes.notices;
        Self { cache, shard: i, id, notices_before, generation, done: false }
    }

    /// Ends the write: `stored` is the record it stored, if it did.
    pub(super) fn finish(mut self, stored: Option<&StoredRecord>) {
        self.done = true;
        let cache = self.cache;
        let mut shard = cache.shard(self.shard);
        // Reads in flight may hold an older version: they must not cache it.
        cache.epochs[self.shard].fetch_add(1, Ordering::SeqCst);
        let (heard, last_version) = self.leave(&mut shard);
        let keep = stored.and_then(|record| {
            let unchanged = cache.is_live() && cache.generation.load(Ordering::SeqCst) == self.generation;
            // Nothing heard since the write began: its own notice is still to
            // come. One notice for the version written: that was it (or an
            // older incarnation's at the same version, which is then
            // harmless: the real one drops the entry when it comes).
            let awaiting_own_notice = match heard {
                0 => true,
                1 if last_version == record.version() => false,
                _ => return None,
            };
            unchanged.then(|| Entry { record: record.clone_decoded(), cached_at: Instant::now(), awaiting_own_notice })
        });
        match keep {
            Some(entry) => {
                shard.drop_stale(cache.config.max_age);
                shard.insert(cache.capacity(), self.id, entry);
            }
            None => shard.remove(self.id),
        }
    }

    /// Leaves the id's in-flight set: the notices heard since the write
    /// began, and the version of the last one.
    fn leave(&self, shard: &mut Shard) -> (u64, u64) {
        let Some(writes) = shard.writes.get_mut(self.id) else { return (u64::MAX, 0) };
        let heard = (writes.notices - self.notices_before, writes.last_version);
        writes.writers -= 1;
        if writes.writers == 0 {
            shard.writes.remove(self.id);
        }
        heard
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled: the write may or may not have happened.
        let mut shard = self.cache.shard(self.shard);
        self.cache.epochs[self.shard].fetch_add(1, Ordering::SeqCst);
        self.leave(&mut shard);
        shard.remove(self.id);
    }
}
