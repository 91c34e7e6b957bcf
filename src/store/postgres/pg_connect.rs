//! A libpq connection string (URL or `key=value` form) turned into what
//! tokio-postgres and rustls need, keeping libpq's meaning of `sslmode`:
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `allow`, `prefer` (default) | when the server offers it | no |
//! | `require` | yes | no; with `sslrootcert`, as `verify-ca` (as libpq does) |
//! | `verify-ca` | yes | signed by a trusted root |
//! | `verify-full` | yes | signed by a trusted root, for the host connected to |
//!
//! Trusted roots: `sslrootcert` (a PEM file) or `PGSSLROOTCERT`; without
//! either, or with `sslrootcert=system`, the system's. tokio-postgres knows
//! only `disable`, `prefer` and `require`, and refuses parameters it does
//! not know; those (`sslcert`, `gssencmode`, ...) are dropped and named, so
//! that the caller can warn once instead of failing to start.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, Verify};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// libpq tries plain text first; here it is `prefer`.
    Allow,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified (verified as `verify-ca` when a root file is named).
    Require,
    /// TLS, chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    fn for_tokio_postgres(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow | Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }

    /// The name libpq gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Parameters tokio-postgres reads itself.
const KNOWN: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// A connection string ready for the pool.
pub struct PgConnect {
    /// What tokio-postgres connects with.
    pub config: tokio_postgres::Config,
    /// The TLS it uses when `sslmode` asks for TLS.
    pub tls: MakeRustlsConnect,
    /// The `sslmode` in force.
    pub mode: SslMode,
    /// How the server's certificate is checked.
    pub verify: Verify,
    /// Parameters that were dropped because nothing here reads them.
    pub ignored: Vec<String>,
}

/// `url` (or a `key=value` string) read as libpq would, with
/// `PGSSLMODE` and `PGSSLROOTCERT` (`env_mode`, `env_root`) filling in what
/// it does not say. The error names the bad part, never the password.
pub fn parse(url: &str, env_mode: Option<&str>, env_root: Option<&str>) -> Result<PgConnect, String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let params = if is_url { url_params(url)? } else { key_values(url)? };
    let mut mode = None;
    let mut root = None;
    let mut ignored = Vec::new();
    let mut kept = Vec::new();
    for (key, value, raw) in params {
        match key.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root = Some(value),
            k if KNOWN.contains(&k) => kept.push((key, value, raw)),
            _ => ignored.push(key),
        }
    }
    let mode = match (mode, env_mode.map(str::trim).filter(|m| !m.is_empty())) {
        (Some(mode), _) => mode,
        (None, Some(env)) => SslMode::parse(env).map_err(|e| format!("PGSSLMODE: {e}"))?,
        (None, None) => SslMode::Prefer,
    };
    let root = root.or_else(|| env_root.map(str::to_owned)).filter(|r| !r.is_empty());
    let verify = match mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::Require if root.is_some() => Verify::Chain,
        _ => Verify::Nothing,
    };
    let rebuilt = if is_url { rebuild_url(url, &kept, mode) } else { rebuild_key_values(&kept, mode) };
    let config = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    let roots = match verify {
        Verify::Nothing => None,
        _ => {
            let file = root.as_deref().filter(|r| *r != "system").map(PathBuf::from);
            Some(tls::roots(file.as_deref()).map_err(|e| format!("sslmode={}: {e}", mode.as_str()))?)
        }
    };
    let tls = MakeRustlsConnect::new(tls::client_config(verify, roots)?);
    Ok(PgConnect { config, tls, mode, verify, ignored })
}

/// `(key, decoded value, raw text)` of a URL's query.
type Param = (String, String, String);

fn url_params(url: &str) -> Result<Vec<Param>, String> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(Vec::new());
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| format!("URL parameter {:?} has no value", decode(pair)))?;
            Ok((decode(key), decode(value), pair.to_owned()))
        })
        .collect()
}

fn rebuild_url(url: &str, kept: &[Param], mode: SslMode) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let mut out = format!("{base}?sslmode={}", mode.for_tokio_postgres());
    for (_, _, raw) in kept {
        out.push('&');
        out.push_str(raw);
    }
    out
}

/// Percent-decoding of a URL component (`+` is a space only in queries of
/// forms, which these are not).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key = value` pairs; a value may be single-quoted, with `\'` and `\\`.
fn key_values(text: &str) -> Result<Vec<Param>, String> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("connection parameter {key:?} has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        params.push((key, value, String::new()));
    }
}

fn rebuild_key_values(kept: &[Param], mode: SslMode) -> String {
    let mut out = format!("sslmode={}", mode.for_tokio_postgres());
    for (key, value, _) in kept {
        out.push_str(&format!(" {key}='{}'", quote(value)));
    }
    out
}

/// A value for inside single quotes.
pub fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(url: &str) -> PgConnect {
        crate::tls::install_provider();
        parse(url, None, None).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn sslmode_keeps_libpq_meaning() {
        let c = connect("postgres://u:p@db.example:5433/app");
        assert_eq!((c.mode, c.verify), (SslMode::Prefer, Verify::Nothing), "prefer is the default");
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        assert_eq!(c.config.get_dbname(), Some("app"));
        assert_eq!(c.config.get_ports(), [5433]);
        let c = connect("postgres://u@h/app?sslmode=require");
        assert_eq!((c.mode, c.verify), (SslMode::Require, Verify::Nothing));
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = connect("postgresql://u@h/app?sslmode=verify-full");
        assert_eq!((c.mode, c.verify), (SslMode::VerifyFull, Verify::Full));
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = connect("postgres://u@h/app?sslmode=disable");
        assert_eq!(c.config.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        let e = parse("postgres://u:secret@h/app?sslmode=always", None, None).err().unwrap();
        assert!(e.contains("always") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn the_environment_fills_in_what_the_url_does_not_say() {
        crate::tls::install_provider();
        let c = parse("postgres://u@h/app", Some("require"), None).unwrap();
        assert_eq!(c.mode, SslMode::Require);
        let c = parse("postgres://u@h/app?sslmode=disable", Some("verify-full"), None).unwrap();
        assert_eq!(c.mode, SslMode::Disable, "the URL wins");
        assert!(parse("postgres://u@h/app", Some("bogus"), None).err().unwrap().starts_with("PGSSLMODE"));
        let missing = "/nonexistent/progressd-ca.pem";
        let e = parse("postgres://u@h/app?sslmode=verify-ca", None, Some(missing)).err().unwrap();
        assert!(e.contains(missing), "PGSSLROOTCERT is read: {e}");
        let e = parse(&format!("postgres://u@h/app?sslmode=require&sslrootcert={missing}"), None, None).err().unwrap();
        assert!(e.contains("cannot read"), "require with a root file verifies the chain: {e}");
    }

    #[test]
    fn unknown_parameters_are_dropped_and_named() {
        let c = connect("postgres://u:p%40ss@h/app?sslmode=require&gssencmode=disable&application_name=x&sslcert=%2Fa");
        assert_eq!(c.ignored, ["gssencmode", "sslcert"]);
        assert_eq!(c.config.get_application_name(), Some("x"));
        assert_eq!(c.config.get_password(), Some(&b"p@ss"[..]));
        let c = connect("host=/var/run/postgresql user=u password='it\\'s x' dbname=app sslmode=disable krbsrvname=x");
        assert_eq!(c.ignored, ["krbsrvname"]);
        assert_eq!(c.config.get_password(), Some(&b"it's x"[..]));
        assert_eq!(c.config.get_dbname(), Some("app"));
        assert!(parse("host=h password='open", None, None).err().unwrap().contains("closing quote"));
    }
}
