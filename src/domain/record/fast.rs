//! The fast PUT path: a body's text read straight into the fields, without
//! building a `serde_json::Value` of it first. Most PUTs take it; any body it
//! cannot vouch for (malformed, an unknown or repeated field, a wrong type,
//! out of range, too deep) goes to the general path, which also words the
//! error. The decoder's struct is written for each field in `generate.rs`
//! from the field's kind; here are the wire types the kinds read with.

use serde::Deserialize;
use serde_json::Number;

use super::fields::{ClientFields, FastBody, FastChild};
use super::kinds::Limits;
use super::{MAX_CHILDREN, Status};

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
        let mut depth = 1; // the body itself
        let fields = body.read(Limits { max_ttl_seconds }, &mut depth)?;
        (depth <= max_depth).then_some(fields)
    }
}

/// A number of a PUT body, read from its JSON text (borrowed, not copied),
/// with its value. serde_json's arbitrary-precision `Number` costs two
/// allocations when read from a document (the scratch text, then the
/// number), one when built from a `u64`: 13 allocations saved for a body
/// with 13 whole numbers.
pub(super) struct FastNumber {
    /// The number, as the general path would keep it.
    pub number: Number,
    /// Its value, for range checks.
    pub value: f64,
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
pub(super) struct FromObject<T>(pub T);

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
/// fields are built. The fast path leaves bodies with a repeated id to the
/// general path, which says which one wins.
pub(super) struct ChildList(pub Vec<(String, Option<FromObject<FastChild>>)>);

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
pub(super) struct StatusText(pub Status);

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

/// A field of the fast decoder's struct read into its kind's value: the
/// default when the body left it out or sent `null`.
pub(super) fn read_wire<K: super::kinds::FieldKind>(
    wire: Option<K::Wire>,
    limits: Limits,
    depth: &mut usize,
) -> Option<K::Value> {
    match wire {
        None => Some(K::Value::default()),
        Some(wire) => K::from_wire(wire, limits, depth),
    }
}
