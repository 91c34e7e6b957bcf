//! Properties of the domain, checked on generated inputs (proptest): merge
//! patch laws, derived progress bounds, versions, validation of any JSON,
//! and the round trip of `result`/`metadata` through PUT, PATCH and GET.
//!
//! Domain properties call `progressd::domain` directly, in the order the
//! write path does (`service.rs`). Properties about what a client sees go
//! through the real router (`build_router` over an in-memory store, driven
//! with `oneshot`), so they run exactly what the PUT/PATCH/GET handlers run:
//! the typed PUT fast path, the general path, the merge and the stored bytes.
//!
//! Each property runs `PROPTEST_CASES` cases (default below, a few seconds in
//! all); `PROPTEST_CASES=5000 cargo test --test properties` digs deeper.

use std::cell::RefCell;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm};
use serde_json::{Map, Number, Value, json};
use tower::ServiceExt;

use progressd::Settings;
use progressd::domain::{
    CLIENT_FIELDS, Child, ClientFields, MAX_STAGES, ProgressId, ProgressRecord, RecordMeta, SERVER_FIELDS, Status,
    StoredRecord, Timestamp, Touched, WritePolicy, check_top_level_keys, children_percent, depth, derived_progress,
    merge_patch, next_record,
};
use progressd::store::MemoryStore;

const MAX_TTL: u64 = 3600;
/// `PROGRESS_MAX_JSON_DEPTH`'s default, which the router below runs with.
const MAX_DEPTH: usize = 32;
const POLICY: WritePolicy = WritePolicy { default_ttl_seconds: 60, heartbeat_ms: 1000 };

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default_cases);
    // Failures are reported, not written into the tree; a failure found
    // here becomes a named regression test below.
    // XorShift: in a debug build ChaCha's random bytes were most of the time.
    Config { cases, failure_persistence: None, rng_algorithm: RngAlgorithm::XorShift, ..Config::default() }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// A number in the canonical form serde_json keeps (`arbitrary_precision`):
/// digits as sent, an exponent with a lower-case `e` and a sign.
fn canonical_number() -> BoxedStrategy<Number> {
    let text = prop_oneof![
        "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,25})?(e[+-][0-9]{1,4})?",
        prop::sample::select(vec![
            "9007199254740993",
            "0.1",
            "123456789012345678901234567890",
            "1e+400",
            "-1e-400",
            "-0",
            "0.0",
            "1.7976931348623157e+308",
            "5e-324",
            "18446744073709551616",
            "-9223372036854775809",
            "100.0",
            "1e+2",
            "0.30000000000000004",
            "2.5e-3",
        ])
        .prop_map(str::to_owned),
    ]
    .prop_map(|t| t.parse::<Number>().unwrap_or_else(|e| panic!("{t} is a JSON number: {e}")));
    prop_oneof![
        1 => any::<i64>().prop_map(Number::from),
        1 => any::<u64>().prop_map(Number::from),
        1 => any::<f64>().prop_filter_map("finite", Number::from_f64),
        3 => text,
    ]
    .boxed()
}

/// Strings that are awkward to carry: control characters, quotes,
/// backslashes, line separators, astral characters, HTML.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        "(?s).{0,16}",
        any::<String>(),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{2028}\u{2029}\u{feff}é🚀<>/&']{0,12}",
        prop::sample::select(vec!["", "</script>", "\\u0000", "null", "{}", "a.b", "children.x"])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Any JSON value: nested up to 6 levels of arrays and objects, with odd
/// strings and keys, and numbers of any size.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        canonical_number().prop_map(Value::Number),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((odd_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Any JSON object.
fn any_object() -> BoxedStrategy<Map<String, Value>> {
    prop::collection::vec((odd_string(), any_json()), 0..6).prop_map(|e| e.into_iter().collect()).boxed()
}

/// A value nested `levels` deep in arrays and objects around a scalar.
fn nested(levels: usize, objects: &[bool], leaf: Value) -> Value {
    // Built by hand: `json!` would serialize `inner` again at every level.
    (0..levels).fold(leaf, |inner, level| {
        if objects[level % objects.len()] {
            Value::Object(Map::from_iter([("k".to_owned(), inner)]))
        } else {
            Value::Array(vec![inner])
        }
    })
}

/// The object `{name: value}`, without copying `value`.
fn object_of(name: &str, value: Value) -> Value {
    Value::Object(Map::from_iter([(name.to_owned(), value)]))
}

fn percent() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => (0u32..=100).prop_map(Value::from),
        4 => (0.0f64..=100.0).prop_map(Value::from),
        1 => prop::sample::select(vec!["100.0", "1e+2", "1e-400", "-0", "99.999999999999999999", "0e+0"])
            .prop_map(|t| Value::Number(t.parse().unwrap())),
        1 => canonical_number().prop_map(Value::Number), // mostly out of range
    ]
    .boxed()
}

fn counter() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (0u64..1000).prop_map(Value::from),
        2 => (0.0f64..1e6).prop_map(Value::from),
        2 => canonical_number().prop_map(Value::Number), // huge, tiny, negative
    ]
    .boxed()
}

fn status_value() -> BoxedStrategy<Value> {
    prop_oneof![
        10 => prop::sample::select(Status::ALL.to_vec()).prop_map(|s| Value::from(s.as_str())),
        1 => prop::sample::select(vec!["Running", "done", ""]).prop_map(Value::from),
        // serde's derived enums also read `{"running": null}`; validation does not.
        1 => prop::sample::select(Status::ALL.to_vec()).prop_map(|s| json!({ s.as_str(): null })),
        1 => any_json(),
    ]
    .boxed()
}

