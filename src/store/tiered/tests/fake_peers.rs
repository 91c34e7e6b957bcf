//! [`Peers`] for the fake durable tier: the heartbeat rows in a HashMap and
//! the channel as a broadcast, shared by every instance over the same fake
//! (as they share PostgreSQL), with the fake's faults applied to each call.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::fakes::FakeDurable;
use crate::domain::Timestamp;
use crate::store::{PeerNotice, Peers, StoreError};

/// The rows of `progress_instances` (`(seen, flushed)` by instance) and the channel.
pub(super) struct FakePeers {
    rows: Mutex<HashMap<String, (i64, i64)>>,
    channel: broadcast::Sender<PeerNotice>,
}

impl Default for FakePeers {
    fn default() -> Self {
        Self { rows: Mutex::default(), channel: broadcast::Sender::new(64) }
    }
}

impl FakePeers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, i64)>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An instance whose last heartbeat was at `seen` and that never answers.
    pub(super) fn add_silent(&self, name: &str, seen: Timestamp) {
        self.lock().insert(name.to_owned(), (seen.millis(), 0));
    }

    /// How many instances have a row.
    pub(super) fn count(&self) -> usize {
        self.lock().len()
    }
}

impl Peers for FakeDurable {
    async fn heartbeat(&self, me: &str) -> Result<(), StoreError> {
        self.faults.enter("heartbeat").await?;
        self.peers.lock().entry(me.to_owned()).or_insert((0, 0)).0 = Timestamp::now().millis();
        Ok(())
    }

    async fn request_flush(&self, at: Option<Timestamp>) -> Result<Timestamp, StoreError> {
        self.faults.enter("request_flush").await?;
        let at = at.unwrap_or_else(Timestamp::now);
        let _ = self.peers.channel.send(PeerNotice::FlushRequested(at));
        Ok(at)
    }

    async fn confirm_flush(&self, me: &str, at: Timestamp) -> Result<(), StoreError> {
        self.faults.enter("confirm_flush").await?;
        let now = Timestamp::now().millis();
        let mut rows = self.peers.lock();
        let row = rows.entry(me.to_owned()).or_insert((now, 0));
        (row.0, row.1) = (now, row.1.max(at.millis()));
        drop(rows);
        let _ = self.peers.channel.send(PeerNotice::Flushed);
        Ok(())
    }

    async fn all_flushed(&self, at: Timestamp, live_ms: i64) -> Result<bool, StoreError> {
        self.faults.enter("all_flushed").await?;
        let now = Timestamp::now().millis();
        Ok(self.peers.lock().values().all(|&(seen, flushed)| seen < now - live_ms || flushed >= at.millis()))
    }

    async fn leave(&self, me: &str) -> Result<(), StoreError> {
        self.faults.enter("leave").await?;
        self.peers.lock().remove(me);
        Ok(())
    }

    fn peer_notices(&self) -> broadcast::Receiver<PeerNotice> {
        self.peers.channel.subscribe()
    }
}
