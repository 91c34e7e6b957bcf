//! Live updates: who is waiting on which record, and waking them when it
//! changes, for long-polls (`?wait=`) and event streams (`/events`).
//!
//! Waiters of one id share one `Watched` entry. When a change is
//! announced — by a write through this instance, or by a Redis change
//! notice from any instance — the entry re-reads the record once and hands
//! the new snapshot to all its waiters, so a thousand waiters on a record
//! cost one read per change, and waiting costs no reads at all. Ids nobody
//! waits on cost a map lookup per notice.
//!
//! Re-reads of one id run one at a time; a notice that arrives during a
//! re-read makes it read again afterwards, so the last snapshot is never
//! older than the last notice. Every snapshot read is queued for each
//! waiter (up to [`QUEUED_SNAPSHOTS`]; one that falls further behind skips
//! to the newest), so a slow stream still gets one event per version read.
//! A version overwritten before it could be read exists nowhere any more
//! and is not sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::store::{ChangeNotices, ChangeSink, ProgressStore};

/// Snapshots queued per watched record for waiters that are behind.
pub const QUEUED_SNAPSHOTS: usize = 8;

/// How often a failed re-read is retried before waiting for the next notice.
const REREAD_ATTEMPTS: u32 = 5;

/// How long after a watched record's expiry it is read again: the store
/// sets its expiry a moment after the record says.
const EXPIRY_GRACE: Duration = Duration::from_millis(50);

/// How often a watched record past its expiry is read again while the store
/// still holds it.
const EXPIRY_RECHECK: Duration = Duration::from_millis(250);

/// Change notices queued for each multi-record stream ([`Live::every_change`])
/// that is behind; one that falls further behind hears [`Notice::Resync`].
pub const QUEUED_NOTICES: usize = 4096;

/// A change of any record, for multi-record streams.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Record `id` changed to `version` (0: deleted). The same change may
    /// be announced twice (the local write and its Redis notice).
    Changed(Arc<str>, u64),
    /// Notices may have been missed (they stopped flowing, or this receiver
    /// fell behind): anything may have changed meanwhile.
    Resync,
}

/// What a waiter knows of a record.
#[derive(Debug, Clone)]
pub enum Snapshot {
    /// Not read since the first waiter arrived.
    Unknown,
    /// The record as last read.
    Present(StoredRecord),
    /// The record was read as absent (deleted or expired).
    Absent,
}

impl Snapshot {
    /// The record's (created, version), `None` when absent or unknown.
    pub fn recency(&self) -> Option<(i64, u64)> {
        match self {
            Snapshot::Present(r) => Some(r.recency()),
            _ => None,
        }
    }
}

/// The live-update hub of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ProgressStore>,
    watched: Mutex<HashMap<String, Arc<Watched>>>,
    /// Kept alive here: the subscription runs while the hub exists.
    notices: OnceLock<Arc<ChangeNotices>>,
    closing: watch::Sender<bool>,
    /// Every change, for multi-record streams; sent only while one listens.
    every: broadcast::Sender<Notice>,
}

struct Watched {
    id: ProgressId,
    /// How many [`Watch`]es hold this entry; changed under the map's lock.
    waiters: AtomicUsize,
    /// The newest snapshot.
    snapshot: watch::Sender<Snapshot>,
    /// Every snapshot, in order, for waiters that are behind.
    queue: broadcast::Sender<Snapshot>,
    reread: Mutex<Reread>,
}

#[derive(Default)]
struct Reread {
    running: bool,
    again: bool,
}