fn text(max_chars: usize) -> BoxedStrategy<Value> {
    prop_oneof![
        10 => odd_string().prop_map(Value::String),
        1 => Just(Value::String("é".repeat(max_chars))),
        1 => Just(Value::String("x".repeat(max_chars + 1))),
        1 => any_json(),
    ]
    .boxed()
}

/// A child object (`patch`: its fields may be null); now and then a wrong one.
fn child(patch: bool) -> BoxedStrategy<Value> {
    let field = prop_oneof![
        (Just("title"), text(200)),
        (Just("status"), status_value()),
        (Just("progress"), percent()),
        (Just("current"), counter()),
        (Just("total"), counter()),
        (Just("message"), text(2000)),
        (Just("weight"), counter()),
    ];
    let field = (field, 0..8u8).prop_map(move |((k, v), roll)| {
        let v = if patch && roll == 0 { Value::Null } else { v };
        (if roll == 7 { "colour" } else { k }.to_owned(), v)
    });
    prop::collection::vec(field, 0..5).prop_map(|f| Value::Object(f.into_iter().collect())).boxed()
}

fn children(patch: bool) -> BoxedStrategy<Value> {
    let id = prop_oneof![
        8 => prop::sample::select(vec!["c0", "c1", "c2", "c3", "é", "a.b"]).prop_map(str::to_owned),
        1 => odd_string(),
    ];
    let entry = prop_oneof![
        8 => child(patch),
        1 => Just(Value::Null),
        1 => any_json(),
        // serde's derived structs also read an array of their fields in order.
        1 => prop::collection::vec(odd_string().prop_map(Value::String), 0..3).prop_map(Value::Array),
    ];
    prop_oneof![
        10 => prop::collection::vec((id, entry), 0..5).prop_map(|e| Value::Object(e.into_iter().collect())),
        1 => any_json(),
    ]
    .boxed()
}

/// A `webhook`: right most of the time (the router allows any host),
/// sometimes a wrong URL, event or key.
fn webhook_value(patch: bool) -> BoxedStrategy<Value> {
    let url = prop_oneof![
        8 => (prop::sample::select(vec!["http", "https"]), "[a-z][a-z0-9]{0,8}", 0u16..10000)
            .prop_map(|(scheme, host, port)| json!(format!("{scheme}://{host}.example:{port}/hooks?x=1"))),
        1 => prop::sample::select(vec![json!("ftp://a.example/"), json!("/relative"), json!(7), json!(null)]),
    ];
    let events = prop_oneof![
        4 => Just(None),
        4 => prop::sample::subsequence(vec!["progress.completed", "progress.failed", "progress.stalled", "progress.stage"], 1..=4)
            .prop_map(|e| Some(json!(e))),
        1 => prop::sample::select(vec![json!([]), json!(["progress.done"]), json!("progress.failed"), json!(null)]).prop_map(Some),
    ];
    let extra = prop_oneof![8 => Just(None), 1 => Just(Some(("secret", json!("s"))))];
    let object = (url, events, extra).prop_map(move |(url, events, extra)| {
        let mut map = serde_json::Map::new();
        if !(patch && url.is_null()) {
            map.insert("url".into(), url);
        }
        if let Some(events) = events {
            map.insert("events".into(), events);
        }
        if let Some((key, value)) = extra {
            map.insert(key.into(), value);
        }
        Value::Object(map)
    });
    prop_oneof![10 => object, 1 => any_json()].boxed()
}

/// A value for one top-level field: right most of the time, sometimes wrong.
fn field_value(name: &'static str, patch: bool) -> BoxedStrategy<Value> {
    let value = match name {
        "status" => status_value(),
        "progress" => percent(),
        "current" | "total" => counter(),
        "stage" => text(200),
        "message" => text(2000),
        "children" => children(patch),
        "result" => any_json(),
        "error" => prop_oneof![
            4 => text(8000),
            4 => any_object().prop_map(Value::Object),
            1 => any_json(),
        ]
        .boxed(),
        "metadata" => prop_oneof![8 => any_object().prop_map(Value::Object), 1 => any_json()].boxed(),
        "webhook" => webhook_value(patch),
        "ttl_seconds" => prop_oneof![
            8 => (1..=MAX_TTL).prop_map(Value::from),
            1 => prop::sample::select(vec![json!(0), json!(MAX_TTL + 1), json!(60.0), json!("60"), json!(-1)]),
        ]
        .boxed(),
        other => unreachable!("{other}"),
    };
    if patch { prop_oneof![6 => value, 1 => Just(Value::Null)].boxed() } else { value }
}

/// A PUT body (`patch: false`) or a merge patch: client fields, rarely an
/// unknown or server-owned key.
fn body(patch: bool) -> BoxedStrategy<Value> {
    let known =
        Union::new(CLIENT_FIELDS.iter().map(|name| field_value(name, patch).prop_map(move |v| (name.to_string(), v))));
    let stray =
        (prop_oneof![prop::sample::select(SERVER_FIELDS.to_vec()).prop_map(str::to_owned), odd_string()], any_json());
    let entry = prop_oneof![30 => known, 1 => stray];
    prop::collection::vec(entry, 0..7).prop_map(|e| Value::Object(e.into_iter().collect())).boxed()
}

