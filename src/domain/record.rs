//! The progress record (SPEC §1): the fields clients write, their validation,
//! and the full record the server stores and returns.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::time::Timestamp;

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

/// The fields a client may write at the top level of a record.
pub const CLIENT_FIELDS: &[&str] = &[
    "status",
    "progress",
    "current",
    "total",
    "stage",
    "message",
    "children",
    "result",
    "error",
    "metadata",
    "ttl_seconds",
];
/// The fields the server owns; a client that sends one is told so.
pub const SERVER_FIELDS: &[&str] = &[
    "id",
    "version",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "expires_at",
    "stages",
    "eta",
    "stalled",
];
const CHILD_FIELDS: &[&str] = &["title", "status", "progress", "current", "total", "message", "weight"];
// `Fields` holds the values of either kind of object in one array.
const _: () = assert!(CHILD_FIELDS.len() <= CLIENT_FIELDS.len());

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

/// One sub-task of a record (a chapter, a subtopic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Child {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Lifecycle of the sub-task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Percent done, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Number>,
    /// Counter: done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Number>,
    /// Counter: done when `current` reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Number>,
    /// Human text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Share of the parent's progress (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Number>,
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

/// The client-written part of a record, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientFields {
    /// Lifecycle (default `pending`).
    pub status: Status,
    /// Explicit percent, when the client sent one.
    pub progress: Option<Number>,
    /// Counter.
    pub current: Option<Number>,
    /// Counter.
    pub total: Option<Number>,
    /// Phase name.
    pub stage: Option<String>,
    /// Human text.
    pub message: Option<String>,
    /// Sub-tasks, in the order they were first written.
    pub children: Option<Children>,
    /// Final output.
    pub result: Option<Value>,
    /// Why it failed: a string or an object.
    pub error: Option<Value>,
    /// App-specific data.
    pub metadata: Option<Map<String, Value>>,
    /// Life after the last write; `None` means the configured default.
    pub ttl_seconds: Option<u64>,
}

/// The full record: what is stored and what every response carries
/// (plus `stalled`, which depends on the time of the read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// The job id.
    pub id: String,
    /// +1 on every accepted write.
    pub version: u64,
    /// Lifecycle.
    pub status: Status,
    /// Percent, explicit or derived.
    pub progress: Number,
    /// Counter.
    pub current: Option<Number>,
    /// Counter.
    pub total: Option<Number>,
    /// Phase name.
    pub stage: Option<String>,
    /// Human text.
    pub message: Option<String>,
    /// Sub-tasks.
    pub children: Option<Children>,
    /// Final output.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<Value>,
    /// App-specific data.
    pub metadata: Option<Map<String, Value>>,
    /// Seconds the record lives after its last write.
    pub ttl_seconds: u64,
    /// First write.
    pub created_at: Timestamp,
    /// Last write.
    pub updated_at: Timestamp,
    /// First time the status was `running`.
    pub started_at: Option<Timestamp>,
    /// When the record entered its terminal status.
    pub completed_at: Option<Timestamp>,
    /// `updated_at + ttl_seconds`.
    pub expires_at: Timestamp,
    /// Estimated completion time from the observed rate.
    pub eta: Option<Timestamp>,
    /// History of `stage` values.
    pub stages: Vec<StageSpan>,
}

impl ProgressRecord {
    /// The client fields of this record as a JSON object: the base a merge patch applies to.
    pub fn client_json(&self) -> Value {
        let mut map = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                map.insert(k.to_owned(), v);
            }
        };
        put("status", Value::String(self.status.as_str().into()));
        put("progress", Value::Number(self.progress.clone()));
        put("current", self.current.clone().map_or(Value::Null, Value::Number));
        put("total", self.total.clone().map_or(Value::Null, Value::Number));
        put("stage", self.stage.clone().map_or(Value::Null, Value::String));
        put("message", self.message.clone().map_or(Value::Null, Value::String));
        put("children", self.children.as_ref().map_or(Value::Null, |c| serde_json::to_value(c).unwrap_or(Value::Null)));
        put("result", self.result.clone().unwrap_or(Value::Null));
        put("error", self.error.clone().unwrap_or(Value::Null));
        put("metadata", self.metadata.clone().map_or(Value::Null, Value::Object));
        put("ttl_seconds", Value::from(self.ttl_seconds));
        Value::Object(map)
    }
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
            stages: self.stages.clone(),
        }
    }

    /// Splits the record into what the server keeps up and the client
    /// fields as a PATCH sees them: every field the record shows, with
    /// `progress` and `ttl_seconds` at their current values. The same as
    /// [`ProgressRecord::client_json`] read back by [`ClientFields::from_json`],
    /// without the round trip through JSON values.
    pub fn into_parts(self) -> (ServerState, ClientFields) {
        let state = ServerState {
            version: self.version,
            status: self.status,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            stages: self.stages,
        };
        let fields = ClientFields {
            status: self.status,
            progress: Some(self.progress),
            current: self.current,
            total: self.total,
            stage: self.stage,
            message: self.message,
            children: self.children,
            result: self.result,
            error: self.error,
            metadata: self.metadata,
            ttl_seconds: Some(self.ttl_seconds),
        };
        (state, fields)
    }
}

