//! The progress operations, independent of HTTP: read, the write loop
//! (read, merge, derive, compare-and-set, retry on a lost race), the cancel
//! request (the same loop, in `service/cancel.rs`), delete,
//! and what listing, the admin routes, `/readyz` and `/metrics` ask of the
//! store.
//!
//! This is the handlers' only way to the store: `http` holds a
//! [`ProgressService`], never the store itself. The plain data types those
//! operations take and return (a listing query and page, a bulk-delete
//! filter, tier health, counts) are defined by the store and re-exported
//! here, so `http` imports nothing from `store`; the store's trait and its
//! tiers stay out of reach of the handlers.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::domain::{
    ClientFields, EventSet, ProgressId, ServerState, StoredRecord, Timestamp, Touched, WritePolicy,
    check_top_level_keys, events_of_write, next_record, ttl_ms,
};
use crate::error::Error;
use crate::live::Live;
use crate::store::{Read, Store, StoreError};
use crate::webhooks::Webhooks;

mod cancel;

pub use cancel::CancelRequested;

pub use crate::store::{
    BacklogSummary, BreakerState, CleanupReport, DEFAULT_LIMIT, ListCursor, ListPage, ListQuery, MAX_LIMIT,
    RecordFilter, StatusCounts, TierHealth, TierState,
};

/// How many times a write re-reads after losing a compare-and-set race.
/// Every lost race means another write landed, so N concurrent writers
/// finish within N attempts; the bound only stops a pathological storm.
const MAX_WRITE_ATTEMPTS: usize = 256;

/// A precondition from `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: the record must exist.
    Any,
    /// The versions named (entity tags that are not versions never match).
    Versions(Vec<u64>),
}

impl IfMatch {
    /// Whether the current version (`None`: no record) satisfies the condition.
    pub fn matches(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (IfMatch::Any, Some(_)) => true,
            (IfMatch::Versions(v), Some(c)) => v.contains(&c),
        }
    }

    /// Only a named version (not `*`) shows that the writer saw the record finish.
    fn names(&self, version: u64) -> bool {
        matches!(self, IfMatch::Versions(v) if v.contains(&version))
    }
}

/// A write's body.
// Unboxed: it lives on the stack for one request, and boxing the read
// fields would add an allocation to every PUT.
#[allow(clippy::large_enum_variant)]
pub enum WriteBody {
    /// PUT: the whole client state.
    Replace(Value),
    /// PUT: the whole client state, already read by
    /// [`ClientFields::from_body_fast`] from `text` (read again from there
    /// if the write has to be tried again).
    Read {
        /// The fields `text` holds.
        fields: ClientFields,
        /// The body as sent.
        text: bytes::Bytes,
    },
    /// PATCH: an RFC 7386 merge patch.
    Merge(Value),
}

/// What a successful write produced.
pub struct Written {
    /// The stored record.
    pub record: StoredRecord,
    /// Whether the write created it.
    pub created: bool,
}

/// Progress operations over one store.
#[derive(Clone)]
pub struct ProgressService {
    store: Arc<dyn Store>,
    policy: WritePolicy,
    max_ttl_seconds: u64,
    live: Live,
    hooks: Option<Arc<Webhooks>>,
}

/// The webhook events a write caused that some target wants, and the
/// record's own target (its `webhook` field).
type Fired = Option<(EventSet, Option<serde_json::Map<String, Value>>)>;