/// A body that is accepted (a PUT body, or a patch).
fn valid_body(patch: bool) -> impl Strategy<Value = Value> {
    body(patch).prop_filter("valid", move |b| {
        // A PUT's `webhook` also needs its `url`, which the service checks
        // (a PATCH may send `events` alone; the merged value is checked).
        let webhook_whole =
            patch || b.get("webhook").is_none_or(|w| w.is_null() || w.get("url").is_some_and(Value::is_string));
        webhook_whole && ClientFields::from_json(b, MAX_TTL).is_ok()
    })
}

// ---------------------------------------------------------------------------
// The write path, as service.rs runs it
// ---------------------------------------------------------------------------

/// A record as stored, and what the next write builds on.
struct Held {
    stored: StoredRecord,
}

/// A PUT of `body` over `prev`: the body read by `from_json`, a replace.
fn put(prev: Option<&Held>, body: &Value, at: i64) -> Result<(ProgressRecord, RecordMeta), String> {
    let fields = ClientFields::from_json(body, MAX_TTL).map_err(|e| e.to_string())?;
    let touched = Touched::replace(&fields);
    let prev = prev.map(|p| (p.stored.server_state().unwrap(), *p.stored.meta()));
    Ok(next_record(&id("p"), prev, fields, touched, Timestamp(at), &POLICY))
}

/// A PATCH of `patch` over `prev`: checked as client fields, then merged
/// into the stored record's fields (`ttl_seconds` clamped), then derived.
fn patch(prev: &Held, patch: &Value, at: i64) -> Result<(ProgressRecord, RecordMeta), String> {
    let (state, fields) = patched_fields(prev, patch)?;
    let touched = Touched::patch(patch.as_object().unwrap());
    Ok(next_record(&id("p"), Some((state, *prev.stored.meta())), fields, touched, Timestamp(at), &POLICY))
}

fn patched_fields(prev: &Held, patch: &Value) -> Result<(progressd::domain::ServerState, ClientFields), String> {
    let validated = ClientFields::from_json(patch, MAX_TTL).map_err(|e| e.to_string())?;
    let (state, mut fields) = prev.stored.record().unwrap().into_parts();
    fields.ttl_seconds = fields.ttl_seconds.map(|t| t.min(MAX_TTL));
    let patch = check_top_level_keys(patch).map_err(|e| e.to_string())?;
    let fields = fields.merge(patch, validated).map_err(|e| e.to_string())?;
    Ok((state, fields))
}

fn hold((record, meta): &(ProgressRecord, RecordMeta)) -> Held {
    Held { stored: StoredRecord::encode(meta, record) }
}

fn id(text: &str) -> ProgressId {
    ProgressId::parse(text).unwrap()
}

/// What a merge patch leaves of `value` written into nothing: objects lose
/// their null members, at every level below an object (arrays are values).
fn without_object_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_object_nulls(v))).collect(),
        ),
        other => other.clone(),
    }
}

/// RFC 7386 stated as a check on the outcome rather than as an algorithm:
/// a non-object patch replaces; an object patch removes its null members,
/// applies its other members recursively, and leaves the rest of `target`.
fn assert_is_merge(target: &Value, patch: &Value, result: &Value) -> Result<(), TestCaseError> {
    let Value::Object(patch) = patch else {
        prop_assert_eq!(result, patch);
        return Ok(());
    };
    let Value::Object(out) = result else { return Err(TestCaseError::fail(format!("not an object: {result}"))) };
    let empty = Map::new();
    let before = target.as_object().unwrap_or(&empty);
    for (key, value) in patch {
        if value.is_null() {
            prop_assert!(!out.contains_key(key), "null removes {key:?}");
        } else {
            let inner = out.get(key).ok_or_else(|| TestCaseError::fail(format!("{key:?} missing")))?;
            assert_is_merge(before.get(key).unwrap_or(&Value::Null), value, inner)?;
        }
    }
    for (key, value) in before {
        if !patch.contains_key(key) {
            prop_assert_eq!(out.get(key), Some(value), "{:?} untouched", key);
        }
    }
    prop_assert_eq!(out.len(), out.keys().filter(|k| patch.contains_key(*k) || before.contains_key(*k)).count());
    Ok(())
}

