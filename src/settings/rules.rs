//! What a value must be beyond its type: the ranges and the rules the
//! `settings!` table names. Each returns the reason only; the table adds the
//! variable, so every message reads `invalid setting VARIABLE: reason`.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use super::Settings;
use crate::secrets::redact_url;

/// "must be at least 1", "must be from 1 to 64".
pub(super) fn within<T: PartialOrd + fmt::Display>(value: &T, range: impl RangeBounds<T>) -> Result<(), String> {
    if range.contains(value) {
        return Ok(());
    }
    Err(match (range.start_bound(), range.end_bound()) {
        (Bound::Included(low), Bound::Unbounded) => format!("must be at least {low}"),
        (Bound::Included(low), Bound::Included(high)) => format!("must be from {low} to {high}"),
        (Bound::Unbounded, Bound::Included(high)) => format!("must be at most {high}"),
        _ => "is out of range".to_owned(),
    })
}

/// A record's default TTL is one a client could ask for.
pub(super) fn ttl_within_max(s: &Settings) -> Result<(), String> {
    within(&s.ttl_seconds, 1..=s.max_ttl_seconds)
        .map_err(|_| format!("must be from 1 to PROGRESS_MAX_TTL_SECONDS ({})", s.max_ttl_seconds))
}

/// Each signing key is `kid:secret` with a long enough secret, each kid once.
pub(super) fn signing_keys(s: &Settings) -> Result<(), String> {
    crate::tokens::parse_entries(&s.signing_keys).map(|_| ())
}

/// `PROGRESS_WEBHOOK_URL` is an http(s) URL.
pub(super) fn webhook_url(s: &Settings) -> Result<(), String> {
    match &s.webhook_url {
        Some(url) => crate::domain::parse_webhook_url(url).map(drop).map_err(|m| format!("{}: {m}", redact_url(url))),
        None => Ok(()),
    }
}

/// `PROGRESS_WEBHOOK_EVENTS` names events.
pub(super) fn webhook_events(s: &Settings) -> Result<(), String> {
    crate::domain::EventSet::parse_list(&s.webhook_events).map(drop)
}

/// A webhook secret that the Standard Webhooks libraries read, set whenever
/// a webhook can be sent.
pub(super) fn webhook_secret(s: &Settings) -> Result<(), String> {
    match &s.webhook_secret {
        Some(secret) => crate::webhooks::check_secret(secret),
        None if s.webhook_url.is_some() || !s.webhook_allowed_hosts.is_empty() => Err(
            "is required when PROGRESS_WEBHOOK_URL or PROGRESS_WEBHOOK_ALLOWED_HOSTS is set (whsec_ and base64 of 24 to 64 random bytes, e.g. from `openssl rand -base64 32`)".into(),
        ),
        None => Ok(()),
    }
}

/// Multiplexed connections come out of the pool.
pub(super) fn connections_within_pool(s: &Settings) -> Result<(), String> {
    if s.redis_connections > s.redis_pool_size {
        return Err("must not exceed PROGRESS_REDIS_POOL_SIZE".into());
    }
    Ok(())
}

/// Each CORS origin is `*` or an origin as browsers send it.
pub(super) fn origins(s: &Settings) -> Result<(), String> {
    match s.cors_origins.iter().find(|o| *o != "*" && !is_origin(o)) {
        Some(origin) => Err(format!(
            "{origin:?} is not an origin such as https://app.example.com (scheme and host, optional port, no path)"
        )),
        None => Ok(()),
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

/// A PostgreSQL URL or libpq `key=value` string, not some other database's URL.
pub(super) fn postgres_scheme(s: &Settings) -> Result<(), String> {
    match &s.database_url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains("host=")) => {
            Err(format!("expected a postgres:// URL, got {}", redact_url(url)))
        }
        _ => Ok(()),
    }
}

/// A Redis URL (TCP, TLS or a Unix socket).
pub(super) fn redis_scheme(s: &Settings) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    match &s.redis_url {
        Some(url) if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) => {
            Err(format!("expected a redis:// or rediss:// URL, got {}", redact_url(url)))
        }
        _ => Ok(()),
    }
}

/// The CA file exists now, rather than at the first TLS connection.
pub(super) fn ca_file_readable(s: &Settings) -> Result<(), String> {
    match &s.redis_ca_file {
        Some(file) => std::fs::metadata(file).map(|_| ()).map_err(|e| format!("cannot read {file}: {e}")),
        None => Ok(()),
    }
}

