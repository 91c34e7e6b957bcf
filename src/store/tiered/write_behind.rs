//! The write-behind backlog: updates acknowledged from the hot tier that
//! PostgreSQL has not seen yet, coalesced per record (the highest version
//! wins) and flushed in batches by `TieredStore`'s flusher (`flush.rs`).
//!
//! The backlog lives in this process. What a crash of this process can
//! lose is said in the README ("What a crash can lose").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{ProgressId, StoredRecord};

/// What PostgreSQL still has to be told about one record.
#[derive(Debug, Clone)]
pub enum PendingWrite {
    /// Store this version (unless it already has a newer one).
    Upsert(StoredRecord),
    /// Remove the record.
    Delete,
}

/// The write-behind backlog at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogSummary {
    /// Records with an update PostgreSQL has not seen.
    pub pending: usize,
    /// How long the oldest of them has waited.
    pub oldest_age: Option<Duration>,
}

#[derive(Debug)]
struct Entry {
    id: ProgressId,
    write: PendingWrite,
    /// The first write that PostgreSQL has not seen: the flush deadline
    /// counts from here, so later writes cannot postpone it.
    since: Instant,
    /// Bumped on every change, so a flush settles only what it wrote.
    seq: u64,
    /// Set while a flush holds this entry: the first write that arrived
    /// since then, which the flush does not carry.
    in_flight: bool,
    since_in_flight: Option<Instant>,
}

/// Pending writes keyed by record id.
#[derive(Debug, Default)]
pub struct WriteBehind {
    entries: Mutex<HashMap<String, Entry>>,
    next_seq: std::sync::atomic::AtomicU64,
}

/// A batch handed to the flusher; `seq` identifies what was taken.
#[derive(Debug, Clone)]
pub struct Due {
    /// The record.
    pub id: ProgressId,
    /// What to write.
    pub write: PendingWrite,
    seq: u64,
}

impl WriteBehind {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a write; an older version never replaces a newer pending one.
    pub fn enqueue(&self, id: &ProgressId, write: PendingWrite) {
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.lock();
        match entries.get_mut(id.as_str()) {
            Some(entry) => {
                let older = match (&entry.write, &write) {
                    (PendingWrite::Upsert(have), PendingWrite::Upsert(new)) => new.version() < have.version(),
                    _ => false,
                };
                if !older {
                    entry.write = write;
                    entry.seq = seq;
                    if entry.in_flight && entry.since_in_flight.is_none() {
                        entry.since_in_flight = Some(Instant::now());
                    }
                }
            }
            None => {
                let entry = Entry {
                    id: id.clone(),
                    write,
                    since: Instant::now(),
                    seq,
                    in_flight: false,
                    since_in_flight: None,
                };
                entries.insert(id.as_str().to_owned(), entry);
            }
        }
    }

    /// The pending write for `id`, if any.
    pub fn pending(&self, id: &ProgressId) -> Option<PendingWrite> {
        self.lock().get(id.as_str()).map(|e| e.write.clone())
    }

    /// Writes whose deadline falls within `horizon` from now (all of them
    /// when `everything`), at most `max`, oldest first.
    pub fn due(&self, horizon: Duration, interval: Duration, everything: bool, max: usize) -> Vec<Due> {
        let mut entries = self.lock();
        let mut due: Vec<(String, Instant)> = entries
            .iter()
            .filter(|(_, e)| everything || e.since.elapsed() + horizon >= interval)
            .map(|(k, e)| (k.clone(), e.since))
            .collect();
        due.sort_by_key(|(_, since)| *since);
        due.truncate(max);
        due.into_iter()
            .filter_map(|(key, _)| {
                let e = entries.get_mut(&key)?;
                e.in_flight = true;
                Some(Due { id: e.id.clone(), write: e.write.clone(), seq: e.seq })
            })
            .collect()
    }

    /// Forgets what a flush wrote. A write that arrived meanwhile stays,
    /// its deadline counted from its own arrival (not the flushed one's).
    pub fn settle(&self, flushed: &[Due]) {
        let mut entries = self.lock();
        for due in flushed {
            match entries.get_mut(due.id.as_str()) {
                Some(e) if e.seq == due.seq => {
                    entries.remove(due.id.as_str());
                }
                Some(e) => {
                    e.since = e.since_in_flight.take().unwrap_or_else(Instant::now);
                    e.in_flight = false;
                }
                None => {}
            }
        }
    }