// ---------------------------------------------------------------------------
// Merge patch
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(192))]

    /// `merge_patch` is RFC 7386: null removes, objects merge, anything else replaces.
    #[test]
    fn merge_patch_is_rfc_7386(target in any_json(), patch in any_json()) {
        let mut out = target.clone();
        merge_patch(&mut out, &patch);
        assert_is_merge(&target, &patch, &out)?;
    }

    /// Applying a merge patch twice equals applying it once.
    #[test]
    fn merge_patch_twice_equals_once(target in any_json(), patch in any_json()) {
        let mut once = target;
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(once, twice);
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The typed merge of a PATCH into a record's fields is what validating
    /// `merge_patch(client_json, patch)` gives (the definition of a PATCH);
    /// applying the same patch again changes no client field.
    #[test]
    fn typed_merge_is_the_merge_patch_of_the_record(prev in valid_body(false), p in body(true)) {
        let held = hold(&put(None, &prev, 1_000).unwrap());
        let typed = patched_fields(&held, &p).map(|(_, f)| f);
        let through_json = ClientFields::from_json(&p, MAX_TTL).map_err(|e| e.to_string()).and_then(|_| {
            let mut doc = held.stored.record().unwrap().client_json();
            merge_patch(&mut doc, &p);
            ClientFields::from_json(&doc, MAX_TTL).map_err(|e| e.to_string())
        });
        prop_assert_eq!(&typed, &through_json);
        if let Ok(once) = typed {
            let validated = ClientFields::from_json(&p, MAX_TTL).unwrap();
            let twice = once.clone().merge(p.as_object().unwrap(), validated).unwrap();
            prop_assert_eq!(twice, once);
        }
    }

    /// A null in a patch removes the field it names (and a null child, the child;
    /// a null member of `metadata`, `result` or `error`, that member).
    #[test]
    fn null_removes_what_it_names(prev in valid_body(false), which in prop::sample::select(
        vec!["current", "total", "stage", "message", "children", "result", "error", "metadata"]
    )) {
        let held = hold(&put(None, &prev, 1_000).unwrap());
        let before = held.stored.record().unwrap().client_json();
        let (record, _) = patch(&held, &json!({ which: null }), 2_000).unwrap();
        prop_assert!(record.client_json().get(which).is_none(), "{} still in {}", which, record.client_json());
        // One level down: the first member of an object field.
        if let Some(Value::Object(map)) = before.get(which)
            && let Some(first) = map.keys().next() {
                let (record, _) = patch(&held, &json!({ which: { first.as_str(): null } }), 2_000).unwrap();
                let after = record.client_json();
                let left = after.get(which).and_then(Value::as_object);
                prop_assert!(left.is_none_or(|m| !m.contains_key(first)), "{}.{} still in {}", which, first, after);
                prop_assert_eq!(left.map_or(0, Map::len), map.len() - 1);
            }
    }
}

// ---------------------------------------------------------------------------
// Derived progress
// ---------------------------------------------------------------------------

/// Any finite number, negative, huge, tiny or of many digits.
fn raw_number() -> BoxedStrategy<Number> {
    prop_oneof![canonical_number(), any::<f64>().prop_filter_map("finite", Number::from_f64)].boxed()
}

fn raw_child() -> impl Strategy<Value = Child> {
    (
        prop::option::of(prop::sample::select(Status::ALL.to_vec())),
        prop::option::of(raw_number()),
        prop::option::of(raw_number()),
        prop::option::of(raw_number()),
        prop::option::of(raw_number()),
    )
        .prop_map(|(status, progress, current, total, weight)| Child {
            status,
            progress,
            current,
            total,
            weight,
            ..Child::default()
        })
}

fn in_percent_range(x: f64) -> bool {
    x.is_finite() && (0.0..=100.0).contains(&x)
}

proptest! {
    #![proptest_config(config(96))]

    /// Whatever the counters and children hold (even values validation
    /// refuses), the derived percent is a finite number from 0 to 100.
    #[test]
    fn derived_progress_is_a_percent(
        current in prop::option::of(raw_number()),
        total in prop::option::of(raw_number()),
        kids in prop::option::of(prop::collection::vec(raw_child(), 0..8)),
    ) {
        let children = kids.map(|k| k.into_iter().enumerate().map(|(i, c)| (format!("c{i}"), c)).collect());
        let fields = ClientFields { current, total, children, ..ClientFields::default() };
        if let Some(x) = derived_progress(&fields) {
            prop_assert!(in_percent_range(x), "{x} from {fields:?}");
        }
        if let Some(children) = &fields.children
            && let Some(x) = children_percent(children.values()) {
                prop_assert!(in_percent_range(x), "{x} from {children:?}");
            }
    }

    /// The `progress` of every record a PUT or PATCH builds is from 0 to 100.
    #[test]
    fn record_progress_is_a_percent(first in valid_body(false), patches in prop::collection::vec(body(true), 0..6)) {
        let mut held = hold(&put(None, &first, 0).unwrap());
        for (n, p) in patches.iter().enumerate() {
            let record = held.stored.record().unwrap();
            prop_assert!(record.progress.as_f64().is_some_and(in_percent_range), "{} after {n} patches", record.progress);
            if let Ok(next) = patch(&held, p, 1_000 * (n as i64 + 1)) {
                held = hold(&next);
            }
        }
        let record = held.stored.record().unwrap();
        prop_assert!(record.progress.as_f64().is_some_and(in_percent_range), "{} at the end", record.progress);
    }
}

// ---------------------------------------------------------------------------
// Versions and server-kept state
// ---------------------------------------------------------------------------

/// One write of a sequence: a PUT or a PATCH, some milliseconds after the last.
fn write_step() -> impl Strategy<Value = (bool, Value, i64)> {
    prop_oneof![
        1 => (Just(true), body(false)),
        3 => (Just(false), body(true)),
    ]
    .prop_flat_map(|(is_put, body)| (Just(is_put), Just(body), 0i64..5_000))
}

