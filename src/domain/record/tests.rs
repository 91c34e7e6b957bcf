//! The record's unit tests: validation and its messages, the typed merge
//! against a merge patch of the JSON, the hand-written encoder against
//! serde, the fast PUT path against the general one, and every client field
//! through each of those paths.

use serde_json::{Map, Number, Value, json};

use super::*;

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
    for text in
        [r#"{"ttl_seconds": 60}"#, r#"{"ttl_seconds": 60.0}"#, r#"{"ttl_seconds": 6e1}"#, r#"{"ttl_seconds": 6.0E+1}"#]
    {
        let body: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(body).unwrap().ttl_seconds, Some(60), "{text}");
    }
    for text in
        [r#"{"ttl_seconds": 60.5}"#, r#"{"ttl_seconds": 0.0}"#, r#"{"ttl_seconds": 1e300}"#, r#"{"ttl_seconds": -6e1}"#]
    {
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
fn merged_through_json(prev: &ProgressRecord, patch: &Value, max_ttl: u64) -> Result<ClientFields, ValidationError> {
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
    crate::domain::apply_write(&id, None, fields, touched, crate::domain::Timestamp(1_000), &policy).0
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
    let prev = crate::domain::apply_write(&id, None, fields, touched, crate::domain::Timestamp(0), &policy).0;
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
            // Now and then a cancel request between the patches: its fields are kept from then on.
            if let Some(m) = meta.filter(|_| rng.u8(..4) == 0 && record.cancel_requested_at.is_none())
                && !record.status.is_terminal()
            {
                let reason = rng.bool().then(|| format!("why \"{n}\"\n"));
                let at = crate::domain::Timestamp(1_500 + 1_000 * step as i64);
                let (next, next_meta) = crate::domain::request_cancel(&id, (record, m), reason, at, &policy);
                (record, meta) = (next, Some(next_meta));
                continue;
            }
            let patch = some_patch(&mut rng);
            let Ok(validated) = ClientFields::from_json(&patch, 100_000) else { continue };
            let (state, fields) = record.clone().into_parts();
            let Ok(fields) = fields.merge(patch.as_object().unwrap(), validated) else { continue };
            let touched = crate::domain::Touched::patch(patch.as_object().unwrap());
            let at = crate::domain::Timestamp(2_000 + 1_000 * step as i64);
            let prev = meta.map(|m| (state, m));
            let (next, next_meta) = crate::domain::next_record(&id, prev, fields, touched, at, &policy);
            (record, meta) = (next, Some(next_meta));
        }
        let mut ours = Vec::new();
        crate::domain::encode::write_record(&mut ours, &record);
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
        let written = crate::domain::apply_write(&id, None, fields, touched, crate::domain::Timestamp(7), &policy);
        let reason = Some(text.to_owned());
        let (record, _) = crate::domain::request_cancel(&id, written, reason, crate::domain::Timestamp(8), &policy);
        let mut ours = Vec::new();
        crate::domain::encode::write_record(&mut ours, &record);
        assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&record).unwrap(), "{text:?}");
        let back: ProgressRecord = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(back.cancel_reason.as_deref(), Some(text), "the reason round-trips");
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
        include_str!("../../../bench/record.json").to_owned(),
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

/// The record a PUT of `fields` makes, written at `at`.
fn put_record(fields: ClientFields, at: i64) -> ProgressRecord {
    let id = crate::domain::ProgressId::parse("r").unwrap();
    let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
    let touched = crate::domain::Touched::replace(&fields);
    crate::domain::apply_write(&id, None, fields, touched, crate::domain::Timestamp(at), &policy).0
}

/// The record a PATCH of `patch` over `prev` makes (a valid patch).
fn patch_record(prev: &ProgressRecord, patch: &Value) -> ProgressRecord {
    let id = crate::domain::ProgressId::parse("r").unwrap();
    let policy = crate::domain::WritePolicy { default_ttl_seconds: 300, heartbeat_ms: 1000 };
    let fields = merged_typed(prev, patch, 3600).unwrap_or_else(|e| panic!("{patch}: {e}"));
    let touched = crate::domain::Touched::patch(patch.as_object().unwrap());
    let meta = crate::domain::RecordMeta { v: prev.version, s: 0, x: 0, c: 0, d: false, e: None, t: None };
    let at = crate::domain::Timestamp(prev.updated_at.millis() + 1_000);
    crate::domain::next_record(&id, Some((prev.server_state(), meta)), fields, touched, at, &policy).0
}

