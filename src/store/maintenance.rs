//! What the operations routes need from the stores: health probes
//! (`/readyz`), cleanup of expired data, bulk deletes by filter, counts by
//! status, and the background cleanup task. The trait methods live on
//! [`ProgressStore`]; the types they exchange live here.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::breaker::BreakerState;
use super::{ProgressStore, StoreError};
use crate::domain::{CorruptRecord, ProgressId, Status, StoredRecord, Timestamp};

/// Records handled per statement or per round trip by cleanup and bulk deletes.
pub const MAINTENANCE_BATCH: usize = 1000;

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
                text = text.replace(secret.as_str(), "****");
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

/// The password in a `scheme://user:password@host/…` URL, as written.
fn url_password(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password.to_owned())
}

/// How long `probe` takes, and what it answered.
pub async fn timed<T>(probe: impl Future<Output = Result<T, StoreError>>) -> (Result<(), StoreError>, Duration) {
    let started = Instant::now();
    let result = probe.await.map(|_| ());
    (result, started.elapsed())
}

/// Which records a bulk delete removes: all the given conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// The record has this status.
    pub status: Option<Status>,
    /// The record's id starts with this (already checked against the id alphabet).
    pub id_prefix: Option<String>,
    /// The record's last write (`updated_at`) is before this time.
    pub updated_before: Option<Timestamp>,
}

impl RecordFilter {
    /// Whether no condition is set (such a filter would match everything).
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.id_prefix.is_none() && self.updated_before.is_none()
    }

    /// Whether the id alone already rules the record out.
    pub fn matches_id(&self, id: &str) -> bool {
        self.id_prefix.as_deref().is_none_or(|p| id.starts_with(p))
    }

    /// Whether the record `id` as stored matches every condition.
    pub fn matches(&self, id: &ProgressId, stored: &StoredRecord) -> Result<bool, CorruptRecord> {
        if !self.matches_id(id.as_str()) {
            return Ok(false);
        }
        if let Some(status) = self.status
            && status_of(stored)? != status
        {
            return Ok(false);
        }
        if let Some(before) = self.updated_before
            && stored.record()?.updated_at >= before
        {
            return Ok(false);
        }
        Ok(true)
    }
}

/// The status of a stored record without parsing the whole document: the
/// body starts `{"id":"…","version":N,"status":"…"` (ids hold no quotes).
/// Anything else falls back to a full parse.
pub fn status_of(stored: &StoredRecord) -> Result<Status, CorruptRecord> {
    const KEY: &[u8] = b",\"status\":\"";
    if let Some(status) = stored.decoded_status().or(stored.meta().t) {
        return Ok(status);
    }
    let raw = stored.raw();
    let head = &raw[..raw.len().min(400)];
    let quick = head
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| &head[at + KEY.len()..])
        .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]))
        .and_then(|name| std::str::from_utf8(name).ok())
        .and_then(Status::parse);
    match quick {
        Some(status) => Ok(status),
        None => Ok(stored.record()?.status),
    }
}

/// What one cleanup removed, per tier; `None` where the tier is not configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Rows of PostgreSQL past `expires_at`: expired records and tombstones.
    pub postgres_expired_rows: Option<u64>,
    /// Expired entries dropped from process memory.
    pub memory_expired: Option<u64>,
    /// Redis expires keys by itself; what outlives them are their entries
    /// in the listing indexes, removed by cleanup.
    pub redis_orphaned_index_entries: Option<u64>,
}

impl CleanupReport {
    /// Everything removed.
    pub fn total(&self) -> u64 {
        [self.postgres_expired_rows, self.memory_expired, self.redis_orphaned_index_entries].into_iter().flatten().sum()
    }
}

/// Live records per status, and which tier counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    /// `postgres`, `redis` or `memory`.
    pub source: &'static str,
    /// Counts in the order of [`Status::ALL`].
    pub counts: [u64; 5],
}

impl StatusCounts {
    /// No records, counted by `source`.
    pub fn new(source: &'static str) -> Self {
        Self { source, counts: [0; 5] }
    }

    /// Counts one record.
    pub fn add(&mut self, status: Status, n: u64) {
        let i = Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status");
        self.counts[i] += n;
    }

    /// The count for `status`.
    pub fn get(&self, status: Status) -> u64 {
        self.counts[Status::ALL.iter().position(|s| *s == status).expect("ALL holds every status")]
    }