impl ClientFields {
    /// Applies a JSON merge patch (RFC 7386) to these fields (a record's, as
    /// [`ProgressRecord::into_parts`] gives them). `patch` is the patch
    /// object and `validated` the same patch read by [`ClientFields::from_json`],
    /// which has already checked every value it carries.
    ///
    /// A merge patch works key by key at the top level, so only the fields
    /// the patch names change; the result is what [`ClientFields::from_json`]
    /// makes of `merge_patch(client_json, patch)`. Values that replace a
    /// field whole come from `validated`; `result`, `error`, `metadata` and
    /// `children` merge into what is there. The one rule a valid patch can
    /// still break is the number of children.
    pub fn merge(mut self, patch: &Map<String, Value>, mut validated: ClientFields) -> Result<Self, ValidationError> {
        for (key, value) in patch {
            match key.as_str() {
                "status" => self.status = validated.status,
                "progress" => self.progress = validated.progress.take(),
                "current" => self.current = validated.current.take(),
                "total" => self.total = validated.total.take(),
                "stage" => self.stage = validated.stage.take(),
                "message" => self.message = validated.message.take(),
                "ttl_seconds" => self.ttl_seconds = validated.ttl_seconds,
                "result" => self.result = merged(self.result.take(), value),
                // A string or an object merged with a string, an object or
                // null is again one of those (or absent).
                "error" => self.error = merged(self.error.take(), value),
                "metadata" => {
                    self.metadata = match merged(self.metadata.take().map(Value::Object), value) {
                        Some(Value::Object(map)) => Some(map),
                        Some(other) => unreachable!("an object merged with an object is one, not {}", kind(&other)),
                        None => None,
                    }
                }
                "children" => {
                    let children = validated.children.take().unwrap_or_default();
                    self.children = merge_children(self.children.take(), value, children)?;
                }
                other => unreachable!("a validated patch has only client fields, not {other}"),
            }
        }
        Ok(self)
    }
}

/// `merge_patch(current, patch)` for one field; `None` when the result is null.
fn merged(current: Option<Value>, patch: &Value) -> Option<Value> {
    let mut value = current.unwrap_or(Value::Null);
    super::merge::merge_patch(&mut value, patch);
    Some(value).filter(|v| !v.is_null())
}

/// The children after a merge patch of `children`: `patch` as sent (null,
/// or child id → null or child), `validated` its non-null children.
fn merge_children(
    current: Option<Children>,
    patch: &Value,
    mut validated: Children,
) -> Result<Option<Children>, ValidationError> {
    let Value::Object(patch) = patch else { return Ok(None) }; // null: all removed
    let mut children = current.unwrap_or_default();
    for (child_id, child_patch) in patch {
        let Value::Object(child_patch) = child_patch else {
            children.shift_remove(child_id); // null
            continue;
        };
        let mut update = validated.swap_remove(child_id).unwrap_or_default();
        let child = match children.get_mut(child_id) {
            Some(child) => child,
            None => children.entry(child_id.clone()).or_default(),
        };
        for key in child_patch.keys() {
            match key.as_str() {
                "title" => child.title = update.title.take(),
                "status" => child.status = update.status.take(),
                "progress" => child.progress = update.progress.take(),
                "current" => child.current = update.current.take(),
                "total" => child.total = update.total.take(),
                "message" => child.message = update.message.take(),
                "weight" => child.weight = update.weight.take(),
                other => unreachable!("a validated child has only child fields, not {other}"),
            }
        }
    }
    if children.len() > MAX_CHILDREN {
        return Err(ValidationError::new(
            "children",
            format!("has {} children; the limit is {MAX_CHILDREN}", children.len()),
        ));
    }
    Ok(Some(children))
}

/// A body that breaks a rule of SPEC §1, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted path of the offending field (`children.ch1.progress`); empty for the whole body.
    pub field: String,
    /// What is wrong, in words a client developer can act on.
    pub message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl std::error::Error for ValidationError {}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

/// Checks a body's top-level keys: every key must be a client field.
/// Used on PATCH bodies before merging, and by [`ClientFields::from_json`].
pub fn check_top_level_keys(body: &Value) -> Result<&Map<String, Value>, ValidationError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ValidationError::new("", format!("the body must be a JSON object, not {}", kind(body))))?;
    for key in obj.keys() {
        if CLIENT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let message = if SERVER_FIELDS.contains(&key.as_str()) {
            format!("`{key}` is set by the server and cannot be written")
        } else {
            format!("unknown field `{key}`; put app-specific data under `metadata`")
        };
        return Err(ValidationError::new(key.clone(), message));
    }
    Ok(obj)
}

impl ClientFields {
    /// Validates a JSON body (a PUT body, or a record after a merge patch).
    /// `max_ttl_seconds` bounds `ttl_seconds`.
    pub fn from_json(body: &Value, max_ttl_seconds: u64) -> Result<Self, ValidationError> {
        let obj = check_top_level_keys(body)?;
        let f = Fields::of(obj, CLIENT_FIELDS, None);
        Ok(Self {
            status: f.status("status")?.unwrap_or_default(),
            progress: f.number("progress", Some(100.0))?,
            current: f.number("current", None)?,
            total: f.number("total", None)?,
            stage: f.string("stage", MAX_STAGE_CHARS)?,
            message: f.string("message", MAX_MESSAGE_CHARS)?,
            children: f.children("children")?,
            result: f.present("result").cloned(),
            error: f.error("error")?,
            metadata: f.object("metadata")?,
            ttl_seconds: f.ttl("ttl_seconds", max_ttl_seconds)?,
        })
    }
}