impl Live {
    /// A hub that reads records from `store`. Until [`Live::attach`], it
    /// hears only of writes made through this instance.
    pub fn new(store: Arc<dyn ProgressStore>) -> Self {
        let (closing, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                store,
                watched: Mutex::new(HashMap::new()),
                notices: OnceLock::new(),
                closing,
                every: broadcast::channel(QUEUED_NOTICES).0,
            }),
        }
    }

    /// Hears of changes made through every instance from `notices` too.
    pub fn attach(&self, notices: Arc<ChangeNotices>) {
        let sink: Weak<dyn ChangeSink> = Arc::downgrade(&self.inner) as Weak<dyn ChangeSink>;
        notices.attach(sink);
        let _ = self.inner.notices.set(notices);
    }

    /// Starts waiting on `id`. Subscribe before reading the record, so no
    /// change between the read and the wait goes unnoticed.
    pub fn watch(&self, id: &ProgressId) -> Watch {
        let watched = {
            let mut map = self.inner.lock();
            let watched = map.entry(id.as_str().to_owned()).or_insert_with(|| {
                Arc::new(Watched {
                    id: id.clone(),
                    waiters: AtomicUsize::new(0),
                    snapshot: watch::channel(Snapshot::Unknown).0,
                    queue: broadcast::channel(QUEUED_SNAPSHOTS).0,
                    reread: Mutex::new(Reread::default()),
                })
            });
            watched.waiters.fetch_add(1, Ordering::SeqCst);
            Arc::clone(watched)
        };
        Watch {
            latest: watched.snapshot.subscribe(),
            queue: watched.queue.subscribe(),
            closing: self.inner.closing.subscribe(),
            watched,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// A write or delete through this instance produced `version` of `id` (0: deleted).
    pub fn changed(&self, id: &ProgressId, version: u64) {
        self.inner.notify(id.as_str(), version);
    }

    /// Hears of every change of every record from now on (multi-record
    /// streams filter them), and of shutdown. Costs the notice path nothing
    /// while no one listens.
    pub fn every_change(&self) -> (broadcast::Receiver<Notice>, watch::Receiver<bool>) {
        (self.inner.every.subscribe(), self.inner.closing.subscribe())
    }

    /// Ends every wait (at shutdown): long-polls answer at once, streams end.
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// How many records are being waited on.
    pub fn watched_records(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Watched>>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, id: &str, version: u64) {
        if self.every.receiver_count() > 0 {
            // No receiver left since the check is not an error.
            let _ = self.every.send(Notice::Changed(Arc::from(id), version));
        }
        let Some(watched) = self.lock().get(id).cloned() else { return };
        let known = watched.snapshot.borrow().recency().map(|(_, v)| v);
        if version != 0 && known == Some(version) {
            return; // already read (the local write and its Redis notice)
        }
        self.reread(watched);
    }

    fn reread_all(&self) {
        let all: Vec<_> = self.lock().values().cloned().collect();
        for watched in all {
            self.reread(watched);
        }
    }

    /// Reads `watched`'s record now, or once more after the read in flight.
    fn reread(&self, watched: Arc<Watched>) {
        {
            let mut state = watched.reread.lock().unwrap_or_else(|p| p.into_inner());
            if state.running {
                state.again = true;
                return;
            }
            state.running = true;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                if let Some(snapshot) = read(store.as_ref(), &watched.id).await {
                    watched.snapshot.send_if_modified(|current| {
                        let newer = replace_if_newer(current, snapshot);
                        if newer {
                            // No receiver (nobody waits any more) is not an error here.
                            let _ = watched.queue.send(current.clone());
                        }
                        newer
                    });
                }
                let mut state = watched.reread.lock().unwrap_or_else(|p| p.into_inner());
                if !std::mem::take(&mut state.again) {
                    state.running = false;
                    return;
                }
            }
        });
    }
}

impl ChangeSink for Inner {
    fn changed(&self, id: &str, version: u64) {
        self.notify(id, version);
    }

    fn listening(&self, live: bool) {
        if live {
            // Notices may have been missed while they did not flow.
            if self.every.receiver_count() > 0 {
                let _ = self.every.send(Notice::Resync);
            }
            self.reread_all();
        }
    }
}

