//! The hand-over to PostgreSQL when Redis fails: writes move there as soon
//! as every live instance has flushed what it acknowledged from Redis, not
//! after a fixed wait.
//!
//! While Redis is the store of record, each instance holds updates it
//! acknowledged that PostgreSQL has not seen yet (its backlog). When Redis
//! goes away with them, a write made in PostgreSQL on its older version
//! would fork the record, and whichever version landed last would undo an
//! acknowledged write. So writes in PostgreSQL wait until those backlogs
//! have landed; instances say when theirs has, through PostgreSQL ([`Peers`]):
//!
//! 1. Every instance keeps a heartbeat row (every [`HEARTBEAT_EVERY`]).
//! 2. An instance whose Redis breaker opens asks all to flush (a
//!    `NOTIFY`), as of the database's time, and flushes its own backlog.
//! 3. Every instance that hears a request checks whether Redis answers it
//!    (a PING, unless its breaker is open; a failed PING opens it, so that
//!    it too copies back before using Redis again), waits for its Redis
//!    writes in flight to reach its backlog (the `hot_writes` gate), flushes
//!    the whole backlog and confirms, recording the request's time in its
//!    row and whether Redis answered.
//! 4. The asking instance writes in PostgreSQL once every instance with a
//!    heartbeat in the last [`LIVE_MS`] has confirmed a flush at or after
//!    its request, none of them reaching Redis. If one still reaches it,
//!    this instance is cut off from a Redis the others use: a write here
//!    would fork records they write there, so it writes nowhere until its
//!    own probe reaches Redis. It asks again every [`ASK_AGAIN`] until the
//!    hand-over is done, for an instance that missed the request, started
//!    since, or lost Redis since.
//!
//! With one instance, that is its own flush: a few milliseconds, during
//! which writes wait rather than fail. The fixed settle time
//! (`write.rs`, `settle_ms`) stays as the bound for an instance that does
//! not answer at all; an instance whose heartbeat stopped is taken as gone,
//! and a crash loses its backlog in any case (README, "What a crash can
//! lose"). No bound lets a cut-off instance write.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;

use super::breaker::BreakerState;
use super::tiers::{FlushState, PeerNotice};
use super::{DurableTier, HotTier, TieredStore};
use crate::domain::Timestamp;

/// How often each instance says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// An instance silent for this long (three heartbeats) is taken as gone,
/// and not waited for: one killed just before Redis fails holds the
/// hand-over up for no longer than this. Its heartbeat has a task of its
/// own, so only an instance that cannot reach PostgreSQL (and so could not
/// flush) or has died misses three.
pub const LIVE_MS: i64 = 3_000;
/// How often an unanswered flush request is sent again.
const ASK_AGAIN: Duration = Duration::from_millis(500);
/// How often the coordinator wakes when nothing else wakes it.
const TICK: Duration = Duration::from_millis(250);

/// How the hand-over of a Redis outage (its breaker's opening time, ms)
/// ended: every instance flushed and none reaches Redis (`ready`), or one
/// still reaches it (this instance is cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    opened: i64,
    ready: bool,
}

impl Decision {
    /// Nothing decided yet.
    pub(super) const NONE: Self = Self { opened: -1, ready: false };
}

/// The hand-over of one Redis outage, as the coordinator follows it.
struct Outage {
    /// When this instance's Redis breaker opened.
    opened: Timestamp,
    /// The flush request (the database's time), once it went out.
    request: Option<Timestamp>,
    /// When it last went out.
    asked: Instant,
}

impl<H: HotTier, D: DurableTier> TieredStore<H, D> {
    /// Whether every live instance has flushed for the outage that began at
    /// `opened` (this instance's Redis breaker).
    pub(super) fn handed_over(&self, opened: Timestamp) -> bool {
        *self.handed_over.borrow() == Decision { opened: opened.millis(), ready: true }
    }

    /// Whether another instance still reached Redis when asked during the
    /// outage that began at `opened`: this one is cut off from it.
    pub(super) fn cut_off(&self, opened: Timestamp) -> bool {
        *self.handed_over.borrow() == Decision { opened: opened.millis(), ready: false }
    }

    /// A write about to go to PostgreSQL because Redis is down waits here
    /// until the hand-over of this outage is decided, at most until the
    /// settle time has passed and at most the database timeout; then
    /// [`Self::durable_fence`] decides. No wait once it is decided, nor for
    /// an instance fenced off (which waits the settle time from the refusal).
    pub(super) async fn await_hand_over(&self) {
        let opened = self.hot_breaker.opened_at();
        if self.hot.is_none() || self.handed_over.borrow().opened == opened.millis() || self.fenced_at() > opened {
            return;
        }
        let left = opened.plus_millis(self.settle_ms()).millis() - Timestamp::now().millis();
        let Ok(left) = u64::try_from(left) else { return };
        let wait = Duration::from_millis(left).min(self.config.first_answer_wait);
        let mut decided = self.handed_over.subscribe();
        let _ = tokio::time::timeout(wait, decided.wait_for(|d| d.opened == opened.millis())).await;
    }

