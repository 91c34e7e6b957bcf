//! The kinds of client field. A field's kind is its rule: which JSON values
//! it takes (the same on the general path and the fast PUT path), how a
//! merge patch changes it, and an example value for the tests that walk
//! every field. The fields themselves are declared in `fields.rs`; a new
//! field whose values follow none of the rules below gets a kind here.

use serde::Deserialize;
use serde_json::{Map, Number, Value, json};

use super::fast::{ChildList, FastNumber, FromObject, StatusText};
use super::patch::{merge_children, merged, merged_object, replace};
use super::validate::{Field, ValidationError, check_child_id, fits, kind};
use super::{Child, Children, MAX_CHILD_ID_CHARS, MAX_CHILDREN, Status};

/// Bounds a body is read under (from the settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The largest `ttl_seconds` a write may ask for.
    pub max_ttl_seconds: u64,
}

/// One kind of client field. Every method is called from code the macros
/// in `generate.rs` write for each field, with the field's name (for its
/// errors) and nothing looked up by name at run time.
pub(super) trait FieldKind {
    /// The validated value; its default stands for the field left out (or
    /// sent as `null`).
    type Value: Default;
    /// The value as the fast PUT decoder reads it from the body's text
    /// (`null` is the field left out, never read as this).
    type Wire: for<'de> Deserialize<'de>;

    /// Reads a body's (non-null) value, or says what is wrong with it.
    fn validate(value: &Value, field: Field<'_>, limits: Limits) -> Result<Self::Value, ValidationError>;

    /// The fast decoder's value, if [`FieldKind::validate`] would take it
    /// (`None`: leave the body to the general path, which words the error).
    /// `depth` is how deeply the object holding the field nests so far (1:
    /// the object itself); a value that nests deeper raises it.
    fn from_wire(wire: Self::Wire, limits: Limits, depth: &mut usize) -> Option<Self::Value>;

    /// Applies a merge patch's value for the field (maybe `null`) to
    /// `current`; `validated` is that value as [`FieldKind::validate`] read
    /// it (the default for `null`), there to be taken. The result is what
    /// validating `merge_patch(current as JSON, patch)` would give.
    fn merge(
        current: &mut Self::Value,
        patch: &Value,
        validated: &mut Self::Value,
        field: Field<'_>,
    ) -> Result<(), ValidationError>;

    /// A value the field takes that is not its default: the tests send one
    /// of each field through every path.
    fn example() -> Value;
}

/// `status`: a status name; left out, `pending`.
pub(super) struct Lifecycle;

impl FieldKind for Lifecycle {
    type Value = Status;
    type Wire = StatusText;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Status, ValidationError> {
        status(value, field)
    }

    fn from_wire(wire: StatusText, _: Limits, _: &mut usize) -> Option<Status> {
        Some(wire.0)
    }

    fn merge(current: &mut Status, _: &Value, validated: &mut Status, _: Field<'_>) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!("running")
    }
}

/// A child's `status`: a status name, or nothing.
pub(super) struct MaybeLifecycle;

impl FieldKind for MaybeLifecycle {
    type Value = Option<Status>;
    type Wire = StatusText;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Status>, ValidationError> {
        status(value, field).map(Some)
    }

    fn from_wire(wire: StatusText, _: Limits, _: &mut usize) -> Option<Option<Status>> {
        Some(Some(wire.0))
    }

    fn merge(
        current: &mut Option<Status>,
        _: &Value,
        validated: &mut Option<Status>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!("completed")
    }
}

fn status(value: &Value, field: Field<'_>) -> Result<Status, ValidationError> {
    let names = "one of pending, running, completed, failed, cancelled";
    let text = value.as_str().ok_or_else(|| field.wrong_type(names, value))?;
    Status::parse(text).ok_or_else(|| field.error(format!("must be {names}, not {text:?}")))
}

/// A percentage: a number from 0 to 100.
pub(super) struct Percent;

impl FieldKind for Percent {
    type Value = Option<Number>;
    type Wire = FastNumber;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Number>, ValidationError> {
        number(value, field, Some(100.0)).map(Some)
    }

