//! Keeps `openapi.yaml` honest: every route of the router is documented and
//! every documented operation is a route; the Problem `code` enum is exactly
//! the set of codes `Error` can produce; and real responses of the real
//! server (records, problems, health) have exactly the documented members
//! with the documented types.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::Method;
use progressd::Settings;
use progressd::domain::{Status, ValidationError};
use progressd::error::{Error, Limited};
use progressd::http::Access;
use progressd::store::{MemoryStore, StoreError};
use serde_json::{Value, json};

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

static DOC: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
});

fn doc() -> &'static Value {
    &DOC
}

/// Follows a local `$ref` (`#/components/...`) until it reaches a non-reference.
fn resolve(v: &Value) -> &Value {
    let mut v = v;
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else { return v };
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local references are used: {r}"));
        v = doc().pointer(pointer).unwrap_or_else(|| panic!("dangling reference {r}"));
    }
    panic!("reference loop at {v}");
}

fn schema(name: &str) -> &'static Value {
    doc().pointer(&format!("/components/schemas/{name}")).unwrap_or_else(|| panic!("openapi.yaml has no schema {name}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().expect("a list of strings").to_owned()).collect())
        .unwrap_or_default()
}

/// Every (method, path) operation of the document.
fn operations() -> Vec<(String, String, &'static Value)> {
    let paths = doc()["paths"].as_object().expect("openapi.yaml has paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for (key, op) in item.as_object().expect("a path item is an object") {
            if HTTP_METHODS.contains(&key.as_str()) {
                out.push((key.clone(), path.clone(), op));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Routes

#[test]
fn the_document_is_openapi_3_1() {
    assert_eq!(doc()["openapi"], "3.1.0");
    for member in ["title", "version", "description"] {
        assert!(doc()["info"][member].is_string(), "info.{member}");
    }
}

#[test]
fn every_route_is_documented() {
    let routes = progressd::http::routes();
    assert!(!routes.is_empty());
    for route in &routes {
        let method: &Method = &route.method;
        let item = doc()["paths"]
            .get(route.path)
            .unwrap_or_else(|| panic!("openapi.yaml has no path {} (route {method} {})", route.path, route.path));
        let lower = method.as_str().to_ascii_lowercase();
        assert!(
            item.get(&lower).is_some_and(Value::is_object),
            "openapi.yaml documents {} but not its {method}",
            route.path
        );
    }
}

#[test]
fn every_documented_operation_is_a_route() {
    let routes: BTreeSet<(String, String)> =
        progressd::http::routes().iter().map(|r| (r.method.as_str().to_ascii_lowercase(), r.path.to_owned())).collect();
    for (method, path, _) in operations() {
        assert!(
            routes.contains(&(method.clone(), path.clone())),
            "openapi.yaml documents {} {path}, which the router does not serve",
            method.to_uppercase()
        );
    }
    assert_eq!(operations().len(), routes.len(), "one operation per route");
}

#[test]
fn path_parameters_match_the_templates() {
    for (method, path, op) in operations() {
        let wanted: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let item = &doc()["paths"][&path];
        let declared: BTreeSet<String> = [&item["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(resolve)
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "path parameters are required ({method} {path})");
                p["name"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(declared, wanted, "path parameters of {method} {path}");
    }
    let id = doc().pointer("/components/parameters/Id").expect("an Id parameter");
    assert_eq!(id["schema"]["pattern"], format!("^[A-Za-z0-9._:-]{{1,{}}}$", progressd::domain::MAX_ID_LEN));
}

#[test]
fn every_operation_declares_responses_with_the_right_media_types() {
    for (method, path, op) in operations() {
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path} has responses"));
        assert!(!responses.is_empty());
        for (status, response) in responses {
            let response = resolve(response);
            let code: u16 = status.parse().unwrap_or_else(|_| panic!("{method} {path}: status {status}"));
            assert!(response["description"].is_string(), "{method} {path} {status}: description");
            let content = keys(&response["content"]);
            // Readiness answers its 503 with the same report as its 200, for load balancers and people alike.
            let readiness_report = path == "/readyz" && code == 503;
            if code >= 400 && !readiness_report {
                assert_eq!(
                    content,
                    BTreeSet::from(["application/problem+json".to_owned()]),
                    "{method} {path} {status} is a problem document"
                );
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
            if code == 503 {
                assert!(response["headers"].get("Retry-After").is_some(), "{method} {path} 503 has Retry-After");
            }
            // A record's answers carry its validators; an event stream carries versions in its events.
            if matches!(code, 200 | 201 | 202 | 304) && path.starts_with("/progress/") && !path.ends_with("/events") {
                assert!(response["headers"].get("ETag").is_some(), "{method} {path} {status} has ETag");
                assert!(response["headers"].get("Cache-Control").is_some(), "{method} {path} {status}");
            }
            if code == 201 {
                assert!(response["headers"].get("Location").is_some(), "{method} {path} 201 has Location");
            }
            if code == 204 || code == 304 {
                assert!(content.is_empty(), "{method} {path} {status} has no body");
            }
        }
    }
}

#[test]
fn security_follows_the_access_class_of_each_route() {
    let scheme = doc().pointer("/components/securitySchemes/bearerAuth").expect("a bearerAuth scheme");
    assert_eq!((&scheme["type"], &scheme["scheme"]), (&json!("http"), &json!("bearer")));
    for route in progressd::http::routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc()["paths"][route.path][&method];
        let what = format!("{method} {} ({:?})", route.path, route.access);
        let security = &op["security"];
        let responses = keys(&op["responses"]);
        let (expected, may_401, may_403) = match route.access {
            Access::Public => (json!([]), false, false),
            // Open until tokens of the class are configured: the empty requirement.
            // A scoped token can be refused (403 forbidden_scope) on every route that takes a token.
            Access::Read | Access::Write | Access::List | Access::Cancel => {
                (json!([{"bearerAuth": []}, {}]), true, true)
            }
            Access::Admin => (json!([{"bearerAuth": []}]), true, true),
        };
        if route.access == Access::Public {
            assert!(security.is_null() || *security == expected, "{what}: security is absent or []");
        } else {
            assert_eq!(*security, expected, "{what}: security");
        }
        assert_eq!(responses.contains("401"), may_401, "{what}: a 401 response exactly when a token can be needed");
        assert_eq!(responses.contains("403"), may_403, "{what}: a 403 response exactly where a token is taken");
        // The per-address limit (when on) covers every route but the public ones.
        let may_429 = route.access != Access::Public;
        assert_eq!(responses.contains("429"), may_429, "{what}: a 429 response exactly where a request can be limited");
        if may_401 {
            let unauthorized = resolve(&op["responses"]["401"]);
            assert!(unauthorized["headers"].get("WWW-Authenticate").is_some(), "{what}: 401 has WWW-Authenticate");
        }
    }
}

// ---------------------------------------------------------------------------
// Error codes

/// The name of `e`'s variant. No `_` arm on purpose: a new variant of
/// `Error` does not compile until it is added here, and the test below
/// fails until [`samples`] holds a value of it.
fn variant(e: &Error) -> &'static str {
    match e {
        Error::InvalidId(_) => "InvalidId",
        Error::InvalidBody(_) => "InvalidBody",
        Error::InvalidHeader(_) => "InvalidHeader",
        Error::InvalidQuery(_) => "InvalidQuery",
        Error::FilterRequired => "FilterRequired",
        Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
        Error::PayloadTooLarge { .. } => "PayloadTooLarge",
        Error::Validation(_) => "Validation",
        Error::NotFound(_) => "NotFound",
        Error::Gone { .. } => "Gone",
        Error::MethodNotAllowed(_) => "MethodNotAllowed",
        Error::Unauthorized { .. } => "Unauthorized",
        Error::AdminDisabled => "AdminDisabled",
        Error::ForbiddenScope(_) => "ForbiddenScope",
        Error::RateLimited { .. } => "RateLimited",
        Error::SigningDisabled => "SigningDisabled",
        Error::ConflictTerminal { .. } => "ConflictTerminal",
        Error::PreconditionFailed(_) => "PreconditionFailed",
        Error::WriteContention => "WriteContention",
        Error::RequestTimeout { .. } => "RequestTimeout",
        Error::StorageUnavailable(_) => "StorageUnavailable",
        Error::Internal(_) => "Internal",
    }
}

/// One value of every variant of `Error`.
fn samples() -> Vec<Error> {
    vec![
        Error::InvalidId("x".into()),
        Error::InvalidBody("x".into()),
        Error::InvalidHeader("x".into()),
        Error::InvalidQuery("x".into()),
        Error::FilterRequired,
        Error::UnsupportedMediaType("x".into()),
        Error::PayloadTooLarge { limit: 10 },
        Error::Validation(ValidationError { field: "stage".into(), message: "x".into() }),
        Error::NotFound("x".into()),
        Error::Gone { id: "x".into(), gone: progressd::store::Gone::deleted(progressd::domain::Timestamp(0)) },
        Error::MethodNotAllowed("POST".into()),
        Error::Unauthorized { presented: true, reason: None },
        Error::AdminDisabled,
        Error::ForbiddenScope("x".into()),
        Error::RateLimited { retry_after: 1, by: Limited::Token },
        Error::SigningDisabled,
        Error::ConflictTerminal { status: Status::Completed, version: 3 },
        Error::PreconditionFailed("x".into()),
        Error::WriteContention,
        Error::RequestTimeout { seconds: 30 },
        Error::StorageUnavailable(StoreError::Unavailable { tier: "redis", reason: "x".into() }),
        Error::Internal("x".into()),
    ]
}

/// The variant names of `pub enum Error` as written in `src/error.rs`: a
/// second, independent list, so a sample cannot be forgotten silently.
fn variants_in_source() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/error.rs");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("pub enum Error {").expect("src/error.rs declares `pub enum Error {`");
    let body = &text[start + "pub enum Error {".len()..];
    let end = body.find("\n}").expect("the enum ends with `}` in column 0");
    body[..end]
        .lines()
        .filter(|line| line.starts_with("    ") && !line.starts_with("     "))
        .map(str::trim)
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|line| line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_samples_cover_every_error_variant() {
    let sampled: Vec<&str> = samples().iter().map(variant).collect();
    let distinct: BTreeSet<String> = sampled.iter().map(|s| s.to_string()).collect();
    assert_eq!(distinct.len(), sampled.len(), "one sample per variant: {sampled:?}");
    assert_eq!(distinct, variants_in_source(), "samples() must hold one value of every variant of Error");
}

#[test]
fn problem_codes_are_exactly_the_server_codes() {
    let codes: Vec<&str> = samples().iter().map(Error::code).collect();
    let server: BTreeSet<String> = codes.iter().map(|c| c.to_string()).collect();
    assert_eq!(server.len(), codes.len(), "every variant has its own code: {codes:?}");
    let documented = strings(&schema("Problem")["properties"]["code"]["enum"]);
    let missing: Vec<_> = server.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&server).collect();
    assert!(missing.is_empty() && extra.is_empty(), "Problem.code enum: missing {missing:?}, not produced {extra:?}");

    let description = doc()["info"]["description"].as_str().unwrap();
    for e in samples() {
        assert!(description.contains(&format!("`{}`", e.code())), "info.description explains `{}`", e.code());
    }
}

#[test]
fn problem_documents_match_the_problem_schema() {
    let problem = schema("Problem");
    for e in samples() {
        let body = e.problem();
        assert_valid(problem, &body, &format!("problem {}", e.code()));
        let extensions: &[&str] = match &e {
            Error::Validation(_) => &["field"],
            Error::ConflictTerminal { .. } => &["current_version"],
            Error::PayloadTooLarge { .. } => &["limit"],
            Error::Gone { .. } => &["reason", "gone_at"],
            _ => &[],
        };
        let mut expected: BTreeSet<String> = strings(&problem["required"]);
        expected.extend(extensions.iter().map(|e| (*e).to_owned()));
        assert_eq!(keys(&body), expected, "members of problem {}", e.code());
    }
}

#[test]
fn every_error_status_is_documented_somewhere() {
    let documented: BTreeSet<u16> =
        operations().iter().flat_map(|(_, _, op)| keys(&op["responses"])).filter_map(|s| s.parse().ok()).collect();
    for e in samples() {
        let status = e.status().as_u16();
        if matches!(e, Error::MethodNotAllowed(_)) {
            continue; // answered by the router for any undocumented method
        }
        assert!(documented.contains(&status), "{} ({status}) appears in no operation", e.code());
    }
}

// ---------------------------------------------------------------------------
// A small JSON Schema checker for the keywords openapi.yaml uses.

fn type_matches(name: &str, v: &Value) -> bool {
    match name {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_u64() || v.is_i64(),
        other => panic!("unknown type {other}"),
    }
}

fn check(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(schema);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let passes = any.iter().any(|s| {
            let mut e = Vec::new();
            check(s, v, at, &mut e);
            e.is_empty()
        });
        if !passes {
            errors.push(format!("{at}: {v} matches no anyOf branch"));
        }
    }
    if let Some(t) = schema.get("type") {
        let names: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type at {at}"),
        };
        if !names.iter().any(|n| type_matches(n, v)) {
            errors.push(format!("{at}: {v} is not {names:?}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array).filter(|a| !a.contains(v)) {
        errors.push(format!("{at}: {v} is not one of {allowed:?}"));
    }
    if let Some(c) = schema.get("const").filter(|c| *c != v) {
        errors.push(format!("{at}: {v} is not {c}"));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            if schema.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m) {
                errors.push(format!("{at}: {n} is below the minimum"));
            }
            if schema.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m) {
                errors.push(format!("{at}: {n} is above the maximum"));
            }
        }
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if schema.get("maxLength").and_then(Value::as_u64).is_some_and(|m| chars > m) {
                errors.push(format!("{at}: longer than maxLength"));
            }
            if schema.get("minLength").and_then(Value::as_u64).is_some_and(|m| chars < m) {
                errors.push(format!("{at}: shorter than minLength"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && chrono::DateTime::parse_from_rfc3339(s).is_err()
            {
                errors.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
            if let Some(prefix) = schema
                .get("pattern")
                .and_then(Value::as_str)
                .and_then(|p| p.strip_prefix('^'))
                .and_then(|p| p.split('[').next())
                .filter(|p| !p.is_empty() && !p.contains(['(', '\\', '"']))
            {
                // Patterns with a literal head (`urn:progressd:problem:`): check the head.
                if !s.starts_with(prefix) {
                    errors.push(format!("{at}: {s:?} does not start with {prefix:?}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
            if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|m| items.len() as u64 > m) {
                errors.push(format!("{at}: more than maxItems"));
            }
        }
        Value::Object(map) => {
            for required in strings(&schema["required"]) {
                if !map.contains_key(&required) {
                    errors.push(format!("{at}: missing required member {required}"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (k, member) in map {
                let path = format!("{at}.{k}");
                if let Some(s) = properties.and_then(|p| p.get(k)) {
                    check(s, member, &path, errors);
                } else {
                    match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => errors.push(format!("{at}: member {k} is not allowed")),
                        Some(s @ Value::Object(_)) => check(s, member, &path, errors),
                        _ => {}
                    }
                }
            }
            if let Some(names) = schema.get("propertyNames") {
                for k in map.keys() {
                    check(names, &Value::String(k.clone()), &format!("{at} (member name {k:?})"), errors);
                }
            }
            if schema.get("maxProperties").and_then(Value::as_u64).is_some_and(|m| map.len() as u64 > m) {
                errors.push(format!("{at}: more than maxProperties"));
            }
        }
        _ => {}
    }
}

fn assert_valid(schema: &Value, v: &Value, what: &str) {
    let mut errors = Vec::new();
    check(schema, v, what, &mut errors);
    assert!(errors.is_empty(), "{what} does not match openapi.yaml:\n  {}\n{v:#}", errors.join("\n  "));
}

#[test]
fn the_checker_rejects_what_it_should() {
    let mut errors = Vec::new();
    let record = schema("ProgressRecord");
    check(record, &json!({"id": "a", "extra": 1}), "r", &mut errors);
    assert!(errors.iter().any(|e| e.contains("missing required member version")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("member extra is not allowed")), "{errors:?}");
    let mut errors = Vec::new();
    check(
        schema("ProgressWrite"),
        &json!({"progress": 101, "status": "done", "stage": "x".repeat(201)}),
        "w",
        &mut errors,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn the_examples_match_their_schemas() {
    fn walk(v: &Value, at: &str, found: &mut usize) {
        let Some(map) = v.as_object() else { return };
        if let Some(schema) = map.get("schema") {
            if let Some(example) = map.get("example") {
                assert_valid(schema, example, &format!("example at {at}"));
                *found += 1;
            }
            for (name, example) in map.get("examples").and_then(Value::as_object).into_iter().flatten() {
                assert_valid(schema, &resolve(example)["value"], &format!("example {name} at {at}"));
                *found += 1;
            }
        }
        for (k, child) in map {
            walk(child, &format!("{at}/{k}"), found);
        }
    }
    let mut found = 0;
    walk(doc(), "", &mut found);
    assert!(found > 0, "openapi.yaml has examples");
}

// ---------------------------------------------------------------------------
// The real server

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        let store = MemoryStore::start(Duration::from_secs(60));
        let app = progressd::app::build_router(&Settings::default(), store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, client: reqwest::Client::new() }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }
}

async fn json_of(res: reqwest::Response) -> Value {
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_record_members(record: &Value, what: &str) {
    let schema = schema("ProgressRecord");
    let properties = keys(&schema["properties"]);
    let required = strings(&schema["required"]);
    let got = keys(record);
    assert_eq!(got, properties, "{what}: members of a real record vs ProgressRecord.properties");
    assert_eq!(got, required, "{what}: members of a real record vs ProgressRecord.required");
    assert_valid(schema, record, what);
}

#[tokio::test]
async fn a_real_record_has_exactly_the_documented_members() {
    let server = Server::start().await;

    // Sparse: most client fields absent, so they come back as null.
    let res = server.send(Method::PUT, "/progress/openapi-sparse", Some(&json!({})), &[]).await;
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers()["location"], "/progress/openapi-sparse");
    assert_eq!(res.headers()["etag"], "\"1\"");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_record_members(&json_of(res).await, "sparse PUT");

    // Full: every client field set, a child with every field, a stage history.
    let body = json!({
        "status": "running", "progress": 12.5, "current": 2, "total": 10,
        "stage": "RESEARCH", "message": "working", "result": [1, {"a": null}],
        "error": {"why": "none yet"}, "metadata": {"bookId": 9007199254740993u64},
        "children": {"ch1": {"title": "One", "status": "running", "progress": 50,
                              "current": 1, "total": 2, "message": "m", "weight": 2}},
        "ttl_seconds": 600
    });
    assert_valid(schema("ProgressWrite"), &body, "the PUT body");
    let res = server.send(Method::PUT, "/progress/openapi-full", Some(&body), &[]).await;
    assert_eq!(res.status().as_u16(), 201);
    assert_record_members(&json_of(res).await, "full PUT");

    let patch = json!({"stage": "CHAPTERS", "children": {"ch2": {"status": "completed"}}, "error": null});
    assert_valid(schema("ProgressPatch"), &patch, "the PATCH body");
    let res = server
        .send(
            Method::PATCH,
            "/progress/openapi-full",
            Some(&patch),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["etag"], "\"2\"");
    let record = json_of(res).await;
    assert_record_members(&record, "PATCH");
    assert_eq!(keys(&record["children"]["ch1"]), keys(&schema("Child")["properties"]), "a child with every field");
    assert_eq!(keys(&record["stages"][0]), keys(&schema("StageSpan")["properties"]), "a stage span");
    assert_eq!(record["stages"].as_array().unwrap().len(), 2);

    let res = server.send(Method::GET, "/progress/openapi-full", None, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_record_members(&json_of(res).await, "GET");

    // Finish it: completed_at and closed stages are set.
    let res = server.send(Method::PATCH, "/progress/openapi-full", Some(&json!({"status": "completed"})), &[]).await;
    let record = json_of(res).await;
    assert_record_members(&record, "completed");
    assert!(record["completed_at"].is_string() && record["stages"][1]["duration_ms"].is_i64());

    // The examples of the document are accepted by the server.
    let example = &doc()["paths"]["/progress/{id}"]["put"]["requestBody"]["content"]["application/json"]["examples"]["running"]
        ["value"];
    let res = server.send(Method::PUT, "/progress/openapi-example", Some(example), &[]).await;
    assert_eq!(res.status().as_u16(), 201, "the PUT example is accepted");
    let record = json_of(res).await;
    assert_record_members(&record, "PUT example");
    assert_eq!(record["metadata"]["bookId"].to_string(), "9007199254740993");
}

#[tokio::test]
async fn real_problems_and_health_match_the_schemas() {
    let server = Server::start().await;
    let problem = schema("Problem");
    let check_problem = |status: u16, code: &'static str| {
        move |res: reqwest::Response| async move {
            assert_eq!(res.status().as_u16(), status, "status of {code}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            if status == 503 {
                assert!(res.headers().contains_key("retry-after"));
            }
            let body = json_of(res).await;
            assert_eq!(body["code"], code);
            body
        }
    };

    let res = server.send(Method::GET, "/progress/a%20b", None, &[]).await;
    assert_valid(problem, &check_problem(400, "invalid_id")(res).await, "invalid_id");
    let res = server.send(Method::GET, "/progress/missing", None, &[]).await;
    assert_valid(problem, &check_problem(404, "not_found")(res).await, "not_found");
    let res = server.send(Method::PUT, "/progress/removed", Some(&json!({"status": "running"})), &[]).await;
    assert_eq!(res.status(), 201);
    let res = server.send(Method::DELETE, "/progress/removed", None, &[]).await;
    assert_eq!(res.status(), 204);
    let res = server.send(Method::GET, "/progress/removed", None, &[]).await;
    assert_valid(problem, &check_problem(410, "gone")(res).await, "gone");
    let res = server.send(Method::PUT, "/progress/p", Some(&json!({"bookId": 1})), &[]).await;
    let body = check_problem(422, "validation_failed")(res).await;
    assert_valid(problem, &body, "validation_failed");
    assert_eq!(body["field"], "bookId");
    let res = server.send(Method::GET, "/progress/p", None, &[("if-none-match", "\"unterminated")]).await;
    assert_valid(problem, &check_problem(400, "invalid_header")(res).await, "invalid_header");
    let res = server.send(Method::POST, "/progress/p", None, &[]).await;
    assert_valid(problem, &check_problem(405, "method_not_allowed")(res).await, "method_not_allowed");

    let res = server.send(Method::PUT, "/progress/p", Some(&json!({"status": "completed"})), &[]).await;
    assert_eq!(res.status().as_u16(), 201);
    let res = server.send(Method::PATCH, "/progress/p", Some(&json!({"message": "again"})), &[]).await;
    let body = check_problem(409, "conflict_terminal")(res).await;
    assert_valid(problem, &body, "conflict_terminal");
    assert_eq!(body["current_version"], 1);
    let res =
        server.send(Method::PATCH, "/progress/p", Some(&json!({"message": "again"})), &[("if-match", "\"9\"")]).await;
    assert_valid(problem, &check_problem(412, "precondition_failed")(res).await, "precondition_failed");
    let res =
        server.send(Method::PATCH, "/progress/p", Some(&json!({"message": "again"})), &[("if-match", "\"1\"")]).await;
    assert_eq!(res.status().as_u16(), 200, "If-Match naming the version writes a finished record");
    assert_record_members(&json_of(res).await, "rewritten");

    let res = server.send(Method::GET, "/progress/p", None, &[("if-none-match", "\"2\"")]).await;
    assert_eq!(res.status().as_u16(), 304);
    assert_eq!(res.headers()["etag"], "\"2\"");

    let res = server.send(Method::DELETE, "/progress/p", None, &[]).await;
    assert_eq!(res.status().as_u16(), 204);

    let res = server.send(Method::GET, "/healthz", None, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let health = json_of(res).await;
    assert_eq!(keys(&health), keys(&schema("Health")["properties"]));
    assert_valid(schema("Health"), &health, "healthz");
}

#[tokio::test]
async fn real_readiness_and_admin_documents_match_the_schemas() {
    let settings = Settings { admin_token: Some("openapi-admin".into()), ..Settings::default() };
    let app = progressd::app::build_router(&settings, MemoryStore::start(Duration::from_secs(60)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server { base: format!("http://{}", listener.local_addr().unwrap()), client: reqwest::Client::new() };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let admin = [("authorization", "Bearer openapi-admin")];
    let exactly = |doc: &Value, name: &str| {
        assert_valid(schema(name), doc, name);
        assert_eq!(keys(doc), strings(&schema(name)["required"]), "members of a real {name}");
    };

    let res = server.send(Method::GET, "/readyz", None, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let readiness = json_of(res).await;
    exactly(&readiness, "Readiness");
    exactly(&readiness["dependencies"]["memory"], "Dependency");

    let res = server.send(Method::PUT, "/progress/stats-a", Some(&json!({"status": "running"})), &[]).await;
    assert_eq!(res.status().as_u16(), 201);
    let res = server.send(Method::GET, "/admin/stats", None, &admin).await;
    assert_eq!(res.status().as_u16(), 200);
    let stats = json_of(res).await;
    exactly(&stats, "Stats");
    assert_eq!(stats["records"]["by_status"]["running"], 1);

    let res = server.send(Method::POST, "/admin/cleanup", None, &admin).await;
    assert_eq!(res.status().as_u16(), 200);
    exactly(&json_of(res).await, "CleanupReport");

    let res = server.send(Method::DELETE, "/admin/progress?status=running", None, &admin).await;
    assert_eq!(res.status().as_u16(), 200);
    let deleted = json_of(res).await;
    exactly(&deleted, "BulkDeleted");
    assert_eq!(deleted["deleted"], 1);

    for (query, code) in [("", "filter_required"), ("?older_than=soon", "invalid_query")] {
        let res = server.send(Method::DELETE, &format!("/admin/progress{query}"), None, &admin).await;
        assert_eq!(res.status().as_u16(), 400);
        let problem = json_of(res).await;
        assert_eq!(problem["code"], code);
        assert_valid(schema("Problem"), &problem, code);
    }
}

#[tokio::test]
async fn a_real_listing_page_matches_the_schema() {
    let server = Server::start().await;
    for n in 0..3 {
        let res = server
            .send(Method::PUT, &format!("/progress/openapi-list-{n}"), Some(&json!({"status": "running"})), &[])
            .await;
        assert_eq!(res.status().as_u16(), 201);
    }
    let res = server.send(Method::GET, "/progress?limit=2&status=running&prefix=openapi-list-", None, &[]).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let page = json_of(res).await;
    assert_valid(schema("ProgressPage"), &page, "a listing page");
    assert_eq!(keys(&page), strings(&schema("ProgressPage")["required"]));
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_record_members(&page["items"][0], "a listed record");
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let res = server.send(Method::GET, &format!("/progress?limit=2&cursor={cursor}"), None, &[]).await;
    let last = json_of(res).await;
    assert_valid(schema("ProgressPage"), &last, "the last page");
    assert!(last["next_cursor"].is_null());

    let res = server.send(Method::GET, "/progress?limit=0", None, &[]).await;
    assert_eq!(res.status().as_u16(), 400);
    let problem = json_of(res).await;
    assert_eq!(problem["code"], "invalid_query");
    assert_valid(schema("Problem"), &problem, "invalid_query");
}