impl ProgressService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>, policy: WritePolicy, max_ttl_seconds: u64) -> Self {
        let live = Live::new(store.clone());
        Self { store, policy, max_ttl_seconds, live, hooks: None }
    }

    /// The service with webhooks: writes that cause an event record its
    /// deliveries before they are acknowledged.
    pub fn with_webhooks(mut self, hooks: Arc<Webhooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The webhooks, when they are on.
    pub fn webhooks(&self) -> Option<&Arc<Webhooks>> {
        self.hooks.as_ref()
    }

    /// Who waits on which record; told of every write through this service.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The largest `ttl_seconds` a write may ask for.
    pub fn max_ttl_seconds(&self) -> u64 {
        self.max_ttl_seconds
    }

    /// The record as the store can give it from memory, without waiting
    /// (`ProgressStore::cached`): what [`get`](Self::get) answers first.
    pub fn cached(&self, id: &ProgressId) -> Option<StoredRecord> {
        self.store.cached(id)
    }

    /// The record, or `None`.
    pub async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, Error> {
        if let Some(record) = self.cached(id) {
            return Ok(Some(record));
        }
        Ok(self.store.get(id).await?)
    }

    /// Why `id` holds no record: 410 `gone` when the store remembers that
    /// it was deleted or expired (within the tombstone time), else 404. Asked
    /// only after a read found nothing, so reads that find the record pay
    /// nothing for it; a store that cannot tell answers 503.
    pub async fn absent(&self, id: &ProgressId) -> Error {
        match self.store.gone(id).await {
            Ok(Some(gone)) => Error::Gone { id: id.as_str().to_owned(), gone },
            Ok(None) => Error::NotFound(format!("no progress record {id}")),
            Err(e) => e.into(),
        }
    }

    /// The record, or why there is none (404, 410).
    pub async fn read(&self, id: &ProgressId) -> Result<StoredRecord, Error> {
        match self.get(id).await? {
            Some(record) => Ok(record),
            None => Err(self.absent(id).await),
        }
    }

    /// Removes the record; `false` when there was none. With `If-Match`,
    /// only the version it names is removed.
    pub async fn delete(&self, id: &ProgressId, if_match: Option<&IfMatch>) -> Result<bool, Error> {
        let Some(condition) = if_match else { return self.delete_unconditionally(id).await };
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let version = self.store.get(id).await?.map(|s| s.version());
            check_if_match(version, Some(condition))?;
            if self.store.compare_and_delete(id, version.unwrap_or(0)).await? {
                crate::metrics::records_deleted(1);
                self.live.changed(id, 0);
                return Ok(true);
            }
        }
        Err(Error::WriteContention)
    }

    /// Removes the record whatever its version.
    async fn delete_unconditionally(&self, id: &ProgressId) -> Result<bool, Error> {
        let deleted = self.store.delete(id).await?;
        if deleted {
            crate::metrics::records_deleted(1);
            self.live.changed(id, 0);
        }
        Ok(deleted)
    }

    /// Applies a PUT or PATCH atomically under the request's preconditions.
    pub async fn write(&self, id: &ProgressId, body: WriteBody, conditions: &Preconditions) -> Result<Written, Error> {
        // Check the body itself before touching the store, so a bad body is
        // a 4xx whatever the record's state. A PATCH's body is checked as
        // the client fields it sets (a merge patch replaces each top-level
        // field it names, or merges into it).
        let mut body = body;
        let mut validated = Some(match &mut body {
            WriteBody::Replace(value) | WriteBody::Merge(value) => {
                ClientFields::from_json(value, self.max_ttl_seconds)?
            }
            WriteBody::Read { fields, .. } => std::mem::take(fields),
        });
        // A PUT's webhook is whole: its host is checked with the body. A
        // PATCH's is checked once merged (it may name only `events`).
        if !matches!(body, WriteBody::Merge(_)) {
            self.check_webhook(validated.as_ref().and_then(|f| f.webhook.as_ref()))?;
        }
        // The first read may come from the read cache, which can be a change
        // notice behind: a refusal that rests on the record's state is only
        // given after reading it again past the cache.
        let mut maybe_cached = true;
        let mut attempt = 0;
        while attempt < MAX_WRITE_ATTEMPTS {
            let mut current = self.store.read(id, if maybe_cached { Read::ToWrite } else { Read::Uncached }).await?;
            // The validated body is used up by the first try; a retry reads it again.
            let fields = match validated.take() {
                Some(fields) => fields,
                None => self.read_again(&body)?,
            };
            let (stored, ttl, fired) = match self.next_version(id, &body, fields, current.as_mut(), conditions) {
                Ok(next) => next,
                // An absent record never comes from the cache.
                Err(e) if maybe_cached && !matches!(e, Error::NotFound(_)) => {
                    maybe_cached = false;
                    continue;
                }
                // A write's own read takes a miss in Redis as absent even
                // when PostgreSQL cannot be asked (a PUT must still create),
                // so a PATCH's 404 is given only once a read that can tell
                // agrees: never a false 404 (it is 503 when the store cannot
                // tell). One more read, on the 404 path only; then 410 if
                // the record is gone rather than unknown.
                Err(Error::NotFound(_)) if matches!(body, WriteBody::Merge(_)) => match self.store.get(id).await? {
                    None => return Err(self.absent(id).await),
                    Some(_) => {
                        maybe_cached = false;
                        attempt += 1;
                        continue;
                    }
                },
                Err(e) => return Err(e),
            };
            if self.store.compare_and_swap(id, current.as_ref(), &stored, ttl).await? {
                crate::metrics::record_written(current.is_none());
                // Recorded before the write is acknowledged (at least once).
                if let (Some(hooks), Some((events, own))) = (&self.hooks, fired) {
                    hooks.record(id, &stored, events, own.as_ref(), 0).await;
                }
                self.live.changed(id, stored.version());
                return Ok(Written { record: stored, created: current.is_none() });
            }
            back_off(attempt).await;
            attempt += 1;
        }
        Err(Error::WriteContention)
    }

    /// A body's fields once more, for a retry (the same as the first time).
    fn read_again(&self, body: &WriteBody) -> Result<ClientFields, Error> {
        match body {
            WriteBody::Replace(value) | WriteBody::Merge(value) => {
                Ok(ClientFields::from_json(value, self.max_ttl_seconds)?)
            }
            WriteBody::Read { text, .. } => std::str::from_utf8(text)
                .ok()
                .and_then(|t| ClientFields::from_body_fast(t, self.max_ttl_seconds, usize::MAX))
                .ok_or_else(|| Error::Internal("a PUT body read once could not be read again".into())),
        }
    }

    /// The record a write stores over `current` (`None`: absent), its time
    /// to live in ms and the webhook events it causes; or why the write is
    /// refused. `body_fields` is the body read by [`ClientFields::from_json`].
    fn next_version(
        &self,
        id: &ProgressId,
        body: &WriteBody,
        body_fields: ClientFields,
        current: Option<&mut StoredRecord>,
        conditions: &Preconditions,
    ) -> Result<(StoredRecord, i64, Fired), Error> {
        let corrupt = |e: crate::domain::CorruptRecord| Error::Internal(e.to_string());
        let current_meta = current.as_deref().map(|s| *s.meta());
        // The record goes along with its bytes: the read cache keeps it for
        // the next write of the record, which then need not parse them.
        let size_hint = current.as_deref().map_or(1024, |c| c.raw().len() + 256);
        let (prev, fields, touched) = match body {
            WriteBody::Replace(_) | WriteBody::Read { .. } => {
                // A PUT replaces every client field: only the server's part
                // of the previous version is read.
                let prev = current.as_deref().map(StoredRecord::server_state).transpose().map_err(corrupt)?;
                check_preconditions(prev.as_ref(), conditions)?;
                let touched = Touched::replace(&body_fields);
                (prev, body_fields, touched)
            }
            WriteBody::Merge(patch) => {
                let Some(current) = current else {
                    check_preconditions(None, conditions)?;
                    return Err(Error::NotFound(format!("no progress record {id}")));
                };
                // Taken from the read cache when it kept the decoded record.
                let (state, mut fields) = current.take_record().map_err(corrupt)?.into_parts();
                check_preconditions(Some(&state), conditions)?;
                // A record may predate a lower PROGRESS_MAX_TTL_SECONDS: the
                // bound applies to what this write asks for, so the stored
                // value is clamped rather than refused.
                fields.ttl_seconds = fields.ttl_seconds.map(|ttl| ttl.min(self.max_ttl_seconds));
                let patch = check_top_level_keys(patch)?;
                let fields = fields.merge(patch, body_fields)?;
                if patch.contains_key("webhook") {
                    self.check_webhook(fields.webhook.as_ref())?;
                }
                (Some(state), fields, Touched::patch(patch))
            }
        };
        let fired = self.fired(prev.as_ref(), &fields);
        let prev = prev.zip(current_meta);
        let (record, meta) = next_record(id, prev, fields, touched, Timestamp::now(), &self.policy);
        let ttl = ttl_ms(record.ttl_seconds);
        Ok((StoredRecord::encode_owned(&meta, record, size_hint), ttl, fired))
    }

    /// A record's `webhook` as written: its host must be allowed (422 naming it).
    fn check_webhook(&self, webhook: Option<&serde_json::Map<String, Value>>) -> Result<(), Error> {
        let Some(webhook) = webhook else { return Ok(()) };
        match &self.hooks {
            Some(hooks) => Ok(hooks.check_record_target(webhook)?),
            None => Err(crate::domain::ValidationError::new(
                "webhook",
                "webhooks are off on this server (PROGRESS_WEBHOOK_SECRET is unset)",
            )
            .into()),
        }
    }

    /// The webhook events a write from `prev` to `fields` causes that some
    /// target wants; `None` (and no work beyond a comparison) for most writes.
    fn fired(&self, prev: Option<&ServerState>, fields: &ClientFields) -> Fired {
        let hooks = self.hooks.as_ref()?;
        let prev =
            prev.map(|p| (p.status, p.stages.last().filter(|s| s.finished_at.is_none()).map(|s| s.name.as_str())));
        let caused = events_of_write(prev, fields.status, fields.stage.as_deref());
        let wanted = hooks.wanted(caused, fields.webhook.as_ref());
        (!wanted.is_empty()).then(|| (wanted, fields.webhook.clone()))
    }
}

