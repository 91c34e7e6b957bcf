//! The client fields, each declared once: its name, its type, its doc and
//! its kind. The kind (`kinds.rs`) is the field's rule: which values it
//! takes, how a PATCH changes it. Everything that lists the fields is
//! written from these two tables by the macros in `generate.rs`:
//! [`ClientFields`], [`ProgressRecord`] and [`Child`], [`CLIENT_FIELDS`],
//! the general reading of a body and its error messages, the fast PUT
//! decoder, the merge patch, the PATCH base and the record writer.
//!
//! Adding a field is one entry here, with a kind from `kinds.rs` (or a new
//! one there), and the derived fields in `derive.rs` if it changes how
//! `progress` is worked out; `openapi.yaml` and the README document it.
//! The tests (`tests.rs`, and `tests/properties.rs` through the HTTP
//! routes) send each field through every path: a kind that is wrong on one
//! of them fails there.
//!
//! The order of the entries is the order a record shows its fields in;
//! changing it changes every stored record written from then on.

use serde_json::{Map, Number, Value};

use super::kinds::{
    AnyJson, ChildMap, Count, Hook, Lifecycle, MaybeLifecycle, Object, Percent, StringOrObject, Text, Ttl,
};
use super::{Children, MAX_ERROR_CHARS, MAX_MESSAGE_CHARS, MAX_STAGE_CHARS, MAX_TITLE_CHARS, Status};

// `name: Type = Kind`: the record keeps what the client sent (its default
// when left out). `name: Option<T> => T = Kind`: a record always has one;
// the server resolves it when a write leaves it out (`Resolved` in mod.rs,
// worked out in derive.rs).
client_fields! {
    /// Lifecycle (default `pending`).
    status: Status = Lifecycle,
    /// Percent done, 0–100: as sent, or derived from `current`/`total` or
    /// the children.
    progress: Option<Number> => Number = Percent,
    /// Counter: done so far.
    current: Option<Number> = Count,
    /// Counter: done when `current` reaches it.
    total: Option<Number> = Count,
    /// Phase name; its changes make the `stages` history.
    stage: Option<String> = Text<MAX_STAGE_CHARS>,
    /// Human text.
    message: Option<String> = Text<MAX_MESSAGE_CHARS>,
    /// Sub-tasks, in the order they were first written.
    children: Option<Children> = ChildMap,
    /// Final output.
    result: Option<Value> = AnyJson,
    /// Why it failed: a string or an object.
    error: Option<Value> = StringOrObject<MAX_ERROR_CHARS>,
    /// App-specific data.
    metadata: Option<Map<String, Value>> = Object,
    /// Where this record's events are sent: `{"url": …, "events": […]}`
    /// (the host must be in `PROGRESS_WEBHOOK_ALLOWED_HOSTS`).
    webhook: Option<Map<String, Value>> = Hook,
    /// Seconds the record lives after its last write (default: the
    /// configured one).
    ttl_seconds: Option<u64> => u64 = Ttl,
}

// A child shows only the fields it has: each is `Option<T>`.
child_fields! {
    /// Display name.
    title: Option<String> = Text<MAX_TITLE_CHARS>,
    /// Lifecycle of the sub-task.
    status: Option<Status> = MaybeLifecycle,
    /// Percent done, 0–100.
    progress: Option<Number> = Percent,
    /// Counter: done so far.
    current: Option<Number> = Count,
    /// Counter: done when `current` reaches it.
    total: Option<Number> = Count,
    /// Human text.
    message: Option<String> = Text<MAX_MESSAGE_CHARS>,
    /// Share of the parent's progress (default 1).
    weight: Option<Number> = Count,
}
