//! A merge patch (RFC 7386) applied to typed fields rather than to JSON.
//!
//! A merge patch works key by key at the top level, so a PATCH changes only
//! the fields it names; [`ClientFields::merge`] (written for each field in
//! `generate.rs`) applies each named field's rule from its kind. The rules
//! are the ones below: a value that replaces the field whole comes from
//! the patch as already validated; `result`, `error` and `metadata` merge
//! as JSON; `children` merge child by child. The tests check the result
//! against validating `merge_patch(record as JSON, patch)`.
//!
//! [`ClientFields::merge`]: super::ClientFields::merge

use serde_json::{Map, Value};

use super::validate::{Field, ValidationError};
use super::{Children, MAX_CHILDREN};

/// The field takes the patch's (validated) value whole.
pub(super) fn replace<T: Default>(current: &mut T, validated: &mut T) -> Result<(), ValidationError> {
    *current = std::mem::take(validated);
    Ok(())
}

/// `merge_patch(current, patch)` for one field; `None` when the result is null.
pub(super) fn merged(current: Option<Value>, patch: &Value) -> Option<Value> {
    let mut value = current.unwrap_or(Value::Null);
    crate::domain::merge_patch(&mut value, patch);
    Some(value).filter(|v| !v.is_null())
}

/// [`merged`] for a field that holds an object. A validated patch holds an
/// object or null for it, so the result is an object or nothing.
pub(super) fn merged_object(
    current: Option<Map<String, Value>>,
    patch: &Value,
    field: Field<'_>,
) -> Result<Option<Map<String, Value>>, ValidationError> {
    match merged(current.map(Value::Object), patch) {
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(field.wrong_type("an object", &other)),
        None => Ok(None),
    }
}

/// The children after a merge patch of `children`: `patch` as sent (null,
/// or child id → null or child), `validated` its non-null children. The
/// one rule a valid patch can still break is the number of children.
pub(super) fn merge_children(
    current: Option<Children>,
    patch: &Value,
    mut validated: Children,
    field: Field<'_>,
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
        child.merge(child_patch, &mut update, child_id)?;
    }
    if children.len() > MAX_CHILDREN {
        return Err(field.error(format!("has {} children; the limit is {MAX_CHILDREN}", children.len())));
    }
    Ok(Some(children))
}