    /// All records.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The write-behind backlog at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogSummary {
    /// Records with an update PostgreSQL has not seen.
    pub pending: usize,
    /// How long the oldest of them has waited.
    pub oldest_age: Option<Duration>,
}

/// Deletes the records of `page` that match `filter` through `store`, each
/// only at the version that was read, so that a write landing in between
/// wins over the delete. Returns the ids deleted.
pub async fn delete_page(
    store: &dyn ProgressStore,
    page: Vec<(ProgressId, StoredRecord)>,
    filter: &RecordFilter,
) -> Result<Vec<ProgressId>, StoreError> {
    let mut deleted = Vec::new();
    for (id, stored) in page {
        let matches = match filter.matches(&id, &stored) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "bulk delete skips a record that does not parse");
                false
            }
        };
        if matches && store.compare_and_delete(&id, stored.version()).await? {
            deleted.push(id);
        }
    }
    Ok(deleted)
}

/// Runs [`ProgressStore::cleanup`] every `every` for as long as the store
/// lives, on one instance at a time (the store's own lock decides which).
/// The first run is one interval after start-up. Must be called inside Tokio.
pub fn spawn_cleanup(store: &Arc<dyn ProgressStore>, every: Duration) {
    let weak: Weak<dyn ProgressStore> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            let outcome = store.cleanup(true).await;
            if let Ok(Some(report)) = &outcome {
                crate::metrics::records_cleaned_up(report.total());
            }
            match outcome {
                Ok(Some(report)) if report.total() > 0 => tracing::info!(
                    postgres_expired_rows = report.postgres_expired_rows,
                    memory_expired = report.memory_expired,
                    "cleanup purged expired data"
                ),
                Ok(Some(_)) => tracing::debug!("cleanup found nothing to purge"),
                Ok(None) => tracing::debug!("cleanup skipped: another instance is running it"),
                Err(e) => tracing::warn!(error = %e, "cleanup failed; retrying at the next interval"),
            }
        }
    });
}

/// `*`, `?`, `[`, `]` and `\` escaped for a Redis `MATCH` pattern.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClientFields, Touched, WritePolicy, apply_write};
    use serde_json::json;

    fn stored(id: &str, body: serde_json::Value, at: i64) -> (ProgressId, StoredRecord) {
        let policy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };
        let id = ProgressId::parse(id).unwrap();
        let fields = ClientFields::from_json(&body, 600).unwrap();
        let (r, m) = apply_write(&id, None, fields, Touched::default(), Timestamp(at), &policy);
        (id, StoredRecord::encode(&m, &r))
    }

    #[test]
    fn reads_the_status_from_the_head_of_the_document() {
        for status in Status::ALL {
            let (_, s) = stored("a-b.c:d_e", json!({"status": status.as_str(), "metadata": {"status": "x"}}), 1);
            assert_eq!(status_of(&s).unwrap(), status);
        }
    }

    #[test]
    fn a_filter_needs_every_condition() {
        let (id, s) = stored("job-1", json!({"status": "failed"}), 1_000);
        let f = |status, prefix: Option<&str>, before| RecordFilter {
            status,
            id_prefix: prefix.map(str::to_owned),
            updated_before: before,
        };
        assert!(f(None, None, None).is_empty());
        assert!(f(Some(Status::Failed), None, None).matches(&id, &s).unwrap());
        assert!(!f(Some(Status::Running), None, None).matches(&id, &s).unwrap());
        assert!(f(Some(Status::Failed), Some("job-"), Some(Timestamp(1_001))).matches(&id, &s).unwrap());
        assert!(!f(Some(Status::Failed), Some("job-"), Some(Timestamp(1_000))).matches(&id, &s).unwrap());
        assert!(!f(None, Some("jobs"), None).matches(&id, &s).unwrap());
    }

    #[test]
    fn finds_and_scrubs_passwords() {
        assert_eq!(url_password("redis://default:hunter2@h:1/0").as_deref(), Some("hunter2"));
        assert_eq!(url_password("redis://h:1"), None);
        let errors = LastError::for_url("postgres://u:s3cret@h/db");
        errors.record(&StoreError::Unavailable { tier: "postgres", reason: "auth s3cret failed".into() });
        assert_eq!(errors.get().unwrap().1, "postgres is unavailable: auth **** failed");
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