/// A filter `tracing` understands.
pub(super) fn log_filter(s: &Settings) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(&s.log_level).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Settings;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn out_of_range_values_say_what_is_allowed() {
        let error = |pairs: &[(&str, &str)]| Settings::from_env_without_file(env(pairs)).unwrap_err().to_string();
        assert_eq!(
            error(&[("PROGRESS_MAX_TTL_SECONDS", "0")]),
            "invalid setting PROGRESS_MAX_TTL_SECONDS: must be at least 1"
        );
        assert_eq!(
            error(&[("PROGRESS_TTL_SECONDS", "0")]),
            "invalid setting PROGRESS_TTL_SECONDS: must be from 1 to PROGRESS_MAX_TTL_SECONDS (2592000)"
        );
        assert_eq!(
            error(&[("PROGRESS_TTL_SECONDS", "61"), ("PROGRESS_MAX_TTL_SECONDS", "60")]),
            "invalid setting PROGRESS_TTL_SECONDS: must be from 1 to PROGRESS_MAX_TTL_SECONDS (60)"
        );
        assert_eq!(
            error(&[("PROGRESS_MAX_BODY_BYTES", "1")]),
            "invalid setting PROGRESS_MAX_BODY_BYTES: must be at least 2"
        );
        assert_eq!(
            error(&[("PROGRESS_MAX_JSON_DEPTH", "129")]),
            "invalid setting PROGRESS_MAX_JSON_DEPTH: must be from 1 to 128"
        );
        assert_eq!(
            error(&[("PROGRESS_REDIS_CONNECTIONS", "17")]),
            "invalid setting PROGRESS_REDIS_CONNECTIONS: must not exceed PROGRESS_REDIS_POOL_SIZE"
        );
        assert_eq!(
            error(&[("PROGRESS_REDIS_CONNECTIONS", "0"), ("PROGRESS_REDIS_POOL_SIZE", "0")]),
            "invalid setting PROGRESS_REDIS_POOL_SIZE: must be at least 1"
        );
        assert_eq!(
            error(&[("DATABASE_URL", "mysql://u:pw@h/db")]),
            "invalid setting DATABASE_URL: expected a postgres:// URL, got mysql://u:****@h/db"
        );
        assert!(
            error(&[("PROGRESS_REDIS_CA_FILE", "/nonexistent/ca.pem")])
                .starts_with("invalid setting PROGRESS_REDIS_CA_FILE: cannot read /nonexistent/ca.pem: ")
        );
        assert!(error(&[("PROGRESS_LOG_LEVEL", "progressd=loud")]).starts_with("invalid setting PROGRESS_LOG_LEVEL: "));
        for zero in ["HEARTBEAT_SECONDS", "BREAKER_FAILURES", "CLEANUP_INTERVAL_SECONDS", "REQUEST_TIMEOUT_SECONDS"] {
            let variable = format!("PROGRESS_{zero}");
            assert_eq!(error(&[(&variable, "0")]), format!("invalid setting {variable}: must be at least 1"));
        }
        for zero_is_fine in ["SHUTDOWN_FLUSH_SECONDS", "CACHE_MAX_AGE_MS", "CACHE_MAX_ENTRIES"] {
            assert!(Settings::from_env_without_file(env(&[(&format!("PROGRESS_{zero_is_fine}"), "0")])).is_ok());
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_and_cidr_blocks() {
        let read = |value: &str| Settings::from_env_without_file(env(&[("PROGRESS_TRUSTED_PROXIES", value)]));
        let got = read(" 10.0.0.0/8, 192.0.2.7,fd00::/8 ,").unwrap().trusted_proxies;
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
        assert_eq!(
            read("10.0.0.0/8, 10.0.0.0/33").unwrap_err().to_string(),
            "invalid setting PROGRESS_TRUSTED_PROXIES: \"10.0.0.0/33\" is not an IP address or CIDR block \
             such as 10.0.0.0/8, 192.0.2.7 or fd00::/8"
        );
        assert!(
            read("proxy.internal").unwrap_err().to_string().starts_with("invalid setting PROGRESS_TRUSTED_PROXIES")
        );
        let defaults = Settings::from_env_without_file(env(&[])).unwrap();
        assert_eq!((defaults.address_rate_per_second, defaults.trusted_proxies.len()), (0, 0), "off by default");
    }
}