    fn from_wire(wire: FastNumber, _: Limits, _: &mut usize) -> Option<Option<Number>> {
        wire_number(wire, Some(100.0)).map(Some)
    }

    fn merge(
        current: &mut Option<Number>,
        _: &Value,
        validated: &mut Option<Number>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!(40)
    }
}

/// A counter or a weight: a finite non-negative number.
pub(super) struct Count;

impl FieldKind for Count {
    type Value = Option<Number>;
    type Wire = FastNumber;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Number>, ValidationError> {
        number(value, field, None).map(Some)
    }

    fn from_wire(wire: FastNumber, _: Limits, _: &mut usize) -> Option<Option<Number>> {
        wire_number(wire, None).map(Some)
    }

    fn merge(
        current: &mut Option<Number>,
        _: &Value,
        validated: &mut Option<Number>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!(3)
    }
}

/// A finite non-negative number, at most `max` when given.
fn number(value: &Value, field: Field<'_>, max: Option<f64>) -> Result<Number, ValidationError> {
    let Value::Number(n) = value else {
        let want = if max.is_some() { "a number from 0 to 100" } else { "a non-negative number" };
        return Err(field.wrong_type(want, value));
    };
    if !in_range(n.as_f64().unwrap_or(f64::NAN), max) {
        return Err(field.error(match max {
            Some(m) => format!("must be a number from 0 to {m}, not {n}"),
            None => format!("must be a non-negative number, not {n}"),
        }));
    }
    Ok(n.clone())
}

fn wire_number(wire: FastNumber, max: Option<f64>) -> Option<Number> {
    in_range(wire.value, max).then_some(wire.number)
}

fn in_range(x: f64, max: Option<f64>) -> bool {
    x.is_finite() && x >= 0.0 && max.is_none_or(|m| x <= m)
}

/// A string of at most `MAX` characters.
pub(super) struct Text<const MAX: usize>;

impl<const MAX: usize> FieldKind for Text<MAX> {
    type Value = Option<String>;
    type Wire = String;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<String>, ValidationError> {
        let text = value.as_str().ok_or_else(|| field.wrong_type("a string", value))?;
        field.check_length(text, MAX)?;
        Ok(Some(text.to_owned()))
    }

    fn from_wire(wire: String, _: Limits, _: &mut usize) -> Option<Option<String>> {
        fits(&wire, MAX).then_some(Some(wire))
    }

    fn merge(
        current: &mut Option<String>,
        _: &Value,
        validated: &mut Option<String>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!("some words")
    }
}

/// Any JSON value; a merge patch merges into it.
pub(super) struct AnyJson;

impl FieldKind for AnyJson {
    type Value = Option<Value>;
    type Wire = Value;

    fn validate(value: &Value, _: Field<'_>, _: Limits) -> Result<Option<Value>, ValidationError> {
        Ok(Some(value.clone()))
    }

    fn from_wire(wire: Value, _: Limits, depth: &mut usize) -> Option<Option<Value>> {
        *depth = (*depth).max(1 + crate::domain::depth(&wire));
        Some(Some(wire))
    }

    fn merge(
        current: &mut Option<Value>,
        patch: &Value,
        _: &mut Option<Value>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        *current = merged(current.take(), patch);
        Ok(())
    }

    fn example() -> Value {
        json!({"rows": [1, 2.5, "x"], "done": true})
    }
}

/// A string of at most `MAX` characters, or an object; a merge patch
/// merges into it. (A string or an object merged with a string, an object
/// or null is again one of those, or nothing.)
pub(super) struct StringOrObject<const MAX: usize>;

impl<const MAX: usize> FieldKind for StringOrObject<MAX> {
    type Value = Option<Value>;
    type Wire = Value;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Value>, ValidationError> {
        match value {
            Value::String(text) => field.check_length(text, MAX)?,
            Value::Object(_) => {}
            other => return Err(field.wrong_type("a string or an object", other)),
        }
        Ok(Some(value.clone()))
    }

