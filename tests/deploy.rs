//! The deploy files (`railway.json`, `render.yaml`, `fly.toml`,
//! `.dockerignore`) checked against the service they deploy: every
//! environment variable they name is one progressd reads, every health
//! check path answers 200 from the real router, every host waits long
//! enough after SIGTERM for the write-behind flush, the port is the
//! Dockerfile's, secrets are not written in them, and the build context
//! keeps what the Dockerfile copies. Each failure names the file and what
//! is wrong with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use tower::ServiceExt;

use progressd::Settings;
use progressd::store::{MemoryStore, Store};

/// Seconds a host must wait after SIGTERM beyond the flush bound: the
/// requests in flight finish first, and the process has to exit.
const MARGIN_SECONDS: u64 = 10;

/// Variables that hold credentials: set as secrets on each host, never
/// written in a deploy file.
const SECRETS: &[&str] = &[
    "REDIS_URL",
    "DATABASE_URL",
    "REDIS_PASSWORD",
    "PGPASSWORD",
    "PROGRESS_WRITE_TOKENS",
    "PROGRESS_READ_TOKENS",
    "PROGRESS_ADMIN_TOKEN",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: cannot read it: {e}"))
}

fn railway() -> Json {
    serde_json::from_str(&read("railway.json")).unwrap_or_else(|e| panic!("railway.json: not valid JSON: {e}"))
}

fn render() -> Yaml {
    serde_yaml::from_str(&read("render.yaml")).unwrap_or_else(|e| panic!("render.yaml: not valid YAML: {e}"))
}

fn fly() -> toml::Table {
    toml::from_str(&read("fly.toml")).unwrap_or_else(|e| panic!("fly.toml: not valid TOML: {e}"))
}

/// A YAML scalar as written, for messages.
fn show(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => "(missing)".into(),
        other => format!("{other:?}"),
    }
}

fn fail_all(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The services of render.yaml, each a mapping.
fn render_services(render: &Yaml) -> Vec<&Yaml> {
    render["services"].as_sequence().map(|s| s.iter().collect()).unwrap_or_default()
}

/// The `envVars` entries of every service and env group in render.yaml.
fn render_env_vars(render: &Yaml) -> Vec<&Yaml> {
    let groups = render["envVarGroups"].as_sequence().map(|g| g.iter().collect::<Vec<_>>()).unwrap_or_default();
    render_services(render).into_iter().chain(groups).filter_map(|s| s["envVars"].as_sequence()).flatten().collect()
}

fn fly_env(fly: &toml::Table) -> toml::Table {
    fly.get("env").and_then(|e| e.as_table()).cloned().unwrap_or_default()
}

fn fly_http_service(fly: &toml::Table) -> &toml::Table {
    fly.get("http_service").and_then(|s| s.as_table()).expect("fly.toml: no [http_service] section")
}

/// `$NAME` and `${NAME}` in `text`, upper-case names only (`"$schema"` is
/// JSON Schema's key, not a variable).
fn dollar_mentions(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    for (i, _) in text.match_indices('$') {
        let mut j = i + 1;
        if b.get(j) == Some(&b'{') {
            j += 1;
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
            j += 1;
        }
        let name = &text[start..j];
        let upper = name.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        if !name.is_empty() && upper && !name.as_bytes()[0].is_ascii_digit() {
            out.push(name.to_owned());
        }
    }
    out
}

/// Every `PROGRESS_*` name in `text`, comments included, so that a file
/// cannot describe a setting that does not exist.
fn progress_names(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    text.match_indices("PROGRESS_")
        .filter(|(i, _)| *i == 0 || !ident(b[i - 1]))
        .map(|(i, _)| {
            let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
            text[i..end].to_owned()
        })
        .collect()
}

#[test]
fn every_variable_named_is_one_the_service_reads() {
    let known: BTreeSet<String> = progressd::settings::known_variables().into_iter().collect();
    let mut named: Vec<(&str, String)> = Vec::new();

    for entry in render_env_vars(&render()) {
        match entry["key"].as_str() {
            Some(key) => named.push(("render.yaml: envVars key", key.to_owned())),
            None if entry["fromGroup"].is_string() => {}
            None => named.push(("render.yaml: envVars entry without a key", show(entry))),
        }
    }
    for key in fly_env(&fly()).keys() {
        named.push(("fly.toml: [env] key", key.clone()));
    }
    for file in ["railway.json", "render.yaml", "fly.toml"] {
        let text = read(file);
        for name in dollar_mentions(&text) {
            named.push((file, format!("${name}")));
        }
        for name in progress_names(&text) {
            named.push((file, name));
        }
    }

    let problems = named
        .into_iter()
        .filter(|(_, name)| !known.contains(name.trim_start_matches('$')))
        .map(|(place, name)| {
            format!("{place} names {name}, which progressd does not read (see progressd::settings::known_variables)")
        })
        .collect();
    fail_all(problems);
}

/// (file, health check path) for every health check the files configure.
fn health_checks() -> Vec<(&'static str, String)> {
    let mut checks = Vec::new();
    match railway()["deploy"]["healthcheckPath"].as_str() {
        Some(path) => checks.push(("railway.json: deploy.healthcheckPath", path.to_owned())),
        None => panic!("railway.json: deploy.healthcheckPath is missing"),
    }
    let render = render();
    for service in render_services(&render).into_iter().filter(|s| s["type"].as_str() == Some("web")) {
        match service["healthCheckPath"].as_str() {
            Some(path) => checks.push(("render.yaml: healthCheckPath", path.to_owned())),
            None => panic!("render.yaml: web service {} has no healthCheckPath", show(&service["name"])),
        }
    }
    let fly = fly();
    let fly_checks = fly_http_service(&fly).get("checks").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    assert!(!fly_checks.is_empty(), "fly.toml: [[http_service.checks]] is missing");
    for check in fly_checks {
        match check.get("path").and_then(|p| p.as_str()) {
            Some(path) => checks.push(("fly.toml: [[http_service.checks]] path", path.to_owned())),
            None => panic!("fly.toml: an [[http_service.checks]] entry has no path"),
        }
    }
    checks
}

#[tokio::test]
async fn every_health_check_path_answers_200() {
    let store: Arc<dyn Store> = MemoryStore::start(Duration::from_secs(10));
    let router = progressd::app::build_router(&Settings::default(), store);
    let mut problems = Vec::new();
    for (place, path) in health_checks() {
        if !["/healthz", "/readyz"].contains(&path.as_str()) {
            problems.push(format!("{place} is {path}; progressd's health paths are /healthz and /readyz"));
            continue;
        }
        let request = Request::get(path.as_str()).body(Body::empty()).unwrap();
        let status = router.clone().oneshot(request).await.unwrap().status();
        if status != StatusCode::OK {
            problems.push(format!("{place} is {path}, which answers {status}, not 200"));
        }
    }
    fail_all(problems);
}

/// Seconds in a Fly duration: an integer, or a string such as "30s" or "1m".
fn fly_seconds(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::String(s) => {
            let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration"))?;
            match unit {
                "" | "s" => Ok(n),
                "m" => Ok(n * 60),
                _ => Err(format!("{s:?} is not a duration in seconds or minutes")),
            }
        }
        other => Err(format!("{other} is neither a number of seconds nor a duration string")),
    }
}