    /// Whether Redis answers this instance, for a flush confirmation: not
    /// while its breaker is open; else a PING, and a failed PING opens the
    /// breaker, since the asking instance may now write in PostgreSQL and
    /// this one must copy that back before it uses Redis again.
    async fn redis_answers(&self) -> bool {
        let Some(hot) = &self.hot else { return false };
        if self.hot_breaker.state() == BreakerState::Open {
            return false;
        }
        if hot.store.ping().await.is_ok() {
            return true;
        }
        self.hot_breaker.open();
        false
    }

    /// Answers a flush request of `at`: once every Redis write of this
    /// instance that has begun has reached the backlog (or PostgreSQL), the
    /// whole backlog goes to PostgreSQL, and this instance confirms.
    async fn flush_for_peers(&self, at: Timestamp) {
        let redis_up = self.redis_answers().await;
        drop(self.hot_writes.write().await);
        if let Err(e) = self.flush(true).await {
            tracing::debug!(error = %e, "cannot flush for the other instances yet");
            return;
        }
        if let Err(e) = self.durable.confirm_flush(&self.instance, at, redis_up).await {
            tracing::debug!(error = %e, "could not confirm the flush");
        }
    }

    /// One step of the hand-over of the current outage, if any: asks the
    /// instances to flush (again), flushes this one, and checks whether all
    /// have (`check`: a confirmation came in).
    async fn hand_over(&self, outage: Option<Outage>, check: bool) -> Option<Outage> {
        if self.hot_breaker.state() != BreakerState::Open {
            return None;
        }
        let opened = self.hot_breaker.opened_at();
        let mut outage = match outage {
            Some(o) if o.opened == opened => o,
            _ => Outage { opened, request: None, asked: Instant::now() },
        };
        // Done. (Past the settle time writes no longer wait for an instance
        // that does not answer, but asking goes on: one that does may say
        // this instance is cut off.)
        if self.handed_over(opened) {
            return Some(outage);
        }
        let mut check = check;
        if outage.request.is_none() || outage.asked.elapsed() >= ASK_AGAIN {
            match self.durable.request_flush(outage.request).await {
                Ok(at) => {
                    if outage.request.is_none() {
                        tracing::info!("redis is down: asked every instance to flush its backlog to postgres");
                        // Our own part at once, not when our notice comes back.
                        self.flush_for_peers(at).await;
                    }
                    (outage.request, outage.asked, check) = (Some(at), Instant::now(), true);
                }
                Err(e) => tracing::debug!(error = %e, "could not ask the other instances to flush"),
            }
        }
        if let (true, Some(at)) = (check, outage.request) {
            let decided = |ready| Decision { opened: opened.millis(), ready };
            match self.durable.flush_state(at, LIVE_MS).await {
                Ok(FlushState::Flushed) => {
                    self.handed_over.send_replace(decided(true));
                    tracing::info!(
                        after_ms = Timestamp::now().millis() - opened.millis(),
                        "every instance has flushed its backlog: writes go to postgres"
                    );
                }
                Ok(FlushState::RedisUpElsewhere) => {
                    if !self.cut_off(opened) {
                        tracing::warn!(
                            "redis answers other instances but not this one: writes here are refused until it does"
                        );
                    }
                    self.handed_over.send_replace(decided(false));
                }
                Ok(FlushState::Waiting) => {}
                Err(e) => tracing::debug!(error = %e, "could not check the other instances' flushes"),
            }
        }
        Some(outage)
    }
}

/// The heartbeat, one per instance with Redis over PostgreSQL, in a task of
/// its own so that a flush or a slow hand-over step never delays it (an
/// instance whose heartbeat lapses is not waited for). Ends with the store.
pub(super) async fn heartbeat<H: HotTier, D: DurableTier>(store: Weak<TieredStore<H, D>>) {
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(s) = store.upgrade() else { return };
        if let Err(e) = s.durable.heartbeat(&s.instance).await {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
    }
}

/// The coordinator, one per instance with Redis over PostgreSQL: answers
/// every instance's flush requests, and drives this instance's hand-over
/// when its Redis breaker opens. Ends with the store.
pub(super) async fn coordinate<H: HotTier, D: DurableTier>(store: Weak<TieredStore<H, D>>) {
    let Some((mut notices, opened)) = store.upgrade().map(|s| (s.durable.peer_notices(), s.hot_breaker.on_open()))
    else {
        return;
    };
    let mut outage = None;
    loop {
        let (mut flush_for, mut check) = (None::<Timestamp>, false);
        let mut note = |notice: PeerNotice| match notice {
            PeerNotice::FlushRequested(at) => flush_for = flush_for.max(Some(at)),
            PeerNotice::Flushed | PeerNotice::Resumed => check = true,
        };
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok(notice) => note(notice),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => note(PeerNotice::Resumed),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = opened.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        loop {
            match notices.try_recv() {
                Ok(notice) => note(notice),
                Err(TryRecvError::Lagged(_)) => note(PeerNotice::Resumed),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let Some(s) = store.upgrade() else { return };
        if let Some(at) = flush_for {
            s.flush_for_peers(at).await;
        }
        outage = s.hand_over(outage, check).await;
        drop(s);
    }
}
