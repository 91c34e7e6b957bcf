//! The domain: ids, the record, validation, merge patch and derived fields.
//! Nothing here does I/O, so all of it is tested with plain unit tests.

mod derive;
mod encode;
mod id;
mod merge;
mod record;
mod stored;
mod time;

pub use derive::{
    apply_write, children_percent, derived_progress, next_record, ttl_ms, RecordMeta, Touched, WritePolicy, MAX_STAGES,
};
pub use id::{InvalidId, ProgressId, MAX_ID_LEN};
pub use merge::{depth, merge_patch};
pub use record::{
    check_top_level_keys, kind, Child, Children, ClientFields, DurableColumns, ProgressRecord, ServerState, StageSpan, Status, ValidationError,
    CLIENT_FIELDS,
    MAX_CHILDREN, MAX_ERROR_CHARS, MAX_MESSAGE_CHARS, MAX_STAGE_CHARS, SERVER_FIELDS,
};
pub use stored::{CorruptRecord, StoredRecord};
pub use time::Timestamp;
