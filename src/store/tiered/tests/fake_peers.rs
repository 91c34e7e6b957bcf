//! [`Peers`] for the fake durable tier: the heartbeat rows in a HashMap and
//! the channel as a broadcast, shared by every instance over the same fake
//! (as they share PostgreSQL), with the fake's faults applied to each call.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::fakes::FakeDurable;
use crate::domain::Timestamp;
use crate::store::{FlushState, PeerNotice, Peers, StoreError};

/// The rows of `progress_instances` (`(seen, flushed, redis_up)` by instance) and the channel.
pub(super) struct FakePeers {
    rows: Mutex<HashMap<String, (i64, i64, bool)>>,
    channel: broadcast::Sender<PeerNotice>,
}

impl Default for FakePeers {
    fn default() -> Self {
        Self { rows: Mutex::default(), channel: broadcast::Sender::new(64) }
    }
}

impl FakePeers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, i64, bool)>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An instance whose last heartbeat was at `seen` and that never answers.
    pub(super) fn add_silent(&self, name: &str, seen: Timestamp) {
        self.lock().insert(name.to_owned(), (seen.millis(), 0, false));
    }

    /// How many instances have a row.
    pub(super) fn count(&self) -> usize {
        self.lock().len()
    }
}

impl Peers for FakeDurable {
    async fn heartbeat(&self, me: &str) -> Result<(), StoreError> {
        self.faults.enter("heartbeat").await?;
        self.peers.lock().entry(me.to_owned()).or_insert((0, 0, false)).0 = Timestamp::now().millis();
        Ok(())
    }

    async fn request_flush(&self, at: Option<Timestamp>) -> Result<Timestamp, StoreError> {
        self.faults.enter("request_flush").await?;
        let at = at.unwrap_or_else(Timestamp::now);
        let _ = self.peers.channel.send(PeerNotice::FlushRequested(at));
        Ok(at)
    }

    async fn confirm_flush(&self, me: &str, at: Timestamp, redis_up: bool) -> Result<(), StoreError> {
        self.faults.enter("confirm_flush").await?;
        let now = Timestamp::now().millis();
        let mut rows = self.peers.lock();
        let row = rows.entry(me.to_owned()).or_insert((now, 0, false));
        if at.millis() >= row.1 {
            (row.1, row.2) = (at.millis(), redis_up);
        }
        row.0 = now;
        drop(rows);
        let _ = self.peers.channel.send(PeerNotice::Flushed);
        Ok(())
    }

    async fn flush_state(&self, at: Timestamp, live_ms: i64) -> Result<FlushState, StoreError> {
        self.faults.enter("flush_state").await?;
        let now = Timestamp::now().millis();
        let rows = self.peers.lock();
        let live: Vec<_> = rows.values().filter(|(seen, ..)| *seen >= now - live_ms).collect();
        Ok(if live.iter().any(|&&(_, flushed, up)| flushed >= at.millis() && up) {
            FlushState::RedisUpElsewhere
        } else if live.iter().any(|&&(_, flushed, _)| flushed < at.millis()) {
            FlushState::Waiting
        } else {
            FlushState::Flushed
        })
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
