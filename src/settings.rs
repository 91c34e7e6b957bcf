//! Typed settings: defaults < optional `progressd.toml` (or the file named by
//! `PROGRESS_CONFIG`) < environment. The platform's own variables (`PORT`,
//! `REDIS_URL`, `DATABASE_URL`) are read as they are; everything else is
//! `PROGRESS_*`, and in the file the key is the field's name.
//!
//! Each setting is declared once, in the `settings!` table below: field,
//! type, variable, default, how its text is read, its allowed range or rule,
//! how it shows if it is a secret, and its doc. From that one entry follow the
//! [`Settings`] field and its doc, loading, validation, the redacted `Debug`,
//! [`SETTINGS`] and [`known_variables`], `.env.example` ([`env_example`]) and
//! the rows of the README's table ([`readme_rows`]); `tests/docs.rs` fails
//! when either document differs from what the table renders.
//!
//! Every value is read as text and parsed here, so a bad value stops
//! start-up with one line that names the variable to fix.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use config::{File, FileFormat};
use ipnet::IpNet;

pub use crate::secrets::redact_url;
use crate::secrets::{show_count, show_masked, show_url};

mod documents;
mod platform;
mod read;
mod rules;

pub use self::documents::{env_example, readme_rows};
use self::platform::{database_url_from_parts, redis_url_from_parts};
use self::read::{Name, Source, derive, list, networks, parsed, parsed_if_set, path, text, token, url_or};
use self::rules::{
    ca_file_readable, connections_within_pool, log_filter, origins, postgres_scheme, redis_scheme, signing_keys,
    ttl_within_max, webhook_events, webhook_secret, webhook_url, within,
};

/// Declares the settings. Each entry reads:
///
/// ```text
/// /// Doc: the field's rustdoc, the README's meaning, the .env.example comment.
/// field: Type {
///     var: "VARIABLE",    // the environment variable; the file key is `field`
///     default: "text",    // or `unset: "example"` when there is no default
///     read: reader,       // text to Type; a bad value names VARIABLE
///     range: 1..=64,      // optional: the values allowed
///     rule: function,     // optional: a rule over the whole Settings
///     secret: show,       // optional: how it shows in Debug
///     group: GROUP,       // optional: the variables hosts set that build it
/// }
/// ```
///
/// `derived { … }` lists the fields that are not settings of their own but
/// follow from the variables (which variable a URL came from, libpq's TLS
/// defaults); they have no entry in the documents.
macro_rules! settings {
    (@option) => { None };
    (@option $value:expr) => { Some($value) };
    (@show $value:expr) => { $value };
    (@show $value:expr, $secret:expr) => { $secret(&$value) };
    (@variable $var:literal) => { concat!("Variable `", $var, "`, unset by default.") };
    (@variable $var:literal $default:literal) => { concat!("Variable `", $var, "`, default \"", $default, "\".") };
    (
        $(
            $(#[doc = $doc:literal])+
            $field:ident: $ty:ty {
                var: $var:literal
                $(, default: $default:literal)?
                $(, unset: $example:literal)?
                , read: $read:expr
                $(, range: $range:expr)?
                $(, rule: $rule:expr)?
                $(, secret: $secret:expr)?
                $(, group: $group:ident)?
                $(,)?
            }
        )+
        derived {
            $(
                $(#[doc = $derived_doc:literal])+
                $derived:ident: $derived_ty:ty = $derive:expr;
            )+
        }
    ) => {
        /// Everything the service can be told at start-up.
        #[derive(Clone)]
        pub struct Settings {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = settings!(@variable $var $($default)?)]
                pub $field: $ty,
            )+
            $(
                $(#[doc = $derived_doc])+
                pub $derived: $derived_ty,
            )+
        }

        /// Every setting as the documents list it, in the order of [`Settings`].
        pub const DECLARATIONS: &[Declaration] = &[
            $(
                Declaration {
                    key: stringify!($field),
                    variable: $var,
                    default: settings!(@option $($default)?),
                    example: settings!(@option $($example)?),
                    doc: concat!($($doc),+).trim_ascii_start(),
                    group: settings!(@option $(&$group)?),
                },
            )+
        ];

        /// Each setting: key, default (`None`: optional), its doc.
        pub const SETTINGS: &[(&str, Option<&str>, &str)] = &[
            $((stringify!($field), settings!(@option $($default)?), concat!($($doc),+).trim_ascii_start()),)+
        ];

        impl Settings {
            /// Reads every field from `source`, in the order of the table.
            fn read(source: &Source) -> Result<Self, SettingsError> {
                Ok(Self {
                    $($field: ($read)(source, Name { key: stringify!($field), variable: $var })?,)+
                    $($derived: derive(source, $derive),)+
                })
            }

            /// Each value in its range first, then the rules that look at other
            /// settings or outside (files, URL schemes).
            fn check(&self) -> Result<(), SettingsError> {
                $($(within(&self.$field, $range).map_err(|reason| invalid($var, reason))?;)?)+
                $($(($rule)(self).map_err(|reason| invalid($var, reason))?;)?)+
                Ok(())
            }
        }

        impl fmt::Debug for Settings {
            /// Every field, secrets masked.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut out = f.debug_struct("Settings");
                $(out.field(stringify!($field), &settings!(@show self.$field $(, $secret)?));)+
                $(out.field(stringify!($derived), &self.$derived);)+
                out.finish()
            }
        }
    };
}