#[test]
fn every_host_waits_for_the_shutdown_flush() {
    let flush: u64 = progressd::settings::SETTINGS
        .iter()
        .find(|(key, _, _)| *key == "shutdown_flush_seconds")
        .and_then(|(_, default, _)| *default)
        .expect("SETTINGS has no default for shutdown_flush_seconds")
        .parse()
        .expect("shutdown_flush_seconds's default is not a whole number");
    let needed = flush + MARGIN_SECONDS;
    let why = format!(
        "at least {needed} s is needed: PROGRESS_SHUTDOWN_FLUSH_SECONDS's default {flush} s plus {MARGIN_SECONDS} s for in-flight requests and exit"
    );
    let mut problems = Vec::new();

    match &railway()["deploy"]["drainingSeconds"] {
        Json::Number(n) => match n.as_u64() {
            Some(s) if s >= needed => {}
            Some(s) => problems.push(format!("railway.json: deploy.drainingSeconds is {s}; {why}")),
            None => problems.push(format!("railway.json: deploy.drainingSeconds is {n}, not a whole number of seconds")),
        },
        Json::Null => problems.push(format!(
            "railway.json: deploy.drainingSeconds is missing (Railway then kills the old deploy right after SIGTERM); {why}"
        )),
        other => problems.push(format!(
            "railway.json: deploy.drainingSeconds is {other}; Railway's schema wants a JSON number, not a string or anything else"
        )),
    }

    let render = render();
    for service in render_services(&render).into_iter().filter(|s| s["type"].as_str() == Some("web")) {
        match service["maxShutdownDelaySeconds"].as_u64() {
            Some(s) if s > 300 => {
                problems.push(format!("render.yaml: maxShutdownDelaySeconds is {s}; Render allows at most 300"))
            }
            Some(s) if s >= needed => {}
            Some(s) => problems.push(format!("render.yaml: maxShutdownDelaySeconds is {s}; {why}")),
            None => problems.push(format!(
                "render.yaml: maxShutdownDelaySeconds is {}, not a whole number of seconds; {why}",
                show(&service["maxShutdownDelaySeconds"])
            )),
        }
    }

    let fly = fly();
    match fly.get("kill_timeout").map(fly_seconds) {
        Some(Ok(s)) if s >= needed => {}
        Some(Ok(s)) => problems.push(format!("fly.toml: kill_timeout is {s} s; {why}")),
        Some(Err(e)) => problems.push(format!("fly.toml: kill_timeout: {e}")),
        None => problems.push(format!("fly.toml: kill_timeout is missing (Fly's default is 5 s); {why}")),
    }
    match fly.get("kill_signal").and_then(|s| s.as_str()) {
        Some("SIGTERM" | "SIGINT") => {}
        Some(other) => {
            problems.push(format!("fly.toml: kill_signal is {other}; progressd drains on SIGTERM (or SIGINT) only"))
        }
        None => {
            problems.push("fly.toml: kill_signal is missing; set it to SIGTERM, the signal progressd drains on".into())
        }
    }
    fail_all(problems);
}

