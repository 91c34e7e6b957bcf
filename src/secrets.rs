//! Keeping secrets out of logs, errors and `Debug`: the one place that knows
//! what a password looks like in a URL or a libpq `key=value` string, and how
//! a secret setting shows when printed.
//!
//! Everything that prints a URL goes through [`redact_url`]; error messages a
//! store keeps for `/readyz` are scrubbed of [`url_password`]'s answer.

/// What a secret shows as.
pub const MASK: &str = "****";

/// A URL with its password replaced by `****`, safe for logs. Also for
/// values that are not quite URLs, since those end up in error messages: a
/// password with an unencoded `/`, `?`, `#` or `@` (everything up to the
/// last `@` is credentials then), no `://` (`rediss//u:pw@h`), and
/// PostgreSQL's `key=value` form (`password=…`).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        let redacted = redact_key_value(url);
        return match redacted.rfind('@') {
            Some(at) => format!("{MASK}{}", &redacted[at..]),
            None => redacted,
        };
    };
    let rest = &url[scheme_end..];
    let Some(at_index) = rest.rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at_index];
    let (user, password) = userinfo.split_once(':').map_or((userinfo, ""), |(u, p)| (u, p));
    let masked = if user.contains(['/', '?', '#']) {
        MASK.to_owned()
    } else if !password.is_empty() {
        format!("{user}:{MASK}")
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
        out.push('=');
        out.push_str(MASK);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// The password in a `scheme://user:password@host/…` URL, as written, or
/// in a libpq `key=value` string (`password='…'`, unquoted), so a message
/// that quotes it can be scrubbed with [`scrub`].
pub fn url_password(url: &str) -> Option<String> {
    let Some(scheme_end) = url.find("://") else { return key_value_password(url) };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password.to_owned())
}

/// The value of `password=` in a libpq `key=value` string, unquoted.
fn key_value_password(conninfo: &str) -> Option<String> {
    let mut rest = conninfo;
    while let Some(at) = rest.find("password") {
        let after = rest[at + "password".len()..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            rest = &rest[at + "password".len()..];
            continue;
        };
        let value = value.trim_start();
        let mut password = String::new();
        let mut chars = value.chars();
        if let Some(quoted) = value.strip_prefix('\'') {
            chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => password.extend(chars.next()),
                    '\'' => break,
                    c => password.push(c),
                }
            }
        } else {
            password.extend(chars.take_while(|c| !c.is_whitespace()));
        }
        return Some(password);
    }
    None
}

/// `text` with every occurrence of `secret` replaced by `****`.
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_owned() } else { text.replace(secret, MASK) }
}

/// How a URL setting shows in `Debug`: its password masked.
pub(crate) fn show_url(url: &Option<String>) -> Option<String> {
    url.as_deref().map(redact_url)
}

/// How a list of tokens shows in `Debug`: only how many there are.
pub(crate) fn show_count(tokens: &[String]) -> String {
    format!("{} token(s)", tokens.len())
}

/// How a single token shows in `Debug`: whether it is set.
pub(crate) fn show_masked(token: &Option<String>) -> Option<&'static str> {
    token.as_ref().map(|_| MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn finds_and_scrubs_passwords() {
        assert_eq!(url_password("redis://default:hunter2@h:1/0").as_deref(), Some("hunter2"));
        assert_eq!(url_password("redis://h:1"), None);
        assert_eq!(url_password("redis://u@h:1"), None);
        assert_eq!(url_password("host=h password=pw user=u").as_deref(), Some("pw"));
        assert_eq!(url_password("host='h' password = 'p w\\'s' user='u'").as_deref(), Some("p w's"));
        assert_eq!(url_password("host=h user=u"), None);
        assert_eq!(scrub("auth s3cret failed", "s3cret"), "auth **** failed");
        assert_eq!(scrub("auth failed", ""), "auth failed");
    }

    #[test]
    fn secret_settings_show_masked() {
        assert_eq!(show_url(&Some("redis://u:pw@h".into())).as_deref(), Some("redis://u:****@h"));
        assert_eq!(show_url(&None), None);
        assert_eq!(show_count(&["a".into(), "b".into()]), "2 token(s)");
        assert_eq!(show_masked(&Some("t".into())), Some("****"));
        assert_eq!(show_masked(&None), None);
    }
}
