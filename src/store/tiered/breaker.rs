//! A circuit breaker per store, so a dead or blackholed tier costs a
//! request nothing once it is known to be down.
//!
//! - **Closed**: requests use the store; `threshold` consecutive failures open it.
//! - **Open**: requests skip the store at once. A background task (see
//!   `TieredStore`) probes it every `probe_every` and, once a probe
//!   succeeds and any recovery work is done, half-opens it.
//! - **HalfOpen**: requests use the store again; the first failure opens
//!   it, the first success closes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::Timestamp;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// The store is used.
    Closed,
    /// The store is skipped until a probe succeeds.
    Open,
    /// The store is tried again; one failure re-opens.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for logs, health and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl crate::metrics::GaugeValue for BreakerState {
    /// 0 closed, 1 half-open, 2 open: the order of growing trouble.
    fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// One store's breaker. Lock-free: checked on every request.
#[derive(Debug)]
pub struct CircuitBreaker {
    tier: &'static str,
    state: AtomicU8,
    failures: AtomicU32,
    threshold: u32,
    opened_at_ms: AtomicI64,
    probe_every: Duration,
    /// Woken when the breaker opens (not when it starts open).
    opened: Arc<Notify>,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

impl CircuitBreaker {
    /// A closed breaker that opens after `threshold` consecutive failures.
    pub fn new(tier: &'static str, threshold: u32, probe_every: Duration) -> Self {
        Self {
            tier,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            opened_at_ms: AtomicI64::new(0),
            probe_every,
            opened: Arc::new(Notify::new()),
        }
    }

    /// A breaker that starts open (a store not yet known to work). Quietly:
    /// nothing has failed yet, so nothing is logged.
    pub fn new_open(tier: &'static str, threshold: u32, probe_every: Duration) -> Self {
        let breaker = Self::new(tier, threshold, probe_every);
        breaker.state.store(OPEN, Ordering::Release);
        breaker
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may use the store now.
    pub fn allows(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN
    }

    /// When it last opened (ms since the epoch); 0 if never.
    pub fn opened_at(&self) -> Timestamp {
        Timestamp(self.opened_at_ms.load(Ordering::Acquire))
    }

    /// Notified each time the breaker opens (a permit is kept when nobody
    /// waits, so an opening is not missed).
    pub fn on_open(&self) -> Arc<Notify> {
        self.opened.clone()
    }

    /// How often an open breaker's store is probed.
    pub fn probe_every(&self) -> Duration {
        self.probe_every
    }

    /// The store answered.
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            tracing::info!(tier = self.tier, "circuit breaker closed");
        }
    }

    /// The store failed; returns true when this failure opened the breaker.
    pub fn record_failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        let trip = state == HALF_OPEN || (state == CLOSED && failures >= self.threshold);
        let opened = trip && self.open();
        if opened {
            crate::metrics::breaker_opened(self.tier);
        }
        opened
    }

    /// Opens the breaker; returns true when it was not open already.
    pub fn open(&self) -> bool {
        let was = self.state.swap(OPEN, Ordering::AcqRel);
        if was != OPEN {
            self.opened_at_ms.store(Timestamp::now().millis(), Ordering::Release);
            tracing::warn!(tier = self.tier, "circuit breaker open: requests skip this tier until it answers again");
            self.opened.notify_one();
        }
        was != OPEN
    }

    /// A probe succeeded and recovery is done: let requests try the store.
    pub fn half_open(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            tracing::info!(tier = self.tier, "circuit breaker half-open: trying the tier again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_closes_through_half_open() {
        let b = CircuitBreaker::new("t", 3, Duration::from_millis(10));
        assert!(!b.record_failure() && !b.record_failure());
        b.record_success(); // resets the count
        assert!(!b.record_failure() && !b.record_failure());
        assert!(b.record_failure(), "the third consecutive failure opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allows());
        b.half_open();
        assert!(b.allows());
        assert!(b.record_failure(), "one failure while half-open re-opens");
        b.half_open();
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.opened_at().millis() > 0);
    }
}
