//! The domain: ids, the record, validation, merge patch and derived fields.
//! Nothing here does I/O, so all of it is tested with plain unit tests.

mod derive;
mod encode;
mod hook;
mod id;
mod merge;
mod record;
mod stored;
mod time;

pub use derive::{
    MAX_STAGES, RecordMeta, Touched, WritePolicy, apply_write, children_percent, derived_progress, next_record,
    request_cancel, ttl_ms,
};
pub use hook::{
    EventSet, HookEvent, MAX_WEBHOOK_URL, check_webhook, events_of_write, parse_webhook_url, require_webhook_url,
    url_host, webhook_target,
};
pub use id::{InvalidId, MAX_ID_LEN, ProgressId};
pub use merge::{depth, merge_patch};
pub use record::{
    CLIENT_FIELDS, Child, Children, ClientFields, DurableColumns, MAX_CHILDREN, MAX_ERROR_CHARS, MAX_MESSAGE_CHARS,
    MAX_STAGE_CHARS, ProgressRecord, SERVER_FIELDS, ServerState, StageSpan, Status, ValidationError,
    check_top_level_keys, kind,
};
pub use stored::{CorruptRecord, StoredRecord};
pub use time::Timestamp;
#[cfg(test)]
pub(crate) use time::test_clock;
