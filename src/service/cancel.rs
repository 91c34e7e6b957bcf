//! `POST /progress/{id}/cancel`: a cancellation request is a write of the
//! server's fields `cancel_requested_at` and `cancel_reason` through the same
//! read, build, compare-and-set loop as a PATCH (version + 1, `updated_at`
//! now, `Live::changed`, persisted like any update that is not terminal).
//! The worker learns of it from the response to its next write, and
//! answers it by writing `status: cancelled`.

use super::{MAX_WRITE_ATTEMPTS, ProgressService, back_off};
use crate::domain::{ProgressId, StoredRecord, Timestamp, request_cancel, ttl_ms};
use crate::error::Error;
use crate::store::Read;

/// What a cancel request left behind.
pub struct CancelRequested {
    /// The record, with `cancel_requested_at` set.
    pub record: StoredRecord,
    /// Whether this request wrote it (`false`: an earlier request had, and
    /// nothing changed: its time and reason stay).
    pub written: bool,
}

impl ProgressService {
    /// Records a request to cancel the job `id`, with an optional reason
    /// (already checked by the caller). Idempotent: when a request is on
    /// record already, nothing is written and the record is answered as it
    /// is. 409 `conflict_terminal` when the job has finished; 404 or 410
    /// when there is no record.
    pub async fn request_cancel(&self, id: &ProgressId, reason: Option<&str>) -> Result<CancelRequested, Error> {
        let corrupt = |e: crate::domain::CorruptRecord| Error::Internal(e.to_string());
        // As for a write: a refusal, or an answer without a write, that
        // rests on the record's state is only given after reading it again
        // past the read cache, which may be a change notice behind.
        let mut maybe_cached = true;
        let mut attempt = 0;
        while attempt < MAX_WRITE_ATTEMPTS {
            let current = self.store.read(id, if maybe_cached { Read::ToWrite } else { Read::Uncached }).await?;
            let Some(mut current) = current else {
                // A write's own read may take a Redis miss as absent when
                // PostgreSQL cannot be asked: confirm with a read that can tell.
                match self.store.get(id).await? {
                    None => return Err(self.absent(id).await),
                    Some(_) => {
                        maybe_cached = false;
                        attempt += 1;
                        continue;
                    }
                }
            };
            let meta = *current.meta();
            let size_hint = current.raw().len() + 256;
            let mut record = current.take_record().map_err(corrupt)?;
            let settled = record.status.is_terminal() || record.cancel_requested_at.is_some();
            if settled && maybe_cached {
                maybe_cached = false;
                continue;
            }
            if record.status.is_terminal() {
                return Err(Error::ConflictTerminal { status: record.status, version: record.version });
            }
            if record.cancel_requested_at.is_some() {
                return Ok(CancelRequested { record: current, written: false });
            }
            // As for a PATCH: a record may predate a lower PROGRESS_MAX_TTL_SECONDS.
            record.ttl_seconds = record.ttl_seconds.min(self.max_ttl_seconds);
            let (next, next_meta) =
                request_cancel(id, (record, meta), reason.map(str::to_owned), Timestamp::now(), &self.policy);
            let ttl = ttl_ms(next.ttl_seconds);
            let stored = StoredRecord::encode_owned(&next_meta, next, size_hint);
            if self.store.compare_and_swap(id, Some(&current), &stored, ttl).await? {
                crate::metrics::record_written(false);
                self.live.changed(id, stored.version());
                return Ok(CancelRequested { record: stored, written: true });
            }
            back_off(attempt).await;
            attempt += 1;
        }
        Err(Error::WriteContention)
    }
}