    fn from_wire(wire: Value, _: Limits, depth: &mut usize) -> Option<Option<Value>> {
        match &wire {
            Value::String(text) if fits(text, MAX) => {}
            Value::Object(_) => {}
            _ => return None,
        }
        *depth = (*depth).max(1 + crate::domain::depth(&wire));
        Some(Some(wire))
    }

    fn merge(
        current: &mut Option<Value>,
        patch: &Value,
        _: &mut Option<Value>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        *current = merged(current.take(), patch);
        Ok(())
    }

    fn example() -> Value {
        json!({"code": 3, "detail": "disk full"})
    }
}

/// A JSON object; a merge patch merges into it.
pub(super) struct Object;

impl FieldKind for Object {
    type Value = Option<Map<String, Value>>;
    type Wire = Map<String, Value>;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Map<String, Value>>, ValidationError> {
        value.as_object().cloned().map(Some).ok_or_else(|| field.wrong_type("an object", value))
    }

    fn from_wire(wire: Map<String, Value>, _: Limits, depth: &mut usize) -> Option<Option<Map<String, Value>>> {
        *depth = (*depth).max(2 + wire.values().map(crate::domain::depth).max().unwrap_or(0));
        Some(Some(wire))
    }

    fn merge(
        current: &mut Option<Map<String, Value>>,
        patch: &Value,
        _: &mut Option<Map<String, Value>>,
        field: Field<'_>,
    ) -> Result<(), ValidationError> {
        *current = merged_object(current.take(), patch, field)?;
        Ok(())
    }

    fn example() -> Value {
        json!({"owner": "u-18234", "attempt": 2})
    }
}

/// `webhook`: `{"url": …, "events": […]}`, checked by
/// [`check_webhook`](crate::domain::check_webhook); a merge patch merges
/// into it (`null` removes it), and the result is checked again.
pub(super) struct Hook;

impl Hook {
    fn check(map: &Map<String, Value>) -> Result<(), ValidationError> {
        crate::domain::check_webhook(map).map_err(|(path, message)| ValidationError::new(path, message))
    }
}

impl FieldKind for Hook {
    type Value = Option<Map<String, Value>>;
    type Wire = Map<String, Value>;

    fn validate(value: &Value, field: Field<'_>, _: Limits) -> Result<Option<Map<String, Value>>, ValidationError> {
        let map = value.as_object().ok_or_else(|| field.wrong_type("an object with url and events", value))?;
        Self::check(map)?;
        Ok(Some(map.clone()))
    }

    fn from_wire(wire: Map<String, Value>, limits: Limits, depth: &mut usize) -> Option<Option<Map<String, Value>>> {
        Self::check(&wire).ok()?;
        Object::from_wire(wire, limits, depth)
    }

    fn merge(
        current: &mut Option<Map<String, Value>>,
        patch: &Value,
        validated: &mut Option<Map<String, Value>>,
        field: Field<'_>,
    ) -> Result<(), ValidationError> {
        Object::merge(current, patch, validated, field)?;
        match current {
            Some(map) => Self::check(map),
            None => Ok(()),
        }
    }

    fn example() -> Value {
        json!({"url": "https://hooks.example.com/progress", "events": ["progress.completed"]})
    }
}

/// Seconds of life: a whole number from 1 to the configured maximum.
pub(super) struct Ttl;

impl FieldKind for Ttl {
    type Value = Option<u64>;
    type Wire = FastNumber;

