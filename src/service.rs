//! The progress operations, independent of HTTP: read, the write loop
//! (read, merge, derive, compare-and-set, retry on a lost race), delete.

use std::sync::Arc;

use serde_json::Value;

use crate::domain::{
    apply_write, check_top_level_keys, merge_patch, ttl_ms, ClientFields, ProgressId, ProgressRecord, RecordMeta,
    StoredRecord, Timestamp, Touched, WritePolicy,
};
use crate::error::Error;
use crate::live::Live;
use crate::store::ProgressStore;

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
pub enum WriteBody {
    /// PUT: the whole client state.
    Replace(Value),
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
    store: Arc<dyn ProgressStore>,
    policy: WritePolicy,
    max_ttl_seconds: u64,
    live: Live,
}

impl ProgressService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn ProgressStore>, policy: WritePolicy, max_ttl_seconds: u64) -> Self {
        let live = Live::new(store.clone());
        Self { store, policy, max_ttl_seconds, live }
    }

    /// Who waits on which record; told of every write through this service.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn ProgressStore> {
        &self.store
    }

    /// The record, or `None`.
    pub async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, Error> {
        Ok(self.store.get(id).await?)
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
        // a 4xx whatever the record's state.
        let replacement = match &body {
            WriteBody::Replace(value) => Some(ClientFields::from_json(value, self.max_ttl_seconds)?),
            WriteBody::Merge(patch) => {
                ClientFields::from_json(patch, self.max_ttl_seconds)?;
                None
            }
        };
        for attempt in 0..MAX_WRITE_ATTEMPTS {
            let current = self.store.get(id).await?;
            let prev = current
                .as_ref()
                .map(|s| s.record().map(|r| (r, *s.meta())))
                .transpose()
                .map_err(|e| Error::Internal(e.to_string()))?;
            check_preconditions(prev.as_ref().map(|(r, _)| r), conditions)?;

            let (fields, touched) = match (&body, &replacement, &prev) {
                (WriteBody::Replace(_), Some(fields), _) => (fields.clone(), Touched::replace(fields)),
                (WriteBody::Merge(patch), _, Some((record, _))) => {
                    let mut doc = record.client_json();
                    // A record may predate a lower PROGRESS_MAX_TTL_SECONDS: the
                    // bound applies to what this write asks for, so the stored
                    // value is clamped rather than refused.
                    if let Some(ttl) = doc.get_mut("ttl_seconds") {
                        *ttl = Value::from(ttl.as_u64().unwrap_or(0).min(self.max_ttl_seconds));
                    }
                    merge_patch(&mut doc, patch);
                    let fields = ClientFields::from_json(&doc, self.max_ttl_seconds)?;
                    let patch = check_top_level_keys(patch)?;
                    (fields, Touched::patch(patch))
                }
                (WriteBody::Merge(_), _, None) => return Err(Error::NotFound(format!("no progress record {id}"))),
                (WriteBody::Replace(_), None, _) => unreachable!("a replacement was validated above"),
            };
            let prev_ref = prev.as_ref().map(|(r, m): &(ProgressRecord, RecordMeta)| (r, m));
            let (record, meta) = apply_write(id, prev_ref, fields, touched, Timestamp::now(), &self.policy);
            let stored = StoredRecord::encode(&meta, &record);
            let expected = current.as_ref().map_or(0, StoredRecord::version);
            if self.store.compare_and_set(id, expected, &stored, ttl_ms(record.ttl_seconds)).await? {
                crate::metrics::record_written(current.is_none());
                self.live.changed(id, stored.version());
                return Ok(Written { record: stored, created: current.is_none() });
            }
            // Lost a race: back off a random while (growing with each loss)
            // so that many writers of one record take turns instead of
            // retrying in lock-step; cheap on Redis, vital on PostgreSQL.
            let ceiling_ms = 1u64 << attempt.min(5);
            tokio::time::sleep(std::time::Duration::from_micros(fastrand::u64(0..ceiling_ms * 1000))).await;
        }
        Err(Error::WriteContention)
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

fn check_preconditions(prev: Option<&ProgressRecord>, conditions: &Preconditions) -> Result<(), Error> {
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
