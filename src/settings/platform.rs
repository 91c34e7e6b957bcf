//! The variables hosts set instead of a URL: Redis's parts (`REDIS_HOST`
//! and its group) and libpq's (`PGHOST` and its group). A URL always wins;
//! half a group stops start-up naming what is missing, never the password.

use std::collections::HashMap;

use super::SettingsError;

/// A variable, trimmed; blank counts as unset.
pub(super) fn nonempty(env: &HashMap<String, String>, name: &str) -> Option<String> {
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
pub(super) fn redis_url_from_parts(env: &HashMap<String, String>) -> Result<Option<String>, SettingsError> {
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
pub(super) fn database_url_from_parts(env: &HashMap<String, String>) -> Result<Option<String>, SettingsError> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Settings;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
}
