//! Layered configuration: `config/default.toml`, then `config/$ORCHESTRATE_ENV.toml`, then
//! `--config FILE`, then environment variables `ORCHESTRATE__...`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use orchestrate_core::validate_bind_name;
use orchestrate_driver::Endpoint;
use serde::Deserialize;

/// Why the configuration cannot be used. Always exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("no binds are configured; add a [binds.NAME] table with a `url` to config/default.toml (or the file given with --config)")]
    NoBinds,
    #[error("invalid configuration: {0}")]
    Bind(#[from] orchestrate_driver::DriverError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    binds: BTreeMap<String, RawBind>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    decider: Option<String>,
    lock_timeout_ms: Option<u64>,
    parallelism: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBind {
    url: String,
    migrations: Option<PathBuf>,
}

/// Many binds sharing one chain: one per database name, listed or discovered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    /// A URL with `{name}` where each database's name goes.
    url: String,
    /// Default `migrations/<template>`.
    migrations: Option<PathBuf>,
    /// The database names, listed.
    names: Option<Vec<String>>,
    /// Or: every database on the server whose name matches this SQL `LIKE` pattern.
    discover: Option<String>,
    /// The database to connect to for discovery (default `postgres`).
    discover_database: Option<String>,
}

/// One configured bind.
#[derive(Clone, Debug)]
pub struct BindSettings {
    pub name: String,
    pub endpoint: Endpoint,
    pub migrations: PathBuf,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Binds in name order.
    pub binds: Vec<BindSettings>,
    /// The bind that decides batches it takes part in, if the user chose one.
    pub decider: Option<String>,
    /// How long to wait for another run's lock, and for locks when reading.
    pub lock_timeout: Duration,
    /// How many binds are read or worked on at once.
    pub parallelism: usize,
}

/// Where the configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The folder holding `default.toml` and `<env>.toml`.
    pub config_dir: PathBuf,
    /// `ORCHESTRATE_ENV`: staging, production, ...
    pub env_name: Option<String>,
    /// `--config FILE`.
    pub extra_file: Option<PathBuf>,
    /// The environment variables to read; `None` reads the process environment.
    pub environment: Option<HashMap<String, String>>,
}

/// A template's binds: `<template>_<database name>`, each with the template's chain.
fn expand_template(
    template: &str,
    t: &RawTemplate,
    lock_timeout_ms: Option<u64>,
) -> Result<Vec<BindSettings>, SettingsError> {
    let invalid = |m: String| SettingsError::Invalid(format!("template `{template}`: {m}"));
    validate_bind_name(template).map_err(invalid)?;
    if !t.url.contains("{name}") {
        return Err(invalid(
            "its url needs `{name}` where each database's name goes".into(),
        ));
    }
    let names: Vec<String> = match (&t.names, &t.discover) {
        (Some(names), None) => names.clone(),
        (None, Some(pattern)) => {
            let database = t.discover_database.as_deref().unwrap_or("postgres");
            let endpoint = Endpoint::parse(template, &t.url.replace("{name}", database))?;
            let timeout = Duration::from_millis(lock_timeout_ms.unwrap_or(10_000));
            let found = orchestrate_driver::BindConnection::connect(&endpoint, false, timeout)
                .and_then(|mut c| c.databases_like(pattern))
                .map_err(|e| invalid(format!("cannot discover its databases: {e}")))?;
            if found.is_empty() {
                return Err(invalid(format!(
                    "no database on {} matches `{pattern}`",
                    endpoint.redacted()
                )));
            }
            found
        }
        _ => {
            return Err(invalid(
                "give exactly one of `names = [...]` or `discover = \"PATTERN\"`".into(),
            ))
        }
    };
    let migrations = t
        .migrations
        .clone()
        .unwrap_or_else(|| Path::new("migrations").join(template));
    names
        .iter()
        .map(|db| {
            let name = format!("{template}_{db}");
            validate_bind_name(&name).map_err(|e| invalid(format!("database `{db}` gives {e}")))?;
            Ok(BindSettings {
                endpoint: Endpoint::parse(&name, &t.url.replace("{name}", db))?,
                name,
                migrations: migrations.clone(),
            })
        })
        .collect()
}