proptest! {
    #![proptest_config(config(64))]

    /// Successive writes (`next_record` over the stored bytes of the last one)
    /// number their versions 1, 2, 3… with no gap or repeat; refused writes
    /// change nothing; what the server keeps (`created_at`, `started_at`,
    /// `completed_at`, `stages`) stays coherent, and the stored bytes read
    /// back to the very record.
    #[test]
    fn versions_count_accepted_writes(first in valid_body(false), steps in prop::collection::vec(write_step(), 1..12)) {
        let mut at = 1_000_000;
        let built = put(None, &first, at).unwrap();
        prop_assert_eq!((built.0.version, built.1.v), (1, 1));
        let created = built.0.created_at;
        let mut held = hold(&built);
        for (is_put, body, pause) in steps {
            at += pause;
            let prev = held.stored.record().unwrap();
            let next = if is_put { put(Some(&held), &body, at) } else { patch(&held, &body, at) };
            let Ok((record, meta)) = next else { continue };
            prop_assert_eq!(record.version, prev.version + 1);
            prop_assert_eq!(meta.v, record.version);
            prop_assert_eq!((record.created_at, record.updated_at), (created, Timestamp(at)));
            prop_assert_eq!(meta.c, created.millis());
            if prev.started_at.is_some() {
                prop_assert_eq!(record.started_at, prev.started_at, "started_at is set once");
            }
            prop_assert_eq!(record.completed_at.is_some(), record.status.is_terminal());
            prop_assert!(record.stages.len() <= MAX_STAGES);
            let open = record.stages.iter().filter(|s| s.finished_at.is_none()).count();
            prop_assert!(open <= 1 && (open == 0 || record.stages.last().unwrap().finished_at.is_none()));
            for span in &record.stages {
                if let Some(end) = span.finished_at {
                    prop_assert_eq!(span.duration_ms, Some(end.millis() - span.started_at.millis()));
                    prop_assert!(end >= span.started_at);
                }
            }
            held = hold(&(record.clone(), meta));
            let decoded = StoredRecord::decode(held.stored.raw().clone()).unwrap();
            prop_assert_eq!(decoded.version(), record.version);
            prop_assert_eq!(decoded.record().unwrap(), record);
        }
    }
}

// ---------------------------------------------------------------------------
// Validation of any JSON
// ---------------------------------------------------------------------------

/// Whatever `from_json` says of `body`: accepted, or refused naming a field
/// of the body (empty when the body is not an object) with a message.
fn check_verdict(body: &Value) -> Result<Option<ClientFields>, TestCaseError> {
    match ClientFields::from_json(body, MAX_TTL) {
        Ok(fields) => Ok(Some(fields)),
        Err(e) => {
            prop_assert!(!e.message.is_empty(), "{e:?}");
            match body.as_object() {
                None => prop_assert_eq!(&e.field, ""),
                Some(map) => {
                    let first = CLIENT_FIELDS
                        .iter()
                        .find(|f| e.field == **f || e.field.starts_with(&format!("{f}.")))
                        .map_or(e.field.as_str(), |f| *f);
                    prop_assert!(
                        map.contains_key(&e.field) || map.contains_key(first),
                        "{e:?} names no field of {body}"
                    );
                }
            }
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Validation of any JSON value (any shape, odd strings, huge numbers)
    /// returns an answer without panicking; the typed PUT path agrees with
    /// the general one whenever it answers.
    #[test]
    fn validation_answers_any_json(value in prop_oneof![
        any_json(),
        body(false),
        body(true),
        prop::collection::vec(status_value(), 0..3).prop_map(Value::Array),
    ]) {
        let verdict = check_verdict(&value)?;
        let text = value.to_string();
        if let Some(fast) = ClientFields::from_body_fast(&text, MAX_TTL, MAX_DEPTH) {
            prop_assert!(depth(&value) <= MAX_DEPTH);
            prop_assert_eq!(Some(fast), verdict.clone());
        }
        // An accepted body makes a record whose stored and rendered forms parse.
        if let Some(fields) = verdict {
            let touched = Touched::replace(&fields);
            let (record, meta) = next_record(&id("v"), None, fields, touched, Timestamp(0), &POLICY);
            let stored = StoredRecord::encode(&meta, &record);
            prop_assert_eq!(stored.record().unwrap(), record);
            let rendered: Value = serde_json::from_slice(&stored.render(0)).unwrap();
            prop_assert!(rendered.is_object());
        }
    }

    /// Deep nesting anywhere in a body is fine for the domain; the depth
    /// limit is the HTTP layer's (below).
    #[test]
    fn validation_answers_deep_json(levels in 0usize..300, shape in prop::collection::vec(any::<bool>(), 1..4),
                                    field in prop::sample::select(CLIENT_FIELDS.to_vec())) {
        let body = object_of(field, nested(levels, &shape, json!(1)));
        check_verdict(&body)?;
    }
}

// ---------------------------------------------------------------------------
// Through the router: what a client sends and what GET shows
// ---------------------------------------------------------------------------

/// The real router over an in-memory store, on a runtime of its own.
struct Http {
    runtime: tokio::runtime::Runtime,
    router: progressd::http::App,
    next_id: RefCell<u64>,
}

thread_local! {
    static HTTP: Http = Http::new();
}

impl Http {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Webhooks on, any host allowed, so that a valid `webhook` is taken.
        let settings = Settings {
            max_ttl_seconds: MAX_TTL,
            max_json_depth: MAX_DEPTH,
            webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            webhook_allowed_hosts: vec!["*".into()],
            ..Settings::default()
        };
        let router =
            runtime.block_on(async { progressd::app::build_router(&settings, Arc::new(MemoryStore::default())) });
        Self { runtime, router, next_id: RefCell::new(0) }
    }

    /// A record id no other case of this thread uses.
    fn fresh_id(&self) -> String {
        let mut n = self.next_id.borrow_mut();
        *n += 1;
        format!("prop-{n}")
    }

    /// `method /progress/{id}` with `body`; the status, `ETag` and body bytes.
    fn send(
        &self,
        method: Method,
        id: &str,
        body: Option<Vec<u8>>,
        if_match: Option<u64>,
    ) -> (StatusCode, Option<String>, bytes::Bytes) {
        let mut req = Request::builder().method(method).uri(format!("/progress/{id}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        self.runtime.block_on(async {
            let res = self.router.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let etag = res.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            (status, etag, res.into_body().collect().await.unwrap().to_bytes())
        })
    }
}

fn with_http<T>(f: impl FnOnce(&Http) -> T) -> T {
    HTTP.with(f)
}

/// A response to a write: a record, or a problem document whose code fits
/// the status, never a 5xx (a panic in a handler is a 500).
fn check_write_response(status: StatusCode, body: &[u8]) -> Result<Option<Value>, TestCaseError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        TestCaseError::fail(format!("{status}: the body is not JSON ({e}): {}", String::from_utf8_lossy(body)))
    })?;
    match status.as_u16() {
        200 | 201 => {
            prop_assert!(doc["version"].as_u64().is_some(), "{doc}");
            let progress = doc["progress"].as_f64();
            prop_assert!(progress.is_some_and(in_percent_range), "progress {}", doc["progress"]);
            Ok(Some(doc))
        }
        code => {
            let want = match code {
                400 => "invalid_body",
                404 => "not_found",
                409 => "conflict_terminal",
                422 => "validation_failed",
                _ => return Err(TestCaseError::fail(format!("status {status}: {doc}"))),
            };
            prop_assert_eq!(&doc["code"], want);
            prop_assert!(doc["detail"].as_str().is_some_and(|d| !d.is_empty()), "{doc}");
            if code == 422 {
                prop_assert!(doc["field"].is_string(), "{doc}");
            }
            Ok(None)
        }
    }
}

