//! What the fake tiers remember of records they no longer hold, as Redis's
//! gone markers and PostgreSQL's tombstones and expired rows do, and the
//! tests of 410 across the tiers (`store/tiered/gone.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::fakes::{FakeDurable, FakeHot};
use super::{PERSIST, Tiers, advance, id, record_at};
use crate::domain::{ProgressId, StoredRecord, Timestamp};
use crate::store::{DEFAULT_TOMBSTONE, Gone, GoneKind, ProgressStore, StoreError, Tombstones};

/// The hot fake's delete markers (an expired record's is its own entry,
/// which the fake keeps past its expiry).
#[derive(Default)]
pub(super) struct FakeMarkers(Mutex<HashMap<String, Gone>>);

impl FakeMarkers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gone>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` was deleted now.
    pub(super) fn deleted(&self, id: &ProgressId) {
        self.lock().insert(id.as_str().to_owned(), Gone::deleted(Timestamp::now()));
    }
}

impl FakeHot {
    /// Redis restarted empty: no record, no marker.
    pub(super) fn lose_everything(&self) {
        self.lock().clear();
        self.markers.lock().clear();
    }
}

#[async_trait]
impl Tombstones for FakeHot {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        self.faults.enter("gone").await?;
        let now = Timestamp::now();
        let expired = self.lock().get(id.as_str()).map(|(_, expires)| Gone::expired(Timestamp(*expires)));
        let gone = match expired {
            Some(gone) if gone.at > now => None,
            Some(gone) => Some(gone),
            None => self.markers.lock().get(id.as_str()).copied(),
        };
        Ok(gone.filter(|g| g.kept_at(DEFAULT_TOMBSTONE, now)))
    }
}

#[async_trait]
impl Tombstones for FakeDurable {
    async fn gone(&self, id: &ProgressId) -> Result<Option<Gone>, StoreError> {
        self.faults.enter("gone").await?;
        let now = Timestamp::now();
        let gone = self.lock().get(id.as_str()).and_then(|row| match &row.record {
            None => Some(Gone::deleted(Timestamp(row.updated))),
            Some(_) if row.expires <= now.millis() => Some(Gone::expired(Timestamp(row.expires))),
            Some(_) => None,
        });
        Ok(gone.filter(|g| g.kept_at(DEFAULT_TOMBSTONE, now)))
    }
}

/// A record of `id` that expires `ttl_ms` from now.
fn short_lived(id: &str, ttl_ms: i64) -> StoredRecord {
    let long = record_at(id, 1, "running", Timestamp::now());
    let mut meta = *long.meta();
    meta.x = Timestamp::now().millis() + ttl_ms;
    StoredRecord::encode(&meta, &long.record().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_delete_is_gone_in_redis_and_still_in_postgresql_after_redis_lost_everything() {
    let tiers = Tiers::start().await;
    let id = id("job");
    assert!(tiers.write(&id, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    assert!(tiers.store.delete(&id).await.unwrap());
    let gone = tiers.store.gone(&id).await.unwrap().expect("deleted: 410");
    assert_eq!(gone.kind, GoneKind::Deleted);
    assert_eq!(tiers.durable.faults.calls("gone"), 0, "Redis's marker answers: PostgreSQL is not asked");
    tiers.hot.lose_everything();
    let again = tiers.store.gone(&id).await.unwrap().expect("PostgreSQL keeps the tombstone");
    assert_eq!(again.kind, GoneKind::Deleted);
    assert_eq!(tiers.durable.faults.calls("gone"), 1);
    assert_eq!(tiers.store.gone(&super::id("never")).await.unwrap(), None, "never existed: 404");
}

#[tokio::test(start_paused = true)]
async fn an_expired_record_is_gone_in_every_tier() {
    let tiers = Tiers::start().await;
    let id = id("job");
    assert!(tiers.store.compare_and_set(&id, 0, &short_lived("job", 1_000), 1_000).await.unwrap());
    advance(PERSIST * 4).await;
    assert_eq!(tiers.store.gone(&id).await.unwrap(), None, "live: not gone");
    advance(std::time::Duration::from_secs(2)).await;
    assert!(tiers.store.get(&id).await.unwrap().is_none());
    let gone = tiers.store.gone(&id).await.unwrap().expect("expired: 410");
    assert_eq!(gone.kind, GoneKind::Expired);
    tiers.hot.lose_everything();
    let gone = tiers.store.gone(&id).await.unwrap().expect("PostgreSQL keeps the expired row");
    assert_eq!(gone.kind, GoneKind::Expired);
}

#[tokio::test(start_paused = true)]
async fn without_a_marker_in_redis_and_postgresql_unreachable_gone_is_unavailable_never_404() {
    let tiers = Tiers::start().await;
    let id = id("job");
    assert!(tiers.write(&id, &record_at("job", 1, "running", Timestamp::now())).await.unwrap());
    assert!(tiers.store.delete(&id).await.unwrap());
    tiers.hot.lose_everything();
    tiers.durable.faults.fail("gone");
    let answer = tiers.store.gone(&id).await;
    assert!(matches!(answer, Err(StoreError::Unavailable { .. })), "{answer:?}");
}