/// What the Dockerfile says: its instructions with continuations joined.
fn dockerfile_instructions() -> Vec<Vec<String>> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(rest) => {
                current.push_str(rest);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(current.split_whitespace().map(str::to_owned).collect());
                current.clear();
            }
        }
    }
    instructions
}

/// The `PORT` the image sets, and the ports it exposes.
fn dockerfile_ports() -> (u16, Vec<u16>) {
    let instructions = dockerfile_instructions();
    let port = instructions
        .iter()
        .filter(|i| i[0].eq_ignore_ascii_case("ENV"))
        .flat_map(|i| i[1..].iter())
        .find_map(|kv| kv.strip_prefix("PORT="))
        .expect("Dockerfile: no ENV PORT=")
        .parse()
        .expect("Dockerfile: ENV PORT is not a port number");
    let exposed = instructions
        .iter()
        .filter(|i| i[0].eq_ignore_ascii_case("EXPOSE"))
        .flat_map(|i| i[1..].iter())
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    (port, exposed)
}

#[test]
fn every_port_is_the_dockerfiles() {
    let (port, exposed) = dockerfile_ports();
    let mut problems = Vec::new();
    if !exposed.contains(&port) {
        problems.push(format!("Dockerfile: ENV PORT={port} but EXPOSE lists {exposed:?}"));
    }

    let fly = fly();
    match fly_http_service(&fly).get("internal_port").and_then(|p| p.as_integer()) {
        Some(p) if p == i64::from(port) => {}
        other => problems.push(format!(
            "fly.toml: [http_service] internal_port is {}, but the Dockerfile's PORT is {port}",
            other.map_or("missing".to_owned(), |p| p.to_string())
        )),
    }
    if let Some(value) = fly_env(&fly).get("PORT")
        && value.as_str() != Some(port.to_string().as_str())
    {
        problems.push(format!(
            "fly.toml: [env] PORT is {value}, but the Dockerfile's PORT is {port} (write it as a string)"
        ));
    }

    for entry in render_env_vars(&render()).into_iter().filter(|e| e["key"].as_str() == Some("PORT")) {
        let value = show(&entry["value"]);
        if value != port.to_string() {
            problems.push(format!("render.yaml: PORT is {value}, but the Dockerfile's PORT is {port}"));
        }
    }
    fail_all(problems);
}

#[test]
fn secrets_are_references_not_values() {
    let mut problems = Vec::new();
    for key in fly_env(&fly()).keys().filter(|k| SECRETS.contains(&k.as_str())) {
        problems.push(format!("fly.toml: [env] sets {key}; it is a secret: `fly secrets set {key}=...`"));
    }

    let render = render();
    let services = render_services(&render);
    let databases: Vec<&str> =
        render["databases"].as_sequence().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    for entry in render_env_vars(&render) {
        let key = entry["key"].as_str().unwrap_or("?");
        if SECRETS.contains(&key) && !entry["value"].is_null() {
            problems.push(format!(
                "render.yaml: {key} has a literal value; use fromService, fromDatabase, generateValue or sync: false"
            ));
        }
        let from = &entry["fromService"];
        if !from.is_null() {
            let found = services.iter().any(|s| s["name"] == from["name"] && s["type"] == from["type"]);
            if !found {
                problems.push(format!(
                    "render.yaml: {key} comes from service {} of type {}, which the Blueprint does not declare",
                    show(&from["name"]),
                    show(&from["type"])
                ));
            }
        }
        let from = &entry["fromDatabase"];
        if !from.is_null() && !from["name"].as_str().is_some_and(|n| databases.contains(&n)) {
            problems.push(format!(
                "render.yaml: {key} comes from database {}, which the Blueprint does not declare",
                show(&from["name"])
            ));
        }
    }
    for service in services.iter().filter(|s| s["type"].as_str() == Some("keyvalue")) {
        if service["ipAllowList"].as_sequence().is_none() {
            problems.push(format!(
                "render.yaml: Key Value {} has no ipAllowList (required; [] allows internal connections only)",
                show(&service["name"])
            ));
        }
    }
    fail_all(problems);
}