/// A PUT body read straight into types (see [`ClientFields::from_body_fast`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastBody {
    #[serde(default)]
    status: Option<StatusText>,
    #[serde(default)]
    progress: Option<FastNumber>,
    #[serde(default)]
    current: Option<FastNumber>,
    #[serde(default)]
    total: Option<FastNumber>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    children: Option<ChildList>,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    ttl_seconds: Option<FastNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastChild {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    status: Option<StatusText>,
    #[serde(default)]
    progress: Option<FastNumber>,
    #[serde(default)]
    current: Option<FastNumber>,
    #[serde(default)]
    total: Option<FastNumber>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    weight: Option<FastNumber>,
}

/// A number of a PUT body, read from its JSON text (borrowed, not copied),
/// with its value. serde_json's arbitrary-precision `Number` costs two
/// allocations when read from a document (the scratch text, then the
/// number), one when built from a `u64`: 13 allocations saved for a body
/// with 13 whole numbers.
struct FastNumber {
    number: Number,
    value: f64,
}

impl<'de> Deserialize<'de> for FastNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let text = <&serde_json::value::RawValue>::deserialize(deserializer)?.get();
        if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Err(D::Error::custom("not a number"));
        }
        // Digits only (JSON has no leading zeros): the text `Number::from` writes.
        if text.bytes().all(|b| b.is_ascii_digit())
            && let Ok(whole) = text.parse::<u64>()
        {
            return Ok(Self { number: Number::from(whole), value: whole as f64 });
        }
        let number: Number = text.parse().map_err(D::Error::custom)?;
        let value = number.as_f64().unwrap_or(f64::NAN);
        Ok(Self { number, value })
    }
}

/// A struct read from a JSON object only: serde's derived `Deserialize`
/// also reads a struct from an array of its fields in order (`["running"]`),
/// which the general path refuses.
struct FromObject<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FromObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData)).map(FromObject)
    }
}

/// The `children` object of a body as its members in order, repeats
/// included: a map would hash every id once here and again where the
/// fields are built. [`ClientFields::from_body_fast`] leaves bodies with a
/// repeated id to the general path, which says which one wins.
struct ChildList(Vec<(String, Option<FromObject<FastChild>>)>);

impl<'de> Deserialize<'de> for ChildList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ChildList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ChildList, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_CHILDREN));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(ChildList(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A status read from a JSON string only: serde's derived enum also reads
/// the map form `{"running": null}`, which the general path refuses.
struct StatusText(Status);

impl<'de> Deserialize<'de> for StatusText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Status;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status name")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Status, E> {
                Status::parse(text).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_str(Visit).map(StatusText)
    }
}

impl ClientFields {
    /// A JSON body read straight into the fields, without building a
    /// `serde_json::Value` of it first: `Some` only when it is exactly what
    /// parsing `text`, checking its depth against `max_depth` and
    /// [`ClientFields::from_json`] would give. `None` whenever this path
    /// cannot tell (malformed JSON, an unknown or repeated field, a wrong
    /// type, a value out of range, too deep): the caller then takes that
    /// general path, which also words the error.
    pub fn from_body_fast(text: &str, max_ttl_seconds: u64, max_depth: usize) -> Option<Self> {
        let FromObject(body): FromObject<FastBody> = serde_json::from_str(text).ok()?;
        let number = |n: Option<FastNumber>, max: Option<f64>| -> Option<Option<Number>> {
            match n {
                None => Some(None),
                Some(FastNumber { number, value: x }) => {
                    (x.is_finite() && x >= 0.0 && max.is_none_or(|m| x <= m)).then_some(Some(number))
                }
            }
        };
        let string = |s: &Option<String>, max: usize| s.as_deref().is_none_or(|s| fits(s, max));
        let mut depth = 1; // the body itself
        let mut children_out = None;
        if let Some(ChildList(children)) = body.children {
            if children.len() > MAX_CHILDREN {
                return None;
            }
            // The body, the map, and an object for any child that is not null.
            depth = depth.max(2 + usize::from(children.iter().any(|(_, child)| child.is_some())));
            let mut out = Children::with_capacity_and_hasher(children.len(), Default::default());
            let mut removed = Vec::new();
            for (id, child) in children {
                if id.is_empty() || !fits(&id, MAX_CHILD_ID_CHARS) {
                    return None;
                }
                let Some(FromObject(c)) = child else {
                    removed.push(id); // null: removed
                    continue;
                };
                if !string(&c.title, MAX_TITLE_CHARS) || !string(&c.message, MAX_MESSAGE_CHARS) {
                    return None;
                }
                let child = Child {
                    title: c.title,
                    status: c.status.map(|s| s.0),
                    progress: number(c.progress, Some(100.0))?,
                    current: number(c.current, None)?,
                    total: number(c.total, None)?,
                    message: c.message,
                    weight: number(c.weight, None)?,
                };
                if out.insert(id, child).is_some() {
                    return None; // a repeated id
                }
            }
            if removed.iter().any(|id| out.contains_key(id)) {
                return None; // an id both set and removed
            }
            children_out = Some(out);
        }
        match &body.error {
            None => {}
            Some(Value::String(text)) if fits(text, MAX_ERROR_CHARS) => {}
            Some(Value::Object(_)) => {}
            Some(_) => return None,
        }
        let ttl_seconds = match body.ttl_seconds {
            None => None,
            Some(n) => Some(n.number.as_u64().filter(|s| (1..=max_ttl_seconds).contains(s))?),
        };
        if !string(&body.stage, MAX_STAGE_CHARS) || !string(&body.message, MAX_MESSAGE_CHARS) {
            return None;
        }
        for value in [&body.result, &body.error].into_iter().flatten() {
            depth = depth.max(1 + super::merge::depth(value));
        }
        if let Some(metadata) = &body.metadata {
            depth = depth.max(2 + metadata.values().map(super::merge::depth).max().unwrap_or(0));
        }
        if depth > max_depth {
            return None;
        }
        Some(Self {
            status: body.status.map_or_else(Status::default, |s| s.0),
            progress: number(body.progress, Some(100.0))?,
            current: number(body.current, None)?,
            total: number(body.total, None)?,
            stage: body.stage,
            message: body.message,
            children: children_out,
            result: body.result,
            error: body.error,
            metadata: body.metadata,
            ttl_seconds,
        })
    }
}

