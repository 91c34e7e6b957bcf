//! From the layers (the table's defaults < the file < the environment) to
//! typed values: where a setting's text comes from, and the readers the
//! `settings!` table names.

use std::collections::HashMap;
use std::str::FromStr;

use config::{Config, Environment, File, FileFormat};

use super::{DECLARATIONS, SettingsError, invalid, platform};

/// The layers a setting is read from: the table's defaults < the file <
/// `PROGRESS_*`; a platform variable (`PORT`, …) is read as it is and wins.
pub(super) struct Source {
    pub(super) env: HashMap<String, String>,
    config: Config,
}

/// Which setting a reader reads.
#[derive(Clone, Copy)]
pub(super) struct Name {
    pub(super) key: &'static str,
    pub(super) variable: &'static str,
}

impl Source {
    /// The layers over `env`, with `file` between the defaults and the environment.
    pub(super) fn new(
        env: HashMap<String, String>,
        file: Option<File<config::FileSourceFile, FileFormat>>,
    ) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        for d in DECLARATIONS {
            if let Some(default) = d.default {
                builder = builder.set_default(d.key, default).expect("static defaults are valid");
            }
        }
        if let Some(file) = file {
            builder = builder.add_source(file);
        }
        let config = builder
            .add_source(Environment::with_prefix("PROGRESS").prefix_separator("_").source(Some(env.clone())))
            .build()
            .map_err(|e| invalid("PROGRESS_CONFIG", e.to_string()))?;
        Ok(Self { env, config })
    }

    /// The setting's text, if any layer gives one.
    fn get(&self, name: Name) -> Result<Option<String>, SettingsError> {
        if !name.variable.starts_with("PROGRESS_")
            && let Some(value) = self.env.get(name.variable)
        {
            return Ok(Some(value.clone()));
        }
        match self.config.get::<String>(name.key) {
            Ok(value) => Ok(Some(value)),
            Err(config::ConfigError::NotFound(_)) => Ok(None),
            Err(e) => Err(invalid(name.variable, e.to_string())),
        }
    }

    /// The setting's text; every setting with a default has one.
    fn require(&self, name: Name) -> Result<String, SettingsError> {
        self.get(name)?.ok_or_else(|| invalid(name.variable, "missing"))
    }

    /// A platform variable, trimmed; blank counts as unset.
    pub(super) fn nonempty(&self, variable: &str) -> Option<String> {
        platform::nonempty(&self.env, variable)
    }

    /// The variable a URL setting came from: its own when set, else the
    /// host variable of the group that builds it.
    pub(super) fn url_variable(&self, key: &str, group_host: &'static str) -> &'static str {
        let d = DECLARATIONS.iter().find(|d| d.key == key).expect("a declared setting");
        let name = Name { key: d.key, variable: d.variable };
        match self.get(name) {
            Ok(Some(url)) if !url.trim().is_empty() => d.variable,
            _ => group_host,
        }
    }
}

/// Runs a derived field's reader; a closure passed here knows its argument's type.
pub(super) fn derive<T>(source: &Source, read: impl Fn(&Source) -> T) -> T {
    read(source)
}

/// Text parsed as `T`; `expected` completes "expected …" when it is not one.
pub(super) fn parsed<T: FromStr>(expected: &'static str) -> impl Fn(&Source, Name) -> Result<T, SettingsError> {
    move |source, name| typed(name, &source.require(name)?, expected)
}

/// Like [`parsed`], where blank or unset means `None`.
pub(super) fn parsed_if_set<T: FromStr>(
    expected: &'static str,
) -> impl Fn(&Source, Name) -> Result<Option<T>, SettingsError> {
    move |source, name| {
        source.get(name)?.filter(|v| !v.trim().is_empty()).map(|v| typed(name, &v, expected)).transpose()
    }
}

fn typed<T: FromStr>(name: Name, raw: &str, expected: &str) -> Result<T, SettingsError> {
    raw.trim().parse().map_err(|_| invalid(name.variable, format!("expected {expected}, got {raw:?}")))
}

/// Text as it is.
pub(super) fn text(source: &Source, name: Name) -> Result<String, SettingsError> {
    source.require(name)
}

/// A file name; blank means unset.
pub(super) fn path(source: &Source, name: Name) -> Result<Option<String>, SettingsError> {
    Ok(source.get(name)?.filter(|f| !f.trim().is_empty()))
}

/// A secret token, trimmed; blank means unset.
pub(super) fn token(source: &Source, name: Name) -> Result<Option<String>, SettingsError> {
    Ok(source.get(name)?.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// A comma-separated list, blanks dropped.
pub(super) fn list(source: &Source, name: Name) -> Result<Vec<String>, SettingsError> {
    let raw = source.require(name)?;
    Ok(raw.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
}

/// A comma-separated list of IP addresses and CIDR blocks, blanks dropped;
/// the first entry that is neither stops start-up.
pub(super) fn networks(source: &Source, name: Name) -> Result<Vec<ipnet::IpNet>, SettingsError> {
    list(source, name)?
        .iter()
        .map(|entry| crate::http::parse_network(entry).map_err(|reason| invalid(name.variable, reason)))
        .collect()
}

pub(super) type FromParts = fn(&HashMap<String, String>) -> Result<Option<String>, SettingsError>;

/// A URL, else one built by `parts` from the variables hosts set.
pub(super) fn url_or(parts: FromParts) -> impl Fn(&Source, Name) -> Result<Option<String>, SettingsError> {
    move |source, name| match source.get(name)?.filter(|u| !u.trim().is_empty()) {
        Some(url) => Ok(Some(url)),
        None => parts(&source.env),
    }
}
