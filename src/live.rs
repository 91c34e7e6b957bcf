//! Live updates: who is waiting on which record, and waking them when it
//! changes, for long-polls (`?wait=`) and event streams (`/events`).
//!
//! Waiters of one id share one [`Watched`] entry. When a change is
//! announced — by a write through this instance, or by a Redis change
//! notice from any instance — the entry re-reads the record once and hands
//! the new snapshot to all its waiters through a `watch` channel, so a
//! thousand waiters on a record cost one read per change, and waiting costs
//! no reads at all. Ids nobody waits on cost a map lookup per notice.
//!
//! Re-reads of one id run one at a time; a notice that arrives during a
//! re-read makes it read again afterwards, so the last snapshot is never
//! older than the last notice. Waiters see the newest snapshot, not every
//! intermediate one: a version that was overwritten before it could be read
//! no longer exists anywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{ProgressId, StoredRecord};
use crate::store::{ChangeNotices, ChangeSink, ProgressStore};

/// How often a failed re-read is retried before waiting for the next notice.
const REREAD_ATTEMPTS: u32 = 5;

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
}

struct Watched {
    id: ProgressId,
    /// How many [`Watch`]es hold this entry; changed under the map's lock.
    waiters: AtomicUsize,
    snapshot: watch::Sender<Snapshot>,
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
                    reread: Mutex::new(Reread::default()),
                })
            });
            watched.waiters.fetch_add(1, Ordering::SeqCst);
            Arc::clone(watched)
        };
        Watch {
            rx: watched.snapshot.subscribe(),
            closing: self.inner.closing.subscribe(),
            watched,
            hub: Arc::downgrade(&self.inner),
        }
    }

    /// A write or delete through this instance produced `version` of `id` (0: deleted).
    pub fn changed(&self, id: &ProgressId, version: u64) {
        self.inner.notify(id.as_str(), version);
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
                    watched.snapshot.send_if_modified(|current| replace_if_newer(current, snapshot));
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

/// One waiter on one record. Dropping it stops the waiting.
pub struct Watch {
    watched: Arc<Watched>,
    rx: watch::Receiver<Snapshot>,
    closing: watch::Receiver<bool>,
    hub: Weak<Inner>,
}

impl Watch {
    /// Waits until the record is no longer `seen` — another version or
    /// incarnation, or gone — and returns what it is now. `None` when the
    /// service is shutting down. `seen` of `None` means absent.
    pub async fn changed_from(&mut self, seen: Option<(i64, u64)>) -> Option<Snapshot> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            {
                let snapshot = self.rx.borrow_and_update();
                let differs = match (&*snapshot, seen) {
                    (Snapshot::Unknown, _) => false,
                    (Snapshot::Absent, None) => false,
                    (s, seen) => s.recency() != seen,
                };
                if differs {
                    return Some(snapshot.clone());
                }
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.closing.changed() => return None,
            }
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