/// Whether `text` is at most `max_chars` characters long.
fn fits(text: &str, max_chars: usize) -> bool {
    text.len() <= max_chars || text.chars().count() <= max_chars
}

/// Typed access to one JSON object's fields, with errors that name the field.
struct Fields<'a> {
    /// The names that may appear (all checked beforehand).
    names: &'static [&'static str],
    /// The value of each name, found in one walk over the object (no hashing).
    values: [Option<&'a Value>; CLIENT_FIELDS.len()],
    /// The child id, when the object is a child (`children.{id}.…`).
    child: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// The fields of `obj`, whose keys are all among `names`.
    fn of(obj: &'a Map<String, Value>, names: &'static [&'static str], child: Option<&'a str>) -> Self {
        let mut values = [None; CLIENT_FIELDS.len()];
        for (key, value) in obj {
            if let Some(i) = names.iter().position(|n| *n == key) {
                values[i] = Some(value);
            }
        }
        Self { names, values, child }
    }

    /// The dotted path of `key`, for an error (built only then).
    fn path(&self, key: &str) -> String {
        match self.child {
            Some(child) => format!("children.{child}.{key}"),
            None => key.to_owned(),
        }
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        let i = self.names.iter().position(|n| *n == key).expect("a field of the object's kind");
        self.values[i].filter(|v| !v.is_null())
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> ValidationError {
        ValidationError::new(self.path(key), format!("must be {want}, not {}", kind(got)))
    }

    fn status(&self, key: &str) -> Result<Option<Status>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let names = "one of pending, running, completed, failed, cancelled";
        let text = v.as_str().ok_or_else(|| self.wrong_type(key, names, v))?;
        Status::parse(text)
            .map(Some)
            .ok_or_else(|| ValidationError::new(self.path(key), format!("must be {names}, not {text:?}")))
    }

    /// A finite non-negative number, at most `max` when given.
    fn number(&self, key: &str, max: Option<f64>) -> Result<Option<Number>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let Value::Number(n) = v else {
            let want = if max.is_some() { "a number from 0 to 100" } else { "a non-negative number" };
            return Err(self.wrong_type(key, want, v));
        };
        let x = n.as_f64().unwrap_or(f64::NAN);
        let in_range = x.is_finite() && x >= 0.0 && max.is_none_or(|m| x <= m);
        if !in_range {
            let want = match max {
                Some(m) => format!("must be a number from 0 to {m}, not {n}"),
                None => format!("must be a non-negative number, not {n}"),
            };
            return Err(ValidationError::new(self.path(key), want));
        }
        Ok(Some(n.clone()))
    }

    fn string(&self, key: &str, max_chars: usize) -> Result<Option<String>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let text = v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))?;
        check_length(|| self.path(key), text, max_chars)?;
        Ok(Some(text.to_owned()))
    }

    fn object(&self, key: &str) -> Result<Option<Map<String, Value>>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        v.as_object().cloned().map(Some).ok_or_else(|| self.wrong_type(key, "an object", v))
    }

    fn error(&self, key: &str) -> Result<Option<Value>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        match v {
            Value::String(text) => check_length(|| self.path(key), text, MAX_ERROR_CHARS)?,
            Value::Object(_) => {}
            other => return Err(self.wrong_type(key, "a string or an object", other)),
        }
        Ok(Some(v.clone()))
    }

    fn ttl(&self, key: &str, max: u64) -> Result<Option<u64>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let want = || format!("must be a whole number of seconds from 1 to {max}");
        let Value::Number(n) = v else {
            return Err(ValidationError::new(self.path(key), format!("{}, not {}", want(), kind(v))));
        };
        // A whole number in any JSON spelling (`60`, `60.0`, `6e1`), as JSON
        // Schema's `integer` (openapi.yaml) counts it; never a fraction.
        let whole = n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= max as f64).map(|f| f as u64));
        match whole {
            Some(s) if (1..=max).contains(&s) => Ok(Some(s)),
            _ => Err(ValidationError::new(self.path(key), format!("{}, not {n}", want()))),
        }
    }

    fn children(&self, key: &str) -> Result<Option<Children>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let map = v.as_object().ok_or_else(|| self.wrong_type(key, "an object of child id → child", v))?;
        if map.len() > MAX_CHILDREN {
            return Err(ValidationError::new(
                self.path(key),
                format!("has {} children; the limit is {MAX_CHILDREN}", map.len()),
            ));
        }
        let mut out = Children::with_capacity_and_hasher(map.len(), Default::default());
        for (child_id, child) in map {
            let path = || format!("{}.{child_id}", self.path(key));
            if child_id.is_empty()
                || (child_id.len() > MAX_CHILD_ID_CHARS && child_id.chars().count() > MAX_CHILD_ID_CHARS)
            {
                return Err(ValidationError::new(
                    path(),
                    format!("child ids must be 1 to {MAX_CHILD_ID_CHARS} characters"),
                ));
            }
            if child.is_null() {
                continue; // a merge patch removed it
            }
            let obj = child
                .as_object()
                .ok_or_else(|| ValidationError::new(path(), format!("must be an object, not {}", kind(child))))?;
            if let Some(unknown) = obj.keys().find(|k| !CHILD_FIELDS.contains(&k.as_str())) {
                return Err(ValidationError::new(
                    format!("{}.{unknown}", path()),
                    format!("unknown child field; child fields are {}", CHILD_FIELDS.join(", ")),
                ));
            }
            let f = Fields::of(obj, CHILD_FIELDS, Some(child_id));
            out.insert(
                child_id.clone(),
                Child {
                    title: f.string("title", MAX_TITLE_CHARS)?,
                    status: f.status("status")?,
                    progress: f.number("progress", Some(100.0))?,
                    current: f.number("current", None)?,
                    total: f.number("total", None)?,
                    message: f.string("message", MAX_MESSAGE_CHARS)?,
                    weight: f.number("weight", None)?,
                },
            );
        }
        Ok(Some(out))
    }
}