const SECONDS: &str = "a whole number of seconds";
const MILLISECONDS: &str = "a whole number of milliseconds";
const WHOLE: &str = "a whole number";

settings! {
    /// Address to listen on; unset: `::` dual-stack (IPv4 mapped), or
    /// `0.0.0.0` where the machine has no IPv6.
    host: Option<IpAddr> {
        var: "PROGRESS_HOST",
        unset: "::",
        read: parsed_if_set("an IP address such as 0.0.0.0 or ::"),
    }
    /// Port to listen on.
    port: u16 { var: "PORT", default: "8080", read: parsed("a port number from 0 to 65535") }
    /// Redis URL (`rediss://` for TLS; `rediss://…/#insecure` skips
    /// verification); unset: built from `REDIS_HOST` and its group, else
    /// records stay in process memory (lost on exit).
    redis_url: Option<String> {
        var: "REDIS_URL",
        unset: "redis://default:password@localhost:6379/0",
        read: url_or(redis_url_from_parts),
        rule: redis_scheme,
        secret: show_url,
        group: REDIS_PARTS,
    }
    /// PEM file of the CA that signed a `rediss://` server's certificate,
    /// instead of the system's roots.
    redis_ca_file: Option<String> {
        var: "PROGRESS_REDIS_CA_FILE",
        unset: "/etc/progressd/redis-ca.pem",
        read: path,
        rule: ca_file_readable,
    }
    /// Prefix of every Redis key: records live at `{prefix}progress:{id}`.
    key_prefix: String { var: "PROGRESS_KEY_PREFIX", default: "", read: text }
    /// Default time a record lives after its last write, in seconds.
    ttl_seconds: u64 { var: "PROGRESS_TTL_SECONDS", default: "86400", read: parsed(SECONDS), rule: ttl_within_max }
    /// How long a deleted or expired record is remembered, in seconds:
    /// until then its id answers 410 Gone (saying deleted or expired, and
    /// when), after that 404 like an id that never existed. `0`: never 410.
    tombstone_seconds: u64 {
        var: "PROGRESS_TOMBSTONE_SECONDS",
        default: "86400",
        read: parsed(SECONDS),
        range: 0..=31_536_000,
    }
    /// Largest `ttl_seconds` a client may ask for.
    max_ttl_seconds: u64 { var: "PROGRESS_MAX_TTL_SECONDS", default: "2592000", read: parsed(SECONDS), range: 1.. }
    /// Largest request body in bytes; larger gets 413.
    max_body_bytes: usize {
        var: "PROGRESS_MAX_BODY_BYTES",
        default: "65536",
        read: parsed("a number of bytes"),
        range: 2..,
    }
    /// Deepest JSON nesting accepted in a body; deeper gets 400.
    max_json_depth: usize { var: "PROGRESS_MAX_JSON_DEPTH", default: "32", read: parsed(WHOLE), range: 1..=128 }
    /// A running record with no write for this long is reported as `stalled`.
    heartbeat_seconds: u64 { var: "PROGRESS_HEARTBEAT_SECONDS", default: "60", read: parsed(SECONDS), range: 1.. }
    /// An event stream sends a comment line after this long without an event,
    /// so proxies keep it open.
    sse_heartbeat_seconds: u64 {
        var: "PROGRESS_SSE_HEARTBEAT_SECONDS",
        default: "15",
        read: parsed(SECONDS),
        range: 1..,
    }
    /// Most Redis connections in the pool.
    redis_pool_size: usize { var: "PROGRESS_REDIS_POOL_SIZE", default: "16", read: parsed(WHOLE), range: 1.. }
    /// Multiplexed Redis connections shared by all requests.
    redis_connections: usize {
        var: "PROGRESS_REDIS_CONNECTIONS",
        default: "1",
        read: parsed(WHOLE),
        range: 1..=64,
        rule: connections_within_pool,
    }
    /// Bound on connecting to Redis and on each Redis operation, in
    /// milliseconds: what a request pays per Redis call while Redis stops
    /// answering, before the breaker opens (README, Storage).
    redis_timeout_ms: u64 { var: "PROGRESS_REDIS_TIMEOUT_MS", default: "100", read: parsed(MILLISECONDS), range: 1.. }
    /// PostgreSQL URL, the durable tier; unset: built from `PGHOST` and its
    /// group, else none (records live in the hot tier only). libpq's `sslmode`
    /// (`disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`)
    /// and `sslrootcert` keep their meaning.
    database_url: Option<String> {
        var: "DATABASE_URL",
        unset: "postgres://progressd:password@localhost:5432/progressd?sslmode=require",
        read: url_or(database_url_from_parts),
        rule: postgres_scheme,
        secret: show_url,
        group: POSTGRES_PARTS,
    }
    /// Most PostgreSQL connections in the pool.
    database_pool_size: usize { var: "PROGRESS_DATABASE_POOL_SIZE", default: "16", read: parsed(WHOLE), range: 1.. }
    /// Bound on connecting to PostgreSQL and on each query, in milliseconds.
    database_timeout_ms: u64 {
        var: "PROGRESS_DATABASE_TIMEOUT_MS",
        default: "2000",
        read: parsed(MILLISECONDS),
        range: 1..,
    }
    /// Updates reach PostgreSQL within this many seconds (creates and
    /// finishes at once).
    persist_interval_seconds: u64 {
        var: "PROGRESS_PERSIST_INTERVAL_SECONDS",
        default: "10",
        read: parsed(SECONDS),
        range: 1..,
    }
    /// Consecutive failures that open a store's circuit breaker.
    breaker_failures: u32 { var: "PROGRESS_BREAKER_FAILURES", default: "3", read: parsed(WHOLE), range: 1.. }
    /// How often an open circuit breaker probes its store, in milliseconds.
    breaker_probe_ms: u64 { var: "PROGRESS_BREAKER_PROBE_MS", default: "500", read: parsed(MILLISECONDS), range: 1.. }
    /// Bearer tokens for PUT/PATCH/DELETE, comma-separated; empty: writes are open.
    write_tokens: Vec<String> { var: "PROGRESS_WRITE_TOKENS", default: "", read: list, secret: show_count }
    /// Bearer tokens for GET, comma-separated; empty: reads are open.
    read_tokens: Vec<String> { var: "PROGRESS_READ_TOKENS", default: "", read: list, secret: show_count }
    /// Bearer token of the admin routes and listing; unset: admin routes
    /// refuse every request.
    admin_token: Option<String> { var: "PROGRESS_ADMIN_TOKEN", unset: "change-me", read: token, secret: show_masked }
    /// Keys that sign and verify scoped read tokens (HS256 JWTs), as
    /// comma-separated `kid:secret` pairs, each secret at least 32 bytes of
    /// text; the first signs, all verify (list a new key first, drop the old
    /// one once its tokens have expired); empty: no scoped tokens.
    signing_keys: Vec<String> {
        var: "PROGRESS_SIGNING_KEYS",
        default: "",
        read: list,
        rule: signing_keys,
        secret: show_count,
    }
    /// Longest lifetime `POST /tokens` and `progressd token` give a scoped
    /// token, in seconds.
    max_token_ttl_seconds: u64 {
        var: "PROGRESS_MAX_TOKEN_TTL_SECONDS",
        default: "2592000",
        read: parsed(SECONDS),
        range: 1..,
    }
    /// Requests (reads and cancel requests) per second each scoped token may
    /// make, sustained (an event stream counts once, when it opens); more get
    /// 429.
    scoped_rate_per_second: u32 {
        var: "PROGRESS_SCOPED_RATE_PER_SECOND",
        default: "10",
        read: parsed(WHOLE),
        range: 1..,
    }
    /// Most requests a scoped token may make at once; its allowance refills
    /// at the sustained rate.
    scoped_rate_burst: u32 { var: "PROGRESS_SCOPED_RATE_BURST", default: "60", read: parsed(WHOLE), range: 1.. }
    /// Requests per second each client address may make without a token,
    /// sustained (an event stream counts once, when it opens); more get 429.
    /// `0`: no limit. Requests with a static token (the app's own backend) or
    /// a scoped token (limited per token) are not counted, nor the public
    /// routes (health, metrics, the dashboard's files). Leave it off behind a
    /// proxy that is not in `PROGRESS_TRUSTED_PROXIES`: every client would
    /// share the proxy's address.
    address_rate_per_second: u32 {
        var: "PROGRESS_ADDRESS_RATE_PER_SECOND",
        default: "0",
        read: parsed(WHOLE),
    }
    /// Most requests a client address may make at once without a token; its
    /// allowance refills at `PROGRESS_ADDRESS_RATE_PER_SECOND`.
    address_rate_burst: u32 { var: "PROGRESS_ADDRESS_RATE_BURST", default: "100", read: parsed(WHOLE), range: 1.. }
    /// Proxies whose `X-Forwarded-For` is believed for the address rate
    /// limit: comma-separated addresses and CIDR blocks (`10.0.0.0/8`,
    /// `fd00::/8`). From one of them, the client is the right-most address in
    /// `X-Forwarded-For` that is not itself a trusted proxy; from any other
    /// peer, the header is ignored. Empty: the TCP peer is the client.
    trusted_proxies: Vec<IpNet> { var: "PROGRESS_TRUSTED_PROXIES", default: "", read: networks }
    /// Where every record's webhook events are sent (`http` or `https`);
    /// unset: none (records may still name their own `webhook`). Needs
    /// `PROGRESS_WEBHOOK_SECRET`.
    webhook_url: Option<String> {
        var: "PROGRESS_WEBHOOK_URL",
        unset: "https://app.example.com/hooks/progress",
        read: path,
        rule: webhook_url,
        secret: show_url,
    }
    /// The events `PROGRESS_WEBHOOK_URL` receives, comma-separated, from
    /// `progress.completed`, `progress.failed`, `progress.cancelled`,
    /// `progress.stalled` and `progress.stage`.
    webhook_events: String {
        var: "PROGRESS_WEBHOOK_EVENTS",
        default: "progress.completed,progress.failed,progress.cancelled,progress.stalled",
        read: text,
        rule: webhook_events,
    }
    /// The secret webhooks are signed with (Standard Webhooks: `whsec_`
    /// and base64 of 24 to 64 random bytes); needed when any webhook can be sent.
    webhook_secret: Option<String> {
        var: "PROGRESS_WEBHOOK_SECRET",
        unset: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        read: token,
        rule: webhook_secret,
        secret: show_masked,
    }
    /// Hosts a record's own `webhook.url` may name, comma-separated (names
    /// or addresses, without ports), or `*` for any; empty: records may
    /// name none. `PROGRESS_WEBHOOK_URL` needs no entry here.
    webhook_allowed_hosts: Vec<String> { var: "PROGRESS_WEBHOOK_ALLOWED_HOSTS", default: "", read: list }
    /// How long a webhook that fails is retried, in hours (backoff from
    /// about 5 s to at most an hour between attempts).
    webhook_retry_hours: u64 {
        var: "PROGRESS_WEBHOOK_RETRY_HOURS",
        default: "24",
        read: parsed(WHOLE),
        range: 1..=720,
    }
    /// Longest a webhook receiver may take to answer, in seconds.
    webhook_timeout_seconds: u64 {
        var: "PROGRESS_WEBHOOK_TIMEOUT_SECONDS",
        default: "10",
        read: parsed(SECONDS),
        range: 1..=60,
    }
    /// Most webhook deliveries in flight at once on each instance.
    webhook_concurrency: usize {
        var: "PROGRESS_WEBHOOK_CONCURRENCY",
        default: "16",
        read: parsed(WHOLE),
        range: 1..=1024,
    }
    /// Origins browsers may call from, comma-separated, or `*`; empty: none.
    cors_origins: Vec<String> { var: "PROGRESS_CORS_ORIGINS", default: "", read: list, rule: origins }
    /// Longest a request may take in seconds (long-polls and event streams
    /// excepted).
    request_timeout_seconds: u64 {
        var: "PROGRESS_REQUEST_TIMEOUT_SECONDS",
        default: "30",
        read: parsed(SECONDS),
        range: 1..,
    }
    /// Longest a client may take to send a request's headers, in seconds:
    /// from the connection's start for its first request, from the first
    /// byte for later ones; then the connection is closed.
    header_timeout_seconds: u64 { var: "PROGRESS_HEADER_TIMEOUT_SECONDS", default: "10", read: parsed(SECONDS), range: 1.. }
    /// A keep-alive connection with no request in progress is closed after
    /// this many seconds (keep it above the idle timeout of a proxy in front,
    /// 60 s on AWS's load balancers); event streams and long-polls are
    /// requests in progress.
    idle_timeout_seconds: u64 { var: "PROGRESS_IDLE_TIMEOUT_SECONDS", default: "75", read: parsed(SECONDS), range: 1.. }
    /// Most client connections open at once; past it a new one is answered
    /// 503 and closed at once. Lowered at start-up to what the open-file
    /// limit allows.
    max_connections: usize {
        var: "PROGRESS_MAX_CONNECTIONS",
        default: "10000",
        read: parsed(WHOLE),
        range: 1..=1_000_000,
    }
    /// Longest the SIGTERM flush of the write-behind backlog keeps trying
    /// PostgreSQL, in seconds (keep it under the host's drain time).
    shutdown_flush_seconds: u64 { var: "PROGRESS_SHUTDOWN_FLUSH_SECONDS", default: "20", read: parsed(SECONDS) }
    /// How often expired data is purged in the background, in seconds.
    cleanup_interval_seconds: u64 {
        var: "PROGRESS_CLEANUP_INTERVAL_SECONDS",
        default: "300",
        read: parsed(SECONDS),
        range: 1..,
    }
    /// Longest a cached read is served without asking Redis, in
    /// milliseconds; `0` turns the read cache off. Changes announced by any
    /// instance evict at once.
    cache_max_age_ms: u64 { var: "PROGRESS_CACHE_MAX_AGE_MS", default: "30000", read: parsed(MILLISECONDS) }
    /// Most records held in the read cache.
    cache_max_entries: usize { var: "PROGRESS_CACHE_MAX_ENTRIES", default: "100000", read: parsed(WHOLE) }
    /// Log format: `pretty` or `json`. `pretty` is coloured only on a
    /// terminal, and never with `NO_COLOR` set.
    log_format: LogFormat { var: "PROGRESS_LOG_FORMAT", default: "pretty", read: parsed("pretty or json") }
    /// Log filter such as `info` or `progressd=debug,tower_http=debug`;
    /// `RUST_LOG` wins when set. A line written while a request is served
    /// carries its `request{method uri request_id}`; filters scoped to that
    /// span (`[request]=debug`) are not supported.
    log_level: String { var: "PROGRESS_LOG_LEVEL", default: "info", read: text, rule: log_filter }

    derived {
        /// The variable `redis_url` came from, for messages.
        redis_url_variable: &'static str = |source| source.url_variable("redis_url", "REDIS_HOST");
        /// The variable `database_url` came from, for messages.
        database_url_variable: &'static str = |source| source.url_variable("database_url", "PGHOST");
        /// `sslmode` where the URL does not say (`PGSSLMODE`).
        database_sslmode: Option<String> = |source| source.nonempty("PGSSLMODE");
        /// Trusted roots where the URL names none (`PGSSLROOTCERT`).
        database_sslrootcert: Option<String> = |source| source.nonempty("PGSSLROOTCERT");
    }
}