/// The hand-written encoder's bytes and serde's, for one record.
fn both_encodings(record: &ProgressRecord) -> (String, String) {
    let mut ours = Vec::new();
    crate::domain::encode::write_record(&mut ours, record);
    (String::from_utf8(ours).unwrap(), serde_json::to_string(record).unwrap())
}

/// For an object, a merge patch that changes part of it: its first member
/// alone, removed (or, when that is an object, changed in part).
fn part_of(value: &Value) -> Option<Value> {
    let (key, first) = value.as_object()?.iter().next()?;
    Some(json!({ key: part_of(first).unwrap_or(Value::Null) }))
}

/// Each client field, alone in a body, through every path the field tables
/// generate: the name list, the general and the fast reader, the record
/// (kept, shown, encoded), the PATCH base, and the merge of a patch that
/// sets it, merges into it and removes it. A field one path leaves out, or
/// a kind that is wrong on one path, fails here by name.
#[test]
fn every_client_field_goes_through_every_path() {
    let examples = ClientFields::examples();
    assert_eq!(examples.iter().map(|(name, _)| *name).collect::<Vec<_>>(), CLIENT_FIELDS);
    let empty = put_record(ClientFields::default(), 1_000);
    for (name, example) in &examples {
        let name: &str = name;
        let body = json!({ name: example });
        let general = ClientFields::from_json(&body, 3600).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(general, ClientFields::default(), "{name}: read, not dropped");
        let fast = ClientFields::from_body_fast(&body.to_string(), 3600, 32);
        assert_eq!(fast.as_ref(), Some(&general), "{name}: the fast PUT path takes it as the general one does");

        let record = put_record(general, 2_000);
        assert_eq!(record.client_json().get(name), Some(example), "{name}: a PUT keeps it");
        let (ours, serde) = both_encodings(&record);
        assert_eq!(ours, serde, "{name}: encoded as serde does");
        assert!(serde.contains(&format!("\"{name}\":{example}")), "{name}: in {serde}");
        let (_, base) = record.clone().into_parts();
        assert_eq!(Ok(base), ClientFields::from_json(&record.client_json(), 3600), "{name}: the PATCH base");

        let removal = json!({ name: null });
        let mut patches =
            vec![(&empty, body.clone()), (&record, body.clone()), (&record, removal.clone()), (&empty, removal)];
        if let Some(part) = part_of(example) {
            // Tells a field that merges from one that is replaced.
            patches.push((&record, json!({ name: part })));
        }
        for (prev, patch) in patches {
            let typed = merged_typed(prev, &patch, 3600);
            assert_eq!(typed, merged_through_json(prev, &patch, 3600), "{name}: PATCH {patch} over {prev:?}");
        }
        let patched = patch_record(&empty, &body);
        assert_eq!(patched.client_json().get(name), Some(example), "{name}: a PATCH sets it");
        let (ours, serde) = both_encodings(&patched);
        assert_eq!(ours, serde, "{name}: encoded as serde does after a PATCH");
    }
}

/// The same for the fields of a child: the example of `children` holds
/// every child field, and a PATCH can set or remove each one alone.
#[test]
fn every_child_field_goes_through_every_path() {
    let (_, children) = ClientFields::examples().into_iter().find(|(name, _)| *name == "children").unwrap();
    let (child_id, child) = children.as_object().unwrap().iter().next().unwrap();
    let child = child.as_object().unwrap();
    assert_eq!(child.keys().map(String::as_str).collect::<Vec<_>>(), fields::CHILD_FIELDS);
    let record = put_record(ClientFields::from_json(&json!({"children": children}), 3600).unwrap(), 1_000);
    for (name, example) in child {
        let alone = json!({"children": {child_id: {name: example}}});
        let fast = ClientFields::from_body_fast(&alone.to_string(), 3600, 32);
        assert_eq!(fast, Some(ClientFields::from_json(&alone, 3600).unwrap()), "{name}: the fast PUT path");
        let put = put_record(fast.unwrap(), 1_000);
        assert_eq!(put.client_json()["children"][child_id].get(name), Some(example), "{name}: kept");
        for patch in [alone.clone(), json!({"children": {child_id: {name: null}}})] {
            let typed = merged_typed(&record, &patch, 3600);
            assert_eq!(typed, merged_through_json(&record, &patch, 3600), "{name}: PATCH {patch}");
            let (ours, serde) = both_encodings(&patch_record(&record, &patch));
            assert_eq!(ours, serde, "{name}: encoded as serde does after PATCH {patch}");
        }
    }
}