    /// A flush failed: its entries keep their deadlines and wait for the next one.
    pub fn release(&self, taken: &[Due]) {
        let mut entries = self.lock();
        for due in taken {
            if let Some(e) = entries.get_mut(due.id.as_str()) {
                e.in_flight = false;
                e.since_in_flight = None;
            }
        }
    }

    /// Forgets a pending write for `id` that `version` supersedes (it was
    /// written to PostgreSQL directly).
    pub fn supersede(&self, id: &ProgressId, version: u64) {
        let mut entries = self.lock();
        let superseded = entries.get(id.as_str()).is_some_and(|e| match &e.write {
            PendingWrite::Upsert(r) => r.version() <= version,
            PendingWrite::Delete => false,
        });
        if superseded {
            entries.remove(id.as_str());
        }
    }

    /// Pending writes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Age of the oldest pending write.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.lock().values().map(|e| e.since.elapsed()).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> StoredRecord {
        StoredRecord::sample(version)
    }

    fn version(w: &PendingWrite) -> u64 {
        match w {
            PendingWrite::Upsert(r) => r.version(),
            PendingWrite::Delete => 0,
        }
    }

    #[test]
    fn a_write_during_a_flush_gets_its_own_deadline() {
        let wb = WriteBehind::default();
        let a = ProgressId::parse("a").unwrap();
        let interval = Duration::from_millis(50);
        wb.enqueue(&a, PendingWrite::Upsert(record(1)));
        std::thread::sleep(Duration::from_millis(60));
        let batch = wb.due(Duration::ZERO, interval, false, 100);
        assert_eq!(batch.len(), 1, "due after the interval");
        wb.enqueue(&a, PendingWrite::Upsert(record(2))); // lands while version 1 is written
        wb.settle(&batch);
        assert!(
            wb.due(Duration::ZERO, interval, false, 100).is_empty(),
            "version 2 is due 50 ms after its own arrival, not at once (no extra flush)"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(wb.due(Duration::ZERO, interval, false, 100).len(), 1);
    }

    #[test]
    fn coalesces_per_record_keeping_the_highest_version() {
        let wb = WriteBehind::default();
        let a = ProgressId::parse("a").unwrap();
        wb.enqueue(&a, PendingWrite::Upsert(record(2)));
        wb.enqueue(&a, PendingWrite::Upsert(record(1)));
        wb.enqueue(&a, PendingWrite::Upsert(record(3)));
        assert_eq!(wb.len(), 1);
        assert_eq!(version(&wb.pending(&a).unwrap()), 3);
        wb.supersede(&a, 2);
        assert_eq!(wb.len(), 1, "version 3 is newer than what was written directly");
        wb.supersede(&a, 3);
        assert!(wb.is_empty());
    }

    #[test]
    fn a_flush_settles_only_what_it_wrote() {
        let wb = WriteBehind::default();
        let a = ProgressId::parse("a").unwrap();
        let interval = Duration::from_secs(10);
        wb.enqueue(&a, PendingWrite::Upsert(record(1)));
        assert!(wb.due(Duration::from_secs(1), interval, false, 100).is_empty(), "not due yet");
        let batch = wb.due(Duration::ZERO, interval, true, 100);
        assert_eq!(batch.len(), 1);
        wb.enqueue(&a, PendingWrite::Upsert(record(2))); // arrives while the batch is written
        wb.settle(&batch);
        assert_eq!(version(&wb.pending(&a).unwrap()), 2, "the newer write stays pending");
        assert!(wb.due(Duration::from_secs(1), interval, false, 100).is_empty());
        let batch = wb.due(Duration::ZERO, interval, true, 100);
        wb.release(&batch);
        assert_eq!(wb.len(), 1, "a failed flush keeps the entry");
        let batch = wb.due(Duration::ZERO, interval, true, 100);
        wb.settle(&batch);
        assert!(wb.is_empty());
    }
}