/// After losing a compare-and-set race: back off a random while (growing
/// with each loss) so that many writers of one record take turns instead of
/// retrying in lock-step; cheap on Redis, vital on PostgreSQL.
async fn back_off(attempt: usize) {
    let ceiling_ms = 1u64 << attempt.min(5);
    tokio::time::sleep(std::time::Duration::from_micros(fastrand::u64(0..ceiling_ms * 1000))).await;
}

/// Listing, the admin operations and what `/readyz` and `/metrics` report.
impl ProgressService {
    /// One page of live records, newest first, as `query` says.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, Error> {
        Ok(self.store.list(query).await?)
    }

    /// Purges expired data in every tier now; the counts per tier. Not
    /// under the cleanup lock: a concurrent background cleanup only splits
    /// the work (each batch deletes rows the other has not).
    pub async fn cleanup(&self) -> Result<CleanupReport, Error> {
        let store = self.store.clone();
        let report = to_completion(async move { store.cleanup(false).await }).await?.unwrap_or_default();
        crate::metrics::records_cleaned_up(report.total());
        Ok(report)
    }

    /// Deletes every live record matching `filter` from every tier; how many.
    pub async fn delete_matching(&self, filter: RecordFilter) -> Result<u64, Error> {
        let store = self.store.clone();
        let deleted = to_completion(async move { store.delete_matching(&filter).await }).await?;
        crate::metrics::records_deleted(deleted);
        Ok(deleted)
    }

    /// Live records per status. The store's own error, not [`Error`]: the
    /// stats show an operator its cause, where a request would only see
    /// "storage is unavailable".
    pub async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.store.count_by_status().await
    }

    /// Probes every tier, concurrently and each within its own timeout.
    pub async fn health(&self) -> Vec<TierHealth> {
        self.store.health().await
    }

    /// The write-behind backlog, when the store has one.
    pub fn write_behind(&self) -> Option<BacklogSummary> {
        self.store.write_behind()
    }

    /// Sets the gauges that describe the store's state, before a scrape.
    pub fn report_metrics(&self) {
        self.store.report_metrics();
    }
}

