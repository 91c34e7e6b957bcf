//! Typed settings: defaults < optional `progressd.toml` (or the file named by
//! `PROGRESS_CONFIG`) < environment. The platform's own variables (`PORT`,
//! `REDIS_URL`) are read as they are; everything else is `PROGRESS_*`.
//!
//! Every value is read as text and parsed here, so a bad value stops
//! start-up with one line that names the variable to fix.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            _ => Err("expected pretty or json".into()),
        }
    }
}

/// Everything the service can be told at start-up.
#[derive(Clone)]
pub struct Settings {
    /// Address to listen on (`PROGRESS_HOST`); unset: `::` dual-stack, or
    /// 0.0.0.0 where the machine has no IPv6.
    pub host: Option<IpAddr>,
    /// Port to listen on (`PORT`, default 8080).
    pub port: u16,
    /// Redis URL (`REDIS_URL`, else built from `REDIS_HOST` and its group);
    /// unset means the in-process store.
    pub redis_url: Option<String>,
    /// The variable `redis_url` came from, for messages.
    pub redis_url_variable: &'static str,
    /// PEM file of the CA that signs the Redis server's certificate (`PROGRESS_REDIS_CA_FILE`).
    pub redis_ca_file: Option<String>,
    /// Prefix of every Redis key (`PROGRESS_KEY_PREFIX`).
    pub key_prefix: String,
    /// Default record TTL after its last write (`PROGRESS_TTL_SECONDS`).
    pub ttl_seconds: u64,
    /// Largest `ttl_seconds` a client may ask for (`PROGRESS_MAX_TTL_SECONDS`).
    pub max_ttl_seconds: u64,
    /// Largest request body (`PROGRESS_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a body (`PROGRESS_MAX_JSON_DEPTH`).
    pub max_json_depth: usize,
    /// A running record with no write for this long is stalled (`PROGRESS_HEARTBEAT_SECONDS`).
    pub heartbeat_seconds: u64,
    /// Event streams send a comment after this long without an event (`PROGRESS_SSE_HEARTBEAT_SECONDS`).
    pub sse_heartbeat_seconds: u64,
    /// Most Redis connections in the pool (`PROGRESS_REDIS_POOL_SIZE`).
    pub redis_pool_size: usize,
    /// Multiplexed Redis connections shared by all requests (`PROGRESS_REDIS_CONNECTIONS`).
    pub redis_connections: usize,
    /// Bound on connecting to Redis and on each Redis operation (`PROGRESS_REDIS_TIMEOUT_MS`).
    pub redis_timeout_ms: u64,
    /// PostgreSQL URL (`DATABASE_URL`, else built from libpq's `PGHOST` and
    /// its group); unset means no durable tier.
    pub database_url: Option<String>,
    /// The variable `database_url` came from, for messages.
    pub database_url_variable: &'static str,
    /// `sslmode` where the URL does not say (`PGSSLMODE`).
    pub database_sslmode: Option<String>,
    /// Trusted roots where the URL names none (`PGSSLROOTCERT`).
    pub database_sslrootcert: Option<String>,
    /// Most PostgreSQL connections in the pool (`PROGRESS_DATABASE_POOL_SIZE`).
    pub database_pool_size: usize,
    /// Bound on connecting to PostgreSQL and on each query (`PROGRESS_DATABASE_TIMEOUT_MS`).
    pub database_timeout_ms: u64,
    /// Updates reach PostgreSQL within this many seconds (`PROGRESS_PERSIST_INTERVAL_SECONDS`).
    pub persist_interval_seconds: u64,
    /// Consecutive failures that open a store's circuit breaker (`PROGRESS_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How often an open breaker probes its store (`PROGRESS_BREAKER_PROBE_MS`).
    pub breaker_probe_ms: u64,
    /// Bearer tokens for PUT/PATCH/DELETE (`PROGRESS_WRITE_TOKENS`, comma-separated); empty: no auth.
    pub write_tokens: Vec<String>,
    /// Bearer tokens for reads (`PROGRESS_READ_TOKENS`, comma-separated); empty: reads are open.
    pub read_tokens: Vec<String>,
    /// Bearer token of the admin routes and listing (`PROGRESS_ADMIN_TOKEN`); unset: admin routes refuse everything.
    pub admin_token: Option<String>,
    /// Origins allowed to call from a browser (`PROGRESS_CORS_ORIGINS`, comma-separated, or `*`); empty: none.
    pub cors_origins: Vec<String>,
    /// Longest a request may take, except long-polls and event streams (`PROGRESS_REQUEST_TIMEOUT_SECONDS`).
    pub request_timeout_seconds: u64,
    /// Longest the SIGTERM flush of the write-behind backlog may take (`PROGRESS_SHUTDOWN_FLUSH_SECONDS`).
    pub shutdown_flush_seconds: u64,
    /// How often expired data is purged in the background (`PROGRESS_CLEANUP_INTERVAL_SECONDS`).
    pub cleanup_interval_seconds: u64,
    /// Longest a cached read is served without asking Redis; 0 turns the cache off (`PROGRESS_CACHE_MAX_AGE_MS`).
    pub cache_max_age_ms: u64,
    /// Most records held in the read cache (`PROGRESS_CACHE_MAX_ENTRIES`).
    pub cache_max_entries: usize,
    /// `pretty` or `json` (`PROGRESS_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Log filter such as `info` or `progressd=debug` (`PROGRESS_LOG_LEVEL`; `RUST_LOG` wins).
    pub log_level: String,
}