/// The record as the store has it now; `None` when the store keeps failing.
async fn read(store: &dyn ProgressStore, id: &ProgressId) -> Option<Snapshot> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=REREAD_ATTEMPTS {
        match store.get(id).await {
            Ok(Some(record)) => return Some(Snapshot::Present(record)),
            Ok(None) => return Some(Snapshot::Absent),
            Err(e) if attempt == REREAD_ATTEMPTS => {
                tracing::warn!(%id, error = %e, "cannot re-read a watched record; waiting for the next change");
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    None
}

/// Never lets a snapshot go back to an older version of the same incarnation.
fn replace_if_newer(current: &mut Snapshot, next: Snapshot) -> bool {
    let changed = match (&*current, &next) {
        (Snapshot::Present(a), Snapshot::Present(b)) => {
            let (ca, va) = a.recency();
            let (cb, vb) = b.recency();
            ca != cb || vb > va
        }
        (Snapshot::Absent, Snapshot::Absent) => false,
        _ => true,
    };
    if changed {
        *current = next;
    }
    changed
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One waiter on one record. Dropping it stops the waiting.
pub struct Watch {
    watched: Arc<Watched>,
    latest: watch::Receiver<Snapshot>,
    queue: broadcast::Receiver<Snapshot>,
    closing: watch::Receiver<bool>,
    hub: Weak<Inner>,
}

impl Watch {
    /// Waits until the record is newer than `seen` — a later version or
    /// incarnation, or gone — and returns the oldest such snapshot not yet
    /// returned, so successive calls walk through the versions in order.
    /// `None` when the service is shutting down. `seen` of `None` means absent.
    pub async fn changed_from(&mut self, seen: Option<(i64, u64)>) -> Option<Snapshot> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            let next = match self.queue.try_recv() {
                Ok(snapshot) => Some(snapshot),
                Err(TryRecvError::Lagged(_)) => Some(self.latest.borrow().clone()),
                Err(TryRecvError::Closed) => return None,
                Err(TryRecvError::Empty) => {
                    // Nothing queued since this waiter subscribed; the newest
                    // snapshot may still be news (read just before it did).
                    let latest = self.latest.borrow().clone();
                    if self.is_news(&latest, seen) {
                        return Some(latest);
                    }
                    tokio::select! {
                        received = self.queue.recv() => match received {
                            Ok(snapshot) => Some(snapshot),
                            Err(RecvError::Lagged(_)) => Some(self.latest.borrow().clone()),
                            Err(RecvError::Closed) => return None,
                        },
                        _ = self.closing.changed() => return None,
                    }
                }
            };
            if let Some(snapshot) = next.filter(|s| self.is_news(s, seen)) {
                return Some(snapshot);
            }
        }
    }

    /// [`Watch::changed_from`], also waking when the record seen expires
    /// (`expires_ms`, ms since the epoch; 0: never): an expiry sends no
    /// change notice, so the watched record is read again then (once for all
    /// its waiters), and again every [`EXPIRY_RECHECK`] while the store
    /// still holds it (its clock may be a little behind this one).
    pub async fn changed_or_expired(&mut self, seen: Option<(i64, u64)>, expires_ms: i64) -> Option<Snapshot> {
        let mut wake = (expires_ms > 0).then(|| {
            let left = expires_ms.saturating_sub(Timestamp::now().millis()).max(0);
            Instant::now() + Duration::from_millis(left.unsigned_abs()) + EXPIRY_GRACE
        });
        loop {
            tokio::select! {
                next = self.changed_from(seen) => return next,
                () = sleep_until_or_never(wake) => {
                    if let Some(hub) = self.hub.upgrade() {
                        hub.reread(Arc::clone(&self.watched));
                    }
                    wake = Some(Instant::now() + EXPIRY_RECHECK);
                }
            }
        }
    }

    /// Whether `snapshot` tells something after `seen`: a newer record, or
    /// that the record is gone (and still is).
    fn is_news(&self, snapshot: &Snapshot, seen: Option<(i64, u64)>) -> bool {
        match snapshot {
            Snapshot::Unknown => false,
            Snapshot::Present(record) => seen.is_none_or(|seen| record.recency() > seen),
            // A delete queued before a new incarnation is old news once that exists.
            Snapshot::Absent => seen.is_some() && matches!(*self.latest.borrow(), Snapshot::Absent),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else { return };
        let mut map = hub.lock();
        if self.watched.waiters.fetch_sub(1, Ordering::SeqCst) == 1
            && map.get(self.watched.id.as_str()).is_some_and(|e| Arc::ptr_eq(e, &self.watched))
        {
            map.remove(self.watched.id.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Timestamp, Touched, WritePolicy, apply_write};
    use crate::store::MemoryStore;

    fn record(id: &ProgressId, version: u64) -> StoredRecord {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let (mut r, mut m) =
            apply_write(id, None, ClientFields::default(), Touched::default(), Timestamp::now(), &policy);
        (r.version, m.v, m.c) = (version, version, 1);
        StoredRecord::encode(&m, &r)
    }

    async fn settle(live: &Live, id: &ProgressId) {
        // Re-reads run on spawned tasks: let them finish.
        for _ in 0..50 {
            tokio::task::yield_now().await;
            let watched = live.inner.lock().get(id.as_str()).cloned();
            if watched.is_none_or(|w| !w.reread.lock().unwrap().running) {
                return;
            }
        }
    }

    fn version(snapshot: Option<Snapshot>) -> Option<u64> {
        match snapshot? {
            Snapshot::Present(r) => Some(r.version()),
            Snapshot::Absent => Some(0),
            Snapshot::Unknown => None,
        }
    }

    #[tokio::test]
    async fn a_waiter_that_is_behind_still_gets_every_version_read_in_order() {
        let store = MemoryStore::start(Duration::from_secs(60));
        let live = Live::new(store.clone());
        let id = ProgressId::parse("job").unwrap();
        store.compare_and_set(&id, 0, &record(&id, 1), 60_000).await.unwrap();
        let mut slow = live.watch(&id);
        for v in 2..=6 {
            store.compare_and_set(&id, v - 1, &record(&id, v), 60_000).await.unwrap();
            live.changed(&id, v);
            settle(&live, &id).await;
        }
        let mut seen = (1, 1);
        for expected in 2..=6 {
            let next = slow.changed_from(Some(seen)).await;
            assert_eq!(version(next.clone()), Some(expected));
            seen = next.unwrap().recency().unwrap();
        }
        // A notice for a version already read costs nothing and wakes nobody.
        live.changed(&id, 6);
        settle(&live, &id).await;
        let quiet = tokio::time::timeout(Duration::from_millis(50), slow.changed_from(Some(seen))).await;
        assert!(quiet.is_err(), "no news: {quiet:?}");
        // A waiter further behind than the queue skips to the newest.
        let mut slower = live.watch(&id);
        for v in 7..=(7 + QUEUED_SNAPSHOTS as u64 + 3) {
            store.compare_and_set(&id, v - 1, &record(&id, v), 60_000).await.unwrap();
            live.changed(&id, v);
            settle(&live, &id).await;
        }
        let newest = 7 + QUEUED_SNAPSHOTS as u64 + 3;
        assert_eq!(version(slower.changed_from(Some((1, 6))).await), Some(newest));
        // Deleted: waiters hear it; then the entry goes with its last waiter.
        store.delete(&id).await.unwrap();
        live.changed(&id, 0);
        settle(&live, &id).await;
        assert_eq!(version(slower.changed_from(Some((1, newest))).await), Some(0));
        drop((slow, slower));
        assert_eq!(live.watched_records(), 0);
    }

    #[tokio::test]
    async fn every_change_reaches_multi_record_listeners_and_gaps_ask_for_a_resync() {
        let store = MemoryStore::start(Duration::from_secs(60));
        let live = Live::new(store.clone());
        // Nobody listens: nothing is queued.
        live.changed(&ProgressId::parse("early").unwrap(), 1);
        let (mut notices, closing) = live.every_change();
        live.changed(&ProgressId::parse("a:1").unwrap(), 3);
        live.changed(&ProgressId::parse("a:1").unwrap(), 0);
        ChangeSink::listening(live.inner.as_ref(), true);
        match notices.try_recv() {
            Ok(Notice::Changed(id, 3)) => assert_eq!(&*id, "a:1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(notices.try_recv(), Ok(Notice::Changed(_, 0))));
        assert!(matches!(notices.try_recv(), Ok(Notice::Resync)));
        assert!(notices.try_recv().is_err(), "nothing else, the early change included");
        live.close();
        assert!(*closing.borrow(), "listeners see shutdown");
    }

    #[tokio::test]
    async fn closing_ends_every_wait() {
        let store = MemoryStore::start(Duration::from_secs(60));
        let live = Live::new(store.clone());
        let id = ProgressId::parse("job").unwrap();
        let mut watch = live.watch(&id);
        let waiting = tokio::spawn(async move { watch.changed_from(Some((1, 1))).await.is_none() });
        tokio::task::yield_now().await;
        live.close();
        assert!(waiting.await.unwrap(), "a closed hub answers None");
    }
}