#[test]
fn every_dockerfile_path_named_exists() {
    let render = render();
    let fly = fly();
    let mut named =
        vec![("railway.json: build.dockerfilePath", railway()["build"]["dockerfilePath"].as_str().map(str::to_owned))];
    for service in render_services(&render).into_iter().filter(|s| s["runtime"].as_str() == Some("docker")) {
        named.push(("render.yaml: dockerfilePath", service["dockerfilePath"].as_str().map(str::to_owned)));
    }
    let fly_build = fly.get("build").and_then(|b| b.get("dockerfile")).and_then(|d| d.as_str()).map(str::to_owned);
    named.push(("fly.toml: [build] dockerfile", fly_build));

    let problems = named
        .into_iter()
        .filter_map(|(place, path)| match path {
            None => Some(format!("{place} is missing")),
            Some(p) if !root().join(&p).is_file() => Some(format!("{place} is {p}, which does not exist")),
            Some(_) => None,
        })
        .collect();
    fail_all(problems);
}

/// One line of `.dockerignore`: a path pattern (`*`, `?` within a path
/// segment, `**` across segments), or an exception with `!`.
struct IgnoreRule {
    except: bool,
    segments: Vec<String>,
}

fn dockerignore() -> Vec<IgnoreRule> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (except, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segments = pattern
                .trim_matches('/')
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_owned)
                .collect();
            IgnoreRule { except, segments }
        })
        .collect()
}

fn glob_segment(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob_segment(rest, name) || (!name.is_empty() && glob_segment(pattern, &name[1..])),
        (Some((b'?', rest)), Some((_, name_rest))) => glob_segment(rest, name_rest),
        (Some((p, rest)), Some((n, name_rest))) => p == n && glob_segment(rest, name_rest),
        _ => false,
    }
}

fn glob_path(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| glob_path(rest, &path[i..])),
        Some((p, rest)) => {
            !path.is_empty() && glob_segment(p.as_bytes(), path[0].as_bytes()) && glob_path(rest, &path[1..])
        }
    }
}

/// Whether Docker leaves `path` (relative, `/`-separated) out of the build
/// context: the last rule that matches it or a directory above it decides.
fn ignored(rules: &[IgnoreRule], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for rule in rules {
        if (1..=parts.len()).any(|n| glob_path(&rule.segments, &parts[..n])) {
            ignored = !rule.except;
        }
    }
    ignored
}

/// Every file at or under `path`, relative to the repository root.
fn files_under(path: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            files_under(&entry.unwrap().path(), out);
        }
    } else {
        let relative = path.strip_prefix(root()).unwrap();
        out.push(relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
    }
}

#[test]
fn dockerignore_keeps_what_the_dockerfile_copies() {
    let rules = dockerignore();
    let mut problems = Vec::new();
    let mut sources = Vec::new();
    for instruction in dockerfile_instructions().iter().filter(|i| i[0].eq_ignore_ascii_case("COPY")) {
        let args: Vec<&String> = instruction[1..].iter().filter(|a| !a.starts_with("--")).collect();
        if instruction.iter().any(|a| a.starts_with("--from")) || args.len() < 2 {
            continue;
        }
        sources
            .extend(args[..args.len() - 1].iter().map(|s| s.trim_start_matches("./").trim_end_matches('/').to_owned()));
    }
    assert!(sources.contains(&"src".to_owned()), "Dockerfile: found no COPY of src among {sources:?}");

    for source in sources {
        let path = root().join(&source);
        if !path.exists() {
            problems.push(format!("Dockerfile: COPY source {source} does not exist"));
            continue;
        }
        let mut files = Vec::new();
        files_under(&path, &mut files);
        for file in files.into_iter().filter(|f| ignored(&rules, f)) {
            problems.push(format!(".dockerignore: excludes {file}, which the Dockerfile copies (COPY {source})"));
        }
    }
    for needed_out in ["target/release/progressd", ".git/HEAD"] {
        if !ignored(&rules, needed_out) {
            problems.push(format!(".dockerignore: does not exclude {needed_out}, so every build uploads it"));
        }
    }
    fail_all(problems);
}