/// A setting that stops start-up; its `Display` is the one line to print.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable}: {reason}")]
pub struct SettingsError {
    /// The environment variable (or file key) to fix.
    pub variable: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Each setting: key, default (`None`: optional), one line of meaning.
/// `.env.example` and the README list the same rows.
pub const SETTINGS: &[(&str, Option<&str>, &str)] = &[
    ("host", None, "address to listen on; unset: :: dual-stack (IPv4 mapped), 0.0.0.0 where the machine has no IPv6"),
    ("port", Some("8080"), "port to listen on"),
    (
        "redis_url",
        None,
        "Redis URL (rediss:// for TLS); unset: built from REDIS_HOST and its group, else records stay in process memory",
    ),
    ("key_prefix", Some(""), "prefix of every Redis key"),
    ("ttl_seconds", Some("86400"), "default time a record lives after its last write"),
    ("max_ttl_seconds", Some("2592000"), "largest ttl_seconds a client may ask for"),
    ("max_body_bytes", Some("65536"), "largest request body; larger gets 413"),
    ("max_json_depth", Some("32"), "deepest JSON nesting accepted in a body"),
    ("heartbeat_seconds", Some("60"), "a running record with no write for this long is stalled"),
    ("sse_heartbeat_seconds", Some("15"), "an event stream sends a comment after this long without an event"),
    ("redis_pool_size", Some("16"), "most Redis connections in the pool"),
    ("redis_connections", Some("1"), "multiplexed Redis connections shared by all requests"),
    ("redis_timeout_ms", Some("1000"), "bound on connecting to Redis and on each Redis operation"),
    (
        "redis_ca_file",
        None,
        "PEM file of the CA that signed a rediss:// server's certificate, instead of the system's roots",
    ),
    (
        "database_url",
        None,
        "PostgreSQL URL (libpq's sslmode and sslrootcert); unset: built from PGHOST and its group, else no durable tier",
    ),
    ("database_pool_size", Some("16"), "most PostgreSQL connections in the pool"),
    ("database_timeout_ms", Some("2000"), "bound on connecting to PostgreSQL and on each query"),
    ("persist_interval_seconds", Some("10"), "updates reach PostgreSQL within this many seconds"),
    ("breaker_failures", Some("3"), "consecutive failures that open a store's circuit breaker"),
    ("breaker_probe_ms", Some("500"), "how often an open circuit breaker probes its store"),
    ("write_tokens", Some(""), "bearer tokens for PUT/PATCH/DELETE, comma-separated; empty: writes are open"),
    ("read_tokens", Some(""), "bearer tokens for GET, comma-separated; empty: reads are open"),
    ("admin_token", None, "bearer token of the admin routes and listing; unset: admin routes refuse every request"),
    ("cors_origins", Some(""), "origins browsers may call from, comma-separated, or *; empty: none"),
    ("request_timeout_seconds", Some("30"), "longest a request may take (long-polls and event streams excepted)"),
    ("shutdown_flush_seconds", Some("20"), "longest the SIGTERM flush of the write-behind backlog may take"),
    ("cleanup_interval_seconds", Some("300"), "how often expired data is purged in the background"),
    ("cache_max_age_ms", Some("30000"), "longest a cached read is served without asking Redis; 0 turns the cache off"),
    ("cache_max_entries", Some("100000"), "most records held in the read cache"),
    ("log_format", Some("pretty"), "pretty or json"),
    ("log_level", Some("info"), "log filter (RUST_LOG wins when set)"),
];

/// Variables read as hosts set them, besides the `SETTINGS` rows: the parts
/// of a Redis URL (used when `REDIS_URL` is unset), libpq's variables (used
/// when `DATABASE_URL` is unset; `PGSSLMODE` and `PGSSLROOTCERT` also fill
/// in a URL that does not say), the config file and the log filter.
pub const PLATFORM_VARIABLES: &[&str] = &[
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_TLS",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PROGRESS_CONFIG",
    "RUST_LOG",
];

/// Every environment variable the service reads.
pub fn known_variables() -> Vec<String> {
    SETTINGS
        .iter()
        .map(|(key, _, _)| variable_name(key))
        .chain(PLATFORM_VARIABLES.iter().map(|v| (*v).to_owned()))
        .collect()
}

/// The environment variable that sets `key`.
pub fn variable_name(key: &str) -> String {
    match key {
        "port" => "PORT".into(),
        "redis_url" => "REDIS_URL".into(),
        "database_url" => "DATABASE_URL".into(),
        _ => format!("PROGRESS_{}", key.to_ascii_uppercase()),
    }
}

impl Settings {
    /// Reads the process environment (and the config file it points to).
    pub fn load() -> Result<Self, SettingsError> {
        Self::from_env(std::env::vars().collect())
    }