/// Runs `work` in a task of its own and waits for it: if the caller is cut
/// short (the client goes away, or the request timeout fires on a very
/// large delete), the batches still run to the end.
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, Error> {
    match tokio::spawn(work).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(Error::Internal(format!("an admin task failed: {e}"))),
    }
}

/// `If-Match` and `If-None-Match` of a write.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// The write applies only to these versions.
    pub if_match: Option<IfMatch>,
    /// The write applies only when the record is not at these versions
    /// (`*`: only when there is no record — a create-only PUT).
    pub if_none_match: Option<IfMatch>,
}

fn check_if_match(version: Option<u64>, if_match: Option<&IfMatch>) -> Result<(), Error> {
    match if_match {
        Some(cond) if !cond.matches(version) => Err(Error::PreconditionFailed(match version {
            Some(v) => format!("If-Match does not name the current version \"{v}\""),
            None => "If-Match was sent but the record does not exist".into(),
        })),
        _ => Ok(()),
    }
}

fn check_preconditions(prev: Option<&ServerState>, conditions: &Preconditions) -> Result<(), Error> {
    let version = prev.map(|r| r.version);
    check_if_match(version, conditions.if_match.as_ref())?;
    if conditions.if_none_match.as_ref().is_some_and(|c| c.matches(version)) {
        return Err(Error::PreconditionFailed(match version {
            Some(v) => format!("If-None-Match names the current version \"{v}\" (or *, and the record exists)"),
            None => unreachable!("nothing matches an absent record"),
        }));
    }
    match prev {
        Some(r) if r.status.is_terminal() && !conditions.if_match.as_ref().is_some_and(|c| c.names(r.version)) => {
            Err(Error::ConflictTerminal { status: r.status, version: r.version })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::store::{ListPage, ListQuery, MemoryStore, ProgressStore};

    /// A store that refuses the first `losses` compare-and-sets, as if
    /// another writer had come first each time.
    struct Racy {
        inner: Arc<MemoryStore>,
        losses: AtomicUsize,
    }

    #[async_trait]
    impl ProgressStore for Racy {
        async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
            self.inner.get(id).await
        }
        async fn compare_and_set(&self, id: &ProgressId, e: u64, r: &StoredRecord, t: i64) -> Result<bool, StoreError> {
            if self.losses.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Ok(false);
            }
            self.inner.compare_and_set(id, e, r, t).await
        }
        async fn compare_and_delete(&self, id: &ProgressId, e: u64) -> Result<bool, StoreError> {
            self.inner.compare_and_delete(id, e).await
        }
        async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
            self.inner.delete(id).await
        }
        async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
            self.inner.list(query).await
        }
    }

    crate::store::operations_of_inner!(Racy, inner);

    fn racy_service() -> (ProgressService, Arc<Racy>) {
        let store = Arc::new(Racy { inner: MemoryStore::start(Duration::from_secs(60)), losses: AtomicUsize::new(0) });
        let policy = WritePolicy { default_ttl_seconds: 77, heartbeat_ms: 1000 };
        (ProgressService::new(store.clone(), policy, 3600), store)
    }

    async fn body(service: &ProgressService, id: &ProgressId, write: WriteBody) -> Value {
        let written = service.write(id, write, &Preconditions::default()).await.unwrap();
        serde_json::from_slice(&written.record.render(0)).unwrap()
    }

    #[tokio::test]
    async fn a_write_that_loses_races_stores_what_it_would_have_stored_at_once() {
        let id = ProgressId::parse("job").unwrap();
        let put = json!({"status": "running", "current": 1, "total": 4, "children": {"a": {"progress": 10}},
                         "metadata": {"n": 9007199254740993u64}, "result": {"x": [1, null]}, "message": "m"});
        let patch = json!({"current": 3, "children": {"b": {"weight": 2}}, "message": null});
        let mut outcomes = Vec::new();
        for losses in [0, 3] {
            let (service, store) = racy_service();
            store.losses.store(losses, Ordering::SeqCst);
            // Without losses, the general path; with them, the fast one, read again for each retry.
            let write = if losses == 0 {
                WriteBody::Replace(put.clone())
            } else {
                let text = put.to_string();
                WriteBody::Read { fields: ClientFields::from_body_fast(&text, 3600, 32).unwrap(), text: text.into() }
            };
            let first = body(&service, &id, write).await;
            assert_eq!(store.losses.load(Ordering::SeqCst), 0, "every loss was retried");
            // Derived, not sent: a PUT that lost races still derives them.
            assert_eq!((first["progress"].clone(), first["ttl_seconds"].clone()), (json!(25), json!(77)));
            store.losses.store(losses, Ordering::SeqCst);
            let second = body(&service, &id, WriteBody::Merge(patch.clone())).await;
            assert_eq!(store.losses.load(Ordering::SeqCst), 0, "every loss was retried");
            outcomes.push((first, second));
        }
        let strip = |mut v: Value| {
            for key in ["created_at", "updated_at", "started_at", "expires_at", "eta", "stages"] {
                v.as_object_mut().unwrap().remove(key);
            }
            v
        };
        let [(a1, a2), (b1, b2)] = <[_; 2]>::try_from(outcomes).unwrap();
        assert_eq!(strip(a1), strip(b1));
        assert_eq!(strip(a2.clone()), strip(b2));
        assert_eq!(a2["progress"], json!(75), "counters win over children: 3 / 4");
        assert_eq!(a2["version"], json!(2));
    }
}
