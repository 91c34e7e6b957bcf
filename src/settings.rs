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
    /// Address to listen on (`PROGRESS_HOST`, default 0.0.0.0).
    pub host: IpAddr,
    /// Port to listen on (`PORT`, default 8080).
    pub port: u16,
    /// Redis URL (`REDIS_URL`); unset means the in-process store.
    pub redis_url: Option<String>,
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
    /// PostgreSQL URL (`DATABASE_URL`); unset means no durable tier.
    pub database_url: Option<String>,
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
    ("host", Some("0.0.0.0"), "address to listen on"),
    ("port", Some("8080"), "port to listen on"),
    ("redis_url", None, "Redis URL; unset keeps records in process memory"),
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
    ("database_url", None, "PostgreSQL URL; unset means no durable tier"),
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
    ("cleanup_interval_seconds", Some("300"), "how often expired data is purged in the background"),
    ("cache_max_age_ms", Some("30000"), "longest a cached read is served without asking Redis; 0 turns the cache off"),
    ("cache_max_entries", Some("100000"), "most records held in the read cache"),
    ("log_format", Some("pretty"), "pretty or json"),
    ("log_level", Some("info"), "log filter (RUST_LOG wins when set)"),
];

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
            .add_source(Environment::with_prefix("PROGRESS").prefix_separator("_").source(Some(env)))
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
        let settings = Settings {
            host: typed("host", &parse("host")?, "an IP address such as 0.0.0.0 or ::")?,
            port: typed("port", &parse("port")?, "a port number from 0 to 65535")?,
            redis_url: read("redis_url")?.filter(|u| !u.trim().is_empty()),
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
            database_url: read("database_url")?.filter(|u| !u.trim().is_empty()),
            database_pool_size: typed("database_pool_size", &parse("database_pool_size")?, "a whole number")?,
            database_timeout_ms: typed("database_timeout_ms", &parse("database_timeout_ms")?, "a whole number of milliseconds")?,
            persist_interval_seconds: typed("persist_interval_seconds", &parse("persist_interval_seconds")?, "a whole number of seconds")?,
            breaker_failures: typed("breaker_failures", &parse("breaker_failures")?, "a whole number")?,
            breaker_probe_ms: typed("breaker_probe_ms", &parse("breaker_probe_ms")?, "a whole number of milliseconds")?,
            write_tokens: list(&parse("write_tokens")?),
            read_tokens: list(&parse("read_tokens")?),
            admin_token: read("admin_token")?.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            cors_origins: list(&parse("cors_origins")?),
            request_timeout_seconds: typed("request_timeout_seconds", &parse("request_timeout_seconds")?, "a whole number of seconds")?,
            cleanup_interval_seconds: typed("cleanup_interval_seconds", &parse("cleanup_interval_seconds")?, "a whole number of seconds")?,
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
            return bad("ttl_seconds", format!("must be from 1 to PROGRESS_MAX_TTL_SECONDS ({})", self.max_ttl_seconds));
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
            return bad("cors_origins", format!("{origin:?} is not an origin such as https://app.example.com (scheme and host, optional port, no path)"));
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
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains("host=")) {
                return bad("database_url", format!("expected a postgres:// URL, got {}", redact_url(url)));
            }
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
                return bad("redis_url", format!("expected a redis:// or rediss:// URL, got {}", redact_url(url)));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map(|_| ())
            .or_else(|e| bad("log_level", e.to_string()))
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
    let Some(at) = rest.rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if user.contains(['/', '?', '#']) {
        "****".to_owned()
    } else if userinfo.contains(':') || !user.is_empty() {
        format!("{user}:****")
    } else {
        String::new()
    };
    format!("{}{}@{}", &url[..scheme_end], masked, &rest[at + 1..])
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
        assert_eq!(e.to_string(), r#"invalid setting PROGRESS_TTL_SECONDS: expected a whole number of seconds, got "soon""#);
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
        let s = Settings::from_env_without_file(env(&[("PROGRESS_CORS_ORIGINS", "https://a.example, http://localhost:3000,*")])).unwrap();
        assert_eq!(s.cors_origins, ["https://a.example", "http://localhost:3000", "*"]);
        for bad in ["a.example", "https://a.example/", "https://a.example/app", "https://"] {
            let e = Settings::from_env_without_file(env(&[("PROGRESS_CORS_ORIGINS", bad)])).unwrap_err();
            assert_eq!(e.variable, "PROGRESS_CORS_ORIGINS", "{bad}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://default:hunter2@db:6379/0"), "redis://default:****@db:6379/0");
        assert_eq!(redact_url("redis://:hunter2@db"), "redis://:****@db");
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
        // Passwords that are not URL-encoded, typos, and PostgreSQL's key=value form.
        assert_eq!(redact_url("redis://default:hun/ter2@db:6379/0"), "redis://default:****@db:6379/0");
        assert_eq!(redact_url("postgres://u:hun?t#er@2@db/x?sslmode=disable"), "postgres://u:****@db/x?sslmode=disable");
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