    /// Reads the given environment; tests pass their own.
    pub fn from_env(env: HashMap<String, String>) -> Result<Self, SettingsError> {
        let file = match env.get("PROGRESS_CONFIG") {
            Some(path) => File::new(path, FileFormat::Toml).required(true),
            None => File::new("progressd.toml", FileFormat::Toml).required(false),
        };
        Self::from_sources(env, Some(file))
    }

    /// Like [`Settings::from_env`] but never reads a config file.
    pub fn from_env_without_file(env: HashMap<String, String>) -> Result<Self, SettingsError> {
        Self::from_sources(env, None)
    }

    fn from_sources(
        env: HashMap<String, String>,
        file: Option<File<config::FileSourceFile, FileFormat>>,
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        for (key, default) in SETTINGS.iter().filter_map(|(k, d, _)| d.map(|d| (k, d))) {
            builder = builder.set_default(*key, default).expect("static defaults are valid");
        }
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        let platform: HashMap<String, String> = ["port", "redis_url", "database_url"]
            .iter()
            .filter_map(|k| env.get(&variable_name(k)).map(|v| (k.to_string(), v.clone())))
            .collect();
        let config = builder
            .add_source(Environment::with_prefix("PROGRESS").prefix_separator("_").source(Some(env.clone())))
            .build()
            .map_err(|e| SettingsError { variable: "PROGRESS_CONFIG".into(), reason: e.to_string() })?;
        let read = |key: &str| -> Result<Option<String>, SettingsError> {
            if let Some(v) = platform.get(key) {
                return Ok(Some(v.clone()));
            }
            match config.get::<String>(key) {
                Ok(v) => Ok(Some(v)),
                Err(config::ConfigError::NotFound(_)) => Ok(None),
                Err(e) => Err(SettingsError { variable: variable_name(key), reason: e.to_string() }),
            }
        };
        let parse = |key: &str| -> Result<String, SettingsError> {
            read(key)?.ok_or_else(|| SettingsError { variable: variable_name(key), reason: "missing".into() })
        };
        let (redis_url, redis_url_variable) = match read("redis_url")?.filter(|u| !u.trim().is_empty()) {
            Some(url) => (Some(url), "REDIS_URL"),
            None => (redis_url_from_parts(&env)?, "REDIS_HOST"),
        };
        let (database_url, database_url_variable) = match read("database_url")?.filter(|u| !u.trim().is_empty()) {
            Some(url) => (Some(url), "DATABASE_URL"),
            None => (database_url_from_parts(&env)?, "PGHOST"),
        };
        let settings = Settings {
            host: read("host")?
                .filter(|h| !h.trim().is_empty())
                .map(|h| typed("host", &h, "an IP address such as 0.0.0.0 or ::"))
                .transpose()?,
            port: typed("port", &parse("port")?, "a port number from 0 to 65535")?,
            redis_url,
            redis_url_variable,
            redis_ca_file: read("redis_ca_file")?.filter(|f| !f.trim().is_empty()),
            key_prefix: parse("key_prefix")?,
            ttl_seconds: typed("ttl_seconds", &parse("ttl_seconds")?, "a whole number of seconds")?,
            max_ttl_seconds: typed("max_ttl_seconds", &parse("max_ttl_seconds")?, "a whole number of seconds")?,
            max_body_bytes: typed("max_body_bytes", &parse("max_body_bytes")?, "a number of bytes")?,
            max_json_depth: typed("max_json_depth", &parse("max_json_depth")?, "a whole number")?,
            heartbeat_seconds: typed("heartbeat_seconds", &parse("heartbeat_seconds")?, "a whole number of seconds")?,
            sse_heartbeat_seconds: typed(
                "sse_heartbeat_seconds",
                &parse("sse_heartbeat_seconds")?,
                "a whole number of seconds",
            )?,
            redis_pool_size: typed("redis_pool_size", &parse("redis_pool_size")?, "a whole number")?,
            redis_connections: typed("redis_connections", &parse("redis_connections")?, "a whole number")?,
            redis_timeout_ms: typed("redis_timeout_ms", &parse("redis_timeout_ms")?, "a whole number of milliseconds")?,
            database_url,
            database_url_variable,
            database_sslmode: nonempty(&env, "PGSSLMODE"),
            database_sslrootcert: nonempty(&env, "PGSSLROOTCERT"),
            database_pool_size: typed("database_pool_size", &parse("database_pool_size")?, "a whole number")?,
            database_timeout_ms: typed(
                "database_timeout_ms",
                &parse("database_timeout_ms")?,
                "a whole number of milliseconds",
            )?,
            persist_interval_seconds: typed(
                "persist_interval_seconds",
                &parse("persist_interval_seconds")?,
                "a whole number of seconds",
            )?,
            breaker_failures: typed("breaker_failures", &parse("breaker_failures")?, "a whole number")?,
            breaker_probe_ms: typed("breaker_probe_ms", &parse("breaker_probe_ms")?, "a whole number of milliseconds")?,
            write_tokens: list(&parse("write_tokens")?),
            read_tokens: list(&parse("read_tokens")?),
            admin_token: read("admin_token")?.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            cors_origins: list(&parse("cors_origins")?),
            request_timeout_seconds: typed(
                "request_timeout_seconds",
                &parse("request_timeout_seconds")?,
                "a whole number of seconds",
            )?,
            shutdown_flush_seconds: typed(
                "shutdown_flush_seconds",
                &parse("shutdown_flush_seconds")?,
                "a whole number of seconds",
            )?,
            cleanup_interval_seconds: typed(
                "cleanup_interval_seconds",
                &parse("cleanup_interval_seconds")?,
                "a whole number of seconds",
            )?,
            cache_max_age_ms: typed("cache_max_age_ms", &parse("cache_max_age_ms")?, "a whole number of milliseconds")?,
            cache_max_entries: typed("cache_max_entries", &parse("cache_max_entries")?, "a whole number")?,
            log_format: typed("log_format", &parse("log_format")?, "pretty or json")?,
            log_level: parse("log_level")?,
        };
        settings.check_ranges()?;
        Ok(settings)
    }

