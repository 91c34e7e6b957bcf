//! What `/readyz` and `/admin/stats` say of each tier: whether it answers
//! a probe and how fast, its breaker, and the most recent failure of any
//! operation on it (scrubbed of the tier's password). Separate from the
//! backends because every tier and the tiering layer report the same way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;
use super::tiered::BreakerState;
use crate::domain::Timestamp;
use crate::secrets::{scrub, url_password};

/// Whether a dependency answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierState {
    /// It answered the probe.
    Up,
    /// It did not answer, answered with an error, or (PostgreSQL) is not migrated yet.
    Down,
    /// The settings do not use it.
    NotConfigured,
}

impl TierState {
    /// Lower-case name for `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            TierState::Up => "up",
            TierState::Down => "down",
            TierState::NotConfigured => "not_configured",
        }
    }
}

/// One tier's answer to a health probe.
#[derive(Debug, Clone)]
pub struct TierHealth {
    /// `memory`, `redis` or `postgres`.
    pub tier: &'static str,
    /// Up or down (a store only reports tiers it has).
    pub state: TierState,
    /// How long the probe took, whether it succeeded or not.
    pub latency: Duration,
    /// The most recent failure of any operation on this tier (the probe's
    /// own when it is down), with its time; never holds a password.
    pub last_error: Option<(Timestamp, String)>,
    /// The tier's circuit breaker, where it has one.
    pub breaker: Option<BreakerState>,
}

impl TierHealth {
    /// The health of `tier` from a probe that took `latency`.
    pub fn from_probe(
        tier: &'static str,
        probe: Result<(), StoreError>,
        latency: Duration,
        errors: &LastError,
    ) -> Self {
        if let Err(e) = &probe {
            errors.record(e);
        }
        Self {
            tier,
            state: if probe.is_ok() { TierState::Up } else { TierState::Down },
            latency,
            last_error: errors.get(),
            breaker: None,
        }
    }
}

/// The most recent failure seen on one tier, for `/readyz` and `/admin/stats`.
/// Messages are scrubbed of the tier's password before they are kept.
#[derive(Debug, Default)]
pub struct LastError {
    secret: Option<String>,
    // A std Mutex: set and read without awaiting.
    last: Mutex<Option<(Timestamp, String)>>,
}

impl LastError {
    /// A tracker that removes the password of `url` from every message.
    pub fn for_url(url: &str) -> Self {
        Self { secret: url_password(url).filter(|p| !p.is_empty()), last: Mutex::new(None) }
    }

    /// Keeps `e` if it says the tier failed (corrupt data is not a tier failure).
    pub fn record(&self, e: &StoreError) {
        if let StoreError::Unavailable { .. } = e {
            let mut text = e.to_string();
            if let Some(secret) = &self.secret {
                text = scrub(&text, secret);
            }
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Timestamp::now(), text));
        }
    }

    /// Passes `result` on, keeping its error if it has one.
    pub fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.record(e);
        }
        result
    }

    /// The most recent failure and its time.
    pub fn get(&self) -> Option<(Timestamp, String)> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How a failure to open a connection starts, in every tier's messages.
pub(crate) const CANNOT_CONNECT: &str = "cannot connect: ";

/// A pool's error said plainly: deadpool's "Error occurred while creating
/// a new object: " becomes [`CANNOT_CONNECT`].
pub(crate) fn connect_failure(error: &str) -> String {
    error.replace("Error occurred while creating a new object: ", CANNOT_CONNECT)
}

/// How long `probe` takes, and what it answered.
pub(crate) async fn timed<T>(probe: impl Future<Output = Result<T, StoreError>>) -> (Result<(), StoreError>, Duration) {
    let started = Instant::now();
    let result = probe.await.map(|_| ());
    (result, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_scrubs_passwords() {
        let errors = LastError::for_url("postgres://u:s3cret@h/db");
        errors.record(&StoreError::Unavailable { tier: "postgres", reason: "auth s3cret failed".into() });
        assert_eq!(errors.get().unwrap().1, "postgres is unavailable: auth **** failed");
        // The key=value form that libpq's PG* variables build.
        let errors = LastError::for_url("host='h' user='u' password='s3\\'cret' dbname='d'");
        errors.record(&StoreError::Unavailable { tier: "postgres", reason: "auth s3'cret failed".into() });
        assert_eq!(errors.get().unwrap().1, "postgres is unavailable: auth **** failed");
    }
}