/// The parts of a Redis URL, read when `REDIS_URL` is unset.
pub const REDIS_PARTS: VariableGroup = VariableGroup {
    doc: "When `REDIS_URL` is unset: its parts (`REDIS_PORT` defaults to 6379, `REDIS_TLS` to false). \
          A password without a host stops start-up.",
    variables: &[
        ("REDIS_HOST", "localhost"),
        ("REDIS_PORT", "6379"),
        ("REDIS_USERNAME", "default"),
        ("REDIS_PASSWORD", "password"),
        ("REDIS_TLS", "false"),
    ],
};

/// libpq's variables, read when `DATABASE_URL` is unset.
pub const POSTGRES_PARTS: VariableGroup = VariableGroup {
    doc: "When `DATABASE_URL` is unset: libpq's variables (`PGSSLMODE` and `PGSSLROOTCERT` also fill in a URL \
          that does not say).",
    variables: &[
        ("PGHOST", "localhost"),
        ("PGPORT", "5432"),
        ("PGUSER", "progressd"),
        ("PGPASSWORD", "password"),
        ("PGDATABASE", "progressd"),
        ("PGSSLMODE", "prefer"),
        ("PGSSLROOTCERT", "/etc/progressd/postgres-ca.pem"),
    ],
};

/// Variables about loading itself rather than a setting; each is listed in
/// the documents after the settings.
pub const LOADING_VARIABLES: &[VariableGroup] = &[
    VariableGroup {
        doc: "Config file to read instead of `./progressd.toml` (an error if it is missing).",
        variables: &[("PROGRESS_CONFIG", "/etc/progressd.toml")],
    },
    VariableGroup {
        doc: "Log filter that replaces `PROGRESS_LOG_LEVEL` when set.",
        variables: &[("RUST_LOG", "progressd=debug")],
    },
];