/// Bytes that are JSON, nearly JSON, or not JSON at all.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => body(false).prop_map(|b| b.to_string().into_bytes()),
        1 => any_json().prop_map(|b| b.to_string().into_bytes()),
        2 => (body(false), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(
            |(b, edits)| {
                let mut bytes = b.to_string().into_bytes();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(config(48))]

    /// PUT and PATCH answer any bytes with a record or a 4xx problem document,
    /// never a 5xx; a refused write leaves the record as it was.
    #[test]
    fn writes_answer_any_body(put_body in body_bytes(), patch_body in body_bytes()) {
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, etag, bytes) = http.send(Method::PUT, &id, Some(put_body), None);
            let created = check_write_response(status, &bytes)?;
            if created.is_some() {
                prop_assert_eq!(status, StatusCode::CREATED);
                prop_assert_eq!(etag.as_deref(), Some("\"1\""));
            }
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(patch_body), created.as_ref().map(|_| 1));
            let patched = check_write_response(status, &bytes)?;
            let (get_status, _, shown) = http.send(Method::GET, &id, None, None);
            match (created, patched) {
                (None, _) => prop_assert_eq!(get_status, StatusCode::NOT_FOUND),
                (Some(_), Some(after)) => {
                    prop_assert_eq!(&after["version"], 2);
                    prop_assert_eq!(strip_stalled(&shown), strip_stalled(&bytes));
                }
                (Some(before), None) => {
                    let shown: Value = serde_json::from_slice(&shown).unwrap();
                    prop_assert_eq!(shown, before, "a refused PATCH changes nothing");
                }
            }
            Ok(())
        })?;
    }

    /// The depth limit: a body nested up to `PROGRESS_MAX_JSON_DEPTH` levels
    /// is a write, one level more is a 400 `invalid_body`, however deep
    /// (past serde_json's own recursion limit too), on PUT and PATCH alike.
    #[test]
    fn the_depth_limit_holds_at_any_depth(levels in 0usize..200, shape in prop::collection::vec(any::<bool>(), 1..4),
                                          field in prop::sample::select(vec!["result", "metadata", "error"])) {
        // The body itself is one level, and metadata and error must be objects.
        let value = nested(levels, &shape, json!(1));
        let body = object_of(field, if field == "result" { value } else { object_of("x", value) });
        let fits = depth(&body) <= MAX_DEPTH;
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, _, bytes) = http.send(Method::PUT, &id, Some(body.to_string().into_bytes()), None);
            check_write_response(status, &bytes)?;
            prop_assert_eq!(status, if fits { StatusCode::CREATED } else { StatusCode::BAD_REQUEST }, "depth {}", depth(&body));
            if !fits {
                http.send(Method::PUT, &id, Some(b"{}".to_vec()), None);
            }
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(body.to_string().into_bytes()), None);
            check_write_response(status, &bytes)?;
            prop_assert_eq!(status, if fits { StatusCode::OK } else { StatusCode::BAD_REQUEST });
            Ok(())
        })?;
    }

    /// Versions through HTTP: every accepted write moves the ETag and the
    /// record's `version` up by exactly one; a refused one moves nothing.
    #[test]
    fn versions_through_http(steps in prop::collection::vec(write_step(), 1..10)) {
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let mut version = 0;
            for (is_put, body, _) in steps {
                let method = if is_put { Method::PUT } else { Method::PATCH };
                let condition = (version > 0).then_some(version); // lets writes reach a finished record
                let (status, etag, bytes) = http.send(method, &id, Some(body.to_string().into_bytes()), condition);
                if let Some(doc) = check_write_response(status, &bytes)? {
                    prop_assert_eq!(doc["version"].as_u64(), Some(version + 1));
                    prop_assert_eq!(etag, Some(format!("\"{}\"", version + 1)));
                    version += 1;
                }
                let (status, etag, _) = http.send(Method::GET, &id, None, None);
                if version == 0 {
                    prop_assert_eq!(status, StatusCode::NOT_FOUND);
                } else {
                    prop_assert_eq!(etag, Some(format!("\"{version}\"")));
                }
            }
            Ok(())
        })?;
    }
}