fn check_length(path: impl FnOnce() -> String, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    // Byte length bounds char count from above, so most strings skip the count.
    if text.len() > max_chars {
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(ValidationError::new(path(), format!("is {chars} characters long; the limit is {max_chars}")));
        }
    }
    Ok(())
}

/// The JSON kind of a value, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ClientFields, ValidationError> {
        ClientFields::from_json(&v, 3600)
    }

    #[test]
    fn accepts_a_full_body() {
        let f = parse(json!({
            "status": "running", "progress": 12.5, "current": 2, "total": 10,
            "stage": "CHAPTERS", "message": "writing", "result": [1, {"a": null}],
            "error": {"code": 3}, "metadata": {"bookId": 9007199254740993u64},
            "children": {"ch1": {"title": "One", "progress": 50, "weight": 2}},
            "ttl_seconds": 60
        }))
        .unwrap();
        assert_eq!(f.status, Status::Running);
        assert_eq!(f.children.unwrap()["ch1"].weight, Some(Number::from(2)));
        assert_eq!(f.ttl_seconds, Some(60));
    }

    #[test]
    fn ttl_seconds_is_a_whole_number_in_any_spelling() {
        for text in [
            r#"{"ttl_seconds": 60}"#,
            r#"{"ttl_seconds": 60.0}"#,
            r#"{"ttl_seconds": 6e1}"#,
            r#"{"ttl_seconds": 6.0E+1}"#,
        ] {
            let body: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(body).unwrap().ttl_seconds, Some(60), "{text}");
        }
        for text in [
            r#"{"ttl_seconds": 60.5}"#,
            r#"{"ttl_seconds": 0.0}"#,
            r#"{"ttl_seconds": 1e300}"#,
            r#"{"ttl_seconds": -6e1}"#,
        ] {
            let body: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(body).unwrap_err().field, "ttl_seconds", "{text}");
        }
    }

    #[test]
    fn names_unknown_and_server_fields() {
        let e = parse(json!({"colour": 1})).unwrap_err();
        assert_eq!(e.field, "colour");
        assert!(e.message.contains("metadata"));
        let e = parse(json!({"version": 3})).unwrap_err();
        assert!(e.message.contains("set by the server"));
    }

    #[test]
    fn rejects_wrong_types_and_ranges() {
        for (body, field) in [
            (json!({"status": "done"}), "status"),
            (json!({"status": 1}), "status"),
            (json!({"progress": 100.5}), "progress"),
            (json!({"progress": -1}), "progress"),
            (json!({"progress": "50"}), "progress"),
            (json!({"current": -3}), "current"),
            (json!({"stage": "x".repeat(201)}), "stage"),
            (json!({"message": 5}), "message"),
            (json!({"error": 5}), "error"),
            (json!({"error": "e".repeat(8001)}), "error"),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"ttl_seconds": 0}), "ttl_seconds"),
            (json!({"ttl_seconds": 3601}), "ttl_seconds"),
            (json!({"ttl_seconds": 1.5}), "ttl_seconds"),
            (json!({"ttl_seconds": 3601.0}), "ttl_seconds"),
            (json!({"children": {"a": {"progress": 101}}}), "children.a.progress"),
            (json!({"children": {"a": {"colour": 1}}}), "children.a.colour"),
            (json!({"children": {"a": 1}}), "children.a"),
            (json!({"children": []}), "children"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        assert_eq!(parse(json!([1])).unwrap_err().field, "");
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert!(parse(json!({"stage": "é".repeat(200)})).is_ok());
        assert!(parse(json!({"stage": "é".repeat(201)})).is_err());
    }

    /// What a PATCH did before `merge`: the record's client fields as JSON,
    /// the patch merged in, the result read back.
    fn merged_through_json(
        prev: &ProgressRecord,
        patch: &Value,
        max_ttl: u64,
    ) -> Result<ClientFields, ValidationError> {
        let mut doc = prev.client_json();
        if let Some(ttl) = doc.get_mut("ttl_seconds") {
            *ttl = Value::from(ttl.as_u64().unwrap_or(0).min(max_ttl));
        }
        crate::domain::merge_patch(&mut doc, patch);
        ClientFields::from_json(&doc, max_ttl)
    }

    fn merged_typed(prev: &ProgressRecord, patch: &Value, max_ttl: u64) -> Result<ClientFields, ValidationError> {
        let validated = ClientFields::from_json(patch, max_ttl)?;
        let (_, mut fields) = prev.clone().into_parts();
        fields.ttl_seconds = fields.ttl_seconds.map(|t| t.min(max_ttl));
        fields.merge(patch.as_object().unwrap(), validated)
    }

    fn pick<T: Clone>(rng: &mut fastrand::Rng, options: &[T]) -> T {
        options[rng.usize(..options.len())].clone()
    }

    fn some_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        match rng.u8(..if depth == 0 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => json!(rng.bool()),
            2 => pick(rng, &[json!(0), json!(9007199254740993u64), json!(0.1), json!(-3.5e-7)]),
            3 => pick(rng, &[json!("x"), json!(""), json!("é")]),
            4 => json!([1, null, {"a": null}]),
            _ => {
                let mut map = Map::new();
                for _ in 0..rng.usize(..4) {
                    map.insert(pick(rng, &["a", "b", "c"]).to_owned(), some_value(rng, depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    fn some_child(rng: &mut fastrand::Rng, patch: bool) -> Value {
        let mut child = Map::new();
        for (key, values) in [
            ("title", vec![json!("T"), json!("U")]),
            ("status", vec![json!("running"), json!("completed")]),
            ("progress", vec![json!(10), json!(55.5)]),
            ("current", vec![json!(1), json!(2)]),
            ("total", vec![json!(4)]),
            ("message", vec![json!("m")]),
            ("weight", vec![json!(0), json!(3)]),
        ] {
            match rng.u8(..4) {
                0 => {}
                1 if patch => {
                    child.insert(key.to_owned(), Value::Null);
                }
                _ => {
                    child.insert(key.to_owned(), pick(rng, &values));
                }
            }
        }
        Value::Object(child)
    }

    fn some_record(rng: &mut fastrand::Rng) -> ProgressRecord {
        let mut body = Map::new();
        let opt = |rng: &mut fastrand::Rng, body: &mut Map<String, Value>, key: &str, value: Value| {
            if rng.bool() {
                body.insert(key.to_owned(), value);
            }
        };
        let status = pick(rng, &[json!("pending"), json!("running"), json!("failed")]);
        opt(rng, &mut body, "status", status);
        opt(rng, &mut body, "current", json!(3));
        opt(rng, &mut body, "total", json!(12));
        opt(rng, &mut body, "stage", json!("S"));
        opt(rng, &mut body, "message", json!("hello"));
        let ttl = pick(rng, &[json!(60), json!(7200)]);
        opt(rng, &mut body, "ttl_seconds", ttl);
        let result = some_value(rng, 2);
        opt(rng, &mut body, "result", result);
        let error = pick(rng, &[json!("boom"), json!({"code": 3, "at": {"x": 1}})]);
        opt(rng, &mut body, "error", error);
        opt(rng, &mut body, "metadata", json!({"a": 1, "b": {"c": [1, 2]}}));
        if rng.bool() {
            let mut children = Map::new();
            for id in ["c1", "c2", "c3"] {
                if rng.bool() {
                    children.insert(id.to_owned(), some_child(rng, false));
                }
            }
            body.insert("children".into(), Value::Object(children));
        }
        let fields = ClientFields::from_json(&Value::Object(body), 100_000).unwrap();
        let id = crate::domain::ProgressId::parse("r").unwrap();
        let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
        let touched = crate::domain::Touched::replace(&fields);
        crate::domain::apply_write(&id, None, fields, touched, super::super::time::Timestamp(1_000), &policy).0
    }

    fn some_patch(rng: &mut fastrand::Rng) -> Value {
        let mut patch = Map::new();
        let maybe = |rng: &mut fastrand::Rng, patch: &mut Map<String, Value>, key: &str, values: Vec<Value>| {
            if rng.u8(..3) == 0 {
                patch.insert(key.to_owned(), pick(rng, &values));
            }
        };
        maybe(rng, &mut patch, "status", vec![Value::Null, json!("running"), json!("completed"), json!("nope")]);
        maybe(rng, &mut patch, "progress", vec![Value::Null, json!(40), json!(101)]);
        maybe(rng, &mut patch, "current", vec![Value::Null, json!(5)]);
        maybe(rng, &mut patch, "total", vec![Value::Null, json!(0), json!(20)]);
        maybe(rng, &mut patch, "stage", vec![Value::Null, json!("T"), json!({"a": null}), json!({})]);
        maybe(rng, &mut patch, "message", vec![Value::Null, json!("bye")]);
        maybe(rng, &mut patch, "ttl_seconds", vec![Value::Null, json!(30), json!(4000)]);
        let values = vec![some_value(rng, 2), some_value(rng, 2), json!({"a": null, "c": {"d": null}})];
        maybe(rng, &mut patch, "result", values.clone());
        maybe(
            rng,
            &mut patch,
            "error",
            vec![Value::Null, json!("e"), json!({"code": null, "more": 1}), json!({}), json!(5)],
        );
        maybe(
            rng,
            &mut patch,
            "metadata",
            vec![Value::Null, json!({"a": null, "z": {"y": null}}), json!({}), json!({"b": {"c": null}}), json!([1])],
        );
        if rng.u8(..2) == 0 {
            let children = match rng.u8(..6) {
                0 => Value::Null,
                1 => json!([]),
                _ => {
                    let mut children = Map::new();
                    for id in ["c1", "c2", "c4"] {
                        match rng.u8(..4) {
                            0 => {}
                            1 => {
                                children.insert(id.to_owned(), Value::Null);
                            }
                            _ => {
                                children.insert(id.to_owned(), some_child(rng, true));
                            }
                        }
                    }
                    Value::Object(children)
                }
            };
            patch.insert("children".into(), children);
        }
        Value::Object(patch)
    }

    #[test]
    fn merge_does_what_a_merge_patch_of_the_json_does() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut compared = 0;
        for _ in 0..20_000 {
            let prev = some_record(&mut rng);
            let patch = some_patch(&mut rng);
            let max_ttl = pick(&mut rng, &[3600, 100_000]);
            let typed = merged_typed(&prev, &patch, max_ttl);
            let through_json = match ClientFields::from_json(&patch, max_ttl) {
                Err(e) => Err(e), // refused up front either way
                Ok(_) => merged_through_json(&prev, &patch, max_ttl),
            };
            assert_eq!(typed, through_json, "prev {prev:?}\npatch {patch}");
            compared += usize::from(typed.is_ok());
        }
        assert!(compared > 2_000, "enough valid patches: {compared}");
    }

    #[test]
    fn merge_counts_the_children_it_ends_up_with() {
        let children: Map<String, Value> = (0..MAX_CHILDREN).map(|n| (format!("c{n}"), json!({}))).collect();
        let body = json!({"children": children});
        let fields = ClientFields::from_json(&body, 60).unwrap();
        let id = crate::domain::ProgressId::parse("r").unwrap();
        let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
        let touched = crate::domain::Touched::replace(&fields);
        let prev = crate::domain::apply_write(&id, None, fields, touched, super::super::time::Timestamp(0), &policy).0;
        let patch = json!({"children": {"one-more": {"progress": 1}}});
        let e = merged_typed(&prev, &patch, 60).unwrap_err();
        assert_eq!(e, merged_through_json(&prev, &patch, 60).unwrap_err());
        assert_eq!(e.field, "children");
        assert!(merged_typed(&prev, &json!({"children": {"c0": null, "one-more": {}}}), 60).is_ok());
    }

    #[test]
    fn the_hand_written_encoder_writes_what_serde_writes() {
        let mut rng = fastrand::Rng::with_seed(5);
        let id = crate::domain::ProgressId::parse("r").unwrap();
        let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
        for n in 0..5_000 {
            // A record, then a few patches later, for stages, eta and completion.
            let mut record = some_record(&mut rng);
            let mut meta = None;
            for step in 0..rng.usize(..4) {
                let patch = some_patch(&mut rng);
                let Ok(validated) = ClientFields::from_json(&patch, 100_000) else { continue };
                let (state, fields) = record.clone().into_parts();
                let Ok(fields) = fields.merge(patch.as_object().unwrap(), validated) else { continue };
                let touched = crate::domain::Touched::patch(patch.as_object().unwrap());
                let at = super::super::time::Timestamp(2_000 + 1_000 * step as i64);
                let prev = meta.map(|m| (state, m));
                let (next, next_meta) = crate::domain::next_record(&id, prev, fields, touched, at, &policy);
                (record, meta) = (next, Some(next_meta));
            }
            let mut ours = Vec::new();
            super::super::encode::write_record(&mut ours, &record);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&record).unwrap(), "record {n}");
        }
    }

    #[test]
    fn the_hand_written_encoder_escapes_as_serde_does() {
        let tricky =
            ["", "plain", "q\"uote", "back\\slash", "nl\n tab\t \u{1} \u{1f} \u{7f}", "é 🚀 \u{2028}", "</script>"];
        for text in tricky {
            let body = json!({"stage": text, "message": text, "metadata": {text: text}, "result": [text],
                              "error": text, "children": {format!("c{text}"): {"title": text, "message": text}}});
            let Ok(fields) = ClientFields::from_json(&body, 60) else { panic!("{text:?}") };
            let id = crate::domain::ProgressId::parse("r").unwrap();
            let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
            let touched = crate::domain::Touched::replace(&fields);
            let record =
                crate::domain::apply_write(&id, None, fields, touched, super::super::time::Timestamp(7), &policy).0;
            let mut ours = Vec::new();
            super::super::encode::write_record(&mut ours, &record);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&record).unwrap(), "{text:?}");
        }
    }

    /// What a PUT body gives the general way: parsed, depth-checked, read.
    fn body_the_general_way(text: &str, max_ttl: u64, max_depth: usize) -> Option<ClientFields> {
        let value: Value = serde_json::from_str(text).ok()?;
        if crate::domain::depth(&value) > max_depth {
            return None;
        }
        ClientFields::from_json(&value, max_ttl).ok()
    }

    #[test]
    fn the_fast_body_path_agrees_with_the_general_one() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut texts: Vec<String> = vec![
            include_str!("../../bench/record.json").to_owned(),
            r#"{"status":"running","status":"pending"}"#.into(),
            r#"{"st\u0061tus":"running"}"#.into(),
            r#"{"status":"running","colour":1}"#.into(),
            r#"{"version":3}"#.into(),
            r#"[1,2]"#.into(),
            r#""text""#.into(),
            r#"{"children":{}}"#.into(),
            r#"{"children":{"a":null}}"#.into(),
            r#"{"children":{"":{}}}"#.into(),
            r#"{"children":{"a":{"colour":1}}}"#.into(),
            r#"{"children":{"a":{"progress":1},"a":{"title":"t"}}}"#.into(),
            r#"{"children":{"a":{"progress":1},"a":null}}"#.into(),
            r#"{"children":{"a":null,"b":{"progress":2},"a":{"progress":1}}}"#.into(),
            r#"{"children":{"a":null,"a":null,"b":{}}}"#.into(),
            r#"{"children":{"b":{},"a":{},"b":{"weight":2}}}"#.into(),
            r#"{"children":[{"a":{}}]}"#.into(),
            r#"{"children":{"a":{"title":null,"progress":null}}}"#.into(),
            r#"{"metadata":{}}"#.into(),
            r#"{"metadata":{"a":{"b":{"c":{"d":[[[1]]]}}}}}"#.into(),
            r#"{"result":[[[[[[1]]]]]],"error":{"e":{}}}"#.into(),
            r#"{"progress":1e2,"current":0.5e1,"total":12345678901234567890123}"#.into(),
            r#"{"progress":100.0000001}"#.into(),
            r#"{"progress":-0,"current":-0.0,"total":0E0}"#.into(),
            r#"{"progress":"5"}"#.into(),
            r#"{"current":true,"total":null}"#.into(),
            r#"{"progress": 5 ,"children":{"a":{"weight": 1.50e0 ,"current":[1]}}}"#.into(),
            r#"{"children":{"a":{"weight":-1}}}"#.into(),
            r#"{"children":{"a":{"progress":{"n":1}}}}"#.into(),
            r#"{"ttl_seconds":"60"}"#.into(),
            r#"{"ttl_seconds":6e1}"#.into(),
            r#"{"current":01}"#.into(),
            r#"{"current":18446744073709551615,"total":18446744073709551616,"progress":0}"#.into(),
            r#"{"current":1E+2,"total":9007199254740993,"children":{"a":{"weight":00}}}"#.into(),
            r#"{"ttl_seconds":60.0}"#.into(),
            r#"{"ttl_seconds":0}"#.into(),
            r#"{"stage":null,"message":null,"result":null,"error":null,"metadata":null,"children":null}"#.into(),
            r#"{"status":"running"} trailing"#.into(),
            r#"{}"#.into(),
            format!(r#"{{"stage":"{}"}}"#, "é".repeat(200)),
            format!(r#"{{"stage":"{}"}}"#, "é".repeat(201)),
            format!(r#"{{"error":"{}"}}"#, "e".repeat(8001)),
        ];
        for _ in 0..20_000 {
            let body = if rng.bool() { some_patch(&mut rng) } else { some_record(&mut rng).client_json() };
            texts.push(body.to_string());
        }
        let (mut fast, mut general) = (0, 0);
        for text in &texts {
            for (max_ttl, max_depth) in [(3600, 32), (100_000, 32), (100_000, 3), (3600, 2), (3600, 1)] {
                let reference = body_the_general_way(text, max_ttl, max_depth);
                let quick = ClientFields::from_body_fast(text, max_ttl, max_depth);
                if let Some(quick) = &quick {
                    assert_eq!(Some(quick), reference.as_ref(), "{text} (ttl {max_ttl}, depth {max_depth})");
                }
                general += usize::from(reference.is_some());
                fast += usize::from(quick.is_some());
            }
        }
        assert!(general > 10_000, "enough valid bodies: {general}");
        assert!(fast * 100 >= general * 95, "the fast path takes most valid bodies: {fast} of {general}");
    }
}
