//! The progress record (SPEC §1): the fields clients write, their validation,
//! and the full record the server stores and returns.
//!
//! Every client field is declared once, in [`fields`]: its name, its type,
//! its doc and its *kind*. The kind ([`kinds`]) says how a value is
//! validated, read by the fast PUT decoder and merged by a PATCH; the
//! macros in [`generate`] write everything that lists the fields from that
//! one declaration. The rest of the folder is what the kinds share:
//!
//! - [`validate`]: the general reading of a JSON body, and the errors that
//!   name the offending field;
//! - [`fast`]: the fast PUT decoder, which reads a body's text straight into
//!   the fields when it can and leaves every other body to the general path;
//! - [`patch`]: the parts of a merge patch that merge into a field rather
//!   than replace it (`result`, `error`, `metadata`, `children`).
//!
//! What the server works out on a write (version, timestamps, derived
//! progress) is in `derive.rs`; the stored bytes in `encode.rs` and
//! `stored.rs`.

#[macro_use]
mod generate;
mod fast;
mod fields;
mod kinds;
mod patch;
mod validate;

#[cfg(test)]
mod tests;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::time::Timestamp;

pub use fields::{CLIENT_FIELDS, Child, ClientFields, ProgressRecord};
pub use validate::{ValidationError, check_top_level_keys, kind};

/// A record's children by id, in their order. Hashed with foldhash (seeded
/// per process) rather than the default SipHash: a PUT with five children
/// costs 900 instructions less (callgrind, 129,128 → 128,226).
pub type Children = IndexMap<String, Child, foldhash::fast::RandomState>;

/// Longest `stage`, in characters.
pub const MAX_STAGE_CHARS: usize = 200;
/// Longest `message` (record or child), in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest `error` string, in characters.
pub const MAX_ERROR_CHARS: usize = 8000;
/// Longest child `title`, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest child id, in characters.
pub const MAX_CHILD_ID_CHARS: usize = 128;
/// Most children one record may have.
pub const MAX_CHILDREN: usize = 1000;

/// The fields the server owns; a client that sends one is told so.
pub const SERVER_FIELDS: &[&str] = &[
    "id",
    "version",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "cancel_requested_at",
    "cancel_reason",
    "expires_at",
    "stages",
    "eta",
    "stalled",
];

/// Lifecycle of a job; the last three are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted, not started.
    #[default]
    Pending,
    /// Working.
    Running,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Stopped on request (terminal).
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] =
        [Status::Pending, Status::Running, Status::Completed, Status::Failed, Status::Cancelled];

    /// Completed, failed and cancelled records do not move backwards.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status with this wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the automatic `stages` history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpan {
    /// The `stage` value.
    pub name: String,
    /// When the record entered this stage.
    pub started_at: Timestamp,
    /// When it left it; null while it is the current stage.
    pub finished_at: Option<Timestamp>,
    /// `finished_at - started_at`; null while open.
    pub duration_ms: Option<i64>,
}

/// The part of a stored record that the server keeps up and the next
/// write builds on (the rest is the client fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ServerState {
    /// +1 on every accepted write.
    pub version: u64,
    /// Lifecycle.
    pub status: Status,
    /// First write.
    pub created_at: Timestamp,
    /// First time the status was `running`.
    pub started_at: Option<Timestamp>,
    /// When the record entered its terminal status.
    pub completed_at: Option<Timestamp>,
    /// When a cancellation was first requested (kept by every later write
    /// of this incarnation).
    #[serde(default)]
    pub cancel_requested_at: Option<Timestamp>,
    /// The reason given with the cancel request.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// History of `stage` values.
    pub stages: Vec<StageSpan>,
}

/// The fields PostgreSQL keeps in columns beside the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct DurableColumns {
    /// Lifecycle.
    pub status: Status,
    /// First write.
    pub created_at: Timestamp,
    /// Last write.
    pub updated_at: Timestamp,
    /// When the record expires.
    pub expires_at: Timestamp,
}

/// What the server sets in a record: every field of [`SERVER_FIELDS`] that
/// is stored (`stalled` depends on the time of the read). With the client
/// fields, [`ProgressRecord::assemble`] makes a record of it.
pub(crate) struct ServerFields {
    /// The job id.
    pub id: String,
    /// +1 on every accepted write.
    pub version: u64,
    /// First write.
    pub created_at: Timestamp,
    /// Last write.
    pub updated_at: Timestamp,
    /// First time the status was `running`.
    pub started_at: Option<Timestamp>,
    /// When the record entered its terminal status.
    pub completed_at: Option<Timestamp>,
    /// When a cancellation was first requested.
    pub cancel_requested_at: Option<Timestamp>,
    /// The reason given with the cancel request.
    pub cancel_reason: Option<String>,
    /// `updated_at + ttl_seconds`.
    pub expires_at: Timestamp,
    /// Estimated completion time from the observed rate.
    pub eta: Option<Timestamp>,
    /// History of `stage` values.
    pub stages: Vec<StageSpan>,
}

/// The client fields a write may leave out but a record always has (those
/// declared `Option<T> => T` in [`fields`]), as the server resolved them.
pub(crate) struct Resolved {
    /// Sent, or derived from the counters or the children.
    pub progress: Number,
    /// Sent, or the configured default.
    pub ttl_seconds: u64,
}

impl ProgressRecord {
    /// The columns PostgreSQL keeps.
    pub fn durable_columns(&self) -> DurableColumns {
        DurableColumns {
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
        }
    }

    /// What the next write builds on, copied out.
    pub fn server_state(&self) -> ServerState {
        ServerState {
            version: self.version,
            status: self.status,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            cancel_requested_at: self.cancel_requested_at,
            cancel_reason: self.cancel_reason.clone(),
            stages: self.stages.clone(),
        }
    }
}