/// A rendered record without its time-of-read `stalled` field.
fn strip_stalled(body: &[u8]) -> Value {
    let mut doc: Value = serde_json::from_slice(body).unwrap();
    doc.as_object_mut().unwrap().shift_remove("stalled");
    doc
}

/// The bytes of `"name":<value>` inside a rendered record.
fn member(name: &str, value: &Value) -> Vec<u8> {
    format!("\"{name}\":{value}").into_bytes()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A number as serde_json keeps it: `E` becomes `e`, and the exponent gains a sign.
fn canonical_text(text: &str) -> String {
    let text = text.replace('E', "e");
    match text.split_once('e') {
        Some((mantissa, exp)) if !exp.starts_with(['+', '-']) => format!("{mantissa}e+{exp}"),
        _ => text,
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// `result` and `metadata` come back from GET exactly as a PUT sent them:
    /// the same value, and the same bytes (numbers of any size and digits,
    /// strings of any characters, members in their order).
    #[test]
    fn put_round_trips_result_and_metadata(result in any_json(), metadata in any_object()) {
        let metadata = Value::Object(metadata);
        let body = json!({ "result": result, "metadata": metadata });
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, _, bytes) = http.send(Method::PUT, &id, Some(body.to_string().into_bytes()), None);
            check_write_response(status, &bytes)?;
            prop_assert_eq!(status, StatusCode::CREATED);
            let (status, _, shown) = http.send(Method::GET, &id, None, None);
            prop_assert_eq!(status, StatusCode::OK);
            let doc: Value = serde_json::from_slice(&shown).unwrap();
            prop_assert_eq!(&doc["result"], &result);
            prop_assert_eq!(&doc["metadata"], &metadata);
            prop_assert!(contains(&shown, &member("result", &result)), "result bytes in {}", String::from_utf8_lossy(&shown));
            prop_assert!(contains(&shown, &member("metadata", &metadata)), "metadata bytes in {}", String::from_utf8_lossy(&shown));
            Ok(())
        })?;
    }

    /// A PATCH into an empty field stores the patch less its object nulls,
    /// byte for byte; a second PATCH merges into it as RFC 7386 says.
    #[test]
    fn patch_round_trips_result_and_metadata(result in any_json(), metadata in any_object(), again in any_object()) {
        let metadata = Value::Object(metadata);
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, _, _) = http.send(Method::PUT, &id, Some(b"{\"status\":\"running\"}".to_vec()), None);
            prop_assert_eq!(status, StatusCode::CREATED);
            let body = json!({ "result": result, "metadata": metadata });
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(body.to_string().into_bytes()), None);
            check_write_response(status, &bytes)?;
            prop_assert_eq!(status, StatusCode::OK);
            let (want_result, want_metadata) = (without_object_nulls(&result), without_object_nulls(&metadata));
            let (_, _, shown) = http.send(Method::GET, &id, None, None);
            let doc: Value = serde_json::from_slice(&shown).unwrap();
            prop_assert_eq!(&doc["result"], &want_result);
            prop_assert_eq!(&doc["metadata"], &want_metadata);
            prop_assert!(contains(&shown, &member("result", &want_result)));
            prop_assert!(contains(&shown, &member("metadata", &want_metadata)));

            let again = Value::Object(again);
            let (status, _, _) = http.send(Method::PATCH, &id, Some(json!({ "metadata": again }).to_string().into_bytes()), None);
            prop_assert_eq!(status, StatusCode::OK);
            let (_, _, shown) = http.send(Method::GET, &id, None, None);
            let doc: Value = serde_json::from_slice(&shown).unwrap();
            assert_is_merge(&want_metadata, &again, &doc["metadata"])?;
            Ok(())
        })?;
    }

    /// Numbers written with `E` or an unsigned exponent come back with their
    /// digits as sent; only the exponent is normalised (`1E5` → `1e+5`).
    #[test]
    fn exponents_gain_a_sign_and_nothing_else_changes(
        numbers in prop::collection::vec("-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?[eE][+-]?[0-9]{1,4}", 1..6)
    ) {
        let sent = format!("{{\"result\":[{}],\"metadata\":{{\"n\":{}}}}}", numbers.join(","), numbers[0]);
        let want: Vec<String> = numbers.iter().map(|n| canonical_text(n)).collect();
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, _, _) = http.send(Method::PUT, &id, Some(sent.clone().into_bytes()), None);
            prop_assert_eq!(status, StatusCode::CREATED);
            let (_, _, shown) = http.send(Method::GET, &id, None, None);
            let needle = format!("\"result\":[{}]", want.join(","));
            prop_assert!(contains(&shown, needle.as_bytes()), "{} in {}", needle, String::from_utf8_lossy(&shown));
            let needle = format!("\"metadata\":{{\"n\":{}}}", want[0]);
            prop_assert!(contains(&shown, needle.as_bytes()), "{} in {}", needle, String::from_utf8_lossy(&shown));
            Ok(())
        })?;
    }

    /// A PATCH `null` removes the field from what GET shows; `progress: null`
    /// goes back to deriving it.
    #[test]
    fn patch_null_removes_the_field_through_http(first in valid_body(false), which in prop::sample::select(
        vec!["current", "total", "stage", "message", "children", "result", "error", "metadata", "progress"]
    )) {
        with_http(|http| -> Result<(), TestCaseError> {
            let id = http.fresh_id();
            let (status, _, _) = http.send(Method::PUT, &id, Some(first.to_string().into_bytes()), None);
            prop_assert_eq!(status, StatusCode::CREATED);
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(json!({ which: null }).to_string().into_bytes()), Some(1));
            let doc = check_write_response(status, &bytes)?.unwrap();
            if which == "progress" {
                let fields = ClientFields::from_json(&first, MAX_TTL).unwrap();
                let derived = derived_progress(&fields).unwrap_or(0.0);
                let x = doc["progress"].as_f64().unwrap();
                prop_assert!((x - derived).abs() <= 0.005 + f64::EPSILON * 100.0, "{x} vs {derived}");
            } else {
                prop_assert_eq!(&doc[which], &Value::Null, "{}", doc);
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------
// Regressions found by the properties above
// ---------------------------------------------------------------------------

/// serde's derived `Deserialize` reads a struct from an array of its fields
/// in order and an enum from `{"variant": null}`; the typed PUT path used to
/// take such bodies (`[]` made an empty record, `["running"]` a running one)
/// that every other path refuses as not an object / not a string.
#[test]
fn the_typed_put_path_takes_only_what_the_general_path_takes() {
    let bodies = [
        "[]",
        r#"["running", 50]"#,
        r#"{"status":{"running":null}}"#,
        r#"{"children":{"a":["title"]}}"#,
        r#"{"children":{"a":{"status":{"completed":null}}}}"#,
    ];
    let mut taken = Vec::new();
    for text in bodies {
        let general = serde_json::from_str::<Value>(text).ok().and_then(|v| ClientFields::from_json(&v, MAX_TTL).ok());
        assert_eq!(general, None, "{text} is refused by validation");
        if ClientFields::from_body_fast(text, MAX_TTL, MAX_DEPTH).is_some() {
            taken.push(format!("typed path took {text}"));
        }
        with_http(|http| {
            let id = http.fresh_id();
            let (status, _, bytes) = http.send(Method::PUT, &id, Some(text.as_bytes().to_vec()), None);
            if status != StatusCode::UNPROCESSABLE_ENTITY {
                taken.push(format!("PUT {text}: {status} {}", String::from_utf8_lossy(&bytes)));
            }
            let (status, _, _) = http.send(Method::GET, &id, None, None);
            if status != StatusCode::NOT_FOUND {
                taken.push(format!("PUT {text} stored a record"));
            }
        });
    }
    assert!(taken.is_empty(), "{taken:#?}");
}

// ---------------------------------------------------------------------------
// Every client field, one at a time, through the routes
// ---------------------------------------------------------------------------

/// Each client field alone in a body (an example of it from
/// `ClientFields::examples`, which lists every field of `CLIENT_FIELDS`),
/// through the real PUT and PATCH handlers: the typed PUT path takes it and
/// reads what the general path reads; a PUT (the typed path) and a PATCH
/// (validation, then the merge) both store and show it; a PATCH that
/// removes it is answered, never with a 500. A field left out of one path
/// fails here by name.
#[test]
fn every_client_field_goes_through_put_and_patch() {
    let examples = ClientFields::examples();
    assert_eq!(examples.iter().map(|(name, _)| *name).collect::<Vec<_>>(), CLIENT_FIELDS);
    with_http(|http| {
        for (name, example) in examples {
            let body = json!({ name: example });
            let text = body.to_string();
            let general = ClientFields::from_json(&body, MAX_TTL).unwrap_or_else(|e| panic!("{name}: {e}"));
            let typed = ClientFields::from_body_fast(&text, MAX_TTL, MAX_DEPTH);
            assert_eq!(typed, Some(general), "{name}: the typed PUT path reads what the general one does");

            let id = http.fresh_id();
            let (status, _, bytes) = http.send(Method::PUT, &id, Some(text.clone().into_bytes()), None);
            assert_eq!(status, StatusCode::CREATED, "PUT {text}: {}", String::from_utf8_lossy(&bytes));
            let put: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(put[name], example, "PUT {text}");
            let (_, _, bytes) = http.send(Method::GET, &id, None, None);
            assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()[name], example, "GET after PUT {text}");

            let id = http.fresh_id();
            let (status, _, _) = http.send(Method::PUT, &id, Some(b"{}".to_vec()), None);
            assert_eq!(status, StatusCode::CREATED);
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(text.clone().into_bytes()), None);
            assert_eq!(status, StatusCode::OK, "PATCH {text}: {}", String::from_utf8_lossy(&bytes));
            let patched: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(patched[name], example, "PATCH {text}");

            let removal = json!({ name: null }).to_string();
            let (status, _, bytes) = http.send(Method::PATCH, &id, Some(removal.clone().into_bytes()), None);
            assert_eq!(status, StatusCode::OK, "PATCH {removal}: {}", String::from_utf8_lossy(&bytes));
        }
    });
}