impl Settings {
    pub fn load(sources: &Sources) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder();
        let default = sources.config_dir.join("default.toml");
        builder = builder.add_source(
            File::from(default.as_path())
                .format(FileFormat::Toml)
                .required(false),
        );
        if let Some(env_name) = sources.env_name.as_deref().filter(|e| !e.is_empty()) {
            let path = sources.config_dir.join(format!("{env_name}.toml"));
            if !path.is_file() {
                return Err(SettingsError::Invalid(format!(
                    "ORCHESTRATE_ENV is `{env_name}` but {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        if let Some(path) = &sources.extra_file {
            if !path.is_file() {
                return Err(SettingsError::MissingFile(path.clone()));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        let environment = Environment::with_prefix("ORCHESTRATE")
            .separator("__")
            .ignore_empty(true)
            .source(sources.environment.clone().map(|m| m.into_iter().collect()));
        builder = builder.add_source(environment);
        let raw: RawSettings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Settings, SettingsError> {
        let mut binds = Vec::with_capacity(raw.binds.len());
        for (template, t) in &raw.templates {
            binds.extend(expand_template(template, t, raw.lock_timeout_ms)?);
        }
        for (name, bind) in raw.binds {
            validate_bind_name(&name).map_err(SettingsError::Invalid)?;
            let endpoint = Endpoint::parse(&name, &bind.url)?;
            let migrations = bind
                .migrations
                .unwrap_or_else(|| Path::new("migrations").join(&name));
            if binds.iter().any(|b: &BindSettings| b.name == name) {
                return Err(SettingsError::Invalid(format!(
                    "bind `{name}` is configured twice (a template expands to the same name)"
                )));
            }
            binds.push(BindSettings {
                name,
                endpoint,
                migrations,
            });
        }
        if binds.is_empty() {
            return Err(SettingsError::NoBinds);
        }
        binds.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(decider) = &raw.decider {
            if !binds.iter().any(|b| &b.name == decider) {
                return Err(SettingsError::Invalid(format!(
                    "`decider = \"{decider}\"` names no configured bind"
                )));
            }
        }
        let parallelism = raw.parallelism.unwrap_or(8);
        if parallelism == 0 {
            return Err(SettingsError::Invalid(
                "`parallelism` must be at least 1".into(),
            ));
        }
        Ok(Settings {
            parallelism,
            binds,
            decider: raw.decider,
            lock_timeout: Duration::from_millis(raw.lock_timeout_ms.unwrap_or(10_000)),
        })
    }

    pub fn bind(&self, name: &str) -> Option<&BindSettings> {
        self.binds.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sources(dir: &Path, env: &[(&str, &str)]) -> Sources {
        Sources {
            config_dir: dir.to_path_buf(),
            env_name: None,
            extra_file: None,
            environment: Some(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn layers_files_and_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(
            d.join("default.toml"),
            "[binds.users]\nurl = \"sqlite://var/users.sqlite3\"\n[binds.billing]\nurl = \"sqlite://var/billing.sqlite3\"\n",
        )
        .unwrap();
        fs::write(
            d.join("staging.toml"),
            "[binds.users]\nurl = \"postgres://app:pw@staging/users\"\n",
        )
        .unwrap();
        let mut s = sources(d, &[]);
        let settings = Settings::load(&s).unwrap();
        assert_eq!(settings.binds.len(), 2);
        assert_eq!(
            settings.bind("users").unwrap().migrations,
            PathBuf::from("migrations/users")
        );
        s.env_name = Some("staging".into());
        let settings = Settings::load(&s).unwrap();
        assert_eq!(
            settings.bind("users").unwrap().endpoint.redacted(),
            "postgres://app:***@staging/users"
        );
        let s = Sources {
            environment: Some(
                [
                    (
                        "ORCHESTRATE__BINDS__BILLING__URL".to_string(),
                        "postgres://h/billing".to_string(),
                    ),
                    (
                        "ORCHESTRATE__LOCK_TIMEOUT_MS".to_string(),
                        "250".to_string(),
                    ),
                    ("ORCHESTRATE_ENV".to_string(), "ignored-here".to_string()),
                ]
                .into_iter()
                .collect(),
            ),
            ..s
        };
        let settings = Settings::load(&s).unwrap();
        assert_eq!(
            settings.bind("billing").unwrap().endpoint.redacted(),
            "postgres://h/billing"
        );
        assert_eq!(settings.lock_timeout, Duration::from_millis(250));
    }

    #[test]
    fn templates_expand_over_names() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("default.toml"),
            "[templates.tenant]\nurl = \"sqlite://var/{name}.sqlite3\"\nnames = [\"acme\", \"globex\"]\n[binds.main]\nurl = \"sqlite://var/main.sqlite3\"\n",
        )
        .unwrap();
        let settings = Settings::load(&sources(tmp.path(), &[])).unwrap();
        let names: Vec<_> = settings.binds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["main", "tenant_acme", "tenant_globex"]);
        let acme = settings.bind("tenant_acme").unwrap();
        assert_eq!(acme.migrations, PathBuf::from("migrations/tenant"));
        assert_eq!(acme.endpoint.redacted(), "sqlite://var/acme.sqlite3");
    }

    #[test]
    fn rejects_bad_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let cases = [
            ("[binds.users]\nurl = \"sqlite://a\"\ntypo = 1\n", "typo"),
            ("[binds.Users]\nurl = \"sqlite://a\"\n", "Users"),
            ("[binds.users]\nurl = \"mysql2://x\"\n", "mysql2"),
            ("[binds.users\nurl = 1\n", "default.toml"),
            (
                "colour = \"blue\"\n[binds.users]\nurl = \"sqlite://a\"\n",
                "colour",
            ),
            (
                "decider = \"nope\"\n[binds.users]\nurl = \"sqlite://a\"\n",
                "nope",
            ),
            ("", "no binds"),
            ("[templates.t]\nurl = \"sqlite://{name}.db\"\n", "exactly one of"),
            ("[templates.t]\nurl = \"sqlite://x.db\"\nnames = [\"a\"]\n", "{name}"),
            ("[templates.t]\nurl = \"sqlite://{name}.db\"\nnames = [\"A-1\"]\n", "A-1"),
            ("[binds.t_a]\nurl = \"sqlite://a\"\n[templates.t]\nurl = \"sqlite://{name}.db\"\nnames = [\"a\"]\n", "twice"),
        ];
        for (text, needle) in cases {
            fs::write(d.join("default.toml"), text).unwrap();
            let err = Settings::load(&sources(d, &[])).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