    fn validate(value: &Value, field: Field<'_>, limits: Limits) -> Result<Option<u64>, ValidationError> {
        let max = limits.max_ttl_seconds;
        let want = || format!("must be a whole number of seconds from 1 to {max}");
        let Value::Number(n) = value else {
            return Err(field.error(format!("{}, not {}", want(), kind(value))));
        };
        // A whole number in any JSON spelling (`60`, `60.0`, `6e1`), as JSON
        // Schema's `integer` (openapi.yaml) counts it; never a fraction.
        let whole = n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= max as f64).map(|f| f as u64));
        match whole {
            Some(s) if (1..=max).contains(&s) => Ok(Some(s)),
            _ => Err(field.error(format!("{}, not {n}", want()))),
        }
    }

    fn from_wire(wire: FastNumber, limits: Limits, _: &mut usize) -> Option<Option<u64>> {
        // Other spellings of a whole number (`60.0`) are the general path's.
        wire.number.as_u64().filter(|s| (1..=limits.max_ttl_seconds).contains(s)).map(Some)
    }

    fn merge(
        current: &mut Option<u64>,
        _: &Value,
        validated: &mut Option<u64>,
        _: Field<'_>,
    ) -> Result<(), ValidationError> {
        replace(current, validated)
    }

    fn example() -> Value {
        json!(120)
    }
}

/// `children`: an object of child id → child (`null` in a patch removes
/// one); a merge patch merges child by child, field by field.
pub(super) struct ChildMap;

impl FieldKind for ChildMap {
    type Value = Option<Children>;
    type Wire = ChildList;

    fn validate(value: &Value, field: Field<'_>, limits: Limits) -> Result<Option<Children>, ValidationError> {
        let map = value.as_object().ok_or_else(|| field.wrong_type("an object of child id → child", value))?;
        if map.len() > MAX_CHILDREN {
            return Err(field.error(format!("has {} children; the limit is {MAX_CHILDREN}", map.len())));
        }
        let mut out = Children::with_capacity_and_hasher(map.len(), Default::default());
        for (child_id, child) in map {
            check_child_id(field, child_id)?;
            if child.is_null() {
                continue; // a merge patch removed it
            }
            let Value::Object(obj) = child else {
                let message = format!("must be an object, not {}", kind(child));
                return Err(ValidationError::new(format!("{}.{child_id}", field.path()), message));
            };
            out.insert(child_id.clone(), Child::read(obj, child_id, limits)?);
        }
        Ok(Some(out))
    }

    fn from_wire(wire: ChildList, limits: Limits, depth: &mut usize) -> Option<Option<Children>> {
        let ChildList(children) = wire;
        if children.len() > MAX_CHILDREN {
            return None;
        }
        let mut out = Children::with_capacity_and_hasher(children.len(), Default::default());
        let mut removed = Vec::new();
        let mut deepest_child = 0; // 0: no child that is not null
        for (id, child) in children {
            if id.is_empty() || !fits(&id, MAX_CHILD_ID_CHARS) {
                return None;
            }
            let Some(FromObject(child)) = child else {
                removed.push(id); // null: removed
                continue;
            };
            let mut child_depth = 1;
            let child = child.read(limits, &mut child_depth)?;
            deepest_child = deepest_child.max(child_depth);
            if out.insert(id, child).is_some() {
                return None; // a repeated id: the general path says which one wins
            }
        }
        if removed.iter().any(|id| out.contains_key(id)) {
            return None; // an id both set and removed
        }
        // The map, inside the object that holds it.
        *depth = (*depth).max(2 + deepest_child);
        Some(Some(out))
    }

    fn merge(
        current: &mut Option<Children>,
        patch: &Value,
        validated: &mut Option<Children>,
        field: Field<'_>,
    ) -> Result<(), ValidationError> {
        let validated = validated.take().unwrap_or_default();
        *current = merge_children(current.take(), patch, validated, field)?;
        Ok(())
    }

    fn example() -> Value {
        json!({ "part-1": Child::example() })
    }
}
