//! The macros that write, from the field tables in `fields.rs`, everything
//! that lists the fields: the structs ([`ClientFields`], [`ProgressRecord`],
//! [`Child`]), the name lists, the general reading of a body, the fast PUT
//! decoder, the merge patch, the PATCH base, and the record writer's part
//! for them. Each piece is a fixed sequence of calls to the field's kind,
//! one per field, as direct as code written by hand: no lookup by name at
//! run time, nothing allocated that the hand-written code did not.
//!
//! They are meant for `fields.rs` alone (one invocation each); the paths
//! inside name the crate's items in full so that the tables need import
//! nothing but what they mention.
//!
//! [`ClientFields`]: super::ClientFields
//! [`ProgressRecord`]: super::ProgressRecord
//! [`Child`]: super::Child

/// Writes the client fields of a record from their table (see `fields.rs`):
///
/// ```text
/// /// doc
/// name: Type = Kind,              // the record keeps what the client sent
/// name: Option<T> => T = Kind,    // the server fills it in when left out
/// ```
macro_rules! client_fields {
    ($(
        $(#[$doc:meta])*
        $name:ident: $value:ty $(=> $kept:ty)? = $kind:ty,
    )*) => {
        /// The client-written part of a record, validated.
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct ClientFields {
            $( $(#[$doc])* pub $name: $value, )*
        }

        /// The fields a client may write at the top level of a record, in
        /// the order a record shows them.
        pub const CLIENT_FIELDS: &[&str] = &CLIENT_NAMES;

        /// [`CLIENT_FIELDS`], as an array.
        const CLIENT_NAMES: [&str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];

        /// The full record: what is stored and what every response carries
        /// (plus `stalled`, which depends on the time of the read).
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        pub struct ProgressRecord {
            /// The job id.
            pub id: String,
            /// +1 on every accepted write.
            pub version: u64,
            $( $(#[$doc])* pub $name: client_fields!(@kept $value $(=> $kept)?), )*
            /// First write.
            pub created_at: $crate::domain::Timestamp,
            /// Last write.
            pub updated_at: $crate::domain::Timestamp,
            /// First time the status was `running`.
            pub started_at: Option<$crate::domain::Timestamp>,
            /// When the record entered its terminal status.
            pub completed_at: Option<$crate::domain::Timestamp>,
            /// When `POST /progress/{id}/cancel` first asked the job to
            /// stop; null until then (and in records stored before it existed).
            #[serde(default)]
            pub cancel_requested_at: Option<$crate::domain::Timestamp>,
            /// The reason the cancel request gave, if any.
            #[serde(default)]
            pub cancel_reason: Option<String>,
            /// `updated_at + ttl_seconds`.
            pub expires_at: $crate::domain::Timestamp,
            /// Estimated completion time from the observed rate.
            pub eta: Option<$crate::domain::Timestamp>,
            /// History of `stage` values.
            pub stages: Vec<$crate::domain::StageSpan>,
        }

        impl ClientFields {
            /// The fields of a body object whose keys are all client fields:
            /// the general path ([`ClientFields::from_json`]).
            pub(super) fn read(
                obj: &::serde_json::Map<String, ::serde_json::Value>,
                limits: $crate::domain::record::kinds::Limits,
            ) -> Result<Self, $crate::domain::ValidationError> {
                #[allow(non_camel_case_types)]
                enum Slot { $($name),* }
                let f = $crate::domain::record::validate::Fields::of(obj, &CLIENT_NAMES, None);
                Ok(Self { $( $name: f.read::<$kind>(Slot::$name as usize, limits)?, )* })
            }

            /// Applies a JSON merge patch (RFC 7386) to these fields (a
            /// record's, as [`ProgressRecord::into_parts`] gives them).
            /// `patch` is the patch object and `validated` the same patch
            /// read by [`ClientFields::from_json`], which has already
            /// checked every value it carries.
            ///
            /// A merge patch works key by key at the top level, so only the
            /// fields the patch names change; the result is what
            /// [`ClientFields::from_json`] makes of `merge_patch(client_json,
            /// patch)`. Each field changes by its kind's rule: values that
            /// replace a field whole come from `validated`; `result`,
            /// `error`, `metadata` and `children` merge into what is there.
            /// The one rule a valid patch can still break is the number of
            /// children.
            pub fn merge(
                mut self,
                patch: &::serde_json::Map<String, ::serde_json::Value>,
                mut validated: ClientFields,
            ) -> Result<Self, $crate::domain::ValidationError> {
                use $crate::domain::record::kinds::FieldKind;
                use $crate::domain::record::validate::Field;
                for (key, value) in patch {
                    match key.as_str() {
                        $(
                            stringify!($name) => <$kind>::merge(
                                &mut self.$name,
                                value,
                                &mut validated.$name,
                                Field { name: stringify!($name), child: None },
                            )?,
                        )*
                        // Not reached: the patch's keys were checked.
                        other => return Err($crate::domain::record::validate::not_a_client_field(other)),
                    }
                }
                Ok(self)
            }

            /// A value each client field takes (not its default), in the
            /// order of [`CLIENT_FIELDS`]: what the tests send through every
            /// path, one field at a time.
            pub fn examples() -> Vec<(&'static str, ::serde_json::Value)> {
                use $crate::domain::record::kinds::FieldKind;
                vec![$( (stringify!($name), <$kind>::example()), )*]
            }
        }

        /// A PUT body as the fast decoder reads it (`fast.rs`): each field
        /// as its kind's wire type.
        #[derive(::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FastBody {
            $(
                #[serde(default)]
                $name: Option<<$kind as $crate::domain::record::kinds::FieldKind>::Wire>,
            )*
        }

        impl FastBody {
            /// The fields, if each is what the general path would make of it.
            pub(super) fn read(
                self,
                limits: $crate::domain::record::kinds::Limits,
                depth: &mut usize,
            ) -> Option<ClientFields> {
                use $crate::domain::record::fast::read_wire;
                Some(ClientFields { $( $name: read_wire::<$kind>(self.$name, limits, depth)?, )* })
            }
        }

        impl ProgressRecord {
            /// A record of what the server set, the client fields of the
            /// write, and the ones among them the server resolved.
            pub(crate) fn assemble(
                server: $crate::domain::record::ServerFields,
                fields: ClientFields,
                resolved: $crate::domain::record::Resolved,
            ) -> Self {
                let $crate::domain::record::ServerFields {
                    id,
                    version,
                    created_at,
                    updated_at,
                    started_at,
                    completed_at,
                    cancel_requested_at,
                    cancel_reason,
                    expires_at,
                    eta,
                    stages,
                } = server;
                Self {
                    id,
                    version,
                    $( $name: client_fields!(@keep fields.$name, resolved.$name $(=> $kept)?), )*
                    created_at,
                    updated_at,
                    started_at,
                    completed_at,
                    cancel_requested_at,
                    cancel_reason,
                    expires_at,
                    eta,
                    stages,
                }
            }

            /// Splits the record into what the server keeps up and the
            /// client fields as a PATCH sees them: every field the record
            /// shows, with `progress` and `ttl_seconds` at their current
            /// values. The same as [`ProgressRecord::client_json`] read
            /// back by [`ClientFields::from_json`], without the round trip
            /// through JSON values.
            pub fn into_parts(self) -> ($crate::domain::ServerState, ClientFields) {
                let state = $crate::domain::ServerState {
                    version: self.version,
                    status: self.status,
                    created_at: self.created_at,
                    started_at: self.started_at,
                    completed_at: self.completed_at,
                    cancel_requested_at: self.cancel_requested_at,
                    cancel_reason: self.cancel_reason,
                    stages: self.stages,
                };
                let fields = ClientFields { $( $name: client_fields!(@reopen self.$name $(=> $kept)?), )* };
                (state, fields)
            }

            /// The client fields of this record as a JSON object: the base a
            /// merge patch applies to.
            pub fn client_json(&self) -> ::serde_json::Value {
                let mut map = ::serde_json::Map::new();
                $(
                    let value = ::serde_json::to_value(&self.$name).unwrap_or(::serde_json::Value::Null);
                    if !value.is_null() {
                        map.insert(stringify!($name).to_owned(), value);
                    }
                )*
                ::serde_json::Value::Object(map)
            }

            /// Appends `,"name":value` for each client field, as the derived
            /// `Serialize` writes them (`encode.rs` writes the rest).
            pub(crate) fn write_client_fields(&self, out: &mut Vec<u8>) {
                use $crate::domain::encode::WriteJson;
                $(
                    out.extend_from_slice(concat!(",\"", stringify!($name), "\":").as_bytes());
                    self.$name.write_json(out);
                )*
            }
        }
    };
    // The type the record keeps.
    (@kept $value:ty) => { $value };
    (@kept $value:ty => $kept:ty) => { $kept };
    // The record's value from the write's fields, or from what the server resolved.
    (@keep $sent:expr, $resolved:expr) => { $sent };
    (@keep $sent:expr, $resolved:expr => $kept:ty) => { $resolved };
    // The record's value as a PATCH base.
    (@reopen $kept_value:expr) => { $kept_value };
    (@reopen $kept_value:expr => $kept:ty) => { ::core::convert::From::from($kept_value) };
}

/// Writes a child of a record from the table of child fields (see
/// `fields.rs`): `name: Option<T> = Kind,`, each with its doc. A child
/// shows only the fields it has.
macro_rules! child_fields {
    ($(
        $(#[$doc:meta])*
        $name:ident: $value:ty = $kind:ty,
    )*) => {
        /// One sub-task of a record (a chapter, a subtopic).
        #[derive(Debug, Clone, PartialEq, Default, ::serde::Serialize, ::serde::Deserialize)]
        pub struct Child {
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: $value,
            )*
        }

        /// The fields a child may have, in the order a child shows them.
        pub(super) const CHILD_FIELDS: [&str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];

        impl Child {
            /// A child object of a body (general path), `child_id` its id.
            pub(super) fn read(
                obj: &::serde_json::Map<String, ::serde_json::Value>,
                child_id: &str,
                limits: $crate::domain::record::kinds::Limits,
            ) -> Result<Self, $crate::domain::ValidationError> {
                use $crate::domain::record::validate::{Fields, not_a_child_field};
                if let Some(unknown) = obj.keys().find(|k| !CHILD_FIELDS.contains(&k.as_str())) {
                    return Err(not_a_child_field(child_id, unknown, &CHILD_FIELDS));
                }
                #[allow(non_camel_case_types)]
                enum Slot { $($name),* }
                let f = Fields::of(obj, &CHILD_FIELDS, Some(child_id));
                Ok(Self { $( $name: f.read::<$kind>(Slot::$name as usize, limits)?, )* })
            }

            /// Applies a merge patch of this child (`patch`, its fields
            /// checked; `update`, the same read by [`Child::read`]).
            pub(super) fn merge(
                &mut self,
                patch: &::serde_json::Map<String, ::serde_json::Value>,
                update: &mut Child,
                child_id: &str,
            ) -> Result<(), $crate::domain::ValidationError> {
                use $crate::domain::record::kinds::FieldKind;
                use $crate::domain::record::validate::{Field, not_a_child_field};
                for (key, value) in patch {
                    match key.as_str() {
                        $(
                            stringify!($name) => <$kind>::merge(
                                &mut self.$name,
                                value,
                                &mut update.$name,
                                Field { name: stringify!($name), child: Some(child_id) },
                            )?,
                        )*
                        // Not reached: the patch's children were read by `read`.
                        other => return Err(not_a_child_field(child_id, other, &CHILD_FIELDS)),
                    }
                }
                Ok(())
            }

            /// A child with an example of every field.
            pub(super) fn example() -> ::serde_json::Value {
                use $crate::domain::record::kinds::FieldKind;
                let mut child = ::serde_json::Map::new();
                $( child.insert(stringify!($name).to_owned(), <$kind>::example()); )*
                ::serde_json::Value::Object(child)
            }
        }

        /// A child as the fast decoder reads it.
        #[derive(::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FastChild {
            $(
                #[serde(default)]
                $name: Option<<$kind as $crate::domain::record::kinds::FieldKind>::Wire>,
            )*
        }

        impl FastChild {
            /// The child, if each field is what the general path would make of it.
            pub(super) fn read(
                self,
                limits: $crate::domain::record::kinds::Limits,
                depth: &mut usize,
            ) -> Option<Child> {
                use $crate::domain::record::fast::read_wire;
                Some(Child { $( $name: read_wire::<$kind>(self.$name, limits, depth)?, )* })
            }
        }

        /// Fields that are `None` are left out, as `skip_serializing_if` does.
        impl $crate::domain::encode::WriteJson for Child {
            #[inline]
            #[allow(unused_assignments)] // `open`, after the last field
            fn write_json(&self, out: &mut Vec<u8>) {
                let mut open = b'{';
                $(
                    if let Some(value) = &self.$name {
                        out.push(open);
                        open = b',';
                        out.extend_from_slice(concat!("\"", stringify!($name), "\":").as_bytes());
                        value.write_json(out);
                    }
                )*
                if open == b'{' {
                    out.push(b'{');
                }
                out.push(b'}');
            }
        }
    };
}