/// One setting as the documents list it.
#[derive(Debug, Clone, Copy)]
pub struct Declaration {
    /// The field of [`Settings`], and the key in the config file.
    pub key: &'static str,
    /// The environment variable.
    pub variable: &'static str,
    /// The default; `None`: unset unless given.
    pub default: Option<&'static str>,
    /// A value to show for a setting without a default.
    pub example: Option<&'static str>,
    /// What it means, one paragraph of Markdown.
    pub doc: &'static str,
    /// The variables hosts set that build it when its own is unset.
    pub group: Option<&'static VariableGroup>,
}

/// Variables read as hosts set them that are not settings of their own.
#[derive(Debug)]
pub struct VariableGroup {
    /// What they are for, one paragraph of Markdown.
    pub doc: &'static str,
    /// Each variable with a value to show.
    pub variables: &'static [(&'static str, &'static str)],
}

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

/// A setting that stops start-up; its `Display` is the one line to print.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable}: {reason}")]
pub struct SettingsError {
    /// The environment variable (or file key) to fix.
    pub variable: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(variable: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError { variable: variable.into(), reason: reason.into() }
}

/// Every environment variable the service reads.
pub fn known_variables() -> Vec<String> {
    let groups = DECLARATIONS.iter().filter_map(|d| d.group).chain(LOADING_VARIABLES);
    DECLARATIONS
        .iter()
        .map(|d| d.variable)
        .chain(groups.flat_map(|g| g.variables.iter().map(|(variable, _)| *variable)))
        .map(str::to_owned)
        .collect()
}

/// The environment variable that sets `key`.
pub fn variable_name(key: &str) -> String {
    match DECLARATIONS.iter().find(|d| d.key == key) {
        Some(d) => d.variable.to_owned(),
        None => format!("PROGRESS_{}", key.to_ascii_uppercase()),
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
        let settings = Self::read(&Source::new(env, file)?)?;
        settings.check()?;
        Ok(settings)
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

    /// How long a deleted or expired record answers 410.
    pub fn tombstone(&self) -> Duration {
        Duration::from_secs(self.tombstone_seconds)
    }

    /// The Redis timeout as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

impl Default for Settings {
    /// The defaults, ignoring the process environment and any config file.
    fn default() -> Self {
        Self::from_env_without_file(HashMap::new()).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests;
