//! The progress record (SPEC §1): the fields clients write, their validation,
//! and the full record the server stores and returns.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::time::Timestamp;

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
    "status", "progress", "current", "total", "stage", "message", "children", "result", "error",
    "metadata", "ttl_seconds",
];
/// The fields the server owns; a client that sends one is told so.
pub const SERVER_FIELDS: &[&str] = &[
    "id", "version", "created_at", "updated_at", "started_at", "completed_at", "expires_at",
    "stages", "eta", "stalled",
];
const CHILD_FIELDS: &[&str] = &["title", "status", "progress", "current", "total", "message", "weight"];

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
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

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
    pub children: Option<IndexMap<String, Child>>,
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
    pub children: Option<IndexMap<String, Child>>,
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
        put(
            "children",
            self.children
                .as_ref()
                .map_or(Value::Null, |c| serde_json::to_value(c).unwrap_or(Value::Null)),
        );
        put("result", self.result.clone().unwrap_or(Value::Null));
        put("error", self.error.clone().unwrap_or(Value::Null));
        put("metadata", self.metadata.clone().map_or(Value::Null, Value::Object));
        put("ttl_seconds", Value::from(self.ttl_seconds));
        Value::Object(map)
    }
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
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
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
        let f = Fields { obj, prefix: String::new() };
        Ok(Self {
            status: f.status("status")?.unwrap_or_default(),
            progress: f.number("progress", Some(100.0))?,
            current: f.number("current", None)?,
            total: f.number("total", None)?,
            stage: f.string("stage", MAX_STAGE_CHARS)?,
            message: f.string("message", MAX_MESSAGE_CHARS)?,
            children: f.children("children")?,
            result: obj.get("result").filter(|v| !v.is_null()).cloned(),
            error: f.error("error")?,
            metadata: f.object("metadata")?,
            ttl_seconds: f.ttl("ttl_seconds", max_ttl_seconds)?,
        })
    }
}

/// Typed access to one JSON object's fields, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
}

impl Fields<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
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
        check_length(&self.path(key), text, max_chars)?;
        Ok(Some(text.to_owned()))
    }

    fn object(&self, key: &str) -> Result<Option<Map<String, Value>>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        v.as_object().cloned().map(Some).ok_or_else(|| self.wrong_type(key, "an object", v))
    }

    fn error(&self, key: &str) -> Result<Option<Value>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        match v {
            Value::String(text) => check_length(&self.path(key), text, MAX_ERROR_CHARS)?,
            Value::Object(_) => {}
            other => return Err(self.wrong_type(key, "a string or an object", other)),
        }
        Ok(Some(v.clone()))
    }

    fn ttl(&self, key: &str, max: u64) -> Result<Option<u64>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let want = format!("must be a whole number of seconds from 1 to {max}");
        let Value::Number(n) = v else {
            return Err(ValidationError::new(self.path(key), format!("{want}, not {}", kind(v))));
        };
        match n.as_u64() {
            Some(s) if (1..=max).contains(&s) => Ok(Some(s)),
            _ => Err(ValidationError::new(self.path(key), format!("{want}, not {n}"))),
        }
    }

    fn children(&self, key: &str) -> Result<Option<IndexMap<String, Child>>, ValidationError> {
        let Some(v) = self.present(key) else { return Ok(None) };
        let map = v.as_object().ok_or_else(|| self.wrong_type(key, "an object of child id → child", v))?;
        if map.len() > MAX_CHILDREN {
            return Err(ValidationError::new(
                self.path(key),
                format!("has {} children; the limit is {MAX_CHILDREN}", map.len()),
            ));
        }
        let mut out = IndexMap::with_capacity(map.len());
        for (child_id, child) in map {
            let path = format!("{}.{child_id}", self.path(key));
            if child_id.is_empty() || child_id.chars().count() > MAX_CHILD_ID_CHARS {
                return Err(ValidationError::new(
                    path,
                    format!("child ids must be 1 to {MAX_CHILD_ID_CHARS} characters"),
                ));
            }
            if child.is_null() {
                continue; // a merge patch removed it
            }
            let obj = child.as_object().ok_or_else(|| {
                ValidationError::new(path.clone(), format!("must be an object, not {}", kind(child)))
            })?;
            if let Some(unknown) = obj.keys().find(|k| !CHILD_FIELDS.contains(&k.as_str())) {
                return Err(ValidationError::new(
                    format!("{path}.{unknown}"),
                    format!("unknown child field; child fields are {}", CHILD_FIELDS.join(", ")),
                ));
            }
            let f = Fields { obj, prefix: format!("{path}.") };
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

fn check_length(path: &str, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    // Byte length bounds char count from above, so most strings skip the count.
    if text.len() > max_chars {
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(ValidationError::new(
                path,
                format!("is {chars} characters long; the limit is {max_chars}"),
            ));
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
}
