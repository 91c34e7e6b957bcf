//! The general reading of a body: a JSON value checked field by field, with
//! an error that names the offending field in words a client developer can
//! act on. Each field's own rule is its kind's (`kinds.rs`); this file has
//! what they share: the object walk, the paths in errors, the length check.

use serde_json::{Map, Value};

use super::fields::{CLIENT_FIELDS, ClientFields};
use super::kinds::{FieldKind, Limits};
use super::{MAX_CHILD_ID_CHARS, SERVER_FIELDS};

/// A body that breaks a rule of SPEC §1, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted path of the offending field (`children.ch1.progress`); empty for the whole body.
    pub field: String,
    /// What is wrong, in words a client developer can act on.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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
    match obj.keys().find(|key| !CLIENT_FIELDS.contains(&key.as_str())) {
        Some(key) => Err(not_a_client_field(key)),
        None => Ok(obj),
    }
}

/// The error for a top-level key that is not a client field.
pub(super) fn not_a_client_field(key: &str) -> ValidationError {
    let message = if SERVER_FIELDS.contains(&key) {
        format!("`{key}` is set by the server and cannot be written")
    } else {
        format!("unknown field `{key}`; put app-specific data under `metadata`")
    };
    ValidationError::new(key, message)
}

/// The error for a key of a child that is not a child field.
pub(super) fn not_a_child_field(child_id: &str, key: &str, child_fields: &[&str]) -> ValidationError {
    ValidationError::new(
        format!("children.{child_id}.{key}"),
        format!("unknown child field; child fields are {}", child_fields.join(", ")),
    )
}

impl ClientFields {
    /// Validates a JSON body (a PUT body, or a record after a merge patch).
    /// `max_ttl_seconds` bounds `ttl_seconds`.
    pub fn from_json(body: &Value, max_ttl_seconds: u64) -> Result<Self, ValidationError> {
        let obj = check_top_level_keys(body)?;
        Self::read(obj, Limits { max_ttl_seconds })
    }
}

/// Where a field is, for its error messages: its name and, in a child, the
/// child's id. Paths are built only when an error is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field<'a> {
    /// The field's name.
    pub name: &'static str,
    /// The child id, when the field is a child's (`children.{id}.…`).
    pub child: Option<&'a str>,
}

impl Field<'_> {
    /// The dotted path of the field.
    pub fn path(&self) -> String {
        match self.child {
            Some(child) => format!("children.{child}.{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// An error about this field.
    pub fn error(&self, message: impl Into<String>) -> ValidationError {
        ValidationError::new(self.path(), message)
    }

    /// "must be `want`, not (the kind of `got`)".
    pub fn wrong_type(&self, want: &str, got: &Value) -> ValidationError {
        self.error(format!("must be {want}, not {}", kind(got)))
    }

    /// The error for a string over `max_chars` characters, if `text` is one.
    pub fn check_length(&self, text: &str, max_chars: usize) -> Result<(), ValidationError> {
        // Byte length bounds char count from above, so most strings skip the count.
        if text.len() > max_chars {
            let chars = text.chars().count();
            if chars > max_chars {
                return Err(self.error(format!("is {chars} characters long; the limit is {max_chars}")));
            }
        }
        Ok(())
    }
}

/// The values of one JSON object's fields, by their place in `names`,
/// found in one walk over the object (no hashing).
pub(super) struct Fields<'a, const N: usize> {
    /// The names that may appear (all checked beforehand).
    names: &'static [&'static str; N],
    /// The value of each name.
    values: [Option<&'a Value>; N],
    /// The child id, when the object is a child (`children.{id}.…`).
    child: Option<&'a str>,
}

impl<'a, const N: usize> Fields<'a, N> {
    /// The fields of `obj`, whose keys are all among `names`.
    pub fn of(obj: &'a Map<String, Value>, names: &'static [&'static str; N], child: Option<&'a str>) -> Self {
        let mut values = [None; N];
        for (key, value) in obj {
            if let Some(i) = names.iter().position(|n| *n == key) {
                values[i] = Some(value);
            }
        }
        Self { names, values, child }
    }

    /// The field at `slot` read as kind `K`: its default when absent or null.
    pub fn read<K: FieldKind>(&self, slot: usize, limits: Limits) -> Result<K::Value, ValidationError> {
        match self.values[slot] {
            Some(value) if !value.is_null() => {
                K::validate(value, Field { name: self.names[slot], child: self.child }, limits)
            }
            _ => Ok(K::Value::default()),
        }
    }
}

/// Checks the id of a child of `children`: 1 to [`MAX_CHILD_ID_CHARS`] characters.
pub(super) fn check_child_id(children: Field<'_>, child_id: &str) -> Result<(), ValidationError> {
    if child_id.is_empty() || !fits(child_id, MAX_CHILD_ID_CHARS) {
        return Err(ValidationError::new(
            format!("{}.{child_id}", children.path()),
            format!("child ids must be 1 to {MAX_CHILD_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Whether `text` is at most `max_chars` characters long.
pub(super) fn fits(text: &str, max_chars: usize) -> bool {
    text.len() <= max_chars || text.chars().count() <= max_chars
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