    fn check_ranges(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, reason: String| Err(SettingsError { variable: variable_name(key), reason });
        if self.max_ttl_seconds == 0 {
            return bad("max_ttl_seconds", "must be at least 1".into());
        }
        if !(1..=self.max_ttl_seconds).contains(&self.ttl_seconds) {
            return bad(
                "ttl_seconds",
                format!("must be from 1 to PROGRESS_MAX_TTL_SECONDS ({})", self.max_ttl_seconds),
            );
        }
        if self.max_body_bytes < 2 {
            return bad("max_body_bytes", "must be at least 2".into());
        }
        if !(1..=128).contains(&self.max_json_depth) {
            return bad("max_json_depth", "must be from 1 to 128".into());
        }
        if self.heartbeat_seconds == 0 {
            return bad("heartbeat_seconds", "must be at least 1".into());
        }
        if self.sse_heartbeat_seconds == 0 {
            return bad("sse_heartbeat_seconds", "must be at least 1".into());
        }
        if self.redis_pool_size == 0 {
            return bad("redis_pool_size", "must be at least 1".into());
        }
        if !(1..=64).contains(&self.redis_connections) {
            return bad("redis_connections", "must be from 1 to 64".into());
        }
        if self.redis_connections > self.redis_pool_size {
            return bad("redis_connections", "must not exceed PROGRESS_REDIS_POOL_SIZE".into());
        }
        if self.redis_timeout_ms == 0 {
            return bad("redis_timeout_ms", "must be at least 1".into());
        }
        if self.database_pool_size == 0 {
            return bad("database_pool_size", "must be at least 1".into());
        }
        if self.database_timeout_ms == 0 {
            return bad("database_timeout_ms", "must be at least 1".into());
        }
        if self.persist_interval_seconds == 0 {
            return bad("persist_interval_seconds", "must be at least 1".into());
        }
        if self.request_timeout_seconds == 0 {
            return bad("request_timeout_seconds", "must be at least 1".into());
        }
        if let Some(origin) = self.cors_origins.iter().find(|o| *o != "*" && !is_origin(o)) {
            return bad(
                "cors_origins",
                format!(
                    "{origin:?} is not an origin such as https://app.example.com (scheme and host, optional port, no path)"
                ),
            );
        }
        if self.cleanup_interval_seconds == 0 {
            return bad("cleanup_interval_seconds", "must be at least 1".into());
        }
        if self.breaker_failures == 0 {
            return bad("breaker_failures", "must be at least 1".into());
        }
        if self.breaker_probe_ms == 0 {
            return bad("breaker_probe_ms", "must be at least 1".into());
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains("host="))
        {
            return bad("database_url", format!("expected a postgres:// URL, got {}", redact_url(url)));
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return bad("redis_url", format!("expected a redis:// or rediss:// URL, got {}", redact_url(url)));
        }
        if let Some(file) = &self.redis_ca_file
            && let Err(e) = std::fs::metadata(file)
        {
            return bad("redis_ca_file", format!("cannot read {file}: {e}"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map(|_| ()).or_else(|e| bad("log_level", e.to_string()))
    }

    /// The PostgreSQL defaults libpq's environment gives a URL.
    pub fn database_defaults(&self) -> crate::store::PgDefaults {
        crate::store::PgDefaults {
            ssl_mode: self.database_sslmode.clone(),
            ssl_root_cert: self.database_sslrootcert.clone(),
        }
    }

    /// The PostgreSQL timeout as a duration.
    pub fn database_timeout(&self) -> Duration {
        Duration::from_millis(self.database_timeout_ms)
    }

    /// The Redis timeout as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

fn nonempty(env: &HashMap<String, String>, name: &str) -> Option<String> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
}

fn missing_host(group: &[&str], env: &HashMap<String, String>, host: &str, url: &str) -> SettingsError {
    let set: Vec<&str> = group.iter().copied().filter(|v| nonempty(env, v).is_some()).collect();
    SettingsError {
        variable: host.into(),
        reason: format!(
            "missing: {} {} set but {host} is not (set {host}, or {url})",
            set.join(", "),
            if set.len() == 1 { "is" } else { "are" }
        ),
    }
}

/// `REDIS_URL` from `REDIS_HOST`, `REDIS_PORT` (6379), `REDIS_USERNAME`,
/// `REDIS_PASSWORD` and `REDIS_TLS`, when `REDIS_HOST` is set. A
/// `REDIS_PORT` of the form `tcp://ip:port` is Kubernetes's link to a
/// service named `redis`, not ours, and is ignored.
fn redis_url_from_parts(env: &HashMap<String, String>) -> Result<Option<String>, SettingsError> {
    let port = nonempty(env, "REDIS_PORT").filter(|p| !p.starts_with("tcp://"));
    let Some(host) = nonempty(env, "REDIS_HOST") else {
        let others = ["REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS"];
        if port.is_some() || others.iter().any(|v| nonempty(env, v).is_some()) {
            return Err(missing_host(
                &["REDIS_PORT", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS"],
                env,
                "REDIS_HOST",
                "REDIS_URL",
            ));
        }
        return Ok(None);
    };
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| SettingsError {
            variable: "REDIS_PORT".into(),
            reason: format!("expected a port number, got {p:?}"),
        })?,
        None => 6379,
    };
    let tls = match nonempty(env, "REDIS_TLS").map(|t| t.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "no" | "off") => false,
        Some("true" | "1" | "yes" | "on") => true,
        Some(other) => {
            return Err(SettingsError {
                variable: "REDIS_TLS".into(),
                reason: format!("expected true or false, got {other:?}"),
            });
        }
    };
    let user = nonempty(env, "REDIS_USERNAME");
    let password = env.get("REDIS_PASSWORD").filter(|p| !p.is_empty());
    let userinfo = match (&user, password) {
        (None, None) => String::new(),
        (user, None) => format!("{}@", encode(user.as_deref().unwrap_or_default())),
        (user, Some(password)) => format!("{}:{}@", encode(user.as_deref().unwrap_or_default()), encode(password)),
    };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    Ok(Some(format!("{}://{userinfo}{host}:{port}", if tls { "rediss" } else { "redis" })))
}

/// `DATABASE_URL` from libpq's `PGHOST`, `PGPORT`, `PGUSER` (else `USER`,
/// else postgres), `PGPASSWORD` and `PGDATABASE` (else the user), when
/// `PGHOST` is set, as a `key=value` string (`PGHOST` may be a socket
/// directory or a list of hosts).
fn database_url_from_parts(env: &HashMap<String, String>) -> Result<Option<String>, SettingsError> {
    let group = ["PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];
    let Some(host) = nonempty(env, "PGHOST") else {
        if group.iter().any(|v| nonempty(env, v).is_some()) {
            return Err(missing_host(&group, env, "PGHOST", "DATABASE_URL"));
        }
        return Ok(None);
    };
    let quote = crate::store::pg_connect::quote;
    let user = nonempty(env, "PGUSER").or_else(|| nonempty(env, "USER")).unwrap_or_else(|| "postgres".into());
    let mut conninfo = format!("host='{}' user='{}'", quote(&host), quote(&user));
    if let Some(port) = nonempty(env, "PGPORT") {
        if port.split(',').any(|p| p.trim().parse::<u16>().is_err()) {
            return Err(SettingsError {
                variable: "PGPORT".into(),
                reason: format!("expected a port number, got {port:?}"),
            });
        }
        conninfo.push_str(&format!(" port='{}'", quote(&port)));
    }
    if let Some(password) = env.get("PGPASSWORD").filter(|p| !p.is_empty()) {
        conninfo.push_str(&format!(" password='{}'", quote(password)));
    }
    let database = nonempty(env, "PGDATABASE").unwrap_or_else(|| user.clone());
    conninfo.push_str(&format!(" dbname='{}'", quote(&database)));
    Ok(Some(conninfo))
}

/// Percent-encoding for a URL's user name or password.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` as browsers send it in `Origin`: no path, no trailing slash.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, host)) = origin.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// A comma-separated list, blanks dropped.
fn list(raw: &str) -> Vec<String> {
    raw.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

fn typed<T: FromStr>(key: &str, raw: &str, expected: &str) -> Result<T, SettingsError> {
    raw.trim().parse().map_err(|_| SettingsError {
        variable: variable_name(key),
        reason: format!("expected {expected}, got {raw:?}"),
    })
}

/// A URL with its password replaced by `****`, safe for logs. Also for
/// values that are not quite URLs, since those end up in error messages: a
/// password with an unencoded `/`, `?`, `#` or `@` (everything up to the
/// last `@` is credentials then), no `://` (`rediss//u:pw@h`), and
/// PostgreSQL's `key=value` form (`password=…`).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        let redacted = redact_key_value(url);
        return match redacted.rfind('@') {
            Some(at) => format!("****{}", &redacted[at..]),
            None => redacted,
        };
    };
    let rest = &url[scheme_end..];
    let Some(at_index) = rest.rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at_index];
    let (user, password) = userinfo.split_once(':').map_or((userinfo, ""), |(u, p)| (u, p));
    let masked = if user.contains(['/', '?', '#']) {
        "****".to_owned()
    } else if !password.is_empty() {
        format!("{user}:****")
    } else {
        // No password: nothing to hide, and no `****` that suggests one.
        user.to_owned()
    };
    let at = if masked.is_empty() { "" } else { "@" };
    format!("{}{masked}{at}{}", &url[..scheme_end], &rest[at_index + 1..])
}

/// `host=h password='p w' dbname=d` with the password's value as `****`.
fn redact_key_value(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(at) = rest.find("password") {
        let (before, after) = rest.split_at(at + "password".len());
        out.push_str(before);
        let value = after.trim_start();
        let Some(value) = value.strip_prefix('=') else {
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            let closing = quoted.find(|c| {
                let was_escaped = escaped;
                escaped = !was_escaped && c == '\\';
                !was_escaped && c == '\''
            });
            closing.map_or(value.len(), |i| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("=****");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("max_ttl_seconds", &self.max_ttl_seconds)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_json_depth", &self.max_json_depth)
            .field("heartbeat_seconds", &self.heartbeat_seconds)
            .field("sse_heartbeat_seconds", &self.sse_heartbeat_seconds)
            .field("redis_pool_size", &self.redis_pool_size)
            .field("redis_connections", &self.redis_connections)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("database_sslmode", &self.database_sslmode)
            .field("database_sslrootcert", &self.database_sslrootcert)
            .field("database_pool_size", &self.database_pool_size)
            .field("database_timeout_ms", &self.database_timeout_ms)
            .field("persist_interval_seconds", &self.persist_interval_seconds)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_probe_ms", &self.breaker_probe_ms)
            .field("write_tokens", &format!("{} token(s)", self.write_tokens.len()))
            .field("read_tokens", &format!("{} token(s)", self.read_tokens.len()))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "****"))
            .field("cors_origins", &self.cors_origins)
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .field("shutdown_flush_seconds", &self.shutdown_flush_seconds)
            .field("cleanup_interval_seconds", &self.cleanup_interval_seconds)
            .field("cache_max_age_ms", &self.cache_max_age_ms)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .finish()
    }
}

impl Default for Settings {
    /// The defaults, ignoring the process environment and any config file.
    fn default() -> Self {
        Self::from_env_without_file(HashMap::new()).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_platform_variables() {
        let s = Settings::from_env_without_file(env(&[("PORT", "9000"), ("PROGRESS_TTL_SECONDS", "60")])).unwrap();
        assert_eq!((s.port, s.ttl_seconds, s.max_body_bytes), (9000, 60, 65536));
        assert!(s.redis_url.is_none());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = Settings::from_env_without_file(env(&[("PROGRESS_TTL_SECONDS", "soon")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid setting PROGRESS_TTL_SECONDS: expected a whole number of seconds, got "soon""#
        );
        let e = Settings::from_env_without_file(env(&[("PORT", "99999")])).unwrap_err();
        assert_eq!(e.variable, "PORT");
        let e = Settings::from_env_without_file(env(&[("PROGRESS_LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(e.variable, "PROGRESS_LOG_FORMAT");
        let e = Settings::from_env_without_file(env(&[("REDIS_URL", "http://u:secret@h")])).unwrap_err();
        assert_eq!(e.variable, "REDIS_URL");
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn the_file_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("progressd-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "ttl_seconds = 120\nheartbeat_seconds = 5\n").unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::from_env(env(&[("PROGRESS_CONFIG", p), ("PROGRESS_HEARTBEAT_SECONDS", "7")])).unwrap();
        assert_eq!((s.ttl_seconds, s.heartbeat_seconds), (120, 7));
    }

    #[test]
    fn cors_origins_are_origins() {
        let s = Settings::from_env_without_file(env(&[(
            "PROGRESS_CORS_ORIGINS",
            "https://a.example, http://localhost:3000,*",
        )]))
        .unwrap();
        assert_eq!(s.cors_origins, ["https://a.example", "http://localhost:3000", "*"]);
        for bad in ["a.example", "https://a.example/", "https://a.example/app", "https://"] {
            let e = Settings::from_env_without_file(env(&[("PROGRESS_CORS_ORIGINS", bad)])).unwrap_err();
            assert_eq!(e.variable, "PROGRESS_CORS_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn redis_url_from_the_variables_hosts_set() {
        let url = |pairs: &[(&str, &str)]| Settings::from_env_without_file(env(pairs)).map(|s| s.redis_url);
        assert_eq!(url(&[("REDIS_HOST", "cache.internal")]).unwrap().as_deref(), Some("redis://cache.internal:6379"));
        let full = url(&[
            ("REDIS_HOST", "fd12::1"),
            ("REDIS_PORT", "6380"),
            ("REDIS_USERNAME", "default"),
            ("REDIS_PASSWORD", "p@ss:w/rd"),
            ("REDIS_TLS", "true"),
        ]);
        assert_eq!(full.unwrap().as_deref(), Some("rediss://default:p%40ss%3Aw%2Frd@[fd12::1]:6380"));
        let password_only = url(&[("REDIS_HOST", "h"), ("REDIS_PASSWORD", "pw"), ("REDIS_TLS", "false")]);
        assert_eq!(password_only.unwrap().as_deref(), Some("redis://:pw@h:6379"));
        // A URL wins; Kubernetes's REDIS_PORT=tcp://… is not ours.
        let both = url(&[("REDIS_URL", "redis://u:1"), ("REDIS_HOST", "nowhere.invalid")]);
        assert_eq!(both.unwrap().as_deref(), Some("redis://u:1"));
        assert_eq!(url(&[("REDIS_PORT", "tcp://10.0.0.1:6379")]).unwrap(), None);
        assert_eq!(url(&[]).unwrap(), None);
        // Half a group names what is missing, never the password.
        let e = url(&[("REDIS_PASSWORD", "hunter2")]).unwrap_err();
        assert_eq!(e.variable, "REDIS_HOST");
        assert!(
            e.to_string().contains("REDIS_PASSWORD is set but REDIS_HOST is not") && !e.to_string().contains("hunter2"),
            "{e}"
        );
        assert_eq!(url(&[("REDIS_HOST", "h"), ("REDIS_PORT", "x")]).unwrap_err().variable, "REDIS_PORT");
        assert_eq!(url(&[("REDIS_HOST", "h"), ("REDIS_TLS", "maybe")]).unwrap_err().variable, "REDIS_TLS");
    }

    #[test]
    fn database_url_from_libpq_variables() {
        let load = |pairs: &[(&str, &str)]| Settings::from_env_without_file(env(pairs));
        let s = load(&[
            ("PGHOST", "db.railway.internal"),
            ("PGPORT", "5433"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "it's"),
            ("PGDATABASE", "railway"),
            ("PGSSLMODE", "require"),
        ])
        .unwrap();
        assert_eq!(
            s.database_url.as_deref(),
            Some(r"host='db.railway.internal' user='app' port='5433' password='it\'s' dbname='railway'")
        );
        assert_eq!((s.database_url_variable, s.database_sslmode.as_deref()), ("PGHOST", Some("require")));
        assert!(!format!("{s:?}").contains("it\\'s"), "the password stays out of Debug");
        let s = load(&[("PGHOST", "/var/run/postgresql"), ("PGUSER", "u")]).unwrap();
        assert_eq!(s.database_url.as_deref(), Some("host='/var/run/postgresql' user='u' dbname='u'"));
        let s = load(&[("DATABASE_URL", "postgres://a@b/c"), ("PGHOST", "elsewhere")]).unwrap();
        assert_eq!((s.database_url.as_deref(), s.database_url_variable), (Some("postgres://a@b/c"), "DATABASE_URL"));
        let e = load(&[("PGPASSWORD", "hunter2"), ("PGUSER", "u")]).unwrap_err();
        assert_eq!(e.variable, "PGHOST");
        assert!(
            e.to_string().contains("PGUSER, PGPASSWORD are set but PGHOST is not")
                && !e.to_string().contains("hunter2"),
            "{e}"
        );
        assert_eq!(load(&[("PGHOST", "h"), ("PGPORT", "five")]).unwrap_err().variable, "PGPORT");
        // Alone, PGSSLMODE is a default for a URL, not a database.
        assert_eq!(load(&[("PGSSLMODE", "require")]).unwrap().database_url, None);
    }

    #[test]
    fn host_is_unset_by_default() {
        assert_eq!(Settings::default().host, None);
        let s = Settings::from_env_without_file(env(&[("PROGRESS_HOST", "::1")])).unwrap();
        assert_eq!(s.host, Some("::1".parse().unwrap()));
        let e = Settings::from_env_without_file(env(&[("PROGRESS_HOST", "localhost")])).unwrap_err();
        assert_eq!(e.variable, "PROGRESS_HOST");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://default:hunter2@db:6379/0"), "redis://default:****@db:6379/0");
        assert_eq!(redact_url("redis://:hunter2@db"), "redis://:****@db");
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
        // No password, no `****`.
        assert_eq!(redact_url("redis://default@db:6379"), "redis://default@db:6379");
        assert_eq!(redact_url("rediss://:@db:6379"), "rediss://db:6379");
        // Passwords that are not URL-encoded, typos, and PostgreSQL's key=value form.
        assert_eq!(redact_url("redis://default:hun/ter2@db:6379/0"), "redis://default:****@db:6379/0");
        assert_eq!(
            redact_url("postgres://u:hun?t#er@2@db/x?sslmode=disable"),
            "postgres://u:****@db/x?sslmode=disable"
        );
        assert_eq!(redact_url("redis://a/b@db"), "redis://****@db");
        assert_eq!(redact_url("rediss//default:hunter2@db:6379"), "****@db:6379");
        assert_eq!(redact_url("host=db user=u password=hunter2 dbname=x"), "host=db user=u password=**** dbname=x");
        assert_eq!(redact_url("password = 'hun ter\\' 2' host=db"), "password=**** host=db");
        assert_eq!(redact_url("host=db password='hunter2'"), "host=db password=****");
        assert_eq!(redact_url("host=db password=hun@ter2 user=u"), "host=db password=**** user=u");
        assert_eq!(redact_url("rediss//u:hunter2@db?x=1"), "****@db?x=1");
        let s = Settings::from_env_without_file(env(&[("REDIS_URL", "redis://u:hunter2@h:1")])).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
